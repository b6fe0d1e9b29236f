"""Figures: Fig.-6-style score-map grids and per-layer accuracy curves (Fig. 3 / 5).

Uses matplotlib's Agg backend (no display needed) through the object-oriented API, so
importing this module never changes the global pyplot backend of the caller.
"""

from __future__ import annotations

import math
import os
import re
import textwrap
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "to_uint8_image", "resize_map", "normalise_map",
           "save_score_maps", "plot_layer_curves"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach()
        if getattr(x.dtype, "is_floating_point", False):
            x = x.float()  # bfloat16 / float16 have no (portable) numpy equivalent
        x = x.cpu().numpy()
    return np.asarray(x)


def to_uint8_image(image: Any, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """HxWx3 uint8 from either HxWx3 uint8 or a 3xHxW (float) tensor normalised with mean/std."""
    arr = _to_numpy(image)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"image must be HxWx3 or 3xHxW, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        if arr.shape[-1] == 3:
            return arr
        if arr.shape[0] == 3:
            return np.ascontiguousarray(arr.transpose(1, 2, 0))
        raise ValueError(f"uint8 image must have 3 channels, got shape {arr.shape}")
    arr = arr.astype(np.float32)
    if arr.shape[0] == 3 and arr.shape[-1] != 3:
        chw = arr
    elif arr.shape[-1] == 3:
        chw = arr.transpose(2, 0, 1)
    else:
        raise ValueError(f"float image must have 3 channels, got shape {arr.shape}")
    m = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    rgb = np.clip(chw * s + m, 0.0, 1.0)
    return (rgb.transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8)


def normalise_map(m: Any) -> np.ndarray:
    """Min-max normalise to [0, 1]; a constant map becomes all zeros. NaNs count as the minimum."""
    arr = _to_numpy(m).astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        return np.zeros_like(arr)
    lo, hi = arr[finite].min(), arr[finite].max()
    arr = np.where(finite, arr, lo)
    if hi - lo <= 0:
        return np.zeros_like(arr)
    return (arr - lo) / (hi - lo)


def _as_grid(m: Any) -> np.ndarray:
    arr = _to_numpy(m)
    arr = np.squeeze(arr)
    if arr.ndim == 1:  # a token vector: square grid of patch tokens
        side = int(round(math.sqrt(arr.size)))
        if side * side != arr.size:
            raise ValueError(f"1-D score map of length {arr.size} is not a square grid")
        arr = arr.reshape(side, side)
    if arr.ndim != 2:
        raise ValueError(f"score map must be 2-D (h, w), got shape {arr.shape}")
    return arr


def resize_map(m: Any, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a 2-D map to (height, width), pixel centres aligned."""
    arr = _as_grid(m).astype(np.float64)
    h, w = arr.shape
    if (h, w) == (height, width):
        return arr
    ys = (np.arange(height) + 0.5) * h / height - 0.5
    xs = (np.arange(width) + 0.5) * w / width - 0.5
    ys = np.clip(ys, 0, h - 1)
    xs = np.clip(xs, 0, w - 1)
    y0 = np.floor(ys).astype(int)
    x0 = np.floor(xs).astype(int)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    wy = (ys - y0)[:, None]
    wx = (xs - x0)[None, :]
    top = arr[y0][:, x0] * (1 - wx) + arr[y0][:, x1] * wx
    bottom = arr[y1][:, x0] * (1 - wx) + arr[y1][:, x1] * wx
    return top * (1 - wy) + bottom * wy


def save_score_maps(path: str | os.PathLike, image: Any, rows: Mapping[str, Mapping[str, Any]],
                    title: str | None = None, cmap: str = "jet", alpha: float = 0.5,
                    dpi: int = 120) -> Path:
    """Fig.-6-style grid: the image in column 0, then one map per column label for each row label.

    ``rows`` maps a row label (e.g. ``"Attn (cls)"``) to ``{column label: map[h, w]}``
    (e.g. ``{"layer 1": ..., "layer 5": ...}``). Each map is min-max normalised, upsampled
    to the image size and overlaid on the image.
    """
    path = Path(path)
    img = to_uint8_image(image)
    height, width = img.shape[:2]
    row_labels = list(rows)
    if not row_labels:
        raise ValueError("rows is empty: nothing to draw")
    col_labels: list[str] = []
    for maps in rows.values():
        for c in maps:
            if c not in col_labels:
                col_labels.append(c)
    nrows, ncols = len(row_labels), 1 + len(col_labels)
    fig = Figure(figsize=(2.2 * ncols, 2.2 * nrows + (0.4 if title else 0.0)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, rlabel in enumerate(row_labels):
        ax = axes[i][0]
        ax.imshow(img)
        ax.set_ylabel(rlabel, fontsize=9)
        if i == 0:
            ax.set_title("image", fontsize=9)
        for j, clabel in enumerate(col_labels, start=1):
            ax = axes[i][j]
            if i == 0:
                ax.set_title(str(clabel), fontsize=9)
            m = rows[rlabel].get(clabel)
            if m is None:
                ax.set_facecolor("0.9")
                continue
            heat = resize_map(normalise_map(_as_grid(m)), height, width)
            ax.imshow(img)
            ax.imshow(heat, cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _layer_index(col: Any) -> float | None:
    m = re.search(r"-?\d+", str(col))
    return float(m.group()) if m else None


def plot_layer_curves(df: Any, path: str | os.PathLike, ylabel: str = "top-1 (%)",
                      title: str | None = None, xlabel: str = "pruned layer (0-based block)") -> Path:
    """One line per row of a fig3 / fig5 table (columns ``layer k``); a dashed red line per baseline.

    The baseline comes from ``df.attrs["baseline"]`` (``{model: top-1}`` or a number) when present.
    """
    path = Path(path)
    cols = [c for c in df.columns if _layer_index(c) is not None]
    xs = [_layer_index(c) for c in cols]
    order = np.argsort(xs)
    cols = [cols[k] for k in order]
    xs = [xs[k] for k in order]
    fig = Figure(figsize=(5.5, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for label, row in df[cols].iterrows():
        ys = np.asarray([float(v) if v is not None else np.nan for v in row.to_numpy()], dtype=float)
        ax.plot(xs, ys, marker="o", label=str(label))
    baseline = df.attrs.get("baseline") if hasattr(df, "attrs") else None
    if isinstance(baseline, Mapping):
        items = list(baseline.items())
    elif baseline is not None:
        items = [("base", baseline)]
    else:
        items = []
    for name, value in items:
        if value is None or not np.isfinite(float(value)):
            continue
        ax.axhline(float(value), color="red", linestyle="--", linewidth=1,
                   label=f"no pruning ({name})" if len(items) > 1 else "no pruning")
    ax.set_xticks(xs)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title or (hasattr(df, "attrs") and df.attrs.get("title")):
        text = title or str(df.attrs["title"]).split(";")[0]
        ax.set_title(textwrap.fill(text, 70), fontsize=8)
    ax.grid(True, alpha=0.3)
    if len(df) or items:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
