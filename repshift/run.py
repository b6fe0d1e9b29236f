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
from timm.layers import Attention

import repshift
from repshift import bench, scores
from repshift.data.build import build_dataset, describe_dataset
from repshift.evaluate import distributed
from repshift.evaluate.classification import evaluate
from repshift.models import build_model
from repshift.report import results
from repshift.report.wandb_logger import NullLogger
from repshift.train import train

log = logging.getLogger("repshift.run")

TASKS = ("train", "evaluate", "bench")


def run_name(override_dirname: str = "") -> str:
    """A folder name from the overrides: stable across relaunches, safe as one path component."""
    name = re.sub(r"[^A-Za-z0-9=,.+_\-\[\]]", "_", override_dirname) or "defaults"
    if len(name) > 180:
        name = f"{name[:160]}-{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    return name


OmegaConf.register_new_resolver("run_name", run_name, replace=True)
# The launch directory, usable before Hydra is set up (sweep folders resolve that early).
OmegaConf.register_new_resolver("cwd", os.getcwd, replace=True)


def method_label(cfg: DictConfig) -> str:
    """The table row a run belongs to, from what it actually does."""
    if cfg.label:
        return str(cfg.label)
    if not compresses(cfg):
        return "base"
    metric = cfg.metric.name
    if metric in scores.ATTENTION_METRICS:
        return "attn" if cfg.attention.name == "eager" else "attn+sdpa"
    if metric == "random":
        return "random"
    if metric == "none":
        return "static"
    return "ours" if (metric, cfg.site.name) == ("l2", "mlp") else f"{metric}-{cfg.site.name}"


def compresses(cfg: DictConfig) -> bool:
    c = cfg.compress
    return bool(c.layers) and bool(c.ratio or c.num)


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} asked for, but torch sees no CUDA device (use device=auto or cpu)")
    return device


def compress_model(model, cfg: DictConfig):
    """Apply the configured pruning and attention backend; a plain sdpa Base stays timm's own model."""
    metric = cfg.metric.name
    if metric in scores.ATTENTION_METRICS and not any(isinstance(m, Attention) for m in model.modules()):
        raise ValueError(
            f"metric={metric} needs attention maps, but model={cfg.model.name} has no attention; "
            "choose a representation-shift metric (metric=l2, l1 or cos)"
        )
    if not compresses(cfg) and cfg.attention.name == "sdpa":
        return model
    c = cfg.compress
    try:
        repshift.patch(
            model,
            metric=metric,
            site=cfg.site.name,
            layers=tuple(c.layers) if compresses(cfg) else (),
            ratio=c.ratio if c.num is None else None,
            num=c.num,
            attention=cfg.attention.name,
            seed=cfg.seed,
            keep=c.keep,
        )
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"cannot apply compress={OmegaConf.to_container(c)} metric={metric} site={cfg.site.name} "
            f"attention={cfg.attention.name} to model={cfg.model.name}: {error}"
        ) from error
    return model


def run_bench(model, cfg: DictConfig, device: torch.device) -> dict:
    settings = cfg.bench if device.type == "cuda" else cfg.bench.cpu
    return bench.throughput(
        model,
        batch_size=settings.batch_size,
        input_size=tuple(cfg.bench.input_size),
        device=device,
        amp_dtype=cfg.bench.amp_dtype if device.type == "cuda" else None,
        warmup=settings.warmup,
        iters=settings.iters,
        repeats=settings.repeats,
        progress=cfg.progress,
    )


@hydra.main(version_base="1.3", config_path="../configs", config_name="run")
def main(cfg: DictConfig) -> dict | None:
    tasks = list(cfg.task) if not isinstance(cfg.task, str) else [cfg.task]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"task={tasks}: unknown {unknown}; expected a list drawn from {list(TASKS)}")
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
        result = execute(cfg, tasks, device, rank, world, logger)
        result.update(experiment=cfg.experiment_name, run_name=run_dir.name, config=config, env=results.environment())
        if rank == 0:
            path = results.write_result(run_dir, result)
            log.info("wrote %s", path)
            metrics = _flat_metrics(result)
            logger.log_metrics(metrics)
            logger.log_table("result", pd.DataFrame([{"method": result["method"], **metrics}]))
        return result
    finally:
        logger.finish()
        distributed.cleanup()


