"""``make reproduce-merging``: three ways to spend one budget on a ViT, at matched GMACs (issue 23).

    python -m repshift.merging_experiment [Hydra overrides ...]
    python -m repshift.merging_experiment model=deit_s dataset=imagenet paths.data_dir=/datasets

For one model (``experiment=merging``: the ShapeBench tiny ViT by default), every method of
``merging.methods`` is built, compressed, evaluated, counted and timed:

1. the pruning methods (Ours, Attn, Static, Random) use their own schedule (the paper's DeiT schedule);
2. a merge method whose ``compress.num`` is null gets ToMe's constant ``r`` by the **matching rule**: the
   smallest ``r`` whose GMACs do not exceed those of ``merging.match_to`` (Ours), searched upwards from 1
   on plain ToMe (the scores that weight merges add no matmul, so every merge method spends the same);
3. accuracy through the dataset's evaluator, GMACs by :func:`repshift.bench.count_gmacs`, and throughput
   with every method's model timed in turn within each repeat (:func:`repshift.bench.compare`), so machine
   load hits them alike;
4. one :class:`repshift.record.RunRecord` per method in ``<paths.output_dir>/merging/<run>/result.json``,
   then the table of every merging record found there (:mod:`repshift.report.merging_table`) is printed and
   written to ``<paths.output_dir>/tables/merging.md`` / ``.csv``.

The runner (``python -m repshift.run``) does not merge on timm ViTs yet, so this driver composes the same
configs and runs the same tasks in-process; it knows configs, as only a runner may.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

import repshift
import repshift.bench as bench
import repshift.provenance as provenance
import repshift.tasks as tasks
from repshift.configs import compose
from repshift.models import build_model
from repshift.record import Identity, RunRecord, fingerprint, scan
from repshift.run import compress_model, compresses, recorded_method, resolve_device

log = logging.getLogger("repshift.merging")

EXPERIMENT = "merging"


def configs(overrides: list[str]) -> dict[str, DictConfig]:
    """The composed run config of every method of ``merging.methods``, by method config name."""
    experiment = compose([f"experiment={EXPERIMENT}", *overrides])
    methods = list(experiment.merging.methods)
    if experiment.merging.match_to not in methods:
        raise ValueError(f"merging.match_to={experiment.merging.match_to} is not one of merging.methods={methods}")
    return {name: compose([f"experiment={EXPERIMENT}", f"method={name}", *overrides], return_hydra_config=True)
            for name in methods}


def is_merge(cfg: DictConfig) -> bool:
    return cfg.compress.get("mode") == "merge"


def build(cfg: DictConfig, device: torch.device, r: Optional[int] = None):
    """``(model, weights)``: the model of ``cfg``, weights loaded, compressed; a merge method merges ``r``
    tokens in every block its ``compress.layers`` names (null: every block) unless it sets ``compress.num``."""
    model, weights = build_model(OmegaConf.to_container(cfg.model, resolve=True))
    model.to(device).eval()
    if is_merge(cfg):
        with open_dict(cfg):
            if cfg.compress.num is None and cfg.compress.ratio is None:
                cfg.compress.num = r
    return compress_model(model, cfg), weights


def match_r(cfg: DictConfig, budget: float, device: torch.device) -> int:
    """The smallest constant ``r`` whose GMACs are at most ``budget`` (plain ToMe: ``metric=none``)."""
    model, _ = build_model(OmegaConf.to_container(cfg.model, resolve=True))
    model.to(device).eval()
    input_size = tuple(cfg.model.input_size)
    depth = len(model.blocks)
    r = 0
    while True:
        r += 1
        try:
            repshift.patch(model, metric="none", site=cfg.site, mode="merge", r=r, attention=cfg.attention,
                           proportional=cfg.compress.proportional)
        except ValueError as error:  # r above half the tokens somewhere: no constant r gets under the budget
            raise ValueError(f"no constant r merges {cfg.model.name} under {budget:.4f} GMACs: {error}") from None
        gmacs = bench.count_gmacs(model, input_size, device)
        repshift.unpatch(model)
        log.info("ToMe r=%d x %d blocks: %.4f GMACs (budget %.4f)", r, depth, gmacs, budget)
        if gmacs <= budget:
            return r


def run(overrides: list[str]) -> list[RunRecord]:
    """Run the experiment for the configured model; returns its records (also written to disk)."""
    cfgs = configs(overrides)
    first = next(iter(cfgs.values()))
    device = resolve_device(first.device, 0)
    torch.manual_seed(first.seed)
    reference = cfgs[first.merging.match_to]
    budget_model, _ = build(reference, device)
    budget = bench.count_gmacs(budget_model, tuple(reference.model.input_size), device)
    del budget_model
    merging = [cfg for cfg in cfgs.values() if is_merge(cfg)]
    r = match_r(merging[0], budget, device) if merging else None

    out = Path(first.paths.output_dir) / EXPERIMENT
    models, measured = {}, {}
    for name, cfg in cfgs.items():
        model, weights = build(cfg, device, r)
        evaluator = tasks.evaluator_of(cfg, model)
        dataset, metrics = evaluator.run(model, cfg, device, _mkdir(out / _run_name(cfg)))
        gmacs = bench.count_gmacs(model, tuple(cfg.model.input_size), device)
        tokens = list(model.repshift.tokens) if repshift.is_patched(model) else []
        log.info("%s: top-1 %.2f, %.4f GMACs, tokens %s", name, metrics["top1"], gmacs, tokens)
        models[name] = model
        measured[name] = dict(weights=weights, dataset=dataset, metrics=metrics, gmacs=gmacs, tokens=tokens)

    timings = bench.compare(models, input_size=tuple(first.model.input_size), device=device, unit=first.model.unit,
                            progress=first.progress, desc="throughput", **_bench_settings(first, device))
    env = provenance.environment()
    records = []
    for name, cfg in cfgs.items():
        record = _record(cfg, models[name], measured[name], {**timings[name], "part": "whole model"}, env, device)
        record.write(_mkdir(out / record.run_name))
        records.append(record)
    return records


def _bench_settings(cfg: DictConfig, device: torch.device) -> dict:
    """The bench config's batch, warm-up, iterations and repeats (``bench.cpu`` on the CPU; AMP on CUDA)."""
    settings = cfg.bench if device.type == "cuda" else cfg.bench.cpu
    return dict(batch_size=settings.batch_size, warmup=settings.warmup, iters=settings.iters, repeats=settings.repeats,
                amp_dtype=cfg.bench.amp_dtype if device.type == "cuda" else None)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run_name(cfg: DictConfig) -> str:
    """The folder and run name of one method's record (``cfg`` as built)."""
    return f"model={cfg.hydra.runtime.choices.model},method={recorded_method(cfg)['name']}"


