"""Image transforms: the DeiT evaluation pipeline and a light training pipeline for ShapeBench.

Both are torchvision ``transforms.v2`` pipelines, so a mask given beside the image as a
:class:`torchvision.tv_tensors.Mask` goes through the same resize / crop / flip with the same random parameters
(nearest-neighbour for the mask, and no photometric op or normalisation): ``image, mask = t(image, Mask(m))``.

* :func:`eval_transform` - resize the shorter side to ``floor(img_size / crop_pct)``, centre-crop ``img_size``,
  convert to a float tensor and normalise: what ``timm.data.create_transform(is_training=False)`` builds, to float
  rounding. With the defaults this is DeiT's evaluation: resize 256 (bicubic), crop 224. With ``crop_pct=1.0`` and
  an input that is already ``img_size`` square the resize and the crop are identities, so every pixel stays where
  it was: ShapeBench is evaluated that way, which keeps its ground-truth masks aligned with the 16x16 patch grid.
* :func:`train_transform` - random-resized-crop with a small zoom range and near-square aspect, a horizontal
  flip, then tensor + normalise. No colour jitter by default (colour carries no class information on ShapeBench).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import InterpolationMode, v2

__all__ = ["eval_transform", "eval_geometry", "train_transform", "IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD"]


def _check_crop_pct(crop_pct: float) -> float:
    crop_pct = float(crop_pct)
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    return crop_pct


def _to_normalised_tensor(mean: Sequence[float], std: Sequence[float]) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def eval_transform(
    img_size: int = 224,
    crop_pct: float = 0.875,
    interpolation: str = "bicubic",
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> v2.Compose:
    """Deterministic evaluation transform (PIL image -> normalised float tensor [3, img_size, img_size]).

    Resize the shorter side to ``floor(img_size / crop_pct)`` with ``interpolation``, centre-crop to
    ``img_size``, to float in [0, 1], ``Normalize(mean, std)``. Defaults reproduce DeiT (resize 256 bicubic, crop 224).
    """
    return v2.Compose([*eval_geometry(img_size, crop_pct, interpolation).transforms, *_to_normalised_tensor(mean, std)])


def eval_geometry(img_size: int = 224, crop_pct: float = 0.875, interpolation: str = "bicubic") -> v2.Compose:
    """The resize and centre crop of :func:`eval_transform` alone: what moves the pixels, for a soft mask (an
    ``L`` image whose values are coverage fractions, resized with the image's interpolation)."""
    img_size = int(img_size)
    return v2.Compose([
        v2.Resize(math.floor(img_size / _check_crop_pct(crop_pct)), interpolation=InterpolationMode(interpolation)),
        v2.CenterCrop(img_size),
    ])


def train_transform(
    img_size: int = 224,
    scale: tuple[float, float] = (0.8, 1.0),
    ratio: tuple[float, float] = (0.9, 1.0 / 0.9),
    hflip: float = 0.5,
    interpolation: str = "bicubic",
    color_jitter: float | tuple[float, ...] | None = None,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> v2.Compose:
    """Light training augmentation that keeps ShapeBench labels valid.

    ``RandomResizedCrop(img_size, scale, ratio)`` (zoom in by at most ~11% per side, aspect within +-11% so
    a square never turns into a diamond-like rhombus), ``RandomHorizontalFlip(hflip)`` (every ShapeBench class
    is mirror-invariant), optional ``ColorJitter`` (off by default; a number jitters brightness, contrast and
    saturation by that much), to float, ``Normalize``.
    """
    ops = [
        v2.RandomResizedCrop(int(img_size), scale=tuple(scale), ratio=tuple(ratio),
                             interpolation=InterpolationMode(interpolation)),
        v2.RandomHorizontalFlip(float(hflip)),
    ]
    if color_jitter:
        jitter = (color_jitter,) * 3 if isinstance(color_jitter, (int, float)) else tuple(color_jitter)
        ops.append(v2.ColorJitter(*jitter))
    return v2.Compose([*ops, *_to_normalised_tensor(mean, std)])