def execute(cfg: DictConfig, tasks: list[str], device: torch.device, rank: int, world: int, logger) -> dict:
    """Build, (train,) compress, evaluate and benchmark as the config says; returns result fields."""
    training = "train" in tasks
    model, weights = build_model(
        cfg.model.name,
        pretrained=cfg.model.pretrained and not training,
        checkpoint=None if training else cfg.model.checkpoint,
        kwargs=OmegaConf.to_container(cfg.model.kwargs),
    )
    model.to(device).eval()
    result: dict = {
        "method": method_label(cfg),
        "model": {"name": HydraConfig.get().runtime.choices.get("model"), "timm_name": cfg.model.name},
        "metric": cfg.metric.name,
        "site": cfg.site.name,
        "attention": cfg.attention.name,
        "compress": OmegaConf.to_container(cfg.compress) if compresses(cfg) else None,
        "weights": weights,
        "world_size": world,
    }
    if training:
        result["train"] = train_model(model, cfg, device, logger)
        result["weights"] = {"real": True, "source": f"trained-here:{cfg.model.checkpoint}"}
    compress_model(model, cfg)
    if repshift.is_patched(model):
        result["metric_resolved"] = model.repshift.metric
    if "evaluate" in tasks:
        dataset = build_dataset(cfg.dataset, split=cfg.dataset.split)
        result["dataset"] = describe_dataset(cfg.dataset, dataset)
        result["metrics"] = evaluate(
            model,
            dataset,
            batch_size=cfg.dataset.batch_size,
            num_workers=cfg.dataset.num_workers,
            device=device,
            amp_dtype=bench.AMP_DTYPES[cfg.bench.amp_dtype] if device.type == "cuda" else None,
            progress=cfg.progress,
        )
        log.info("top-1 %.2f  top-5 %.2f  (n=%d, skipped=%d)", *(result["metrics"][k] for k in ("top1", "top5", "n", "skipped")))
    if "bench" in tasks and rank == 0:
        result["bench"] = run_bench(model, cfg, device)
        result["gmacs"] = bench.count_gmacs(model, tuple(cfg.bench.input_size))
        log.info("%.1f img/s on %s (%s), %.2f GMACs", result["bench"]["img_per_s"], result["bench"]["device"],
                 ",".join(result["bench"]["kernel"]), result["gmacs"])
    if repshift.is_patched(model):
        result["tokens"] = list(model.repshift.tokens)
    return result


def train_model(model, cfg: DictConfig, device: torch.device, logger) -> dict:
    if not cfg.model.checkpoint:
        raise ValueError("task=train needs model.checkpoint=<path> (where the trained weights are written)")
    checkpoint = Path(cfg.model.checkpoint)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    t = cfg.train
    summary = train(
        model,
        build_dataset(cfg.dataset, split="train", training=True),
        build_dataset(cfg.dataset, split=cfg.dataset.split),
        epochs=t.epochs,
        batch_size=t.batch_size,
        lr=t.lr,
        weight_decay=t.weight_decay,
        warmup_epochs=t.warmup_epochs,
        label_smoothing=t.label_smoothing,
        num_workers=cfg.dataset.num_workers,
        device=device,
        seed=cfg.seed,
        ckpt_path=checkpoint,
        progress=cfg.progress,
        log=lambda entry: _log_epoch(entry, logger),
    )
    model.eval()
    return {"history": summary["history"], "checkpoint": str(checkpoint)}


def _log_epoch(entry: dict, logger) -> None:
    log.info("epoch %d: train loss %.4f, val top-1 %s, lr %.2e", entry["epoch"], entry["train_loss"],
             "-" if entry["val_top1"] is None else f"{entry['val_top1']:.2f}", entry["lr"])
    logger.log_metrics({f"train/{k}": v for k, v in entry.items() if v is not None})


def _flat_metrics(result: dict) -> dict:
    flat = {f"metrics/{k}": v for k, v in (result.get("metrics") or {}).items()}
    if "bench" in result:
        flat["bench/img_per_s"] = result["bench"]["img_per_s"]
        flat["gmacs"] = result["gmacs"]
    return flat


if __name__ == "__main__":
    main()
