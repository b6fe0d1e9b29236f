"""The Hydra entry point: one run = one model, one compression setting, one result.json.

    python -m repshift.run model=deit_s dataset=imagenet metric=l2 site=mlp
    python -m repshift.run -m experiment=table5 hydra/launcher=slurm
    torchrun --nproc_per_node=4 -m repshift.run experiment=table5 model=deit_b method=ours

The run folder is named from the command-line overrides, so re-running a sweep finds finished
runs and skips them (``force=true`` re-runs); result.json is written last and atomically.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

import hydra
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import repshift
from repshift import provenance, scores, tasks
from repshift import distributed
from repshift.models import build_model
from repshift.report import results
from repshift.report.wandb_logger import NullLogger

log = logging.getLogger("repshift.run")


def run_name(override_dirname: str = "") -> str:
    """A folder name from the overrides: stable across relaunches, safe as one path component."""
    name = re.sub(r"[^A-Za-z0-9=,.+_\-\[\]]", "_", override_dirname) or "defaults"
    if len(name) > 180:
        name = f"{name[:160]}-{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    return name


OmegaConf.register_new_resolver("run_name", run_name, replace=True)
# The launch directory, usable before Hydra is set up (sweep folders resolve that early).
OmegaConf.register_new_resolver("cwd", os.getcwd, replace=True)


def method_name(cfg: DictConfig) -> str:
    """The table row a run belongs to: the method config's name, or derived from what the run does."""
    if cfg.method.name:
        return str(cfg.method.name)
    if not compresses(cfg):
        return "base"
    metric = cfg.metric
    if metric in scores.ATTENTION_METRICS:
        return "attn" if cfg.attention == "eager" else "attn+sdpa"
    if metric == "random":
        return "random"
    if metric == "none":
        return "static"
    if metric == "top_vim":
        return "top-vim"
    return "ours" if (metric, cfg.site) == ("l2", "mlp") else f"{metric}-{cfg.site}"


def method_record(cfg: DictConfig) -> dict:
    """``{name, label}`` of the run's table row; a non-default reading of a shift score is part of both."""
    name, label = method_name(cfg), str(cfg.method.label or method_name(cfg))
    if compresses(cfg) and cfg.metric in scores.SHIFT_METRICS and cfg.reading != "literal":
        name, label = f"{name}@{cfg.reading}", f"{label} ({cfg.reading} reading)"
    return {"name": name, "label": label}


def compresses(cfg: DictConfig) -> bool:
    c = cfg.compress
    return bool(c.layers) and bool(c.ratio or c.num)


#: Model families whose adapter merges tokens (``compress.mode=merge``, vid-TLDR).
MERGE_FAMILIES = ("umt", "umt_qa")


def check_merge_host(cfg: DictConfig) -> None:
    """Say plainly that merging is for UMT, before the vid-TLDR schedule lookup (by ``model.size``) fails on
    another model with an interpolation error."""
    if cfg.compress.get("mode") == "merge" and cfg.model.get("family") not in MERGE_FAMILIES:
        raise ValueError(
            f"compress.mode=merge (vid-TLDR token merging, method={cfg.method.name}) applies to UMT models "
            f"(model.family in {MERGE_FAMILIES}); model={cfg.model.name} is not one: use model=umt_b or umt_l"
        )


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} asked for, but torch sees no CUDA device (use device=auto or cpu)")
    return device


def compress_model(model, cfg: DictConfig):
    """Apply the configured pruning and attention backend; a plain sdpa Base stays the model's own forward."""
    if not compresses(cfg) and cfg.attention == "sdpa":
        return model
    c = cfg.compress
    try:
        repshift.patch(
            model,
            metric=cfg.metric,
            site=cfg.site,
            layers=tuple(c.layers) if compresses(cfg) else (),
            ratio=c.ratio if c.num is None else None,
            num=c.num,
            attention=cfg.attention,
            seed=cfg.seed,
            keep=c.keep,
            reading=cfg.reading,
            mode=c.get("mode", "sequence"),
            proportional=c.get("proportional", True),  # mode=merge: proportional attention (compress=vid_tldr)
        )
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"cannot apply compress={OmegaConf.to_container(c)} metric={cfg.metric} site={cfg.site} "
            f"reading={cfg.reading} "
            f"attention={cfg.attention} to model={cfg.model.name}: {error}"
        ) from error
    return model


