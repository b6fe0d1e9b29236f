"""Image transforms: the DeiT evaluation pipeline and a light training pipeline for ShapeBench.

Both are built with ``timm.data.create_transform`` so they match what timm models were evaluated with.

* :func:`eval_transform` - resize the shorter side to ``floor(img_size / crop_pct)`` (bicubic), centre-crop
  ``img_size``, convert to a tensor and normalise. With the defaults this is DeiT's evaluation: resize 256,
  crop 224. With ``crop_pct=1.0`` and an input that is already ``img_size`` square the resize and the crop are
  identities, so every pixel stays where it was: ShapeBench is evaluated that way, which keeps its ground-truth
  masks aligned with the 16x16 patch grid.
* :func:`train_transform` - random-resized-crop with a small zoom range and near-square aspect, a horizontal
  flip, then tensor + normalise. No colour jitter by default (colour carries no class information on
  ShapeBench, and keeping the photometric part out keeps masks trivially alignable).
"""

from __future__ import annotations

from typing import Sequence

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

__all__ = ["eval_transform", "train_transform", "mask_geometry", "IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD"]


def _check_crop_pct(crop_pct: float) -> float:
    crop_pct = float(crop_pct)
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    return crop_pct


def eval_transform(
    img_size: int = 224,
    crop_pct: float = 0.875,
    interpolation: str = "bicubic",
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
):
    """Deterministic evaluation transform (PIL image -> normalised float tensor [3, img_size, img_size]).

    Resize the shorter side to ``floor(img_size / crop_pct)`` with ``interpolation``, centre-crop to
    ``img_size``, ``ToTensor``, ``Normalize(mean, std)``. Defaults reproduce DeiT (resize 256 bicubic, crop 224).
    """
    return create_transform(
        input_size=int(img_size),
        is_training=False,
        interpolation=interpolation,
        crop_pct=_check_crop_pct(crop_pct),
        mean=tuple(mean),
        std=tuple(std),
    )


def train_transform(
    img_size: int = 224,
    scale: tuple[float, float] = (0.8, 1.0),
    ratio: tuple[float, float] = (0.9, 1.0 / 0.9),
    hflip: float = 0.5,
    interpolation: str = "bicubic",
    color_jitter: float | tuple[float, ...] | None = None,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
):
    """Light training augmentation that keeps ShapeBench labels valid.

    ``RandomResizedCrop(img_size, scale, ratio)`` (zoom in by at most ~11% per side, aspect within +-11% so
    a square never turns into a diamond-like rhombus), ``RandomHorizontalFlip(hflip)`` (every ShapeBench class
    is mirror-invariant), optional ``ColorJitter`` (off by default), ``ToTensor``, ``Normalize``.
    """
    return create_transform(
        input_size=int(img_size),
        is_training=True,
        scale=tuple(scale),
        ratio=tuple(ratio),
        hflip=float(hflip),
        vflip=0.0,
        color_jitter=color_jitter,
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
        re_prob=0.0,
    )


# --------------------------------------------------------------------------- masks through the same geometry
# Ops that move pixels (applied to masks too) and ops that only change values (skipped for masks). Classes are
# matched by name so both torchvision and timm versions are covered.
_GEOMETRIC = {
    "Resize", "CenterCrop", "RandomResizedCrop", "RandomCrop", "RandomHorizontalFlip", "RandomVerticalFlip",
    "Pad", "RandomResizedCropAndInterpolation", "ResizeKeepRatio", "CenterCropOrPad", "RandomCropOrPad",
    "TrimBorder",
}
_PHOTOMETRIC = {
    "ColorJitter", "RandomGrayscale", "Grayscale", "GaussianBlur", "RandomAdjustSharpness", "RandomAutocontrast",
    "RandomEqualize", "RandomPosterize", "RandomSolarize", "RandomInvert", "ToRGB",
}
_TENSOR_STAGE = {"ToTensor", "MaybeToTensor", "PILToTensor", "MaybePILToTensor", "ToImage", "ToNumpy", "Normalize"}


def _kind(op) -> str:
    name = type(op).__name__
    if name in _GEOMETRIC:
        return "geometric"
    if name in _PHOTOMETRIC:
        return "photometric"
    if name in _TENSOR_STAGE:
        return "tensor"
    if name == "RandomApply" and all(_kind(t) == "photometric" for t in op.transforms):
        return "photometric"
    return "unknown"


def mask_geometry(transform) -> list:
    """The leading geometric ops of ``transform`` (before it turns the image into a tensor), for masks.

    Running these ops on an ``L``-mode mask image, with the random state the image transform started from,
    moves the mask exactly as the image moved (same resize/crop/flip parameters). Photometric ops may follow the
    geometric ones (their random draws come after the replayed ones, so they do not disturb the replay); a
    geometric op *after* a photometric one, or an op this function does not know, raises ``ValueError``.
    ``None`` gives ``[]``.
    """
    if transform is None:
        return []
    ops = list(getattr(transform, "transforms", [transform]))
    geometric: list = []
    seen_photometric = False
    for op in ops:
        kind = _kind(op)
        if kind == "tensor":
            break
        if kind == "geometric":
            if seen_photometric:
                raise ValueError(
                    f"cannot align masks through {transform!r}: geometric op {type(op).__name__} comes after a "
                    "photometric op, so its random parameters cannot be replayed on the mask"
                )
            geometric.append(op)
        elif kind == "photometric":
            seen_photometric = True
        else:
            raise ValueError(
                f"cannot align masks through transform op {type(op).__name__}: unknown whether it moves pixels. "
                "Use repshift.data.eval_transform / train_transform, or a Compose of torchvision/timm "
                "resize/crop/flip ops followed by photometric ops."
            )
    return geometric
