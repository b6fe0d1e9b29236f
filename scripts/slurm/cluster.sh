#!/usr/bin/env bash
# A one-node SLURM cluster (with accounting, so `sacct` works) on this machine, for the cluster
# tests and for trying the SLURM launcher by hand. Idempotent; stops only what it started.
#
#   scripts/slurm/cluster.sh up   [--session FILE]   install what is missing, configure, start, wait for idle
#   scripts/slurm/cluster.sh down [--session FILE]   stop the daemons this script started (those of FILE only)
#   scripts/slurm/cluster.sh status                  which daemons run, and `sinfo`
#
# `up` exits 77 (and says why) when it cannot bring a cluster up: not root, or packages missing and
# no apt-get. A cluster that already answers `sinfo` is used as it is (nothing started, nothing
# configured). Daemons already running are left alone and never stopped by `down`.
# Needs: Debian/Ubuntu packages munge slurmctld slurmd slurm-client slurmdbd mariadb-server
# (installed with --no-install-recommends when missing). No systemd or cgroups.
set -euo pipefail

SKIP=77
STATE_DIR=${REPSHIFT_SLURM_STATE:-/run/repshift-slurm}   # PIDs of the daemons this script started
MARK="# written by repshift scripts/slurm/cluster.sh"       # configs without it are never overwritten
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
NODE=$(hostname -s)

say() { echo "cluster.sh: $*" >&2; }
skip() { say "SKIP: $*"; exit "$SKIP"; }

# name -> "pidfile|command name in /proc/<pid>/comm"
declare -A DAEMONS=(
  [munged]="/run/munge/munged.pid|munged"
  [mariadbd]="/run/mysqld/mysqld.pid|mariadbd"
  [slurmdbd]="/run/slurmdbd.pid|slurmdbd"
  [slurmctld]="/run/slurmctld.pid|slurmctld"
  [slurmd]="/run/slurmd.pid|slurmd"
)
START_ORDER=(munged mariadbd slurmdbd slurmctld slurmd)

pid_alive() {  # pid_alive PID COMM: true when PID runs a process named COMM (guards against PID reuse)
  [[ -n "$1" && -r /proc/$1/comm ]] && [[ "$(cat "/proc/$1/comm")" == "$2" ]]
}

