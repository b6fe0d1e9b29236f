"""Top-1 / top-5 classification accuracy, single process or sharded under torchrun.

A model whose head has another number of classes than the dataset is refused before any image is read
(:func:`check_num_classes`): its labels would index other classes, and a 2-class head on a 5-class folder would
report a "top-5" of every class it has. Top-5 of fewer than 5 classes is not reported (``None``). An evaluation
that scores no image is an :class:`~repshift.evaluate.errors.EmptyEvaluationError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

import repshift.distributed as D
from repshift.data.build import location
from repshift.data.folder import class_names
from repshift.evaluate.errors import nothing_evaluated

__all__ = ["evaluate", "check_num_classes", "collate_image_label", "IndexedSubset", "TOP_K"]

#: The k of top-k accuracy; with fewer classes than this, top-k is not reported.
TOP_K = 5


def check_num_classes(model: nn.Module, dataset) -> None:
    """Refuse a model whose head does not have one output per class of ``dataset`` (an image folder, also
    inside ``Subset``); datasets without class folders, and models without ``num_classes``, are not checked here
    (the logits are checked per batch in :func:`evaluate`)."""
    classes = class_names(dataset)
    head = getattr(model, "num_classes", None)
    if classes is not None and isinstance(head, int) and head != len(classes):
        raise ValueError(
            f"the model's head has {head} classes but {location(dataset)} has {len(classes)} class folders "
            f"({', '.join(classes[:5])}{' ...' if len(classes) > 5 else ''}): its predictions would index other "
            "classes. Evaluate it on the dataset it was trained for, or set the head's size "
            "(model.kwargs.num_classes) and train it."
        )


def _label_int(label: Any) -> int:
    return int(label.item()) if isinstance(label, torch.Tensor) else int(label)


def collate_image_label(batch: Sequence[Sequence[Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate ``(image, label, *extras)`` samples into ``(images[B, ...], labels[B])``.

    Elements after the label (e.g. ShapeBench masks) are ignored.
    """
    images = torch.stack([torch.as_tensor(s[0]) for s in batch])
    labels = torch.tensor([_label_int(s[1]) for s in batch], dtype=torch.long)
    return images, labels


def _collate_indexed(batch):
    idx = torch.tensor([s[0] for s in batch], dtype=torch.long)
    images, labels = collate_image_label([s[1:] for s in batch])
    return idx, images, labels


class IndexedSubset(Dataset):
    """``Subset(dataset, indices)`` whose samples are ``(dataset_index, image, label)``."""

    def __init__(self, dataset, indices: Sequence[int]):
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        idx = self.indices[i]
        sample = self.dataset[idx]
        return idx, sample[0], sample[1]


def evaluate(
    model: nn.Module,
    dataset,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
    desc: str = "evaluate",
) -> dict:
    """Top-1 / top-5 accuracy (percent) of ``model`` on ``dataset``.

    ``dataset[i]`` returns ``(image, label, *extras)``; extras are ignored. Samples with
    label ``-1`` (corrupt images skipped by the loader) are not fed to the model, are
    excluded from the accuracy and counted in ``skipped``.

    The model is moved to ``device`` and run in eval mode under ``torch.inference_mode()``
    (its previous train/eval mode is restored afterwards), inside ``torch.autocast`` on
    the device's type with ``amp_dtype`` when given. A head whose size differs from the dataset's class
    count is refused (:func:`check_num_classes`, and the logits of every batch).

    When a ``torch.distributed`` process group is initialised (torchrun), each rank
    evaluates its strided shard (:func:`~repshift.distributed.shard_indices`,
    no padding) and the per-sample predictions are all-gathered, so every rank returns
    exactly what one process would. The progress bar is shown on rank 0 only.

    Returns ``{"top1": float, "top5": float or None, "n": int, "skipped": int}``; ``top5`` is None
    with fewer than 5 classes (it would count every class). Raises
    :class:`~repshift.evaluate.errors.EmptyEvaluationError` when no sample was evaluated (all skipped
    as corrupt, or an empty dataset).
    """
    check_num_classes(model, dataset)
    classes = class_names(dataset)
    device = torch.device(device)
    rank, world = D.get_rank(), D.get_world_size()
    indices = D.shard_indices(len(dataset), rank, world)
    loader = DataLoader(
        IndexedSubset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate_indexed,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )

    was_training = model.training
    model.to(device)
    model.eval()
    records: list[tuple[int, list[int], int]] = []
    skipped_idx: list[int] = []
    try:
        with torch.inference_mode():
            bar = tqdm(loader, desc=desc, total=len(loader), disable=not progress or rank != 0)
            for idx, images, targets in bar:
                valid = targets >= 0
                if not bool(valid.all()):
                    skipped_idx.extend(idx[~valid].tolist())
                if not bool(valid.any()):
                    continue
                images = images[valid].to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = model(images)
                if isinstance(logits, (tuple, list)):
                    logits = logits[0]
                if classes is not None and logits.shape[-1] != len(classes):
                    raise ValueError(f"the model gives {logits.shape[-1]} logits per image but {location(dataset)} "
                                     f"has {len(classes)} classes")
                k = min(TOP_K, logits.shape[-1])
                top = logits.float().topk(k, dim=-1).indices.cpu()
                records.extend(zip(idx[valid].tolist(), top.tolist(), targets[valid].tolist()))
            bar.close()
    finally:
        model.train(was_training)

    gathered = D.all_gather_objects((records, skipped_idx))
    preds: dict[int, tuple[list[int], int]] = {}
    skipped: set[int] = set()
    for recs, skips in gathered:
        for i, top, target in recs:
            preds[i] = (top, target)
        skipped.update(skips)

    n = len(preds)
    if n == 0:
        raise nothing_evaluated(dataset, total=len(dataset), skipped=len(skipped), unit="images")
    c1 = sum(1 for top, t in preds.values() if top[0] == t)
    c5 = sum(1 for top, t in preds.values() if t in top)
    full_top_k = all(len(top) == TOP_K for top, _ in preds.values())
    return {
        "top1": 100.0 * c1 / n,
        "top5": 100.0 * c5 / n if full_top_k else None,
        "n": n,
        "skipped": len(skipped),
    }
