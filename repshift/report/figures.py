"""Figures: per-layer accuracy curves (Fig. 3 / 5, the readings) from run records, and saving / logging figures.

Uses matplotlib's Agg backend (no display needed) through the object-oriented API, so
importing this module never changes the global pyplot backend of the caller.

:func:`save_figure` writes every figure of ``make figures`` as ``<name>.png`` and ``<name>.pdf``
and logs the PNG to W&B when a logger with an open run is given. :func:`layer_figure` draws
accuracy against the pruned block from run records (:func:`make_layer_figures` for every
table folder that has records); the score maps (Figs. 4 / 6 / 7) are drawn by :mod:`repshift.report.maps`.
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

from repshift.record import RecordProblem
from repshift.report.core import (
    Run, as_runs, first_layer, load_runs, paper_numbers, paper_value, precedence, score_label, score_sort_key,
)
from repshift.report.image_tables import T8_COLUMNS

__all__ = ["layer_curves", "plot_layer_curves", "save_figure", "log_images", "layer_figure", "make_layer_figures",
           "LAYER_FIGURES", "figure_logger", "EXTERNAL_FIGURES", "collect_external_figures", "TAINT_NOTE"]


def _layer_index(col: Any) -> float | None:
    m = re.search(r"-?\d+", str(col))
    return float(m.group()) if m else None


def layer_curves(df: Any, ylabel: str = "top-1 (%)", title: str | None = None,
                 xlabel: str = "pruned layer (0-based block)") -> Figure:
    """One line per row of a fig3 / fig5 table (columns ``layer k``); a dashed red line per baseline.

    The baseline comes from ``df.attrs["baseline"]`` (``{model: top-1}`` or a number) when present.
    """
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
    return fig


def plot_layer_curves(df: Any, path: str | os.PathLike, ylabel: str = "top-1 (%)", title: str | None = None) -> Path:
    """:func:`layer_curves` of ``df`` written to ``path`` (PNG)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    layer_curves(df, ylabel=ylabel, title=title).savefig(path, dpi=120)
    return path


# --------------------------------------------------------------------------- saving and W&B

#: Legend / note text of every figure that holds points from random weights or synthetic data.
TAINT_NOTE = "† and hollow markers: random weights or synthetic data (not comparable with the paper)"


def log_images(logger: Any, images: Mapping[str, str | os.PathLike]) -> None:
    """Log PNG files to W&B as images when ``logger`` (a ``repshift.wandb_log`` logger) has a run."""
    run = getattr(logger, "run", None)
    if run is None:
        return
    import wandb

    run.log({key: wandb.Image(str(path)) for key, path in images.items()})


def save_figure(fig: Figure, out_dir: str | os.PathLike, name: str, logger: Any = None, dpi: int = 150) -> list[Path]:
    """Write ``out_dir/<name>.png`` and ``out_dir/<name>.pdf`` (atomically), log the PNG to W&B; -> both paths.

    The figure's suptitle (when it has one) becomes the files' ``Title`` metadata.
    """
    from repshift.io import atomic_open

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    title = fig.get_suptitle() or name
    paths = []
    for fmt in ("png", "pdf"):
        path = Path(out_dir) / f"{name}.{fmt}"
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format=fmt, dpi=dpi, metadata={"Title": title})
        paths.append(path)
    log_images(logger, {f"figures/{name}": paths[0]})
    return paths


def figure_logger(kind: str, out_dir: str | os.PathLike, name: str) -> Any:
    """A started logger for the figures of one command: ``wandb`` (offline unless ``$WANDB_MODE`` says
    otherwise, files under ``out_dir``) or ``none``. The run id is fixed per ``out_dir`` and ``name``, so
    redrawing the figures continues the same W&B run."""
    from repshift.wandb_log import NullLogger, WandbLogger, run_id_for

    if kind == "none":
        return NullLogger()
    if kind != "wandb":
        raise ValueError(f"logger={kind!r}: use wandb or none")
    logger = WandbLogger(group="figures", name=name, dir=out_dir, id=run_id_for(Path(out_dir) / name))
    return logger.start({"figures": name, "out": str(out_dir)})


# --------------------------------------------------------------------------- accuracy vs pruned block

#: figure name -> the tables whose records it draws (their folders: :func:`repshift.report.core.sources`)
LAYER_FIGURES: dict[str, tuple[str, ...]] = {
    "fig3": ("fig3", "fig3_umt"),
    "fig5": ("fig5",),
    "readings": ("readings",),
}