daemon_pid() {  # the live PID of daemon $1 from its own pidfile, or nothing
  local pidfile=${DAEMONS[$1]%%|*} comm=${DAEMONS[$1]##*|} pid
  pid=$(cat "$pidfile" 2>/dev/null || true)
  pid=${pid//[^0-9]/}
  if pid_alive "$pid" "$comm"; then echo "$pid"; fi
}

daemon_running() { [[ -n "$(daemon_pid "$1")" ]]; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND until it succeeds
  local seconds=$1 what=$2 i
  shift 2
  for ((i = 0; i < seconds * 4; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  say "timed out after ${seconds}s waiting for $what"
  return 1
}

cluster_answers() { timeout 10 sinfo -h -o %t >/dev/null 2>&1; }

node_idle() { [[ "$(timeout 10 sinfo -h -n "$NODE" -o %t 2>/dev/null)" =~ ^(idle|mix|alloc)$ ]]; }

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null || skip "packages missing (${missing[*]}) and no apt-get to install them"
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; then
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

ours_or_absent() { [[ ! -e "$1" ]] || grep -qxF "$MARK" "$1"; }

write_configs() {
  install -d -m 0755 /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  local cpus mem_mib
  cpus=$(nproc)
  # leave ~2 GiB to the OS; submitit asks for mem_gb per job, and a job asking more than this is refused
  mem_mib=$(($(awk '/^MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 2048))
  if ours_or_absent "$CONF"; then
    cat >"$CONF" <<EOF
$MARK
ClusterName=repshift
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# refuse at submit what no node can run, instead of pending forever
EnforcePartLimits=ALL
ReturnToService=2
# no mail on this test cluster (silences "Configured MailProg is invalid")
MailProg=/bin/true
# seconds between SIGTERM and SIGKILL when a job is cancelled or requeued
KillWait=5
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mib State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  else
    say "keeping $CONF (not written by this script)"
  fi
  if ours_or_absent "$DBD_CONF"; then
    local password
    password=$(grep -s '^StoragePass=' "$DBD_CONF" | cut -d= -f2- || true)
    [[ -n "$password" ]] || password=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    umask 077
    cat >"$DBD_CONF" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$password
EOF
    umask 022
    chmod 600 "$DBD_CONF"
  fi
}

record() { echo "$2" >"$STATE_DIR/$1.pid"; [[ -z "$SESSION" ]] || echo "$1" >>"$SESSION"; }

start_daemon() {
  local name=$1 pid
  if [[ -n "$(daemon_pid "$name")" ]]; then
    say "$name already running (left alone)"
    return 0
  fi
  case $name in
    munged)
      install -d -o munge -g munge -m 0755 /run/munge
      if [[ ! -s /etc/munge/munge.key ]]; then
        install -d -o munge -g munge -m 0700 /etc/munge
        head -c 1024 /dev/urandom >/etc/munge/munge.key
      fi
      chown munge:munge /etc/munge/munge.key
      chmod 600 /etc/munge/munge.key
      runuser -u munge -- /usr/sbin/munged
      wait_for 10 "munge" bash -c 'munge -n | unmunge'
      ;;
    mariadbd)
      install -d -o mysql -g mysql -m 0755 /run/mysqld
      [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
      setsid /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid \
        --socket=/run/mysqld/mysqld.sock >>/var/log/slurm/mariadb.log 2>&1 </dev/null &
      wait_for 30 "mariadb" mariadb -e "SELECT 1"
      local password
      password=$(grep '^StoragePass=' "$DBD_CONF" | cut -d= -f2-)
      mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$password';
        ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$password';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
      ;;
    slurmdbd)
      slurmdbd
      wait_for 30 "slurmdbd on port 6819" bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819'
      ;;
    slurmctld)
      slurmctld
      wait_for 30 "slurmctld" cluster_answers
      ;;
    slurmd)
      slurmd -N "$NODE"
      ;;
  esac
  wait_for 10 "$name's pid file" daemon_running "$name" || true
  pid=$(daemon_pid "$name")
  [[ -n "$pid" ]] || { say "$name did not start; see /var/log/slurm/"; exit 1; }
  record "$name" "$pid"
  say "started $name (pid $pid)"
}

up() {
  if cluster_answers && [[ ! -e "$STATE_DIR" ]]; then
    say "a SLURM cluster already answers sinfo: using it as it is"
    return 0
  fi
  [[ $EUID -eq 0 ]] || skip "not root: installing and starting SLURM daemons needs root"
  install_packages
  write_configs
  install -d -m 0700 "$STATE_DIR"
  local name
  for name in "${START_ORDER[@]}"; do start_daemon "$name"; done
  # a node left down/drained by an earlier unclean stop comes back
  timeout 10 scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
  wait_for 60 "node $NODE to be idle" node_idle
  say "up: $(sinfo -h -o '%P %D %t %c CPUs %m MiB' | head -1)"
}

stop_daemon() {
  local name=$1 comm=${DAEMONS[$1]##*|} pid i
  pid=$(cat "$STATE_DIR/$name.pid" 2>/dev/null || true)
  rm -f "$STATE_DIR/$name.pid"
  if ! pid_alive "$pid" "$comm"; then return 0; fi
  kill -TERM "$pid"
  for ((i = 0; i < 60; i++)); do pid_alive "$pid" "$comm" || break; sleep 0.25; done
  if pid_alive "$pid" "$comm"; then kill -KILL "$pid"; fi
  say "stopped $name (pid $pid)"
}

down() {
  local names=() i
  if [[ -n "$SESSION" ]]; then
    [[ -s "$SESSION" ]] && mapfile -t names <"$SESSION"
  else
    names=("${START_ORDER[@]}")
  fi
  # reverse start order: slurmd, slurmctld, slurmdbd, mariadbd, munged
  for ((i = ${#START_ORDER[@]} - 1; i >= 0; i--)); do
    if printf '%s\n' "${names[@]}" | grep -qxF "${START_ORDER[$i]}"; then stop_daemon "${START_ORDER[$i]}"; fi
  done
  [[ -z "$SESSION" ]] || rm -f "$SESSION"
}

status() {
  local name pid
  for name in "${START_ORDER[@]}"; do
    pid=$(daemon_pid "$name")
    if [[ -n "$pid" ]]; then
      if [[ "$(cat "$STATE_DIR/$name.pid" 2>/dev/null)" == "$pid" ]]; then echo "$name: running (pid $pid, started by this script)"
      else echo "$name: running (pid $pid, not started by this script)"; fi
    else
      echo "$name: not running"
    fi
  done
  cluster_answers && sinfo || true
}

ACTION=${1:-}
shift || true
SESSION=""
while (($#)); do
  case $1 in
    --session) SESSION=$2; shift 2 ;;
    *) say "unknown argument $1"; exit 2 ;;
  esac
done
case $ACTION in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status [--session FILE]" >&2; exit 2 ;;
esac
