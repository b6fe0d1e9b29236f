"""Reading ShapeBench: its images with their labels and ground-truth foreground masks.

:mod:`repshift.data.shapebench_generate` draws and writes the folder (layout there); this module reads it.
Evaluate ShapeBench with ``eval_transform(crop_pct=1.0)``: the 224 images then pass through unresized and
uncropped, and masks stay aligned with the patch grid. :class:`ShapeBenchDataset` gives each mask to the transform
beside its image as a :class:`torchvision.tv_tensors.Mask`, so under any ``transforms.v2`` resize/crop/flip the
mask moves with the image (same random parameters).

``python -m repshift.data.shapebench --root ...`` runs the generator's command line (kept under this name).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

import repshift.distributed as distributed
from repshift.data.folder import SKIPPED_LABEL, CorruptImageError, ImageFolderDataset, _corrupt_message
from repshift.data.folder import from_config
# the generator's names, also reachable here for the callers of the former single module (reports, docs)
from repshift.data.shapebench_generate import CLASSES, ensure, generate, is_complete, render

__all__ = ["CLASSES", "ShapeBenchDataset", "load_mask", "build", "ensure", "generate", "is_complete", "render"]


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """A saved mask PNG as a boolean array [H, W] (True = class shape)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("L")) >= 128


class ShapeBenchDataset(ImageFolderDataset):
    """A ShapeBench split: ``ds[i] -> (image, label, mask)`` (or ``(image, label)`` with ``with_masks=False``).

    ``mask`` is a float32 tensor [H, W] with values in {0, 1}: the saved mask put through the transform beside its
    image (a ``tv_tensors.Mask``: the same resize/crop/flip, nearest-neighbour, no normalisation), so
    ``mask[y, x]`` says whether image pixel ``(y, x)`` shows the class shape. With masks, ``transform`` must be a
    torchvision ``transforms.v2`` transform (:func:`repshift.data.eval_transform` / ``train_transform`` are).
    Evaluate with ``eval_transform(crop_pct=1.0)``: no resize or crop happens and the mask is the saved PNG exactly.
    A skipped corrupt sample returns ``(zeros, -1, zeros)``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "val",
        transform: Callable | None = None,
        with_masks: bool = True,
        skip_corrupt: bool = False,
        image_size: int | None = None,
    ):
        root_p = Path(root).expanduser()
        if not (root_p / ".complete").is_file():
            raise FileNotFoundError(
                f"dataset.root={root_p} is not a finished ShapeBench folder (no .complete marker). Generate it "
                f"with: python -m repshift.data.shapebench --root {root_p} (or repshift.data.shapebench_generate.ensure)."
            )
        if with_masks and transform is not None and not isinstance(transform, v2.Transform):
            raise ValueError(f"ShapeBench masks follow their images through a torchvision transforms.v2 transform; "
                             f"{type(transform).__name__} is not one (use repshift.data.eval_transform / "
                             "train_transform, or with_masks=False)")
        super().__init__(root_p, split, transform=transform, skip_corrupt=skip_corrupt, image_size=image_size)
        self.with_masks = bool(with_masks)
        split_dir = self.root / self.split
        self.mask_paths: list[Path] = [
            (self.root / "masks" / self.split / p.relative_to(split_dir)).with_suffix(".png") for p, _ in self.samples
        ]
        if self.with_masks:
            missing = [str(m) for m in self.mask_paths if not m.is_file()]
            if missing:
                raise FileNotFoundError(
                    f"dataset.root={self.root}: {len(missing)} mask(s) missing, e.g. {missing[0]}; every image "
                    f"needs masks/{self.split}/<class>/<stem>.png. Regenerate with python -m repshift.data.shapebench"
                )

    def load_mask_image(self, index: int) -> Image.Image:
        path = self.mask_paths[index]
        try:
            with Image.open(path) as im:
                return im.convert("L")
        except (OSError, SyntaxError, ValueError) as e:
            raise CorruptImageError(_corrupt_message(path, e), path) from e

    def __getitem__(self, index: int):
        if not self.with_masks:
            return super().__getitem__(index)
        label = self.samples[index][1]
        try:
            img = self.load_image(index)
            mask = tv_tensors.Mask(torch.from_numpy(np.array(self.load_mask_image(index)))[None])
        except CorruptImageError:
            if not self.skip_corrupt:
                raise
            blank = self.blank()
            hw = blank.shape[-2:] if isinstance(blank, torch.Tensor) else (blank.size[1], blank.size[0])
            return blank, SKIPPED_LABEL, torch.zeros(tuple(hw), dtype=torch.float32)
        if self.transform is not None:
            img, mask = self.transform(img, mask)
        hw = tuple(img.shape[-2:]) if isinstance(img, torch.Tensor) else (img.size[1], img.size[0])
        if tuple(mask.shape[-2:]) != hw:
            raise ValueError(f"mask {tuple(mask.shape[-2:])} does not match image {hw} after {self.transform!r}")
        return img, label, (mask[0] >= 128).as_subclass(torch.Tensor).to(torch.float32)


def build(cfg, split: str, training: bool = False) -> torch.utils.data.Dataset:
    """ShapeBench from its ``dataset`` config node (``_target_: repshift.data.shapebench.build``): generated under
    ``root`` with ``generate``'s parameters on first use (by rank 0 under torchrun; the others wait), then read as
    an image folder (:func:`repshift.data.folder.from_config`; the evaluators use images and labels only)."""
    if not cfg.get("generate"):
        raise ValueError(f"dataset {cfg.name}: {cfg.get('_target_')} needs dataset.generate (n_train_per_class, "
                         "n_val_per_class, seed)")
    if distributed.is_main():
        ensure(Path(cfg.root), **cfg.generate, img_size=cfg.img_size)
    distributed.barrier()
    return from_config(cfg, split, training)


if __name__ == "__main__":
    from repshift.data.shapebench_generate import main

    sys.exit(main())
