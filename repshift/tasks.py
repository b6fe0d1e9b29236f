"""What ``task=[...]`` can ask a run to do, each piece returning named result fields.

- ``train``: fine-tune the model as built, loaded and compressed (so pruning can be on while it
  learns) on the dataset's train split with the recipe in ``train.*`` (every key but ``output`` is
  an argument of :func:`repshift.train.train`); the checkpoint goes to ``train.output`` (never the
  input ``model.checkpoint``) after every epoch and a rerun resumes from it.
- ``evaluate``: the dataset's evaluator (``dataset.evaluator``): ``classification`` (top-1/top-5)
  or ``retrieval`` (video-text R@1/5/10 both ways and their harmonic means, UMT's ITM-re-ranked
  ranking, plus the embedding-only one as ``emb_*``) or ``qa`` (video question answering by UMT's
  answer-list ranking, exact-match accuracy; the per-question predictions go to ``predictions.json``
  beside ``result.json``). An evaluator states what it needs from the model, so asking a model for a
  task it cannot serve fails before any data is read.
- ``bench``: throughput on random input of the model's ``input_size``, in the model's ``unit``,
  and GMACs of one sample, of the part of the model that pruning changes: the whole model, or the
  vision encoder of a video-text retrieval or QA model (the text side is not pruned; the paper and
  vid-TLDR time and count the encoder). The record says which part.

The runner (:mod:`repshift.run`) runs them in the order of :data:`TASKS`, whatever the order of
the list. This module reads the run config the runner hands it (the runner side is :mod:`repshift.run`,
:mod:`repshift.settings`, :mod:`repshift.identity` and this module: nothing else reads a run config).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf

import repshift.bench as bench
from repshift.data.build import build_dataset, describe_dataset
import repshift.distributed as distributed
from repshift.evaluate.classification import evaluate as evaluate_classification
from repshift.evaluate.qa import QA_METHODS, evaluate_qa
from repshift.evaluate.qa import format_metrics as format_qa
from repshift.evaluate.retrieval import evaluate_retrieval, format_metrics
from repshift.io import atomic_open
from repshift.train import train

log = logging.getLogger("repshift.run")

TASKS = ("train", "evaluate", "bench")


@dataclass(frozen=True)
class Evaluator:
    """One way to evaluate: what it needs from the model and how it runs."""

    needs: str  # shown when a model cannot serve it
    serves: Callable[[torch.nn.Module], bool]
    #: (model, run config, device, run folder) -> (dataset info, metrics)
    run: Callable[[torch.nn.Module, DictConfig, torch.device, Path], tuple[dict, dict]]


def _loader_settings(cfg: DictConfig, device: torch.device) -> dict:
    """What every evaluator takes from the run: loader batch and workers, device, precision (the bench config's
    AMP dtype on CUDA, fp32 elsewhere) and progress bars."""
    return dict(
        batch_size=cfg.dataset.batch_size,
        num_workers=cfg.dataset.num_workers,
        device=device,
        amp_dtype=bench.AMP_DTYPES[cfg.bench.amp_dtype] if device.type == "cuda" else None,
        progress=cfg.progress,
    )


def _classification(model, cfg: DictConfig, device: torch.device, run_dir: Path) -> tuple[dict, dict]:
    dataset = build_dataset(cfg.dataset, split=cfg.dataset.split)
    metrics = evaluate_classification(model, dataset, **_loader_settings(cfg, device))
    top5 = "-" if metrics["top5"] is None else f"{metrics['top5']:.2f}"  # None: fewer than 5 classes
    log.info("top-1 %.2f  top-5 %s  (n=%d, skipped=%d)", metrics["top1"], top5, metrics["n"], metrics["skipped"])
    return describe_dataset(cfg.dataset, dataset), metrics


#: What :func:`repshift.evaluate.retrieval.evaluate_retrieval` calls on a model.
RETRIEVAL_METHODS = ("encode_video", "encode_text", "itm_scores", "tokenize")


def _retrieval(model, cfg: DictConfig, device: torch.device, run_dir: Path) -> tuple[dict, dict]:
    """UMT's evaluation: ITM re-ranking of the top-k ITC candidates (``dataset.itm=false``: embedding only).

    Metrics: the reported ranking's ``t2v_r1 ... hm_r10`` (``hm_rK`` = harmonic mean of T2V and V2T,
    what the paper's Table 2 shows), the embedding-only ranking's as ``emb_*``, and the counts.
    """
    dataset = build_dataset(cfg.dataset, split=cfg.dataset.split)
    itm = bool(cfg.dataset.get("itm", True))
    out = evaluate_retrieval(
        model,
        dataset,
        k_test=cfg.dataset.k_test,
        itm=itm,
        **_loader_settings(cfg, device),
    )
    ranking = "itm" if itm else "emb"
    metrics = {**out[ranking], **{f"emb_{k}": v for k, v in out["emb"].items()}}
    metrics.update({k: out[k] for k in ("n_videos", "n_texts", "skipped_videos", "skipped_texts", "k_test")})
    log.info("%s ranking: %s  (videos=%d, texts=%d, skipped videos=%d)", ranking, format_metrics(out[ranking]),
             out["n_videos"], out["n_texts"], out["skipped_videos"])
    described = describe_dataset(cfg.dataset, dataset)
    described["ranking"] = {"name": ranking, "description": out["rankings"][ranking]}
    return described, metrics


#: Where the QA evaluator writes the per-question predictions, beside result.json.
PREDICTIONS_FILE = "predictions.json"


def _qa(model, cfg: DictConfig, device: torch.device, run_dir: Path) -> tuple[dict, dict]:
    """UMT's QA evaluation: exact-match accuracy (``acc``, %) of the answer ranked first, and the counts.

    The per-question predictions are written (rank 0, atomically) to ``predictions.json`` in the run folder, and
    the dataset record names that file.
    """
    dataset = build_dataset(cfg.dataset, split=cfg.dataset.split)
    out = evaluate_qa(
        model,
        dataset,
        k_test=cfg.dataset.k_test,
        **_loader_settings(cfg, device),
    )
    predictions = out.pop("predictions")
    log.info("QA %s", format_qa(out))
    described = describe_dataset(cfg.dataset, dataset)
    if distributed.is_main():
        with atomic_open(run_dir / PREDICTIONS_FILE) as fh:
            json.dump(predictions, fh, indent=1)
    described["predictions"] = PREDICTIONS_FILE
    return described, out


EVALUATORS: dict[str, Evaluator] = {
    "classification": Evaluator(
        needs="class logits (an image classifier with num_classes > 0)",
        serves=lambda model: getattr(model, "num_classes", 0) > 0,
        run=_classification,
    ),
    "retrieval": Evaluator(
        needs="a video-text retrieval model (" + ", ".join(RETRIEVAL_METHODS) + "), e.g. model=umt_b with "
        "model.part=retrieval",
        serves=lambda model: all(callable(getattr(model, m, None)) for m in RETRIEVAL_METHODS),
        run=_retrieval,
    ),
    "qa": Evaluator(
        needs="a video QA model (" + ", ".join(QA_METHODS) + "), e.g. model=umt_b_qa",
        serves=lambda model: all(callable(getattr(model, m, None)) for m in QA_METHODS),
        run=_qa,
    ),
}


def parse_tasks(task) -> list[str]:
    """The configured tasks in the order they run; unknown names are a clear error."""
    tasks = [task] if isinstance(task, str) else list(task)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"task={tasks}: unknown {unknown}; expected a list drawn from {list(TASKS)}")
    return [t for t in TASKS if t in tasks]


def evaluator_of(cfg: DictConfig, model) -> Evaluator:
    """The evaluator the dataset asks for, after checking that the model can serve it."""
    name = cfg.dataset.get("evaluator")
    if name not in EVALUATORS:
        raise ValueError(f"dataset.evaluator={name} is unknown; expected one of {sorted(EVALUATORS)}")
    evaluator = EVALUATORS[name]
    if not evaluator.serves(model):
        raise ValueError(
            f"task=evaluate on dataset={cfg.dataset.name} runs the {name} evaluator, which needs {evaluator.needs}; "
            f"model={cfg.model.name} ({type(model).__name__}) does not provide it"
        )
    return evaluator




def check_train_output(cfg: DictConfig) -> None:
    output = Path(cfg.train.output)
    if cfg.model.checkpoint and output.resolve() == Path(cfg.model.checkpoint).resolve():
        raise ValueError(f"train.output={output} is also model.checkpoint: training must not overwrite its input")


def run_train(model, cfg: DictConfig, device: torch.device, log_epoch: Callable[[dict], None]) -> dict:
    """Train as ``train.*`` says; an existing ``train.output`` is resumed (``force=true`` moved it aside first)."""
    output = Path(cfg.train.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.exists():
        log.info("train.output=%s exists: training resumes from it (force=true starts over)", output)
    recipe = {k: v for k, v in OmegaConf.to_container(cfg.train, resolve=True).items() if k != "output"}
    summary = train(
        model,
        build_dataset(cfg.dataset, split="train", training=True),
        build_dataset(cfg.dataset, split=cfg.dataset.split),
        **recipe,
        num_workers=cfg.dataset.num_workers,
        device=device,
        seed=cfg.seed,
        ckpt_path=output,
        progress=cfg.progress,
        log=log_epoch,
    )
    model.eval()
    if summary["resumed_from"]:
        log.info("training resumed from %s after epoch %s of %s", output, summary["resumed_from"], cfg.train.epochs)
    return {"history": summary["history"], "checkpoint": str(output), "resumed_from": summary["resumed_from"]}


def bench_part(model) -> tuple[torch.nn.Module, str]:
    """``(module, what it is)``: what bench times and counts, the part of the model that pruning changes."""
    video_text = any(all(callable(getattr(model, m, None)) for m in methods)
                     for methods in (RETRIEVAL_METHODS, QA_METHODS))
    if video_text and hasattr(model, "vision"):
        return model.vision, "vision encoder"
    return model, f"whole model ({type(model).__name__.removeprefix('RepShift')})"


def run_bench(model, cfg: DictConfig, device: torch.device) -> tuple[dict, float]:
    """``(throughput record, GMACs of one sample)``; CPU runs use fp32 and the ``bench.cpu`` settings;
    ``bench.compile=true`` times the model compiled (``repshift.bench.compiled``).

    The record's ``part`` says what was timed and counted (:func:`bench_part`).
    """
    settings = cfg.bench if device.type == "cuda" else cfg.bench.cpu
    input_size = tuple(cfg.model.input_size)
    model, part = bench_part(model)
    record = bench.throughput(
        model,
        batch_size=settings.batch_size,
        input_size=input_size,
        device=device,
        amp_dtype=cfg.bench.amp_dtype if device.type == "cuda" else None,
        unit=cfg.model.unit,
        warmup=settings.warmup,
        iters=settings.iters,
        repeats=settings.repeats,
        progress=cfg.progress,
        compile=cfg.bench.get("compile", False),
    )
    record["part"] = part
    gmacs = bench.count_gmacs(model, input_size)
    log.info("%s: %.1f %s on %s (%s), %.2f GMACs", part, record["throughput"], record["unit"], record["device"],
             ",".join(record["kernel"]), gmacs)
    return record, gmacs
