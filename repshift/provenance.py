"""Where and with what a number was produced: git commit, library versions, device, host, SLURM ids.

Recorded in every run's result (``env``) and beside every throughput figure (:func:`device_name`).
"""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device) -> str:
    """GPU name, or the CPU model and thread count: recorded beside every throughput figure."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_name()} ({torch.get_num_threads()} threads)"


# --------------------------------------------------------------------------- environment
_PACKAGES = {
    "torch": "torch",
    "timm": "timm",
    "hydra": "hydra-core",
    "omegaconf": "omegaconf",
    "wandb": "wandb",
    "pandas": "pandas",
    "numpy": "numpy",
}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _find_git_dir(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        candidate = folder / ".git"
        if candidate.is_dir():
            return candidate
        if candidate.is_file():  # worktree / submodule: "gitdir: <path>"
            try:
                text = candidate.read_text(encoding="utf-8").strip()
            except OSError:
                return None
            if text.startswith("gitdir:"):
                gitdir = Path(text.split(":", 1)[1].strip())
                return gitdir if gitdir.is_absolute() else (folder / gitdir).resolve()
    return None


def _commit_from_files(git_dir: Path) -> str:
    """Resolve HEAD by reading files (no git binary needed)."""
    try:
        head = (git_dir / "HEAD").read_text(encoding="utf-8").strip()
    except OSError:
        return "unknown"
    if not head.startswith("ref:"):
        return head or "unknown"
    ref = head.split(":", 1)[1].strip()
    # worktrees keep refs in the common dir
    dirs = [git_dir]
    common = git_dir / "commondir"
    if common.is_file():
        try:
            dirs.append((git_dir / common.read_text(encoding="utf-8").strip()).resolve())
        except OSError:
            pass
    for d in dirs:
        ref_file = d / ref
        if ref_file.is_file():
            try:
                return ref_file.read_text(encoding="utf-8").strip() or "unknown"
            except OSError:
                pass
        packed = d / "packed-refs"
        if packed.is_file():
            try:
                for line in packed.read_text(encoding="utf-8").splitlines():
                    parts = line.split()
                    if len(parts) == 2 and parts[1] == ref:
                        return parts[0]
            except OSError:
                pass
    return "unknown"


def git_info(start: str | os.PathLike | None = None) -> dict:
    """``{"git_commit": sha or "unknown", "git_dirty": bool or None}`` for the repo holding ``start``."""
    start = Path(start) if start is not None else Path(__file__).resolve().parent
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    commit, dirty = None, None
    try:
        proc = subprocess.run(
            ["git", "-C", str(start), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, env=env, check=False,
        )
        if proc.returncode == 0 and proc.stdout.strip():
            commit = proc.stdout.strip()
            st = subprocess.run(
                ["git", "-C", str(start), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, timeout=20, env=env, check=False,
            )
            if st.returncode == 0:
                dirty = bool(st.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit = None
    if commit is None:
        git_dir = _find_git_dir(start)
        commit = _commit_from_files(git_dir) if git_dir is not None else "unknown"
    return {"git_commit": commit, "git_dirty": dirty}


def _torch_info() -> dict:
    info = {"cuda": None, "cudnn": None, "num_gpus": 0, "device": None}
    try:
        import torch
    except ImportError:
        return info
    info["cuda"] = getattr(torch.version, "cuda", None)
    try:
        cudnn = torch.backends.cudnn.version()
        info["cudnn"] = str(cudnn) if cudnn is not None else None
    except Exception:  # noqa: BLE001
        pass
    try:
        if torch.cuda.is_available():
            info["num_gpus"] = torch.cuda.device_count()
            info["device"] = torch.cuda.get_device_name(torch.cuda.current_device())
    except Exception:  # noqa: BLE001
        pass
    return info


def environment() -> dict:
    """Everything needed to say where and with what a number was produced."""
    env: dict[str, Any] = {}
    env.update(git_info())
    env["python"] = platform.python_version()
    env["python_executable"] = sys.executable
    for key, dist in _PACKAGES.items():
        env[key] = _version(dist)
    tinfo = _torch_info()
    env["cuda"] = tinfo["cuda"]
    env["cudnn"] = tinfo["cudnn"]
    env["num_gpus"] = tinfo["num_gpus"]
    env["device"] = tinfo["device"] or cpu_name()
    env["platform"] = platform.platform()
    env["hostname"] = socket.gethostname()
    env["slurm_job_id"] = os.environ.get("SLURM_JOB_ID")
    env["slurm_array_job_id"] = os.environ.get("SLURM_ARRAY_JOB_ID")
    env["slurm_array_task_id"] = os.environ.get("SLURM_ARRAY_TASK_ID")
    return env
