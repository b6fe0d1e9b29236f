# repshift: `make demo` and `make test` are the two commands a new user needs.
# `make help` lists every target. The first target that needs Python creates .venv.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Reproduction knobs: DATA=/datasets (holds imagenet/val/...), LAUNCHER=basic|submitit_local|slurm,
# SMOKE=1 runs the same sweep on random weights + synthetic data in outputs/smoke (seconds, no download).
# DETACH=1 (with LAUNCHER=slurm) queues the sweep and returns; `make status EXP=<experiment>` follows it.
DATA     ?=
LAUNCHER ?= basic
SMOKE    ?= 0
DETACH   ?= 0
ARGS     ?=
EXP      ?=

ifeq ($(SMOKE),1)
OUTPUTS := outputs/smoke
RUN_ARGS := smoke=on
else
OUTPUTS := outputs
RUN_ARGS :=
endif
RUN_ARGS += hydra/launcher=$(LAUNCHER) $(if $(DATA),paths.data_dir=$(DATA)) $(ARGS)
ifeq ($(DETACH),1)
ifneq ($(LAUNCHER),slurm)
$(error DETACH=1 needs LAUNCHER=slurm: only a cluster keeps running the sweep after make returns)
endif
RUN_ARGS += hydra.launcher.detach=true
endif
# The report of a table; a detached sweep has no results yet, so it says how to make it later.
report = $(if $(filter 1,$(DETACH)),@echo "queued: follow with 'make status EXP=$(1)$(if $(filter 1,$(SMOKE)), SMOKE=1)'; \
	when every run is done: $(PY) -m repshift.report table $(1) --results $(OUTPUTS)",$(PY) -m repshift.report table $(1) --results $(OUTPUTS))

.PHONY: help install test test-e2e test-slow test-gpu test-cluster status bench demo data-shapebench clean \
	reproduce-table1 reproduce-table5 reproduce-table8 reproduce-fig3 reproduce-fig5 reproduce-readings

help:  ## list targets
	@grep -hE '^[a-zA-Z0-9_%-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed  ## create .venv and install repshift (editable) with its dependencies

test: install  ## run the test suite (CPU, ~6 min on 2 cores)
	$(PY) -m pytest

test-e2e: install  ## the quick end-to-end runs kept out of `make test`: make SMOKE targets, the demo, torchrun, submitit
	$(PY) -m pytest -m "e2e and not slow"

test-slow: install  ## run the slow end-to-end tests kept out of `make test`
	$(PY) -m pytest -m slow

test-gpu: install  ## GPU tier: kernels that ran, fp16, CUDA graphs, flash-attn / mamba_ssm where installed (skips without CUDA)
	$(PY) -m pytest -m gpu tests/gpu

test-cluster: install  ## SLURM tests on a one-node cluster started here (needs root + apt; says why and skips otherwise)
	@session=$$(mktemp); scripts/slurm/cluster.sh up --session $$session; rc=$$?; \
	if [ $$rc -eq 77 ]; then rm -f $$session; echo "test-cluster: SKIPPED, no SLURM cluster (reason above)"; exit 0; fi; \
	if [ $$rc -ne 0 ]; then scripts/slurm/cluster.sh down --session $$session; exit $$rc; fi; \
	REPSHIFT_CLUSTER_TESTS=1 $(PY) -m pytest tests/cluster -p no:cacheprovider; rc=$$?; \
	scripts/slurm/cluster.sh down --session $$session; exit $$rc

status: install  ## one table of a sweep's runs (done/running/failed/missing): make status EXP=table5 [SMOKE=1]
	@test -n "$(EXP)" || { echo "usage: make status EXP=<experiment> [SMOKE=1]; sweeps in $(OUTPUTS): $$(ls $(OUTPUTS) 2>/dev/null | tr '\n' ' ')"; exit 2; }
	$(PY) -m repshift.status $(OUTPUTS) --experiment $(EXP)

bench: install  ## throughput of base / pruned / static / attn DeiT-S (CPU; add ARGS="--device cuda" on a GPU)
	$(PY) scripts/bench_patch.py $(ARGS)

data-shapebench: install  ## generate the ShapeBench synthetic dataset under data/shapebench
	$(PY) -m repshift.data.shapebench --root data/shapebench

demo: install  ## ShapeBench end to end: data, tiny ViT training, Base/Attn/Ours, Table 8 check, masks, figure
	$(PY) -m repshift.demo $(ARGS)

reproduce-table1: install  ## Table 1: FlashAttention vs self-attention (DeiT-S)
	$(PY) -m repshift.run -m experiment=table1 $(RUN_ARGS)
	$(call report,table1)

reproduce-table5: install  ## Table 5: DeiT-T/S/B Base vs Attn vs Ours on ImageNet-1k
	$(PY) -m repshift.run -m experiment=table5 $(RUN_ARGS)
	$(call report,table5)

reproduce-table8: install  ## Table 8: keep top vs bottom 50 % by representation shift (DeiT-S)
	$(PY) -m repshift.run -m experiment=table8 $(RUN_ARGS)
	$(call report,table8)

reproduce-fig3: install  ## Figure 3: attention scores vs representation shift, per pruned layer
	$(PY) -m repshift.run -m experiment=fig3 $(RUN_ARGS)
	$(call report,fig3)

reproduce-fig5: install  ## Figure 5: operation (attn/mlp/block) x distance (l1/l2/cos), per pruned layer (+ controls)
	$(PY) -m repshift.run -m experiment=fig5 $(RUN_ARGS)
	$(PY) -m repshift.run -m experiment=fig5 metric=random,none site=mlp $(RUN_ARGS)
	$(call report,fig5)

# Overrides for the Table 8 half alone (`make figures SMOKE=1` narrows its blocks; ARGS= reaches both halves).
READINGS_TABLE8_ARGS ?=
reproduce-readings: install  ## which reading of D(F(x), x) reproduces the paper: DeiT-T/S/B x l1/l2/cos x attn/mlp/block x 3 readings
	$(PY) -m repshift.run -m experiment=readings $(RUN_ARGS)
	$(PY) -m repshift.run -m experiment=readings_table8 $(RUN_ARGS) $(READINGS_TABLE8_ARGS)
	$(call report,readings)

clean:  ## remove smoke outputs and caches (keeps data/ and real results)
	rm -rf outputs/smoke data/shapebench-smoke .pytest_cache

# Each model family's reproduce-* targets (video, ResNet, ViM) live in a file of their own.
include $(wildcard mk/*.mk)
