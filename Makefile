# repshift: `make demo` and `make test` are the two commands a new user needs.
# `make help` lists every target. The first target that needs Python creates .venv.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Reproduction knobs: DATA=/datasets (holds imagenet/val/...), LAUNCHER=basic|submitit_local|slurm,
# SMOKE=1 runs the same sweep on random weights + synthetic data in outputs/smoke (seconds, no download).
DATA     ?=
LAUNCHER ?= basic
SMOKE    ?= 0
ARGS     ?=

ifeq ($(SMOKE),1)
OUTPUTS := outputs/smoke
RUN_ARGS := smoke=on
else
OUTPUTS := outputs
RUN_ARGS :=
endif
RUN_ARGS += hydra/launcher=$(LAUNCHER) $(if $(DATA),paths.data_dir=$(DATA)) $(ARGS)

.PHONY: help install test test-slow bench demo data-shapebench clean \
	reproduce-table1 reproduce-table5 reproduce-table8 reproduce-fig3 reproduce-fig5

help:  ## list targets
	@grep -E '^[a-zA-Z0-9_%-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed  ## create .venv and install repshift (editable) with its dependencies

test: install  ## run the test suite (CPU, ~10 min on 2 cores)
	$(PY) -m pytest

test-slow: install  ## run the slow end-to-end tests kept out of `make test`
	$(PY) -m pytest -m slow

bench: install  ## throughput of base / pruned / static / attn DeiT-S (CPU; add ARGS="--device cuda" on a GPU)
	$(PY) scripts/bench_patch.py $(ARGS)

data-shapebench: install  ## generate the ShapeBench synthetic dataset under data/shapebench
	$(PY) -m repshift.data.shapebench --root data/shapebench

demo: install  ## ShapeBench end to end: data, tiny ViT training, Base/Attn/Ours, Table 8 check, masks, figure
	$(PY) -m repshift.demo $(ARGS)

reproduce-table1: install  ## Table 1: FlashAttention vs self-attention (DeiT-S)
	$(PY) -m repshift.run -m experiment=table1 $(RUN_ARGS)
	$(PY) -m repshift.report table=table1 results=$(OUTPUTS)

reproduce-table5: install  ## Table 5: DeiT-T/S/B Base vs Attn vs Ours on ImageNet-1k
	$(PY) -m repshift.run -m experiment=table5 $(RUN_ARGS)
	$(PY) -m repshift.report table=table5 results=$(OUTPUTS)

reproduce-table8: install  ## Table 8: keep top vs bottom 50 % by representation shift (DeiT-S)
	$(PY) -m repshift.run -m experiment=table8 $(RUN_ARGS)
	$(PY) -m repshift.report table=table8 results=$(OUTPUTS)

reproduce-fig3: install  ## Figure 3: attention scores vs representation shift, per pruned layer
	$(PY) -m repshift.run -m experiment=fig3 $(RUN_ARGS)
	$(PY) -m repshift.report table=fig3 results=$(OUTPUTS)

reproduce-fig5: install  ## Figure 5: operation (attn/mlp/block) x distance (l1/l2/cos), per pruned layer
	$(PY) -m repshift.run -m experiment=fig5 $(RUN_ARGS)
	$(PY) -m repshift.report table=fig5 results=$(OUTPUTS)

clean:  ## remove smoke outputs and caches (keeps data/ and real results)
	rm -rf outputs/smoke data/shapebench-smoke .pytest_cache