#: The readings figure's panel of top-1 at the DeiT schedule per reading and score (experiment=readings).
SCHEDULE_PANEL = "DeiT schedule (20 % after blocks 0, 3, 6)"

_FIG_TITLES = {
    "fig3": "Figure 3 — attention score vs representation shift: accuracy after pruning at one block",
    "fig5": "Figure 5 — (a) operation and (b) distance of the representation shift: accuracy after pruning at one block",
    "readings": ("Readings of D(F(x), x) — top-1 at the DeiT schedule per reading, and the Table 8 check per reading "
                 "(keep the top / bottom 50 % at one block)"),
}


def _accuracy(r: Any) -> tuple[float | None, str]:
    """(value, axis label) of a record: top-1 for classification, the T2V/V2T harmonic-mean R@1 for retrieval (UMT)."""
    if r.metric_value("top1") is not None:
        return r.metric_value("top1"), "top-1 (%)"
    if r.metric_value("hm_r1") is not None:
        return r.metric_value("hm_r1"), "R@1 (%), harmonic mean of T2V / V2T"
    return None, ""


def _line_label(fig_name: str, r: Any) -> str:
    if fig_name == "readings":
        return f"{r.reading} · keep {r.compress.keep} 50 %"
    # the tables' row labels, so a figure's legend reads like its table
    return score_label(r, fig_name)


def _panel_of(fig_name: str, r: Any) -> list[str]:
    """The panels of one model's figure that a result belongs to (Fig. 5 has two; a control is in both)."""
    if fig_name == "readings":
        return [f"Table 8 check, {r.metric}-{r.site}"]
    if fig_name == "fig5":
        if r.metric in ("random", "none"):
            return ["(a) operation, L2", "(b) distance, MLP"]
        return [p for p, keep in (("(a) operation, L2", r.metric == "l2"), ("(b) distance, MLP", r.site == "mlp")) if keep]
    return [""]


def _collect_curves(fig_name: str, runs: list[Run]) -> tuple[dict, dict, dict]:
    """-> (curves[model][panel][line][block] = (value, tainted), baselines[model] = (value, tainted),
    y label per model: a video model's panels plot R@1, an image model's top-1).

    A run with no pruning (or method base) is its model's baseline. Single-block pruning runs are points;
    the readings folder's runs at the DeiT schedule go to the panel :data:`SCHEDULE_PANEL` instead
    (``[reading][metric-site] = (value, tainted)``). Where two records give one point, the tables' rule picks it
    (:func:`repshift.report.core.precedence`: real weights and data first, then the newest file).
    """
    curves: dict = {}
    baselines: dict = {}
    ylabels: dict = {}
    for run in sorted(runs, key=precedence):
        r = run.record
        value, label = _accuracy(r)
        if value is None:
            continue
        model, layers = r.model.name, ((r.compress.layers or []) if r.compress else [])
        ylabels.setdefault(model, label)
        if first_layer(r) is None or r.method.name == "base":
            baselines[model] = (value, r.tainted)
            continue
        if fig_name == "readings" and len(layers) > 1 and r.metric in ("l1", "l2", "cos"):
            schedule = curves.setdefault(model, {}).setdefault(SCHEDULE_PANEL, {})
            schedule.setdefault(r.reading, {})[f"{r.metric}-{r.site}"] = (value, r.tainted)
            continue
        if len(layers) != 1:
            continue
        for panel in _panel_of(fig_name, r):
            line = curves.setdefault(model, {}).setdefault(panel, {}).setdefault(_line_label(fig_name, r), {})
            line[layers[0]] = (value, r.tainted)
    return curves, baselines, ylabels


def _paper_series(fig_name: str, model: str, panel: str) -> dict[str, dict[int, float]]:
    """The paper's numbers for a panel, keyed by 0-based block: only Table 8 (the readings figure) has any."""
    if fig_name != "readings":
        return {}
    series = {}
    for keep in ("top", "bottom"):
        values = {int(c[1:]) - 1: paper_value("table8", model, f"{keep}50", "acc1", column=c) for c in T8_COLUMNS}
        values = {block: v for block, v in values.items() if np.isfinite(v)}
        if values:
            series[f"paper (Table 8) · keep {keep} 50 %"] = values
    return series


