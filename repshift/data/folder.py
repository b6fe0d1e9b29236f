"""ImageNet-layout image folders: ``<root>/<split>/<class_name>/<image>``.

Classes are the sorted sub-folder names of ``<root>/<split>``; a class's index is its position in that sorted
list (for ImageNet the ``n0xxxxxxx`` synset folders sort into the standard 1000-class order). Samples are sorted
by path so that indices are reproducible across machines. Symbolic links to folders elsewhere are followed; a link
back into the split (a loop such as ``val/n02/loop -> ..``) is not, so each image is read once, under its own
class folder.

A file that cannot be decoded raises :class:`CorruptImageError` naming it; with ``skip_corrupt=True`` the dataset
returns ``(zeros shaped like a transformed image, -1)`` instead, and label ``-1`` tells the evaluator to exclude
and count the sample.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Subset

from repshift.data.build import check_limit
from repshift.data.transforms import eval_transform, train_transform

__all__ = ["IMG_EXTENSIONS", "SKIPPED_LABEL", "CorruptImageError", "ImageFolderDataset", "load_rgb", "build", "from_config", "class_names"]

log = logging.getLogger("repshift.data.folder")

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


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _scan_class(class_dir: Path, split_dir: Path, seen: set[str]) -> list[Path]:
    """The images under ``class_dir``, following symbolic links to folders outside the split only.

    A link to the split folder, to one of its ancestors or to anything inside it (``val/n02/loop -> ..``) is not
    followed: what it points at is read once, under its own class folder, or is not part of the split. A folder
    reached twice through links (``seen``: real paths walked so far) is read once. Both are logged.
    """
    split_real = os.path.realpath(split_dir)
    real = os.path.realpath(class_dir)
    if (os.path.islink(class_dir) and _inside(real, split_real)) or real in seen:
        # a class folder linking to another class folder: those images belong to that class
        log.warning("not reading %s: it is %s, a class folder of its own", class_dir, real)
        return []
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        seen.add(os.path.realpath(dirpath))
        kept = []
        for name in sorted(d for d in dirnames if not d.startswith(".")):
            link = os.path.join(dirpath, name)
            if os.path.islink(link):
                target = os.path.realpath(link)
                if _inside(target, split_real) or _inside(split_real, target) or target in seen:
                    log.warning("not following %s -> %s: it leads back into %s or to a folder already read",
                                link, target, split_dir)
                    continue
            kept.append(name)
        dirnames[:] = kept
        for name in filenames:
            if not _is_image(name) or name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            if os.path.islink(path) and _inside(os.path.realpath(path), split_real):
                log.warning("skipping %s: a link to an image of the split, read under its own folder", path)
                continue
            found.append(Path(path))
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
        seen: set[str] = set()
        self.samples: list[tuple[Path, int]] = [
            (p, idx) for c, idx in self.class_to_idx.items() for p in _scan_class(split_dir / c, split_dir, seen)
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


def build(cfg, split: str, training: bool = False) -> torch.utils.data.Dataset:
    """An existing image folder from its ``dataset`` config node (``_target_: repshift.data.folder.build``);
    see :func:`from_config`."""
    if cfg.get("generate"):
        raise ValueError(f"dataset {cfg.name}: dataset.generate is set, but {cfg.get('_target_')} reads an existing folder; "
                         "ShapeBench is generated by _target_: repshift.data.shapebench.build")
    return from_config(cfg, split, training)


def from_config(cfg, split: str, training: bool = False) -> torch.utils.data.Dataset:
    """The ``split`` of the image folder at ``cfg.root``.

    ``training``: the training transform, every image; otherwise the evaluation transform (``img_size``,
    ``crop_pct``, ``interpolation``) and, with ``limit``, that many images spread evenly over the split (a
    ``Subset``), so a quick check still sees every class.
    """
    limit = check_limit(cfg.get("limit"))
    transform = (train_transform(cfg.img_size) if training
                 else eval_transform(cfg.img_size, crop_pct=cfg.crop_pct, interpolation=cfg.interpolation))
    dataset = ImageFolderDataset(cfg.root, split, transform, skip_corrupt=cfg.skip_corrupt, image_size=cfg.img_size)
    if limit and not training and limit < len(dataset):
        step = len(dataset) / limit
        dataset = Subset(dataset, [int(i * step) for i in range(limit)])
    return dataset


def class_names(dataset) -> list[str] | None:
    """The class names of an image folder, also through ``Subset`` wrappers; None for a dataset without classes."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    classes = getattr(dataset, "classes", None)
    return list(classes) if classes is not None else None
