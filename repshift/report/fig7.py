"""Figure 7: the representation-shift map of each of the four stages of ResNet-50 over an image.

    python -m repshift.report.fig7 --image photo.jpg --image dog.png   # torchvision ResNet-50 weights
    python -m repshift.report.fig7                                     # four ShapeBench images
    python -m repshift.report.fig7 --random-weights                    # no download (labelled so)

One row per image: the image, then stage 1..4, each map (``[H, W]``: 56, 28, 14, 7 at 224 input)
min-max normalised, upsampled and laid over the image. The shift is measured where
:mod:`repshift.patch.timm_resnet` measures it for pruning (``--site``, ``--reading``, ``--metric``).
On ShapeBench the ground-truth masks are known, so every panel also gives the ratio of the mean
shift on foreground locations to the mean on background ones (the paper's reading of Fig. 7:
foreground shifts more, ratio > 1). Writes ``fig7.png`` and ``fig7.json`` (the ratios) under ``--out``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

import repshift
from repshift import scores
from repshift.data import shapebench
from repshift.data.transforms import eval_transform
from repshift.models import build_model
from repshift.patch import READINGS
from repshift.report.figures import normalise_map, resize_map, save_figure, to_uint8_image

MODEL = "resnet50.tv_in1k"
# One ShapeBench image each of these classes (validation split, seed 0) when no --image is given.
SHAPEBENCH_CLASSES = (0, 2, 4, 6)


@torch.no_grad()
def stage_maps(model, images: torch.Tensor, *, metric: str = "l2", site: str = "mlp",
               reading: str = "literal") -> list[torch.Tensor]:
    """The shift map ``[B, H, W]`` of every stage of an (unpatched) timm ResNet, nothing pruned."""
    if metric not in scores.SHIFT_METRICS:
        raise ValueError(f"metric={metric!r}: Fig. 7 maps a representation shift, one of {scores.SHIFT_METRICS}")
    repshift.patch(model, metric=metric, site=site, reading=reading, layers=(), num=(), mode="line")
    try:
        model.repshift.record = True
        model.eval()(images)
        return list(model.repshift.recorded)
    finally:
        repshift.unpatch(model)


def foreground_ratio(score_map: torch.Tensor, mask: np.ndarray) -> float:
    """Mean shift over foreground locations / mean over background ones (mask resized to the map's grid)."""
    height, width = score_map.shape
    fg = resize_map(mask.astype(np.float64), height, width) >= 0.5
    values = score_map.float().cpu().numpy()
    if fg.all() or not fg.any():
        return float("nan")
    return float(values[fg].mean() / max(values[~fg].mean(), 1e-12))


def draw(path: Path, images: Sequence[np.ndarray], maps: Sequence[Sequence[torch.Tensor]], labels: Sequence[str],
         ratios: Optional[Sequence[Sequence[float]]], title: str) -> Path:
    """Rows = images; columns = the image, then one overlaid map per stage."""
    stages = len(maps[0])
    fig = Figure(figsize=(2.2 * (stages + 1), 2.2 * len(images) + 0.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(images), stages + 1, squeeze=False)
    for row, (image, row_maps) in enumerate(zip(images, maps)):
        height, width = image.shape[:2]
        axes[row][0].imshow(image)
        axes[row][0].set_ylabel(labels[row], fontsize=8)
        for col, score_map in enumerate(row_maps, start=1):
            ax = axes[row][col]
            ax.imshow(image)
            ax.imshow(resize_map(normalise_map(score_map), height, width), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            grid = f"{score_map.shape[0]}x{score_map.shape[1]}"
            ax.set_xlabel(grid if ratios is None else f"{grid}, fg/bg {ratios[row][col - 1]:.2f}", fontsize=7)
    for col, name in enumerate(["Image"] + [f"Stage {s + 1}" for s in range(stages)]):
        axes[0][col].set_title(name, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path.parent, path.stem, dpi=120)  # PNG and a vector PDF beside it
    return path


def figure7(out: Path, *, model_name: str = MODEL, image_paths: Sequence[str] = (), random_weights: bool = False,
            checkpoint: Optional[str] = None, img_size: int = 224, metric: str = "l2", site: str = "mlp",
            reading: str = "literal") -> dict:
    """Draw Fig. 7 into ``out``; returns what ``fig7.json`` holds."""
    model, weights = build_model(model_name, pretrained=not random_weights and not checkpoint, checkpoint=checkpoint)
    if image_paths:
        pictures = [Image.open(p).convert("RGB") for p in image_paths]
        masks, labels = None, [Path(p).name for p in image_paths]
        transform = eval_transform(img_size, crop_pct=0.875)
    else:
        drawn = [shapebench.render(0, "val", c, 0, img_size=img_size) for c in SHAPEBENCH_CLASSES]
        pictures = [image for image, _ in drawn]
        masks = [np.asarray(mask) >= 128 for _, mask in drawn]
        labels = [f"ShapeBench {shapebench.CLASSES[c]}" for c in SHAPEBENCH_CLASSES]
        transform = eval_transform(img_size, crop_pct=1.0)  # keeps the masks aligned with the pixels
    batch = torch.stack([transform(p) for p in pictures])
    per_stage = stage_maps(model, batch, metric=metric, site=site, reading=reading)
    maps = [[stage[i] for stage in per_stage] for i in range(len(pictures))]
    ratios = None if masks is None else [[foreground_ratio(m, mask) for m in row] for row, mask in zip(maps, masks)]
    source = "RANDOM WEIGHTS (not the paper's model)" if not weights["real"] else weights["source"]
    title = f"Representation shift per stage, {model_name} ({source}); {metric}, site={site}, reading={reading}"
    png = draw(out / "fig7.png", [to_uint8_image(b) for b in batch], maps, labels, ratios, title)
    record = {"png": str(png), "model": model_name, "weights": weights, "metric": metric, "site": site,
              "reading": reading, "images": labels, "grids": [list(m.shape) for m in maps[0]],
              "fg_bg_ratio": ratios}
    (out / "fig7.json").write_text(json.dumps(record, indent=2))
    return record


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", action="append", default=[], help="an image file (repeatable); default: ShapeBench")
    parser.add_argument("--model", default=MODEL, help=f"a timm ResNet (default {MODEL})")
    parser.add_argument("--checkpoint", default=None, help="local weights instead of timm's hub/cache")
    parser.add_argument("--random-weights", action="store_true", help="no weights at all (pipeline check)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--metric", default="l2", choices=scores.SHIFT_METRICS)
    parser.add_argument("--site", default="mlp", choices=("mlp", "stage"))
    parser.add_argument("--reading", default="literal", choices=READINGS)
    parser.add_argument("--out", default="outputs/fig7")
    args = parser.parse_args(argv)
    record = figure7(Path(args.out), model_name=args.model, image_paths=args.image, random_weights=args.random_weights,
                     checkpoint=args.checkpoint, img_size=args.img_size, metric=args.metric, site=args.site,
                     reading=args.reading)
    print(f"wrote {record['png']} (stage grids {record['grids']})")
    if record["fg_bg_ratio"] is not None:
        for label, row in zip(record["images"], record["fg_bg_ratio"]):
            print(f"  {label}: foreground/background shift per stage " + " ".join(f"{r:.2f}" for r in row))


if __name__ == "__main__":
    main()
