"""Figure 1: mean R@1 over the Table 2 benchmarks against throughput, UMT-B/L, as a PNG.

    python -m repshift.report.fig1 [results=outputs] [out=<results>/tables] [experiment=table2]

Reads Table 2's runs (``<results>/<experiment>``), writes ``fig1.md``, ``fig1.csv`` and ``fig1.png``
to ``out`` and prints the table. Our points are filled, the paper's (from its Table 2) hollow; a
variant the paper gives no number for (Ours without FlashAttention, Base+FA) has ours only.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Iterable

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from repshift.report.figures import save_figure
from repshift.report.video_tables import FIG1_LABELS, fig1_points

__all__ = ["plot_fig1", "main"]

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
    ax.scatter([], [], marker="o", facecolors="none", edgecolors="black", label="paper (Table 2)")
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


def main(argv: Iterable[str] | None = None) -> int:
    from omegaconf import OmegaConf

    from repshift.report.results import load_results
    from repshift.report.tables import render, write
    from repshift.report.video_tables import build_fig1

    argv = list(sys.argv[1:] if argv is None else argv)
    bad = [a for a in argv if "=" not in a]
    cli = OmegaConf.to_container(OmegaConf.from_cli([a for a in argv if "=" in a]), resolve=True)
    unknown = sorted(set(cli) - {"results", "out", "experiment"})
    if bad or unknown:
        print(f"error: arguments are results=, out=, experiment= (got {bad + unknown})\n{__doc__}", file=sys.stderr)
        return 2
    root = Path(str(cli.get("results", "outputs")))
    folder = root / str(cli.get("experiment", "table2"))
    out = Path(str(cli.get("out", root / "tables")))
    results = load_results(folder)
    if not results:
        print(f"error: no result.json under {folder}; run experiment=table2 and experiment=fig1 first", file=sys.stderr)
        return 1
    df = build_fig1(results)
    md_path, _ = write("fig1", df, out)
    png = plot_fig1(fig1_points(results), out / "fig1.png", title="Fig. 1: mean R@1 vs throughput (UMT)")
    print(render("fig1", df)[0], end="")
    print(f"[{len(results)} result file(s) from {folder}] wrote {md_path}, {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
