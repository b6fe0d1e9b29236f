"""The training task: resumable classifier training with a per-step warmup + cosine schedule.

Used for the tiny ViT on ShapeBench (and later ResNet fine-tuning). Single process.
"""

from __future__ import annotations

import math
import os
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from repshift.evaluate.classification import collate_image_label, evaluate
from repshift.io import atomic_open

__all__ = ["train", "warmup_cosine", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "repshift.train/1"


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier at optimizer step ``step`` (0-based).

    Linear warmup ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps
    (so the very first step does not use lr 0), then cosine decay from 1 to 0 over
    the remaining ``total_steps - warmup_steps`` steps.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / decay)
    return 0.5 * (1.0 + math.cos(math.pi * t))


def _rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # numpy's state holds an ndarray; store plain ints so weights_only loading works
        "numpy": _np_state_to_plain(np.random.get_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _np_state_to_plain(st) -> tuple:
    return (st[0], [int(v) for v in st[1]], int(st[2]), int(st[3]), float(st[4]))


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuple(state["python"]))
    st = state["numpy"]
    np.random.set_state((st[0], np.asarray(st[1], dtype=np.uint32), st[2], st[3], st[4]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def train(
    model: nn.Module,
    train_set,
    val_set=None,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    warmup_epochs: float = 1,
    label_smoothing: float = 0.1,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    seed: int = 0,
    ckpt_path: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[[dict], Any] | None = None,
) -> dict:
    """Train ``model`` (in place) for ``epochs`` epochs; resumable from ``ckpt_path``.

    - Data: ``train_set[i]`` returns ``(image, label, *extras)``; extras (masks) are
      ignored, samples with label ``-1`` (skipped corrupt images) are excluded from the
      loss (a batch with none left makes no optimizer step). Shuffling uses a
      ``torch.Generator`` seeded from ``(seed, epoch)``, so the order of epoch ``e`` is
      the same whether or not the run was resumed.
    - Optimisation: AdamW(``lr``, ``weight_decay``), ``CrossEntropyLoss(label_smoothing)``,
      LambdaLR stepped every batch: linear warmup over ``warmup_epochs`` epochs, then
      cosine decay to 0 at the end of ``epochs`` (:func:`warmup_cosine`).
    - Determinism: a fresh run seeds torch, numpy and ``random`` with ``seed``; a resumed
      run restores the RNG states saved in the checkpoint instead.
    - Per epoch: a tqdm bar (running loss and lr; ``progress=False`` hides it), then
      ``val_set`` is evaluated with :func:`repshift.evaluate.classification.evaluate`,
      then ``log(entry)`` is called with the epoch's history entry, then the checkpoint
      is written. (Logging comes first, so an epoch whose logging failed is redone.)
    - Checkpoint: written atomically (temp file + ``os.replace``) to ``ckpt_path`` after
      every epoch: ``{"format", "model", "optimizer", "scheduler", "epoch" (completed
      epochs), "epochs", "history", "rng", "seed"}``. If ``ckpt_path`` exists at start,
      training resumes at the next epoch (returning at once if ``epoch >= epochs``),
      so a killed run loses at most one epoch. Resuming with a different ``epochs``
      continues with the schedule recomputed for the new length.

    A history entry is ``{"epoch" (1-based), "train_loss", "val_top1", "val_top5",
    "lr" (at the end of the epoch), "n_train", "skipped", "time_s"}`` (val fields None
    without ``val_set``). Returns ``{"history", "epoch", "epochs", "resumed_from",
    "ckpt_path"}`` where ``resumed_from`` is the number of epochs already done at start.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    device = torch.device(device)
    ckpt = Path(ckpt_path) if ckpt_path is not None else None
    model.to(device)

    g = torch.Generator()
    loader = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=True,
        generator=g,
        num_workers=num_workers,
        collate_fn=collate_image_label,
        pin_memory=device.type == "cuda",
        drop_last=False,
    )
    steps_per_epoch = max(1, len(loader))
    total_steps = epochs * steps_per_epoch
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))

    def lr_lambda(step: int) -> float:
        return warmup_cosine(step, warmup_steps, total_steps)

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    history: list[dict] = []
    start_epoch = 0
    if ckpt is not None and ckpt.exists():
        state = _load(ckpt)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise ValueError(
                f"cannot resume from {ckpt}: it holds a different model (trained with other settings?). "
                f"Delete it or choose another checkpoint path. {e}"
            ) from e
        history = list(state.get("history", []))
        start_epoch = int(state["epoch"])
        if start_epoch >= epochs:
            return {
                "history": history,
                "epoch": start_epoch,
                "epochs": epochs,
                "resumed_from": start_epoch,
                "ckpt_path": str(ckpt),
            }
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        # the schedule may have changed length (different `epochs`): recompute current lr
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * lr_lambda(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
        _set_rng_state(state["rng"])
    else:
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)

    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        g.manual_seed(seed * 100_003 + epoch)
        model.train()
        loss_sum, n_seen, n_skipped = 0.0, 0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress)
        for images, targets in bar:
            valid = targets >= 0
            n_valid = int(valid.sum())
            n_skipped += len(targets) - n_valid
            if n_valid:
                images = images[valid].to(device, non_blocking=True)
                targets = targets[valid].to(device, non_blocking=True)
                out = model(images)
                if isinstance(out, (tuple, list)):
                    out = out[0]
                loss = criterion(out, targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * n_valid
                n_seen += n_valid
            with warnings.catch_warnings():
                # a batch of only skipped samples makes no optimizer step; keep the schedule anyway
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
                scheduler.step()
            bar.set_postfix(
                loss=f"{loss_sum / n_seen:.4f}" if n_seen else "nan",
                lr=f"{optimizer.param_groups[0]['lr']:.2e}",
            )
        bar.close()

        entry: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / n_seen if n_seen else math.nan,
            "val_top1": None,
            "val_top5": None,
            "lr": optimizer.param_groups[0]["lr"],
            "n_train": n_seen,
            "skipped": n_skipped,
        }
        if val_set is not None:
            res = evaluate(
                model,
                val_set,
                batch_size=batch_size,
                num_workers=num_workers,
                device=device,
                progress=progress,
                desc=f"val {epoch + 1}/{epochs}",
            )
            entry["val_top1"], entry["val_top5"] = res["top1"], res["top5"]
        entry["time_s"] = time.perf_counter() - t0
        history.append(entry)
        if log is not None:
            log(dict(entry))
        if ckpt is not None:
            with atomic_open(ckpt, "wb") as fh:
                torch.save(
                    {
                        "format": CHECKPOINT_FORMAT,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch + 1,
                        "epochs": epochs,
                        "history": history,
                        "rng": _rng_state(),
                        "seed": seed,
                    },
                    fh,
                )

    return {
        "history": history,
        "epoch": epochs if epochs > start_epoch else start_epoch,
        "epochs": epochs,
        "resumed_from": start_epoch,
        "ckpt_path": str(ckpt) if ckpt is not None else None,
    }