def _figure_notes(fig_name: str, any_tainted: bool, any_baseline: bool) -> list[str]:
    notes = []
    if fig_name == "readings":
        notes.append("Dashed: the paper's Table 8 (DeiT-S, L2 across the MLP; its layer Lk is block k−1); ×: the paper's "
                     "Table 5 Ours (L2 across the MLP at the DeiT schedule). The paper does not say which reading it ran.")
    elif len(paper_numbers(fig_name)) == 0:
        notes.append(f"The paper gives Figure {fig_name[-1]} as a plot only (no numbers in "
                     "repshift/report/paper_numbers.csv): no paper series is drawn.")
    notes.append("Blocks are 0-based, as in the paper's Figs. 3 and 5."
                 + (" Red line: the same model without pruning." if any_baseline else ""))
    if any_tainted:
        notes.append(TAINT_NOTE)
    return notes


def layer_figure(fig_name: str, runs: list) -> Figure | None:
    """Accuracy against the pruned block, one line per score, one panel per model (Fig. 5: two per model).

    ``fig_name`` is a key of :data:`LAYER_FIGURES`; ``runs`` are :class:`~repshift.report.core.Run` s.
    Points from random weights or synthetic data are hollow and their line's label ends with †; the paper's
    values, where it gives numbers, are a dashed series. Returns None when no result is a point of the figure.
    """
    if fig_name not in LAYER_FIGURES:
        raise ValueError(f"unknown layer figure {fig_name!r}; valid: {', '.join(LAYER_FIGURES)}")
    curves, baselines, ylabels = _collect_curves(fig_name, as_runs(runs))
    panels = [(model, panel) for model in sorted(curves) for panel in sorted(curves[model])]
    if not panels:
        return None
    any_tainted = any(t for model in curves.values() for panel in model.values() for line in panel.values()
                      for _, t in line.values()) or any(t for _, t in baselines.values())
    notes = _figure_notes(fig_name, any_tainted, bool(baselines))
    ncols = min(len(panels), 2 if fig_name == "fig5" else 3)
    nrows = math.ceil(len(panels) / ncols)
    width = max(7.5, 5.2 * ncols)
    notes = [textwrap.fill(n, int(width * 17)) for n in notes]
    note_lines = sum(n.count("\n") + 1 for n in notes)
    fig = Figure(figsize=(width, 3.9 * nrows + 0.14 * note_lines + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (model, panel) in zip(axes.flat, panels):
        ax.set_title(f"{model} · {panel}" if panel else model, fontsize=9)
        ax.set_ylabel(ylabels[model])
        ax.grid(True, alpha=0.3)
        if panel == SCHEDULE_PANEL:
            _draw_schedule(ax, model, curves[model][panel])
        else:
            _draw_layer_lines(ax, fig_name, model, panel, curves[model][panel], baselines.get(model))
        ax.legend(fontsize=7)
    fig.suptitle(textwrap.fill(_FIG_TITLES[fig_name], int(width * 12)), fontsize=10)
    fig.text(0.01, 0.01, "\n".join(notes), fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, (0.14 * note_lines + 0.15) / fig.get_figheight(), 1, 1))
    return fig


def _draw_layer_lines(ax: Any, fig_name: str, model: str, panel: str, lines: dict, baseline: tuple | None) -> None:
    """One line per score against the pruned block; hollow markers for tainted points; paper dashed; baseline red."""
    order = sorted(lines, key=lambda label: score_sort_key(f"{model} · {label}"))
    for index, label in enumerate(order):
        points = lines[label]
        blocks = sorted(points)
        values = [points[b][0] for b in blocks]
        tainted = [points[b][1] for b in blocks]
        colour = _line_colour(fig_name, label, index)
        ax.plot(blocks, values, _line_style(fig_name, label), color=colour,
                label=label + (" †" if any(tainted) else ""))
        for b, v, t in zip(blocks, values, tainted):
            ax.plot([b], [v], "o", color=colour, markerfacecolor="none" if t else colour)
    for (label, series), colour in zip(_paper_series(fig_name, model, panel).items(), ("black", "0.5")):
        blocks = sorted(series)
        ax.plot(blocks, [series[b] for b in blocks], "--", color=colour, marker="x", label=label)
    if baseline is not None:
        ax.axhline(baseline[0], color="red", linewidth=1, label="no pruning" + (" †" if baseline[1] else ""))
    ax.set_xlabel("pruned block (0-based)")
    ax.xaxis.set_major_locator(_integer_locator())


def _draw_schedule(ax: Any, model: str, by_reading: dict) -> None:
    """Top-1 at the DeiT schedule: one marker series per reading over the scores; the paper's Ours (Table 5)."""
    scores = sorted({score for values in by_reading.values() for score in values},
                    key=lambda score: score_sort_key(f"{model} · {score}"))
    for k, reading in enumerate(sorted(by_reading, key=lambda r: list(_READING_COLOURS).index(r)
                                       if r in _READING_COLOURS else len(_READING_COLOURS))):
        values = by_reading[reading]
        xs = [i + 0.2 * (k - 1) for i, score in enumerate(scores) if score in values]
        ys = [values[score][0] for score in scores if score in values]
        hollow = [values[score][1] for score in scores if score in values]
        colour = _READING_COLOURS.get(reading)
        ax.plot([], [], "o", color=colour, label=reading + (" †" if any(hollow) else ""))
        for x, y, t in zip(xs, ys, hollow):
            ax.plot([x], [y], "o", color=colour, markerfacecolor="none" if t else colour)
    paper = paper_value("table5", model, "ours", "acc1", dataset="imagenet")
    if "l2-mlp" in scores and math.isfinite(paper):
        ax.plot([scores.index("l2-mlp")], [paper], "x", color="black", markersize=9, label="paper (Table 5, Ours)")
    ax.set_xticks(range(len(scores)), scores, rotation=45, fontsize=7)
    ax.set_xlabel("score (metric-site)")


_READING_COLOURS = {"literal": "tab:blue", "update": "tab:orange", "normed": "tab:green"}
#: Score lines: matplotlib's default cycle without red, which marks the baseline (as in the paper).
_LINE_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
                 "tab:olive", "tab:cyan")


