"""Figure 1: mean R@1 over the Table 2 benchmarks against throughput, UMT-B/L, as a PNG.

``python -m repshift.report fig1`` reads Table 2's records, writes ``fig1.md``, ``fig1.csv`` and ``fig1.png``
and prints the table. Our points are filled, the paper's (from its Table 2) hollow; a variant the paper
gives no number for (Ours without FlashAttention, Base+FA) has ours only. The paper's rates were timed on
an RTX A6000 (the legend says so), ours on whatever device ran them.
"""
from __future__ import annotations

import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from repshift.report.figures import save_figure
from repshift.report.core import PAPER_DEVICE
from repshift.report.video_tables import FIG1_LABELS

__all__ = ["plot_fig1"]

#: Marker and colour per variant, as the paper's legend groups them.
STYLE = {
    "base": ("o", "tab:grey"),
    "base+fa": ("o", "tab:purple"),
    "attn": ("s", "tab:blue"),
    "ours-sa": ("^", "tab:orange"),
    "ours": ("*", "tab:red"),
}


def plot_fig1(points: list[dict], path: str | Path, *, title: str = "") -> Path:
    """Scatter of ``points`` (as :func:`repshift.report.video_tables.fig1_points` gives them) to ``path``."""
    fig = Figure(figsize=(6.4, 4.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for p in points:
        marker, colour = STYLE[p["variant"]]
        size = 140 if marker == "*" else 60
        model = p["label"].split()[0]
        if not (math.isnan(p["throughput"]) or math.isnan(p["mean_r1"])):
            ax.scatter(p["throughput"], p["mean_r1"], marker=marker, s=size, color=colour, zorder=3)
            ax.annotate(f"{model} {FIG1_LABELS[p['variant']]}", (p["throughput"], p["mean_r1"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
        if not (math.isnan(p["paper_throughput"]) or math.isnan(p["paper_mean_r1"])):
            ax.scatter(p["paper_throughput"], p["paper_mean_r1"], marker=marker, s=size, facecolors="none",
                       edgecolors=colour, zorder=2)
            ax.annotate(f"{model} {FIG1_LABELS[p['variant']]} (paper)", (p["paper_throughput"], p["paper_mean_r1"]),
                        fontsize=6, color="dimgrey", xytext=(4, -9), textcoords="offset points")
    for variant, (marker, colour) in STYLE.items():  # legend: one entry per variant present
        if any(p["variant"] == variant for p in points):
            ax.scatter([], [], marker=marker, color=colour, label=FIG1_LABELS[variant])
    ax.scatter([], [], marker="o", facecolors="none", edgecolors="black", label=f"paper (Table 2, {PAPER_DEVICE})")
    ax.set_xscale("log")
    ax.set_xlabel("throughput (vid/s, log scale)")
    ax.set_ylabel("mean R@1 over the benchmarks (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path.parent, path.stem, dpi=150)  # PNG and a vector PDF beside it
    return path
