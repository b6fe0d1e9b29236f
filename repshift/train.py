"""The training task: resumable classifier training, single process or DDP under torchrun.

Two recipes share one loop:

- the default (``sched="warmup_cosine"``, ``opt="adamw"``): a per-step linear warmup then cosine
  decay to 0 (:func:`warmup_cosine`), what the tiny ShapeBench ViT is trained with;
- any timm scheduler (``sched="cosine"``, ``"step"``, ...) through ``timm.scheduler.create_scheduler_v2``,
  stepped per update, with ``cooldown_epochs`` at ``min_lr`` at the end: the paper's ResNet
  fine-tuning (100 epochs, the last 10 of them cooldown) is ``epochs=100, cooldown_epochs=10``.

The optimizer always comes from ``timm.optim.create_optimizer_v2``; mixup / cutmix from
``timm.data.Mixup`` (with timm's soft-target cross-entropy). AMP runs on CUDA only.

Three parts, composed by :func:`train`: :func:`set_up` (model wrapping, optimizer, schedule, loss, AMP),
:class:`TrainingCheckpoint` (where a run stands, written after every epoch and read to resume) and
:func:`train_epoch` (one pass over the data, which may stop mid-epoch at a requeue signal).
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

import repshift.distributed as distributed
from repshift.checkpoints import load_checkpoint
from repshift.evaluate.classification import check_num_classes, collate_image_label, evaluate
from repshift.io import atomic_open

__all__ = ["train", "set_up", "train_epoch", "TrainingCheckpoint", "Position", "warmup_cosine", "CHECKPOINT_FORMAT",
           "REQUEUE_SIGNALS"]

logger = logging.getLogger("repshift.train")

CHECKPOINT_FORMAT = "repshift.train/1"
#: Signals a cluster sends before it stops a job (SLURM ``--signal``, submitit's timeout signal,
#: preemption's SIGTERM). On one, a checkpoint of the exact step is written before the signal goes on.
REQUEUE_SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGTERM")
_AMP = {"float16": torch.float16, "bfloat16": torch.bfloat16}


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


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


class EpochOrder(Sampler):
    """This rank's share of epoch ``epoch``'s shuffled order, from its ``skip``-th sample on.

    The order is ``randperm(n)`` seeded with ``(seed, epoch)``, padded by wrapping to a multiple of
    ``world`` and dealt out rank by rank, so it is the same whether or not a run was resumed, and
    a run stopped mid-epoch continues with exactly the batches it had not seen.
    """

    def __init__(self, n: int, *, seed: int, epoch: int, rank: int = 0, world: int = 1, skip: int = 0):
        self.n, self.seed, self.epoch, self.rank, self.world, self.skip = n, seed, epoch, rank, world, skip

    def _share(self) -> list[int]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        order = order.tolist()
        padded = order + order[: (-len(order)) % self.world]
        return padded[self.rank :: self.world]

    def __iter__(self):
        return iter(self._share()[self.skip :])

    def __len__(self) -> int:
        return max(0, math.ceil(self.n / self.world) - self.skip)


class _StopRequest:
    """Catches the requeue signals during training; :meth:`deliver` passes each on once a checkpoint is safe."""

    def __init__(self, names: Sequence[str]):
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}
        for name in names:
            if not hasattr(signal, name):
                raise ValueError(f"requeue_signals: {name!r} is not a signal on this platform")
        self.signals = [getattr(signal, name) for name in names]

    def __enter__(self):
        if self.signals and _main_thread():
            for signum in self.signals:
                self.previous[signum] = signal.signal(signum, self._catch)
        return self

    def _catch(self, signum, frame) -> None:
        self.signum = signum

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def __exit__(self, *exc) -> None:
        self.restore()

    def deliver(self) -> None:
        """Pass the caught signal to whoever handled it before (submitit requeues, the default stops)."""
        signum, self.signum = self.signum, None
        handlers = dict(self.previous)
        self.restore()
        signal.raise_signal(signum)
        if signum == signal.SIGTERM:
            # SIGTERM means the process is about to be killed (requeue, preemption, scancel); a handler that
            # ignores it (submitit does) must not let training run on and write a result the cluster will
            # then discard: stop here, the checkpoint of this step is on disk and a requeued run resumes it.
            raise SystemExit(128 + signal.SIGTERM)
        # the previous handler returned (or ignores the signal): training goes on, still guarded
        for s in handlers:
            self.previous[s] = signal.signal(s, self._catch)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _any_rank(flag: bool, device: torch.device) -> bool:
    if not distributed.is_initialized():
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value)
    return bool(value.item())


def _sum_ranks(values: Sequence[float], device: torch.device) -> list[float]:
    if not distributed.is_initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


# ------------------------------------------------------------------------------------------------ setup

class Schedule:
    """The learning rate as a function of the number of updates done: :func:`warmup_cosine` over the whole run,
    or a timm scheduler (``create_scheduler_v2``, per update). :meth:`set` is all a resumed run needs: the
    rate follows from the position, also when ``epochs`` changed between the two runs."""

    def __init__(self, optimizer, sched: str, *, epochs: int, steps_per_epoch: int, warmup_epochs: float,
                 cooldown_epochs: int, min_lr: float, warmup_lr: float):
        self.optimizer, self.sched = optimizer, sched
        if sched == "warmup_cosine":
            self.base_lrs = [group["lr"] for group in optimizer.param_groups]
            self.warmup_steps = int(round(warmup_epochs * steps_per_epoch))
            self.total_steps = epochs * steps_per_epoch
            self.timm = None
        else:
            self.timm, _ = create_scheduler_v2(
                optimizer, sched=sched, num_epochs=epochs - cooldown_epochs, cooldown_epochs=cooldown_epochs,
                min_lr=min_lr, warmup_lr=warmup_lr, warmup_epochs=warmup_epochs, step_on_epochs=False,
                updates_per_epoch=steps_per_epoch,
            )
        self.set(0)

    def set(self, updates: int) -> None:
        """Set the rate of update ``updates + 1`` (0-based ``updates`` done so far)."""
        if self.timm is not None:
            self.timm.step_update(updates)
            return
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * warmup_cosine(updates, self.warmup_steps, self.total_steps)

    def state_dict(self) -> dict:
        if self.timm is not None:
            return {"sched": self.sched, **self.timm.state_dict()}
        return {"sched": self.sched, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


@dataclass
class Setup:
    """What :func:`set_up` builds for one training run (``net`` is ``model`` or its DDP wrapper)."""

    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    criterion: nn.Module
    mixer: Optional[Mixup]
    scaler: torch.amp.GradScaler
    amp_dtype: Optional[torch.dtype]  # None: fp32
    device: torch.device
    rank: int
    world: int
    steps_per_epoch: int


def set_up(model: nn.Module, train_set, *, epochs: int, batch_size: int, lr: float, weight_decay: float,
           warmup_epochs: float, label_smoothing: float, device: str | torch.device, opt: str, momentum: float,
           filter_bias_and_bn: bool, sched: str, cooldown_epochs: int, min_lr: float, warmup_lr: float,
           mixup: float, cutmix: float, amp: bool, amp_dtype: str) -> Setup:
    """Check the recipe, move (and under torchrun wrap) the model, and build optimizer, schedule, loss and AMP."""
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if not 0 <= cooldown_epochs < max(1, epochs):
        raise ValueError(f"cooldown_epochs={cooldown_epochs} must be in [0, epochs={epochs})")
    if cooldown_epochs and sched == "warmup_cosine":
        raise ValueError("cooldown_epochs needs a timm scheduler (sched=cosine, ...); warmup_cosine decays to 0 at the end")
    if amp_dtype not in _AMP:
        raise ValueError(f"amp_dtype must be one of {list(_AMP)}, got {amp_dtype!r}")
    check_num_classes(model, train_set)
    device = torch.device(device)
    rank, world = distributed.get_rank(), distributed.get_world_size()
    model.to(device)
    net = (DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
           if world > 1 else model)
    steps_per_epoch = max(1, math.ceil(math.ceil(len(train_set) / world) / batch_size))
    optimizer = create_optimizer_v2(
        model, opt=opt, lr=lr, weight_decay=weight_decay, momentum=momentum, filter_bias_and_bn=filter_bias_and_bn
    )
    schedule = Schedule(optimizer, sched, epochs=epochs, steps_per_epoch=steps_per_epoch, warmup_epochs=warmup_epochs,
                        cooldown_epochs=cooldown_epochs, min_lr=min_lr, warmup_lr=warmup_lr)
    mixer = None
    if mixup > 0 or cutmix > 0:
        mixer = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing,
                      num_classes=model.num_classes)
        criterion: nn.Module = SoftTargetCrossEntropy()
    else:
        criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    use_amp = amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == "float16")
    return Setup(model, net, optimizer, schedule, criterion, mixer, scaler, _AMP[amp_dtype] if use_amp else None,
                 device, rank, world, steps_per_epoch)


# ------------------------------------------------------------------------------------------------ checkpointing

@dataclass
class Position:
    """Where a run stands: ``epoch`` epochs done, ``step`` updates into the next one (a stop mid-epoch), with the
    running ``(loss sum, samples seen, samples skipped)`` of that epoch, and the history of the finished ones."""

    epoch: int = 0
    step: int = 0
    partial: tuple = (0.0, 0, 0)
    history: list = field(default_factory=list)

    def epochs_done(self, steps_per_epoch: int) -> float:
        """``epoch``, plus the fraction of the next one when the run stopped mid-epoch."""
        return self.epoch + self.step / steps_per_epoch if self.step else self.epoch


class TrainingCheckpoint:
    """A run's checkpoint file: written atomically by rank 0 (:meth:`write`), read back to resume (:meth:`read`).

    Contents: ``{"format", "model", "optimizer", "scheduler", "scaler", "epoch" (completed epochs), "step" (updates
    into the next epoch), "partial", "epochs", "history", "rng", "seed"}``. The file is read without a full
    unpickle (:func:`repshift.checkpoints.load_checkpoint`): one that is truncated or not a checkpoint of this
    trainer is an error naming it. ``path=None``: no checkpoint (nothing written, nothing resumed).
    """

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path is not None else None

    def exists(self) -> bool:
        return self.path is not None and self.path.exists()

    def read(self, setup: Setup, epochs: int) -> Position:
        """Load the model from the file and, unless its run is already complete, the optimizer, scaler and RNG
        states; returns the position to resume from. The learning rate is set for that position."""
        state = load_checkpoint(self.path)  # raises naming the path when the file is unreadable
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "epoch" not in state:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"cannot resume from {self.path}: it is not a training checkpoint of repshift.train "
                             f"(format {found!r}, expected {CHECKPOINT_FORMAT!r}). Delete it, choose another "
                             "train.output, or start afresh (force=true)")
        try:
            setup.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise ValueError(
                f"cannot resume from {self.path}: it holds a different model (trained with other settings?). "
                f"Delete it or choose another checkpoint path. {e}"
            ) from e
        position = Position(int(state["epoch"]), int(state.get("step", 0)), history=list(state.get("history", [])))
        if position.epoch >= epochs:
            return position
        try:
            setup.optimizer.load_state_dict(state["optimizer"])
            if "scaler" in state:
                setup.scaler.load_state_dict(state["scaler"])
            _set_rng_state(state["rng"])
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise ValueError(f"cannot resume from {self.path}: its optimizer or RNG state does not load "
                             f"({type(e).__name__}: {e})") from e
        position.partial = tuple(state.get("partial", position.partial))
        # the schedule may have changed length (different `epochs`): the rate follows from the position
        setup.schedule.set(position.epoch * setup.steps_per_epoch + position.step)
        return position

    def write(self, setup: Setup, position: Position, *, epochs: int, seed: int) -> None:
        """Rank 0 writes ``position`` atomically; every rank waits for it."""
        if self.path is None:
            return
        if setup.rank == 0:
            with atomic_open(self.path, "wb") as fh:
                torch.save({
                    "format": CHECKPOINT_FORMAT,
                    "model": setup.model.state_dict(),
                    "optimizer": setup.optimizer.state_dict(),
                    "scheduler": setup.schedule.state_dict(),
                    "scaler": setup.scaler.state_dict(),
                    "epoch": position.epoch,
                    "step": position.step,
                    "partial": list(position.partial),
                    "epochs": epochs,
                    "history": position.history,
                    "rng": _rng_state(),
                    "seed": seed,
                }, fh)
        distributed.barrier()


# ------------------------------------------------------------------------------------------------ epoch loop

def train_epoch(setup: Setup, train_set, epoch: int, start: Position, *, epochs: int, batch_size: int,
                num_workers: int, seed: int, progress: bool, stop: "_StopRequest",
                checkpoint: TrainingCheckpoint) -> tuple[float, int, int]:
    """One epoch from ``start.step`` on (0 unless the run stopped mid-epoch ``epoch``); returns this rank's
    ``(loss sum, samples seen, samples skipped)``. On a requeue signal a checkpoint of the exact step is written
    and the signal passed on (:class:`_StopRequest`)."""
    skip_steps = start.step if epoch == start.epoch else 0
    loss_sum, n_seen, n_skipped = start.partial if epoch == start.epoch else (0.0, 0, 0)
    loader = DataLoader(
        train_set,
        batch_size=batch_size,
        sampler=EpochOrder(len(train_set), seed=seed, epoch=epoch, rank=setup.rank, world=setup.world,
                           skip=skip_steps * batch_size),
        # Without a generator of its own, each new iterator draws its worker seed from the global
        # RNG: a run resumed mid-epoch would draw once more than an uninterrupted one and every
        # later random crop and dropout mask would differ.
        generator=torch.Generator().manual_seed(seed * 100_003 + epoch),
        num_workers=num_workers,
        collate_fn=collate_image_label,
        pin_memory=setup.device.type == "cuda",
        drop_last=False,
    )
    setup.net.train()
    step = skip_steps
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress or setup.rank != 0)
    for images, targets in bar:
        valid = targets >= 0
        if setup.mixer is not None and int(valid.sum()) % 2:
            valid[valid.nonzero()[-1]] = False  # Mixup pairs samples: an odd one out waits
        n_valid = int(valid.sum())
        n_skipped += int((targets < 0).sum())
        if n_valid:  # a batch of only skipped samples makes no optimizer step; the schedule goes on anyway
            loss = _update(setup, images[valid], targets[valid])
            loss_sum += loss * n_valid
            n_seen += n_valid
        step += 1
        setup.schedule.set(epoch * setup.steps_per_epoch + step)
        bar.set_postfix(loss=f"{loss_sum / n_seen:.4f}" if n_seen else "nan",
                        lr=f"{setup.optimizer.param_groups[0]['lr']:.2e}")
        if _any_rank(stop.signum is not None, setup.device) and step < setup.steps_per_epoch:
            checkpoint.write(setup, Position(epoch, step, (loss_sum, n_seen, n_skipped), start.history),
                             epochs=epochs, seed=seed)
            if stop.signum is not None:
                stop.deliver()
    bar.close()
    return loss_sum, n_seen, n_skipped


def _update(setup: Setup, images: torch.Tensor, targets: torch.Tensor) -> float:
    """One optimizer step on a batch of valid samples; returns its loss."""
    images = images.to(setup.device, non_blocking=True)
    targets = targets.to(setup.device, non_blocking=True)
    if setup.mixer is not None:
        images, targets = setup.mixer(images, targets)
    with torch.autocast(setup.device.type, dtype=setup.amp_dtype, enabled=setup.amp_dtype is not None):
        out = setup.net(images)
        if isinstance(out, (tuple, list)):
            out = out[0]
        loss = setup.criterion(out.float(), targets)
    setup.optimizer.zero_grad(set_to_none=True)
    setup.scaler.scale(loss).backward()
    setup.scaler.step(setup.optimizer)
    setup.scaler.update()
    return float(loss.detach())


def _history_entry(setup: Setup, epoch: int, sums: Sequence[float], val_set, *, epochs: int, batch_size: int,
                   num_workers: int, progress: bool, started: float) -> dict:
    loss_sum, n_seen, n_skipped = _sum_ranks(list(sums), setup.device)
    n_seen, n_skipped = int(n_seen), int(n_skipped)
    entry: dict[str, Any] = {
        "epoch": epoch + 1,
        "train_loss": loss_sum / n_seen if n_seen else math.nan,
        "val_top1": None,
        "val_top5": None,
        "lr": setup.optimizer.param_groups[0]["lr"],
        "n_train": n_seen,
        "skipped": n_skipped,
    }
    if val_set is not None:
        res = evaluate(setup.model, val_set, batch_size=batch_size, num_workers=num_workers, device=setup.device,
                       amp_dtype=setup.amp_dtype, progress=progress, desc=f"val {epoch + 1}/{epochs}")
        entry["val_top1"], entry["val_top5"] = res["top1"], res["top5"]
    entry["time_s"] = time.perf_counter() - started
    return entry


# ------------------------------------------------------------------------------------------------ the task

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
    resume: bool = True,
    progress: bool = True,
    log: Callable[[dict], Any] | None = None,
    opt: str = "adamw",
    momentum: float = 0.9,
    filter_bias_and_bn: bool = False,
    sched: str = "warmup_cosine",
    cooldown_epochs: int = 0,
    min_lr: float = 0.0,
    warmup_lr: float = 0.0,
    mixup: float = 0.0,
    cutmix: float = 0.0,
    amp: bool = True,
    amp_dtype: str = "float16",
    requeue_signals: Sequence[str] = REQUEUE_SIGNALS,
) -> dict:
    """Train ``model`` (in place) for ``epochs`` epochs; resumable from ``ckpt_path``.

    - Data: ``train_set[i]`` returns ``(image, label, *extras)``; extras (masks) are
      ignored, samples with label ``-1`` (skipped corrupt images) are excluded from the
      loss (a batch with none left makes no optimizer step). The order of epoch ``e`` is
      ``randperm`` seeded from ``(seed, epoch)`` (:class:`EpochOrder`), the same whether or
      not the run was resumed; under torchrun each rank takes its share of it and the model
      is wrapped in ``DistributedDataParallel`` (``batch_size`` is per rank). A model whose
      ``num_classes`` differs from the image folder's class count is refused.
    - Optimisation: ``timm.optim.create_optimizer_v2(opt, lr, weight_decay, momentum)``
      (``filter_bias_and_bn``: no weight decay on biases and norms, as timm's recipes do),
      cross-entropy with ``label_smoothing`` (soft-target cross-entropy under ``mixup`` /
      ``cutmix`` > 0, which mix with timm's ``Mixup``; a batch of odd size loses its last sample
      there, as ``Mixup`` pairs samples). The lr is set every update (:class:`Schedule`):
      ``sched="warmup_cosine"``: linear warmup over ``warmup_epochs`` then cosine to 0 at the
      end of ``epochs`` (:func:`warmup_cosine`); any other name is a timm scheduler
      (``create_scheduler_v2``: warmup from ``warmup_lr`` over ``warmup_epochs``, the schedule
      over ``epochs - cooldown_epochs`` epochs down to ``min_lr``, then ``cooldown_epochs`` at ``min_lr``).
    - AMP: on CUDA with ``amp`` true, autocast in ``amp_dtype`` (``float16`` with a gradient scaler,
      or ``bfloat16``); CPU runs are fp32.
    - Determinism: a fresh run seeds torch, numpy and ``random`` with ``seed``; a resumed
      run restores the RNG states saved in the checkpoint instead.
    - Per epoch: a tqdm bar (running loss and lr; ``progress=False`` hides it), then
      ``val_set`` is evaluated with :func:`repshift.evaluate.classification.evaluate`,
      then ``log(entry)`` is called with the epoch's history entry, then the checkpoint
      is written. (Logging comes first, so an epoch whose logging failed is redone.)
    - Checkpoint (:class:`TrainingCheckpoint`): written atomically by rank 0 to ``ckpt_path`` after every
      epoch. When one of ``requeue_signals`` arrives (SLURM's warning before a time limit or a
      preemption), the current step finishes, a checkpoint of that exact step is written, and the
      signal is then passed on to the handler it had before (submitit requeues the job; the
      default ends the process). If ``ckpt_path`` exists at start and ``resume`` is true, training resumes
      where it stopped (logged; returning at once if ``epoch >= epochs``): a requeued run ends with the
      weights an uninterrupted one has. Resuming with a different ``epochs`` continues with the schedule
      recomputed for the new length. ``resume=False`` (the runner's ``force=true``) deletes an existing
      checkpoint and trains afresh. A checkpoint that cannot be read is an error naming its path.

    A history entry is ``{"epoch" (1-based), "train_loss", "val_top1", "val_top5",
    "lr" (at the end of the epoch), "n_train", "skipped", "time_s"}`` (val fields None
    without ``val_set``). Returns ``{"history", "epoch", "epochs", "resumed_from",
    "ckpt_path"}`` where ``resumed_from`` is the number of epochs already done at start
    (a fraction when the run stopped mid-epoch: ``epoch + step / steps_per_epoch``).
    """
    setup = set_up(model, train_set, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                   warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, device=device, opt=opt,
                   momentum=momentum, filter_bias_and_bn=filter_bias_and_bn, sched=sched,
                   cooldown_epochs=cooldown_epochs, min_lr=min_lr, warmup_lr=warmup_lr, mixup=mixup, cutmix=cutmix,
                   amp=amp, amp_dtype=amp_dtype)
    checkpoint = TrainingCheckpoint(ckpt_path)
    if checkpoint.exists() and not resume:
        if setup.rank == 0:
            logger.info("training afresh (resume=False): removing the previous checkpoint %s", checkpoint.path)
            checkpoint.path.unlink()
        distributed.barrier()
    if checkpoint.exists():
        position = checkpoint.read(setup, epochs)
        if setup.rank == 0:
            logger.info("resuming from %s: %s of %d epochs done%s", checkpoint.path, position.epoch, epochs,
                        f", {position.step} of {setup.steps_per_epoch} steps into epoch {position.epoch + 1}"
                        if position.step else "")
        if position.epoch >= epochs:
            return {"history": position.history, "epoch": position.epoch, "epochs": epochs,
                    "resumed_from": position.epoch, "ckpt_path": str(checkpoint.path)}
    else:
        position = Position()
        _seed_everything(seed)
    resumed_from = position.epochs_done(setup.steps_per_epoch)
    history = position.history

    with _StopRequest(requeue_signals if checkpoint.path is not None else ()) as stop:
        for epoch in range(position.epoch, epochs):
            started = time.perf_counter()
            sums = train_epoch(setup, train_set, epoch, position, epochs=epochs, batch_size=batch_size,
                               num_workers=num_workers, seed=seed, progress=progress, stop=stop, checkpoint=checkpoint)
            entry = _history_entry(setup, epoch, sums, val_set, epochs=epochs, batch_size=batch_size,
                                   num_workers=num_workers, progress=progress, started=started)
            history.append(entry)
            if log is not None and setup.rank == 0:
                log(dict(entry))
            checkpoint.write(setup, Position(epoch + 1, 0, (0.0, 0, 0), history), epochs=epochs, seed=seed)
            if _any_rank(stop.signum is not None, setup.device) and stop.signum is not None:
                stop.deliver()

    return {
        "history": history,
        "epoch": max(epochs, position.epoch),
        "epochs": epochs,
        "resumed_from": resumed_from,
        "ckpt_path": str(checkpoint.path) if checkpoint.path is not None else None,
    }