@hydra.main(version_base="1.3", config_path="pkg://repshift.configs", config_name="run")
def main(cfg: DictConfig) -> dict | None:
    todo = tasks.parse_tasks(cfg.task)
    check_merge_host(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if results.is_finished(run_dir) and not cfg.force:
        log.info("skipping %s: result.json exists (force=true re-runs it)", run_dir)
        return results.read_result(run_dir / "result.json")

    rank, world, local_rank = distributed.init_from_env()
    device = resolve_device(cfg.device, local_rank)
    torch.manual_seed(cfg.seed)
    config = OmegaConf.to_container(cfg, resolve=True)
    logger = instantiate(cfg.logger) if rank == 0 else NullLogger()
    try:
        logger.start(config)
        result = execute(cfg, todo, device, rank, world, logger)
        result.update(config=config, env=provenance.environment())
        if rank == 0:
            path = results.write_result(run_dir, result)
            log.info("wrote %s", path)
            metrics = _flat_metrics(result)
            logger.log_metrics(metrics)
            logger.log_table("result", pd.DataFrame([{"method": result["method"]["label"], **metrics}]))
        return result
    finally:
        logger.finish()
        distributed.cleanup()


def execute(cfg: DictConfig, todo: list[str], device: torch.device, rank: int, world: int, logger) -> dict:
    """Build, load weights, compress, then train / evaluate / bench as asked; returns the result fields."""
    if "train" in todo:
        tasks.check_train_output(cfg)
    model, weights = build_model(OmegaConf.to_container(cfg.model, resolve=True))
    model.to(device).eval()
    evaluator = tasks.evaluator_of(cfg, model) if "evaluate" in todo else None
    compress_model(model, cfg)
    result: dict = {
        "schema": results.SCHEMA,
        "experiment": cfg.experiment_name,
        "run_name": HydraConfig.get().runtime.output_dir.rstrip("/").rsplit("/", 1)[-1],
        "method": method_record(cfg),
        "model": {"name": HydraConfig.get().runtime.choices.get("model"), "arch": cfg.model.name,
                  "family": model.repshift.family if repshift.is_patched(model) else None},
        "metric": cfg.metric,
        "metric_resolved": model.repshift.metric if repshift.is_patched(model) else None,
        "site": cfg.site,
        "reading": cfg.reading,
        "attention": cfg.attention,
        "compress": OmegaConf.to_container(cfg.compress, resolve=True) if compresses(cfg) else None,
        "weights": weights,
        "world_size": world,
    }
    if "train" in todo:
        result["train"] = tasks.run_train(model, cfg, device, lambda entry: _log_epoch(entry, logger))
        result["weights"] = {"real": True, "source": f"trained-here:{result['train']['checkpoint']}",
                             "initial": weights}
    if evaluator is not None:
        result["evaluator"] = cfg.dataset.evaluator
        result["dataset"], result["metrics"] = evaluator.run(model, cfg, device)
    if "bench" in todo and rank == 0:
        result["bench"], result["gmacs"] = tasks.run_bench(model, cfg, device)
    if repshift.is_patched(model):
        result["tokens"] = list(model.repshift.tokens)
    return result


def _log_epoch(entry: dict, logger) -> None:
    log.info("epoch %d: train loss %.4f, val top-1 %s, lr %.2e", entry["epoch"], entry["train_loss"],
             "-" if entry["val_top1"] is None else f"{entry['val_top1']:.2f}", entry["lr"])
    logger.log_metrics({f"train/{k}": v for k, v in entry.items() if v is not None})


def _flat_metrics(result: dict) -> dict:
    flat = {f"metrics/{k}": v for k, v in (result.get("metrics") or {}).items()}
    if "bench" in result:
        flat["bench/throughput"] = result["bench"]["throughput"]
        flat["gmacs"] = result["gmacs"]
    return flat


if __name__ == "__main__":
    main()
