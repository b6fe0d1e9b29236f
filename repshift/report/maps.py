"""Score maps (Figs. 4 and 6): where class attention and representation shift see a token as important.

    python -m repshift.report maps [model=deit_b] [data=data/imagenet] [images=4] [out=outputs/figures]
    python -m repshift.report maps smoke=true        # tiny random ViT on ShapeBench, masks outlined

One row per image: the image, then each score's map at the paper's blocks (Fig. 6: DeiT-B, layers 1, 5, 9,
i.e. 0-based blocks 0, 4, 8), each min-max normalised and overlaid on the image, with one colour bar.

- ``fig6``: class attention (Eq. 2, ``repshift.attention_scores``) beside the L2 representation shift across
  the MLP (``repshift.representation_shift``, the paper's default score).
- ``fig4``: the L2 representation shift across the attention layer (the paper's Fig. 4 and Sec. 3 probe).

Every value drawn comes from those two functions on an unpruned forward; prefix tokens (class,
distillation, registers) are left out and the patch tokens are laid out on their grid.

Arguments (``key=value``): ``model`` (a config in repshift/configs/model/, default deit_b) and ``model.<key>=...``
overrides of it (``model.checkpoint=/path/deit_base.pth``, ``model.pretrained=false``); ``dataset``
(``imagenet``: an ImageNet-layout folder read with the DeiT evaluation transform; ``shapebench``: with its
ground-truth masks outlined) and ``data`` (its root, holding ``val/``); ``images`` (rows, evenly spaced
over the split); ``blocks`` (0-based, default ``[0,4,8]``); ``out``; ``logger`` (``wandb`` or ``none``);
``device``; ``figures`` (default ``[fig6,fig4]``); ``dpi`` (of the PNG, default 100); ``smoke=true`` (the SMOKE settings: a 12-block width-32 random ViT, ``model=tiny
model.kwargs.depth=12``, on the ShapeBench images the SMOKE sweeps use).
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from omegaconf import OmegaConf

import repshift
from repshift.configs import CONFIG_DIR
from repshift.report.figures import normalise_map, resize_map, save_figure, to_uint8_image

__all__ = ["PAPER_BLOCKS", "MAP_FIGURES", "MapSamples", "MapFigure", "score_maps", "load_samples", "smoke_samples",
           "map_figure", "build_map_model", "make_map_figures", "main"]

#: The paper's layers 1, 5, 9 of DeiT-B (Fig. 6), as 0-based block indices.
PAPER_BLOCKS = (0, 4, 8)

#: figure name -> (column label, score) pairs; a score is ``attn_cls`` / ``attn_mean`` or ``<metric>-<site>``.
MAP_FIGURES: dict[str, tuple[tuple[str, str], ...]] = {
    "fig6": (("Attn (class attention)", "attn_cls"), ("Ours (L2, MLP)", "l2-mlp")),
    "fig4": (("Shift across attention (L2)", "l2-attn"),),
}

CONFIGS = CONFIG_DIR
# SMOKE: repshift/configs/model/tiny.yaml (random weights) with 12 blocks, so the paper's blocks 0, 4, 8 exist.
SMOKE_MODEL, SMOKE_MODEL_OVERRIDES = "tiny", ("pretrained=false", "kwargs.depth=12")
# The ShapeBench folder and parameters of repshift/configs/smoke/on.yaml, so SMOKE maps reuse the SMOKE sweeps' images.
SMOKE_SHAPEBENCH = ("shapebench-smoke", {"n_train_per_class": 1, "n_val_per_class": 2, "seed": 0})
USAGE = ("usage: python -m repshift.report maps [model=deit_b] [model.<key>=value ...] [dataset=imagenet|shapebench] "
         "[data=<root holding val/>] [images=4] [blocks=[0,4,8]] [out=outputs/figures] [logger=wandb|none] "
         "[device=cpu] [smoke=true]")


def score_maps(model: torch.nn.Module, images: torch.Tensor, score: str, blocks: Sequence[int]) -> torch.Tensor:
    """``[B, len(blocks), h, w]`` token scores of the patch tokens at ``blocks``, from an unpruned forward.

    ``score`` is ``attn_cls`` / ``attn_mean`` (:func:`repshift.attention_scores`) or ``<metric>-<site>``
    (:func:`repshift.representation_shift`, e.g. ``l2-mlp``).
    """
    with torch.no_grad():
        if score.startswith("attn"):
            scores = repshift.attention_scores(model, images, metric=score)
        else:
            metric, site = score.split("-")
            scores = repshift.representation_shift(model, images, metric=metric, site=site)
    depth = scores.shape[1]
    bad = [b for b in blocks if not 0 <= b < depth]
    if bad:
        raise ValueError(f"blocks {bad} do not exist: the model has {depth} blocks (0-based indices 0..{depth - 1})")
    patches = scores[:, list(blocks), getattr(model, "num_prefix_tokens", 1):]
    side = math.isqrt(patches.shape[-1])
    if side * side != patches.shape[-1]:
        raise ValueError(f"{patches.shape[-1]} patch tokens do not form a square grid")
    return patches.reshape(*patches.shape[:2], side, side).float().cpu()


@dataclass
class MapSamples:
    """The images of a map figure: normalised tensors, row names and (ShapeBench) masks ``[B, H, W]``."""

    images: torch.Tensor
    names: list[str]
    masks: torch.Tensor | None = None
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


@dataclass
class MapFigure:
    """A drawn map figure: the figure, the raw maps drawn (``{score: [B, blocks, h, w]}``) and, once saved, its files."""

    name: str
    figure: Figure
    maps: dict[str, np.ndarray]
    blocks: tuple[int, ...]
    paths: list[Path] = field(default_factory=list)


def map_figure(samples: MapSamples, maps: dict[str, tuple[str, torch.Tensor]], blocks: Sequence[int],
               title: str, cmap: str = "jet", alpha: float = 0.5) -> Figure:
    """One row per image: the image, then ``maps`` (``{score: (column label, [B, len(blocks), h, w])}``) per block.

    Each map is min-max normalised on its own, upsampled bilinearly to the image and overlaid on it; one colour
    bar serves them all. A ShapeBench mask is outlined in white on every panel of its row.
    """
    n_images = len(samples.names)
    columns = [(score, label, j, block) for score, (label, _) in maps.items() for j, block in enumerate(blocks)]
    fig = Figure(figsize=(1.9 * (1 + len(columns)) + 0.9, 1.9 * n_images + 0.7), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_images, 1 + len(columns), squeeze=False)
    for i in range(n_images):
        image = to_uint8_image(samples.images[i])
        height, width = image.shape[:2]
        mask = samples.masks[i].numpy() if samples.masks is not None else None
        axes[i][0].imshow(image)
        axes[i][0].set_ylabel(samples.names[i], fontsize=7)
        for k, (score, label, j, block) in enumerate(columns, start=1):
            ax = axes[i][k]
            ax.imshow(image)
            ax.imshow(resize_map(normalise_map(maps[score][1][i, j]), height, width), cmap=cmap, alpha=alpha,
                      vmin=0.0, vmax=1.0)
            if i == 0:
                ax.set_title(f"{label}\nL{block + 1} (block {block})", fontsize=7)
        if mask is not None:
            for ax in axes[i]:
                ax.contour(mask, levels=[0.5], colors="white", linewidths=0.8)
    axes[0][0].set_title("image" + (" (mask outlined)" if samples.masks is not None else ""), fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap=cmap), ax=axes[:, 1:].ravel().tolist(), shrink=0.8,
                 label="score (min–max per map)")
    fig.suptitle(title, fontsize=9)
    return fig


def _model_config(name: str, overrides: list[str]) -> dict:
    path = CONFIGS / "model" / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml")))
        raise FileNotFoundError(f"model={name}: no repshift/configs/model/{name}.yaml; known: {known}")
    # the model configs interpolate the suite's paths (e.g. ${paths.output_dir}/shapebench/...)
    paths = {"root_dir": os.getcwd(),
             "data_dir": os.environ.get("REPSHIFT_DATA", str(Path.cwd() / "data")),
             "output_dir": os.environ.get("REPSHIFT_OUTPUTS", str(Path.cwd() / "outputs"))}
    node = OmegaConf.merge(OmegaConf.create({"paths": paths, "model": OmegaConf.load(path)}),
                           OmegaConf.from_dotlist([f"model.{o}" for o in overrides]))
    return OmegaConf.to_container(node, resolve=True)["model"]


def build_map_model(name: str, overrides: list[str] = (), device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """The model of ``repshift/configs/model/<name>.yaml`` with ``key=value`` overrides, its weights loaded, in eval mode."""
    from repshift.models import build_model

    model, weights = build_model(_model_config(name, list(overrides)))
    return model.to(device).eval(), weights


def _caption(model_name: str, weights: dict, samples: MapSamples) -> str:
    source = str(weights.get("source", ""))
    # a local file is named, not its path on this machine
    kind = "random weights" if not weights.get("real") else Path(source[5:]).name if source.startswith("file:") else source
    data = {"shapebench": "ShapeBench (synthetic)", "imagenet": "ImageNet val"}.get(samples.dataset, samples.dataset)
    dagger = " †" if not weights.get("real") or samples.dataset == "shapebench" else ""
    return f"{model_name} ({kind}) on {data}{dagger}"


def make_map_figures(model: torch.nn.Module, samples: MapSamples, out_dir: str | os.PathLike,
                     caption: str, blocks: Sequence[int] = PAPER_BLOCKS, logger: Any = None,
                     figures: Sequence[str] = tuple(MAP_FIGURES), dpi: int = 100) -> list[MapFigure]:
    """Draw and save each of ``figures`` (keys of :data:`MAP_FIGURES`) as PNG + PDF under ``out_dir``."""
    device = next(model.parameters()).device
    images = samples.images.to(device)
    drawn = []
    for name in figures:
        maps = {score: (label, score_maps(model, images, score, blocks)) for label, score in MAP_FIGURES[name]}
        what = " vs ".join(label for label, _ in MAP_FIGURES[name])
        title = (f"Figure {name[-1]} — {what}, min-max normalised per map; {caption}"
                 + ("\n† random weights or synthetic data: not comparable with the paper" if "†" in caption else ""))
        fig = map_figure(samples, maps, blocks, title)
        result = MapFigure(name, fig, {score: m.numpy() for score, (_, m) in maps.items()}, tuple(blocks))
        result.paths = save_figure(fig, out_dir, name, logger=logger, dpi=dpi)
        drawn.append(result)
    return drawn


def smoke_samples(n: int) -> MapSamples:
    """``n`` images (with masks) of the SMOKE ShapeBench folder under ``$REPSHIFT_DATA`` (or ./data), made if missing."""
    from repshift.data import shapebench

    folder, params = SMOKE_SHAPEBENCH
    root = Path(os.environ.get("REPSHIFT_DATA", Path.cwd() / "data")) / folder
    return load_samples("shapebench", shapebench.ensure(root, progress=False, **params), n)


def main(argv: list[str]) -> int:
    """``python -m repshift.report maps ...`` (see the module docstring)."""
    from repshift.report.figures import figure_logger

    bad = [a for a in argv if "=" not in a]
    if bad:
        print(f"error: arguments must be key=value, got {' '.join(bad)}\n{USAGE}", file=sys.stderr)
        return 2
    model_overrides = [a[len("model."):] for a in argv if a.startswith("model.")]
    cli = OmegaConf.to_container(OmegaConf.from_cli([a for a in argv if not a.startswith("model.")]), resolve=True)
    known = {"model", "dataset", "data", "images", "blocks", "out", "logger", "device", "smoke", "figures", "dpi"}
    unknown = sorted(set(cli) - known)
    if unknown:
        print(f"error: unknown argument(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}, "
              f"model.<key>\n{USAGE}", file=sys.stderr)
        return 2
    smoke = bool(cli.get("smoke", False))
    n_images = int(cli.get("images", 3 if smoke else 4))
    blocks = tuple(int(b) for b in cli.get("blocks", PAPER_BLOCKS))
    out_dir = Path(str(cli.get("out", "outputs/figures")))
    figures = [str(f) for f in cli.get("figures", MAP_FIGURES)]
    if set(figures) - set(MAP_FIGURES):
        print(f"error: figures={figures}: known map figures are {', '.join(MAP_FIGURES)}", file=sys.stderr)
        return 2
    if smoke:
        name = str(cli.get("model", SMOKE_MODEL))
        model_overrides = [*SMOKE_MODEL_OVERRIDES, *model_overrides]
        samples = smoke_samples(n_images)
    else:
        name = str(cli.get("model", "deit_b"))
        default_root = Path(os.environ.get("REPSHIFT_DATA", Path.cwd() / "data")) / "imagenet"
        try:
            samples = load_samples(str(cli.get("dataset", "imagenet")), Path(str(cli.get("data", default_root))),
                                   n_images)
        except (FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    model, weights = build_map_model(name, model_overrides, device=str(cli.get("device", "cpu")))
    logger = figure_logger(str(cli.get("logger", "none" if smoke else "wandb")), out_dir, "maps")
    try:
        drawn = make_map_figures(model, samples, out_dir, _caption(name, weights, samples), blocks, logger,
                                 figures, dpi=int(cli.get("dpi", 100)))
    finally:
        logger.finish()
    for result in drawn:
        print("wrote " + ", ".join(str(p) for p in result.paths))
    return 0
