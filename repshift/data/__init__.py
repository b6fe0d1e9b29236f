"""Datasets and transforms: ImageNet-layout folders (ImageNet val, ShapeBench) and the DeiT eval pipeline.

ShapeBench names (``ShapeBenchDataset``, ``load_mask`` from :mod:`.shapebench`; ``generate``, ``ensure``,
``SHAPEBENCH_CLASSES`` from :mod:`.shapebench_generate`) are imported lazily so that
``python -m repshift.data.shapebench`` runs its module only once.
"""

from __future__ import annotations

from .folder import IMG_EXTENSIONS, SKIPPED_LABEL, CorruptImageError, ImageFolderDataset
from .transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, eval_transform, train_transform

#: lazily imported name -> (module, name there)
_SHAPEBENCH = {
    "ShapeBenchDataset": ("shapebench", "ShapeBenchDataset"),
    "load_mask": ("shapebench", "load_mask"),
    "SHAPEBENCH_CLASSES": ("shapebench_generate", "CLASSES"),
    "generate": ("shapebench_generate", "generate"),
    "ensure": ("shapebench_generate", "ensure"),
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
    *_SHAPEBENCH,
]


def __getattr__(name: str):
    if name in _SHAPEBENCH:
        import importlib

        module, attribute = _SHAPEBENCH[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
