"""The one renderer of every score-map figure: images with min-max normalised maps laid over them.

Figs. 4 / 6 (class attention vs representation shift at DeiT's blocks), Fig. 7 and the real-weights tier
(the shift of every CNN stage) and the demo's score maps all draw through :func:`overlay_grid`. It takes
arrays — images as ``H x W x 3`` uint8, maps as ``h x w`` numbers — and knows nothing of models: the maps are
computed on the runner side (:mod:`repshift.maps`, :mod:`repshift.realweights`, :mod:`repshift.demo`).
Maps are upsampled with PIL's bilinear filter (pixel centres aligned, as ``F.interpolate(...,
align_corners=False)``).

Uses matplotlib's object-oriented API on an Agg canvas, so it never changes the caller's pyplot backend.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

__all__ = ["normalise_map", "as_grid", "upsample", "overlay_grid", "stage_figure"]


def normalise_map(m: Any) -> np.ndarray:
    """Min-max normalise to [0, 1]; a constant (or all-NaN) map becomes all zeros. NaNs count as the minimum."""
    arr = np.asarray(m, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        return np.zeros_like(arr)
    lo, hi = arr[finite].min(), arr[finite].max()
    arr = np.where(finite, arr, lo)
    return np.zeros_like(arr) if hi - lo <= 0 else (arr - lo) / (hi - lo)


def as_grid(m: Any) -> np.ndarray:
    """A 2-D map: ``h x w`` as it is, a vector of ``side²`` token scores as its square grid."""
    arr = np.squeeze(np.asarray(m, dtype=np.float64))
    if arr.ndim == 1:
        side = math.isqrt(arr.size)
        if side * side != arr.size:
            raise ValueError(f"1-D score map of length {arr.size} is not a square grid")
        arr = arr.reshape(side, side)
    if arr.ndim != 2:
        raise ValueError(f"score map must be 2-D (h, w), got shape {arr.shape}")
    return arr


def upsample(m: Any, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``(height, width)`` (PIL, pixel centres aligned)."""
    grid = as_grid(m).astype(np.float32)
    if grid.shape == (height, width):
        return grid.astype(np.float64)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BILINEAR), dtype=np.float64)


def overlay_grid(images: Sequence[np.ndarray], maps: Sequence[Sequence[Optional[Any]]], *, row_labels: Sequence[str],
                 column_titles: Sequence[str], title: str = "", panel_labels: Optional[Sequence[Sequence[str]]] = None,
                 masks: Optional[Sequence[Optional[np.ndarray]]] = None, image_title: str = "image",
                 colorbar: bool = True, cmap: str = "jet", alpha: float = 0.5, panel_size: float = 1.9) -> Figure:
    """One row per image: the image, then ``maps[row][column]`` each min-max normalised, upsampled and laid over it.

    ``images``: ``H x W x 3`` uint8, one per row; ``maps[row]``: one 2-D map (or None: an empty grey panel) per
    entry of ``column_titles``; ``panel_labels[row][column]``: a caption under that panel (grid size, a ratio);
    ``masks[row]``: a foreground mask ``H x W`` outlined in white on every panel of its row. One colour bar
    serves every panel. Constrained layout keeps titles, captions and the colour bar clear of each other.
    """
    rows, columns = len(images), len(column_titles)
    if rows == 0 or len(maps) != rows or len(row_labels) != rows:
        raise ValueError(f"{rows} images, {len(maps)} rows of maps and {len(row_labels)} row labels: need one per row")
    fig = Figure(figsize=(panel_size * (1 + columns) + (0.9 if colorbar else 0.2),
                          panel_size * rows + 0.5 + 0.15 * title.count("\n")), layout="constrained")
    fig.get_layout_engine().set(h_pad=0.08)  # room for the descenders of the bottom row's captions
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1 + columns, squeeze=False)
    for i, image in enumerate(images):
        image = np.asarray(image)
        height, width = image.shape[:2]
        mask = masks[i] if masks is not None else None
        axes[i][0].imshow(image)
        axes[i][0].set_ylabel(row_labels[i], fontsize=7)
        if len(maps[i]) != columns:
            raise ValueError(f"row {i} has {len(maps[i])} maps for {columns} columns")
        for j, score_map in enumerate(maps[i], start=1):
            ax = axes[i][j]
            if score_map is None:
                ax.set_facecolor("0.9")
            else:
                ax.imshow(image)
                ax.imshow(upsample(normalise_map(as_grid(score_map)), height, width), cmap=cmap, alpha=alpha,
                          vmin=0.0, vmax=1.0)
            if panel_labels is not None:
                ax.set_xlabel(panel_labels[i][j - 1], fontsize=6)
        if mask is not None:
            for ax in axes[i]:
                ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors="white", linewidths=0.8)
    for j, name in enumerate([image_title, *column_titles]):
        axes[0][j].set_title(name, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if colorbar:
        fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap=cmap), ax=axes[:, 1:].ravel().tolist(), shrink=0.8,
                     label="score (min–max per map)")
    if title:
        fig.suptitle(title, fontsize=8)
    return fig


def stage_figure(path: str | os.PathLike, images: Sequence[np.ndarray], maps: Sequence[Sequence[Any]],
                 row_labels: Sequence[str], column_titles: Sequence[str], ratios: Optional[Sequence[Sequence[float]]],
                 title: str, dpi: int = 120) -> Path:
    """A CNN's stage maps (Fig. 7, the real-weights tier): ``maps[row][stage]``, each panel captioned with its grid
    and, when ``ratios`` are given, its foreground / background mean ratio; writes ``path`` (PNG) and a PDF beside it."""
    from repshift.report.figures import save_figure

    captions = []
    for i, row in enumerate(maps):
        captions.append([f"{as_grid(m).shape[0]}x{as_grid(m).shape[1]}"
                         + ("" if ratios is None else f", fg/bg {ratios[i][j]:.2f}") for j, m in enumerate(row)])
    fig = overlay_grid(images, maps, row_labels=row_labels, column_titles=column_titles, title=title,
                       panel_labels=captions, colorbar=False, panel_size=2.2)
    path = Path(path)
    save_figure(fig, path.parent, path.stem, dpi=dpi)
    return path
