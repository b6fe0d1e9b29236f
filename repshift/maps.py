"""Score maps computed from a model: Figs. 4 / 6 on a ViT and Fig. 7 on a ResNet (the runner side of the map figures).

    python -m repshift.maps maps [--model deit_b] [--data data/imagenet] [--images 4] [--out outputs/figures]
    python -m repshift.maps maps --smoke              # tiny random ViT on ShapeBench, masks outlined
    python -m repshift.maps fig7 [--image photo.jpg ...] [--random-weights] [--out outputs/fig7]

``python -m repshift.report maps ...`` runs the first. This module builds the model, reads the images and
computes the maps; :func:`repshift.report.maps.overlay_grid` draws the arrays it hands over.

**Figs. 4 / 6** (``maps``): one row per image: the image, then each score's map at the paper's blocks
(Fig. 6: DeiT-B, layers 1, 5, 9, i.e. 0-based blocks 0, 4, 8), each min-max normalised and overlaid on the
image, with one colour bar. ``fig6``: class attention (Eq. 2, :func:`repshift.attention_scores`) beside the
L2 representation shift across the MLP (:func:`repshift.representation_shift`, the paper's default score);
``fig4``: the L2 representation shift across the attention layer (the paper's Fig. 4 and Sec. 3 probe).
Every value drawn comes from those two functions on an unpruned forward; prefix tokens (class,
distillation, registers) are left out and the patch tokens are laid out on their grid. ``--model`` is a
config of ``repshift/configs/model/`` (default deit_b), ``model.<key>=value`` arguments override it
(``model.checkpoint=/path/deit_base.pth``); ``--smoke`` is the SMOKE setting (a 12-block width-32 random
ViT, ``model=tiny model.kwargs.depth=12``, on the ShapeBench images the SMOKE sweeps use).

**Fig. 7** (``fig7``): the representation-shift map of each of the four stages of ResNet-50 over an image,
measured where :mod:`repshift.patch.timm_resnet` measures it for pruning (``--site``, ``--reading``,
``--metric``). On ShapeBench the ground-truth masks are known, so every panel also gives the ratio of the
mean shift on foreground locations to the mean on background ones (the paper's reading of Fig. 7:
foreground shifts more, ratio > 1). Writes ``fig7.png`` (+ PDF) and ``fig7.json`` (the ratios).
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from omegaconf import OmegaConf
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

import repshift
import repshift.scores as scores
from repshift.configs import load as load_config
from repshift.report.cli import Parser, int_list, str_list
from repshift.report.figures import figure_logger, save_figure
from repshift.report.maps import overlay_grid, stage_figure

__all__ = ["PAPER_BLOCKS", "MAP_FIGURES", "MapSamples", "MapFigure", "to_uint8_image", "score_maps", "load_samples",
           "smoke_samples", "build_map_model", "make_map_figures", "stage_maps", "foreground_ratio", "figure7", "main"]

#: The paper's layers 1, 5, 9 of DeiT-B (Fig. 6), as 0-based block indices.
PAPER_BLOCKS = (0, 4, 8)

#: figure name -> (column label, score) pairs; a score is ``attn_cls`` / ``attn_mean`` or ``<metric>-<site>``.
MAP_FIGURES: dict[str, tuple[tuple[str, str], ...]] = {
    "fig6": (("Attn (class attention)", "attn_cls"), ("Ours (L2, MLP)", "l2-mlp")),
    "fig4": (("Shift across attention (L2)", "l2-attn"),),
}

# SMOKE: repshift/configs/model/tiny.yaml (random weights) with 12 blocks, so the paper's blocks 0, 4, 8 exist.
SMOKE_MODEL, SMOKE_MODEL_OVERRIDES = "tiny", ("pretrained=false", "kwargs.depth=12")
# The ShapeBench folder and parameters of repshift/configs/smoke/on.yaml, so SMOKE maps reuse the SMOKE sweeps' images.
SMOKE_SHAPEBENCH = ("shapebench-smoke", {"n_train_per_class": 1, "n_val_per_class": 2, "seed": 0})

#: Fig. 7's network and, without --image, one ShapeBench image each of these classes (validation split, seed 0).
FIG7_MODEL = "resnet50.tv_in1k"
FIG7_CLASSES = (0, 2, 4, 6)


def to_uint8_image(image: Any, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                   std: Sequence[float] = IMAGENET_DEFAULT_STD) -> np.ndarray:
    """``H x W x 3`` uint8 from a normalised ``3 x H x W`` tensor (``mean`` / ``std`` undone) or from uint8 as it is."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu()
        if image.dim() == 4 and image.shape[0] == 1:
            image = image[0]
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be a 3 x H x W tensor, got shape {tuple(image.shape)}")
        rgb = (image * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)).clamp(0, 1)
        return (rgb.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected an H x W x 3 uint8 image or a 3 x H x W tensor, got {array.dtype} {array.shape}")
    return array


# --------------------------------------------------------------------------- Figs. 4 / 6

def score_maps(model: torch.nn.Module, images: torch.Tensor, score: str, blocks: Sequence[int]) -> torch.Tensor:
    """``[B, len(blocks), h, w]`` token scores of the patch tokens at ``blocks``, from an unpruned forward.

    ``score`` is ``attn_cls`` / ``attn_mean`` (:func:`repshift.attention_scores`) or ``<metric>-<site>``
    (:func:`repshift.representation_shift`, e.g. ``l2-mlp``).
    """
    with torch.no_grad():
        if score.startswith("attn"):
            token_scores = repshift.attention_scores(model, images, metric=score)
        else:
            metric, site = score.split("-")
            token_scores = repshift.representation_shift(model, images, metric=metric, site=site)
    depth = token_scores.shape[1]
    bad = [b for b in blocks if not 0 <= b < depth]
    if bad:
        raise ValueError(f"blocks {bad} do not exist: the model has {depth} blocks (0-based indices 0..{depth - 1})")
    patches = token_scores[:, list(blocks), getattr(model, "num_prefix_tokens", 1):]
    side = math.isqrt(patches.shape[-1])
    if side * side != patches.shape[-1]:
        raise ValueError(f"{patches.shape[-1]} patch tokens do not form a square grid")
    return patches.reshape(*patches.shape[:2], side, side).float().cpu()


@dataclass
class MapSamples:
    """The images of a map figure: normalised tensors, row names and (ShapeBench) masks ``[B, H, W]``."""

    images: torch.Tensor
    names: list[str]
    masks: Optional[torch.Tensor] = None
    dataset: str = ""


def load_samples(dataset: str, root: str | os.PathLike, n: int, img_size: int = 224) -> MapSamples:
    """``n`` images spread evenly over ``root/val`` (every class seen when ``n`` allows)."""
    from repshift.data.transforms import eval_transform

    root = Path(root)
    if dataset == "shapebench":
        from repshift.data.shapebench import ShapeBenchDataset

        data = ShapeBenchDataset(root, "val", eval_transform(img_size, crop_pct=1.0), with_masks=True)
    elif dataset == "imagenet":
        from repshift.data.folder import ImageFolderDataset

        if not (root / "val").is_dir():
            raise FileNotFoundError(f"data={root} has no val/ folder: point data= at an ImageNet-layout folder "
                                    "(<root>/val/<class>/<image>), e.g. data=/datasets/imagenet")
        data = ImageFolderDataset(root, "val", eval_transform(img_size))
    else:
        raise ValueError(f"dataset={dataset!r}: use imagenet or shapebench")
    if len(data) == 0:
        raise FileNotFoundError(f"data={root}: no images under val/")
    indices = [int(i * len(data) / n) for i in range(min(n, len(data)))]
    items = [data[i] for i in indices]
    names = [f"{Path(data.samples[i][0]).parent.name}/{Path(data.samples[i][0]).stem}" for i in indices]
    images = torch.stack([item[0] for item in items])
    masks = torch.stack([item[2] for item in items]) if dataset == "shapebench" else None
    return MapSamples(images, names, masks, dataset)


def smoke_samples(n: int) -> MapSamples:
    """``n`` images (with masks) of the SMOKE ShapeBench folder under ``$REPSHIFT_DATA`` (or ./data), made if missing."""
    from repshift.data import shapebench

    folder, params = SMOKE_SHAPEBENCH
    root = Path(os.environ.get("REPSHIFT_DATA", Path.cwd() / "data")) / folder
    return load_samples("shapebench", shapebench.ensure(root, progress=False, **params), n)


def _model_config(name: str, overrides: Sequence[str]) -> dict:
    # the model configs interpolate the suite's paths (e.g. ${paths.output_dir}/shapebench/...)
    paths = {"root_dir": os.getcwd(),
             "data_dir": os.environ.get("REPSHIFT_DATA", str(Path.cwd() / "data")),
             "output_dir": os.environ.get("REPSHIFT_OUTPUTS", str(Path.cwd() / "outputs"))}
    node = OmegaConf.merge(OmegaConf.create({"paths": paths, "model": load_config("model", name)}),
                           OmegaConf.from_dotlist([f"model.{o}" for o in overrides]))
    return OmegaConf.to_container(node, resolve=True)["model"]


def build_map_model(name: str, overrides: Sequence[str] = (), device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """The model of ``repshift/configs/model/<name>.yaml`` with ``key=value`` overrides, its weights loaded, in eval mode."""
    from repshift.models import build_model

    model, weights = build_model(_model_config(name, overrides))
    return model.to(device).eval(), weights


def _caption(model_name: str, weights: dict, samples: MapSamples) -> str:
    source = str(weights.get("source", ""))
    # a local file is named, not its path on this machine
    kind = "random weights" if not weights.get("real") else Path(source[5:]).name if source.startswith("file:") else source
    data = {"shapebench": "ShapeBench (synthetic)", "imagenet": "ImageNet val"}.get(samples.dataset, samples.dataset)
    dagger = " †" if not weights.get("real") or samples.dataset == "shapebench" else ""
    return f"{model_name} ({kind}) on {data}{dagger}"


@dataclass
class MapFigure:
    """A drawn map figure: the figure, the raw maps drawn (``{score: [B, blocks, h, w]}``) and, once saved, its files."""

    name: str
    figure: Figure
    maps: dict[str, np.ndarray]
    blocks: tuple[int, ...]
    paths: list[Path] = field(default_factory=list)


def make_map_figures(model: torch.nn.Module, samples: MapSamples, out_dir: str | os.PathLike, caption: str,
                     blocks: Sequence[int] = PAPER_BLOCKS, logger: Any = None,
                     figures: Sequence[str] = tuple(MAP_FIGURES), dpi: int = 100) -> list[MapFigure]:
    """Compute, draw and save each of ``figures`` (keys of :data:`MAP_FIGURES`) as PNG + PDF under ``out_dir``."""
    device = next(model.parameters()).device
    images = samples.images.to(device)
    pictures = [to_uint8_image(image) for image in samples.images]
    masks = [mask.numpy() for mask in samples.masks] if samples.masks is not None else None
    drawn = []
    for name in figures:
        maps = {score: score_maps(model, images, score, blocks).numpy() for _, score in MAP_FIGURES[name]}
        columns = [(label, score, j, block) for label, score in MAP_FIGURES[name] for j, block in enumerate(blocks)]
        what = " vs ".join(label for label, _ in MAP_FIGURES[name])
        title = (f"Figure {name[-1]} — {what}, min-max normalised per map; {caption}"
                 + ("\n† random weights or synthetic data: not comparable with the paper" if "†" in caption else ""))
        fig = overlay_grid(pictures, [[maps[score][i, j] for _, score, j, _ in columns] for i in range(len(pictures))],
                           row_labels=samples.names, masks=masks, title=title,
                           column_titles=[f"{label}\nL{block + 1} (block {block})" for label, _, _, block in columns],
                           image_title="image" + (" (mask outlined)" if masks is not None else ""))
        result = MapFigure(name, fig, maps, tuple(blocks))
        result.paths = save_figure(fig, out_dir, name, logger=logger, dpi=dpi)
        drawn.append(result)
    return drawn


# --------------------------------------------------------------------------- Fig. 7

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
    """Mean shift over foreground locations / mean over background ones (the mask resized to the map's grid,
    bilinearly; a location is foreground when at least half of it is)."""
    height, width = score_map.shape
    resized = F.interpolate(torch.as_tensor(np.asarray(mask), dtype=torch.float32)[None, None], size=(height, width),
                            mode="bilinear", align_corners=False)[0, 0]
    foreground = (resized >= 0.5).numpy()
    values = score_map.float().cpu().numpy()
    if foreground.all() or not foreground.any():
        return float("nan")
    return float(values[foreground].mean() / max(values[~foreground].mean(), 1e-12))


def figure7(out: Path, *, model_name: str = FIG7_MODEL, image_paths: Sequence[str] = (), random_weights: bool = False,
            checkpoint: Optional[str] = None, img_size: int = 224, metric: str = "l2", site: str = "mlp",
            reading: str = "literal") -> dict:
    """Draw Fig. 7 into ``out``; returns what ``fig7.json`` holds."""
    from PIL import Image

    from repshift.data import shapebench
    from repshift.data.transforms import eval_transform
    from repshift.models import build_model

    model, weights = build_model(model_name, pretrained=not random_weights and not checkpoint, checkpoint=checkpoint)
    if image_paths:
        pictures = [Image.open(p).convert("RGB") for p in image_paths]
        masks, labels = None, [Path(p).name for p in image_paths]
        transform = eval_transform(img_size, crop_pct=0.875)
    else:
        drawn = [shapebench.render(0, "val", c, 0, img_size=img_size) for c in FIG7_CLASSES]
        pictures = [image for image, _ in drawn]
        masks = [np.asarray(mask) >= 128 for _, mask in drawn]
        labels = [f"ShapeBench {shapebench.CLASSES[c]}" for c in FIG7_CLASSES]
        transform = eval_transform(img_size, crop_pct=1.0)  # keeps the masks aligned with the pixels
    batch = torch.stack([transform(p) for p in pictures])
    per_stage = stage_maps(model, batch, metric=metric, site=site, reading=reading)
    maps = [[stage[i] for stage in per_stage] for i in range(len(pictures))]
    ratios = None if masks is None else [[foreground_ratio(m, mask) for m in row] for row, mask in zip(maps, masks)]
    source = "RANDOM WEIGHTS (not the paper's model)" if not weights["real"] else weights["source"]
    title = f"Representation shift per stage, {model_name} ({source}); {metric}, site={site}, reading={reading}"
    png = stage_figure(out / "fig7.png", [to_uint8_image(b) for b in batch], [[m.numpy() for m in row] for row in maps],
                       labels, [f"Stage {s + 1}" for s in range(len(per_stage))], ratios, title)
    record = {"png": str(png), "model": model_name, "weights": weights, "metric": metric, "site": site,
              "reading": reading, "images": labels, "grids": [list(m.shape) for m in maps[0]],
              "fg_bg_ratio": ratios}
    (out / "fig7.json").write_text(json.dumps(record, indent=2))
    return record


# --------------------------------------------------------------------------- command line

def parser() -> Parser:
    main = Parser(prog="python -m repshift.maps", description=__doc__)
    commands = main.add_subparsers(dest="command", required=True, metavar="{maps,fig7}")
    maps = commands.add_parser("maps", help="Figs. 4 / 6: class attention vs representation-shift maps",
                               description="Figs. 4 / 6: class attention vs representation-shift maps of a ViT.")
    maps.add_argument("overrides", nargs="*", metavar="model.KEY=VALUE", help="overrides of the model config")
    maps.add_argument("--model", default=None,
                      help="a config of repshift/configs/model/ (default deit_b; tiny with --smoke)")
    maps.add_argument("--dataset", default="imagenet", choices=("imagenet", "shapebench"),
                      help="imagenet: an ImageNet-layout folder (DeiT's eval transform); shapebench: masks outlined")
    maps.add_argument("--data", default=None, help="the dataset root holding val/ (default $REPSHIFT_DATA/imagenet)")
    maps.add_argument("--images", type=int, default=None,
                      help="rows, evenly spaced over the split (default 4; 3 with --smoke)")
    maps.add_argument("--blocks", type=int_list, default=PAPER_BLOCKS, help="0-based blocks (default 0,4,8)")
    maps.add_argument("--figures", type=str_list, default=tuple(MAP_FIGURES), help="fig6,fig4 or one of them")
    maps.add_argument("--out", default="outputs/figures")
    maps.add_argument("--logger", choices=("wandb", "none"), default=None, help="default wandb (none with --smoke)")
    maps.add_argument("--device", default="cpu")
    maps.add_argument("--dpi", type=int, default=100, help="of the PNG")
    maps.add_argument("--smoke", action="store_true",
                      help="the SMOKE setting: a 12-block random tiny ViT on ShapeBench")
    fig7 = commands.add_parser("fig7", help="Fig. 7: the representation shift of every ResNet-50 stage",
                               description="Fig. 7: the representation-shift map of every stage of a timm ResNet.")
    fig7.add_argument("--image", action="append", default=[], help="an image file (repeatable); default: ShapeBench")
    fig7.add_argument("--model", default=FIG7_MODEL, help=f"a timm ResNet (default {FIG7_MODEL})")
    fig7.add_argument("--checkpoint", default=None, help="local weights instead of timm's hub/cache")
    fig7.add_argument("--random-weights", action="store_true", help="no weights at all (pipeline check)")
    fig7.add_argument("--img-size", type=int, default=224)
    fig7.add_argument("--metric", default="l2", choices=scores.SHIFT_METRICS)
    fig7.add_argument("--site", default="mlp", choices=("mlp", "stage"))
    fig7.add_argument("--reading", default="literal", choices=("literal", "update", "normed"))
    fig7.add_argument("--out", default="outputs/fig7")
    return main


def _maps_main(args) -> int:
    bad = [o for o in args.overrides if not o.startswith("model.") or "=" not in o]
    if bad:
        print(f"error: positional arguments are model.KEY=VALUE overrides, got {' '.join(bad)}", file=sys.stderr)
        return 2
    unknown = set(args.figures) - set(MAP_FIGURES)
    if unknown:
        print(f"error: figures {sorted(unknown)}: known map figures are {', '.join(MAP_FIGURES)}", file=sys.stderr)
        return 2
    overrides = [o[len("model."):] for o in args.overrides]
    n_images = args.images or (3 if args.smoke else 4)
    if args.smoke:
        name, overrides = args.model or SMOKE_MODEL, [*SMOKE_MODEL_OVERRIDES, *overrides]
        samples = smoke_samples(n_images)
    else:
        name = args.model or "deit_b"
        root = args.data or Path(os.environ.get("REPSHIFT_DATA", Path.cwd() / "data")) / "imagenet"
        try:
            samples = load_samples(args.dataset, root, n_images)
        except (FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    model, weights = build_map_model(name, overrides, device=args.device)
    out = Path(args.out)
    logger = figure_logger(args.logger or ("none" if args.smoke else "wandb"), out, "maps")
    try:
        drawn = make_map_figures(model, samples, out, _caption(name, weights, samples), args.blocks, logger,
                                 args.figures, dpi=args.dpi)
    finally:
        logger.finish()
    for result in drawn:
        print("wrote " + ", ".join(str(p) for p in result.paths))
    return 0


def _fig7_main(args) -> int:
    record = figure7(Path(args.out), model_name=args.model, image_paths=args.image, random_weights=args.random_weights,
                     checkpoint=args.checkpoint, img_size=args.img_size, metric=args.metric, site=args.site,
                     reading=args.reading)
    print(f"wrote {record['png']} (stage grids {record['grids']})")
    for label, row in zip(record["images"], record["fg_bg_ratio"] or []):
        print(f"  {label}: foreground/background shift per stage " + " ".join(f"{r:.2f}" for r in row))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    return {"maps": _maps_main, "fig7": _fig7_main}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