def _line_style(fig_name: str, label: str) -> str:
    """Readings: solid for the top 50 %, dotted for the bottom 50 % (colour = reading); else solid."""
    return ":" if fig_name == "readings" and "keep bottom" in label else "-"


def _line_colour(fig_name: str, label: str, index: int) -> str:
    if fig_name == "readings":
        return _READING_COLOURS.get(label.split(" · ")[0], "tab:purple")
    return _LINE_COLOURS[index % len(_LINE_COLOURS)]


def _integer_locator():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def make_layer_figures(results_root: str | os.PathLike, out_dir: str | os.PathLike, logger: Any = None,
                       dpi: int = 150) -> tuple[dict[str, list[Path]], list[RecordProblem]]:
    """Every :data:`LAYER_FIGURES` figure whose tables' folders under ``results_root`` hold records.

    -> (``{figure name: [png, pdf]}``, the result files that could not be read); figures without records are
    left out (the caller says so).
    """
    written, problems = {}, []
    for name, tables in LAYER_FIGURES.items():
        runs = []
        for table in tables:
            found, bad = load_runs(results_root, table)
            runs += found
            problems += bad
        fig = layer_figure(name, runs) if runs else None
        if fig is not None:
            written[name] = save_figure(fig, out_dir, name, logger=logger, dpi=dpi)
    return written, problems


# --------------------------------------------------------------------------- figures drawn elsewhere

#: Figures that other commands draw (Fig. 1: ``python -m repshift.report fig1``, Fig. 7:
#: ``python -m repshift.maps fig7 --out <results>/fig7``), each as a PNG with a vector PDF beside it
#: (:func:`save_figure`): name -> PNG path under the results root.
EXTERNAL_FIGURES: dict[str, str] = {"fig1": "tables/fig1.png", "fig7": "fig7/fig7.png"}


def collect_external_figures(results_root: str | os.PathLike, out_dir: str | os.PathLike,
                             logger: Any = None) -> dict[str, list[Path]]:
    """Copy each :data:`EXTERNAL_FIGURES` PNG that exists, and its PDF, into ``out_dir``; log the PNG to W&B."""
    from repshift.io import atomic_open

    written = {}
    for name, relative in EXTERNAL_FIGURES.items():
        source = Path(results_root) / relative
        if not source.is_file():
            continue
        copies = []
        for origin in (source, source.with_suffix(".pdf")):
            if origin.is_file():
                target = Path(out_dir) / f"{name}{origin.suffix}"
                with atomic_open(target, "wb") as fh:
                    fh.write(origin.read_bytes())
                copies.append(target)
        log_images(logger, {f"figures/{name}": copies[0]})
        written[name] = copies
    return written
