"""Datasets and transforms: ImageNet-layout folders (ImageNet val, ShapeBench) and the DeiT eval pipeline.

ShapeBench names (``ShapeBenchDataset``, ``generate``, ``ensure``, ``load_mask``, ...) are imported lazily so
that ``python -m repshift.data.shapebench`` runs its module only once.
"""

from __future__ import annotations

from .folder import IMG_EXTENSIONS, SKIPPED_LABEL, CorruptImageError, ImageFolderDataset
from .transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, eval_transform, mask_geometry, train_transform

_SHAPEBENCH = {
    "ShapeBenchDataset": "ShapeBenchDataset",
    "SHAPEBENCH_CLASSES": "CLASSES",
    "generate": "generate",
    "ensure": "ensure",
    "load_mask": "load_mask",
}

__all__ = [
    "IMG_EXTENSIONS",
    "SKIPPED_LABEL",
    "CorruptImageError",
    "ImageFolderDataset",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "eval_transform",
    "train_transform",
    "mask_geometry",
    *_SHAPEBENCH,
]


def __getattr__(name: str):
    if name in _SHAPEBENCH:
        from . import shapebench

        return getattr(shapebench, _SHAPEBENCH[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
