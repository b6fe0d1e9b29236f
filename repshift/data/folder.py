"""ImageNet-layout image folders: ``<root>/<split>/<class_name>/<image>``.

Classes are the sorted sub-folder names of ``<root>/<split>``; a class's index is its position in that sorted
list (for ImageNet the ``n0xxxxxxx`` synset folders sort into the standard 1000-class order). Samples are sorted
by path so that indices are reproducible across machines.

A file that cannot be decoded raises :class:`CorruptImageError` naming it; with ``skip_corrupt=True`` the dataset
returns ``(zeros shaped like a transformed image, -1)`` instead, and label ``-1`` tells the evaluator to exclude
and count the sample.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

__all__ = ["IMG_EXTENSIONS", "SKIPPED_LABEL", "CorruptImageError", "ImageFolderDataset", "load_rgb"]

#: File name endings accepted as images (compared case-insensitively; ImageNet val uses ``.JPEG``).
IMG_EXTENSIONS: tuple[str, ...] = (".jpeg", ".jpg", ".png", ".bmp", ".webp")

#: Label returned for a sample that could not be read when ``skip_corrupt=True``.
SKIPPED_LABEL = -1

_LAYOUT = "<root>/<split>/<class_name>/<image>.JPEG"


class CorruptImageError(RuntimeError):
    """An image file exists in the dataset but cannot be decoded.

    ``str(err)`` names the file and suggests ``dataset.skip_corrupt=true``; ``err.path`` is the file's path.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)

    def __reduce__(self):  # keep ``path`` across pickling (DataLoader workers)
        return (type(self), (str(self), self.path))


def _corrupt_message(path: Path, cause: BaseException) -> str:
    return (
        f"Corrupt or unreadable image: {path} ({type(cause).__name__}: {cause}). "
        "Replace the file, or set dataset.skip_corrupt=true to skip unreadable images "
        "(they are returned with label -1, excluded from accuracy and counted as skipped)."
    )


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` fully into an RGB PIL image, or raise :class:`CorruptImageError` naming it."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return im.convert("RGB")  # convert() forces a full decode, so truncated files fail here
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CorruptImageError(_corrupt_message(path, e), path) from e


def _layout_hint(root: Path, split: str) -> str:
    return (
        f"Expected an ImageNet-layout folder: {_LAYOUT} "
        f"(e.g. {root}/{split}/n01440764/ILSVRC2012_val_00000293.JPEG); "
        "set dataset.root=<path> to point at it."
    )


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _scan_class(class_dir: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in filenames if _is_image(f) and not f.startswith("."))
    return sorted(found)


class ImageFolderDataset(torch.utils.data.Dataset):
    """Images in ``<root>/<split>/<class_name>/<image>``; ``ds[i] -> (transform(RGB image), label)``.

    Args:
        root: dataset root (the ``dataset.root`` config key).
        split: sub-folder of ``root`` to read (``"val"``, ``"train"``).
        transform: callable applied to the PIL RGB image (``None``: the PIL image is returned).
        skip_corrupt: return ``(zeros, -1)`` for unreadable files instead of raising :class:`CorruptImageError`.
        image_size: side of the blank image pushed through ``transform`` to get the shape of the zeros returned for
            a skipped file (default 224). Only matters for transforms whose output size depends on the input size.

    Attributes: ``root``, ``split``, ``classes`` (sorted class-folder names), ``class_to_idx``,
    ``samples`` (sorted list of ``(path, label)``), ``targets``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "val",
        transform: Callable[[Image.Image], Any] | None = None,
        skip_corrupt: bool = False,
        image_size: int | None = None,
    ):
        self.root = Path(root).expanduser()
        self.split = str(split)
        self.transform = transform
        self.skip_corrupt = bool(skip_corrupt)
        self.image_size = int(image_size) if image_size else 224
        self._blank_cache: Any = None

        split_dir = self.root / self.split
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset.root={self.root} was not found. " + _layout_hint(self.root, self.split))
        if not split_dir.is_dir():
            present = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
            raise FileNotFoundError(
                f"dataset.root={self.root} has no '{self.split}/' folder (it has: {present or 'no folders'}). "
                + _layout_hint(self.root, self.split)
            )
        self.classes: list[str] = sorted(
            e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")
        )
        if not self.classes:
            raise FileNotFoundError(
                f"dataset.root={self.root}: '{self.split}/' contains no class folders. " + _layout_hint(self.root, self.split)
            )
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = [
            (p, idx) for c, idx in self.class_to_idx.items() for p in _scan_class(split_dir / c)
        ]
        if not self.samples:
            raise FileNotFoundError(
                f"dataset.root={self.root}: no images ({'/'.join(IMG_EXTENSIONS)}, any case) under "
                f"{split_dir}/<class_name>/ ({len(self.classes)} class folders, all empty). "
                + _layout_hint(self.root, self.split)
            )

    # ------------------------------------------------------------------ access
    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> Image.Image:
        """The untransformed RGB image of sample ``index`` (raises :class:`CorruptImageError`)."""
        return load_rgb(self.samples[index][0])

    def blank(self) -> Any:
        """Zeros shaped like a transformed image: what a skipped (corrupt) sample returns."""
        if self._blank_cache is None:
            black = Image.new("RGB", (self.image_size, self.image_size))
            out = self.transform(black) if self.transform is not None else black
            if isinstance(out, torch.Tensor):
                out = torch.zeros_like(out)
            elif isinstance(out, np.ndarray):
                out = np.zeros_like(out)
            self._blank_cache = out
        out = self._blank_cache
        return out.clone() if isinstance(out, torch.Tensor) else out.copy()

    def __getitem__(self, index: int):
        label = self.samples[index][1]
        try:
            img = self.load_image(index)
        except CorruptImageError:
            if not self.skip_corrupt:
                raise
            return self.blank(), SKIPPED_LABEL
        if self.transform is not None:
            img = self.transform(img)
        return img, label

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"n={len(self)}, classes={len(self.classes)}, skip_corrupt={self.skip_corrupt})"
        )