def _record(cfg: DictConfig, model, measured: dict, timing: dict, env: dict, device: torch.device) -> RunRecord:
    """The run record of one method (``cfg`` as built: a merge method's layers and ``r`` filled in)."""
    model_name = cfg.hydra.runtime.choices.model
    config = OmegaConf.to_container(cfg, resolve=False)
    for unresolvable in ("hydra", "train"):  # Hydra's own node, and training (not run here) that points into it
        config.pop(unresolvable, None)
    config = OmegaConf.to_container(OmegaConf.create(config), resolve=True)
    checkpoint = cfg.model.get("checkpoint")
    inputs = [fingerprint("checkpoint", checkpoint, content_hash=True)] if checkpoint else []
    code = str(env["git_commit"]) + ("+dirty" if env.get("git_dirty") else "")
    method = recorded_method(cfg)
    patched = repshift.is_patched(model)
    return RunRecord(
        identity=Identity.of(config, inputs, str(device), code),
        experiment=EXPERIMENT,
        run_name=_run_name(cfg),
        method=method,
        model={"name": model_name, "arch": cfg.model.name, "family": model.repshift.family if patched else None},
        metric=cfg.metric,
        metric_resolved=model.repshift.metric if patched else None,
        site=cfg.site,
        reading=cfg.reading,
        attention=cfg.attention,
        compress=config["compress"] if compresses(cfg) else None,
        weights=measured["weights"],
        evaluator=cfg.dataset.evaluator,
        dataset=measured["dataset"],
        metrics=measured["metrics"],
        bench=timing,
        gmacs=measured["gmacs"],
        tokens=measured["tokens"],
        config=config,
        env=env,
    )


def table(output_dir: Path) -> str:
    """The merging table of every valid record under ``output_dir/merging``, as markdown (also written to
    ``output_dir/tables/merging.md`` and ``.csv``); files it could not read are named on stderr."""
    from repshift.report.merging_table import merging_table
    from repshift.report.tables import render, write

    found = scan(output_dir / EXPERIMENT, EXPERIMENT)
    for problem in found.problems:
        print(f"skipped {problem.path}: {problem.reason}", file=sys.stderr)
    frame = merging_table([record for _, record in found.records])
    write(EXPERIMENT, frame, output_dir / "tables")
    return render(EXPERIMENT, frame)[0]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of experiment=merging (model=deit_s ...)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--table-only", action="store_true", help="only print the table of the records already written")
    what.add_argument("--no-table", action="store_true", help="only run (make runs several models, then the table)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    output_dir = Path(compose([f"experiment={EXPERIMENT}", *args.overrides]).paths.output_dir)
    if not args.table_only:
        run(args.overrides)
    if not args.no_table:
        print(table(output_dir), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
