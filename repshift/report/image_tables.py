"""Image tables from run records: Tables 1, 5-8, Figs. 3 and 5 as tables, the readings, the demo.

Each builder registers itself with :func:`repshift.report.core.register`; conventions (columns, Δ, †, which
record a contested cell uses) are those of :mod:`repshift.report.core`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from repshift.report.core import (
    DAGGER, PAPER_DEVICE, SEP, THROUGHPUT_NOTE, Grid, Run, bench_desc, data_desc, delta, finish, first_layer, nan,
    order_present, paper_cells, paper_numbers, paper_value, register, score_label, score_sort_key, speedup,
    throughput_cells,
)

__all__ = ["CLS_SPECS", "T8_COLUMNS", "DEMO_COLUMNS", "build_table1", "build_table8", "build_fig", "build_readings",
           "build_demo", "build_cls"]


def _label_of(method: str, runs: list[Run], default: str) -> str:
    """A method's label as its records declare it (``record.method.label``), else ``default`` (the paper's header)."""
    for run in runs:
        if run.record.method.name == method:
            return run.record.method.label
    return default


def _accuracy(run: Run) -> float | None:
    """Top-1 for an image model, MSRVTT R@1 (harmonic mean of both directions) for UMT."""
    value = run.record.metric_value("top1")
    return value if value is not None else run.record.metric_value("hm_r1")


# --------------------------------------------------------------------------- table 1

KERNEL_OF = {"eager": "self-attention", "sdpa": "flash-attention", "flash_attn": "flash-attention"}


@register("table1")
def build_table1(runs: list[Run]) -> pd.DataFrame:
    """Table 1: self-attention vs FlashAttention without pruning, accuracy, throughput and the speed-up."""
    grid = Grid()
    for run in runs:
        r = run.record
        kernel = KERNEL_OF.get(r.attention)
        if r.method.name != "base" or kernel is None:
            continue
        row = f"{r.model.name}{SEP}{kernel}"
        # Table 1 reports MSRVTT R@1 for UMT as the mean of both directions (hm_r1: 50.0 = hm(51.0, 49.0))
        grid.add(row, "acc", _accuracy(run), run)
        grid.add(row, "thr", r.bench.throughput if r.bench else None, run)
    cells = grid.resolve()
    tainted = cells.tainted_rows()
    models = order_present(["deit_s", "umt_b"], (k.split(SEP)[0] for k in grid.rows()))
    records, index = [], []
    for model in models:
        acc_q = "r@1" if model.startswith("umt") else "acc1"
        self_row = f"{model}{SEP}self-attention"
        for kernel in ("self-attention", "flash-attention"):
            row = f"{model}{SEP}{kernel}"
            rec: dict = {}
            paper_cells(rec, "Acc-1/R@1", cells.get((row, "acc")), paper_value("table1", model, kernel, acc_q))
            run = cells.runs.get((row, "thr"))
            throughput_cells(rec, "Thr", cells.get((row, "thr")), paper_value("table1", model, kernel, "throughput"),
                             run.record.bench.device if run else None)
            paper_cells(rec, "Speed-up ×", speedup(run, cells.runs.get((self_row, "thr"))),
                        paper_value("table1", model, kernel, "throughput")
                        / paper_value("table1", model, "self-attention", "throughput"))
            records.append(rec)
            index.append(row + (f" {DAGGER}" if row in tainted else ""))
    df = pd.DataFrame(records, index=pd.Index(index, name=f"model{SEP}attention"))
    won = cells.winners()
    title = (f"Table 1 — self-attention (eager) vs FlashAttention (sdpa / flash_attn), method base: "
             f"top-1 (%) [UMT: MSRVTT R@1], throughput ({bench_desc(won)}); {data_desc(won)}")
    notes = [f"Δ = ours − paper. Paper throughput: {PAPER_DEVICE}; the UMT-B FlashAttention R@1 cell is blank in the "
             "paper. Speed-up × = throughput over self-attention.", THROUGHPUT_NOTE]
    return finish(df, title, notes, cells.duplicates, bool(tainted))


# --------------------------------------------------------------------------- tables 5 / 6 / 7

@dataclass(frozen=True)
class ClsSpec:
    table: str
    number: str
    models: tuple[str, ...]
    methods: tuple[tuple[str, str], ...]  # the paper's columns (method name, the paper's header), always shown
    optional_methods: tuple[str, ...]  # shown when records have them, in this order


CLS_SPECS = {
    "table5": ClsSpec("table5", "Table 5", ("deit_t", "deit_s", "deit_b"),
                      (("base", "Base"), ("attn", "Attn"), ("ours", "Ours")), ("attn_sdpa", "static", "random")),
    "table6": ClsSpec("table6", "Table 6", ("resnet34", "resnet50"),
                      (("base", "Base"), ("line_wise", "L-W"), ("token_wise", "T-W")), ("static",)),
    "table7": ClsSpec("table7", "Table 7", ("vim_t",), (("base", "Base"), ("top_vim", "ToP-ViM"), ("ours", "Ours")),
                      ("static",)),
}

CLS_QUANTITIES = (("acc1", "Acc"), ("throughput", "Throughput"), ("speedup", "Speed-up ×"), ("gflops", "GFLOPs"))


def build_cls(spec: ClsSpec, runs: list[Run]) -> pd.DataFrame:
    grid = Grid()
    for run in runs:
        r = run.record
        model, method = r.model.name, r.method.name
        grid.add(f"{model}{SEP}Acc", method, r.metric_value("top1"), run)
        grid.add(f"{model}{SEP}Throughput", method, r.bench.throughput if r.bench else None, run)
        grid.add(f"{model}{SEP}GFLOPs", method, r.gmacs, run)
    cells = grid.resolve()
    tainted = cells.tainted_rows()
    present_methods = {k[1] for k in grid.cells}
    models = order_present(spec.models, {k[0].split(SEP)[0] for k in grid.cells})
    methods = [m for m, _ in spec.methods] + [m for m in spec.optional_methods if m in present_methods]
    methods += sorted(present_methods - set(methods))
    headers = dict(spec.methods)
    groups = [(m, _label_of(m, runs, headers.get(m, m))) for m in methods]
    table_paper = paper_numbers(spec.table)
    no_paper = {m for m, _ in groups if not (table_paper["method"] == m).any()}
    records, index = [], []
    for model in models:
        thr_row = f"{model}{SEP}Throughput"
        base_run = cells.runs.get((thr_row, "base"))
        for quantity, qlabel in CLS_QUANTITIES:
            row = f"{model}{SEP}{qlabel}"
            rec: dict = {}
            for method, label in groups:
                if quantity == "speedup":
                    ours = speedup(cells.runs.get((thr_row, method)), base_run)
                    paper = (paper_value(spec.table, model, method, "throughput", dataset="imagenet")
                             / paper_value(spec.table, model, "base", "throughput", dataset="imagenet"))
                else:
                    ours = cells.get((row, method))
                    paper = paper_value(spec.table, model, method, quantity, dataset="imagenet")
                if method in no_paper:
                    rec[f"{label}{SEP}ours"] = nan(ours)
                elif quantity == "throughput":
                    run = cells.runs.get((row, method))
                    throughput_cells(rec, label, ours, paper, run.record.bench.device if run else None)
                else:
                    paper_cells(rec, label, ours, paper)
            records.append(rec)
            marked = (thr_row if quantity == "speedup" else row) in tainted
            index.append(row + (f" {DAGGER}" if marked else ""))
    df = pd.DataFrame(records, index=pd.Index(index, name=f"model{SEP}quantity"))
    won = cells.winners()
    counted = "the selective scans" if spec.table == "table7" else "attention matmuls"
    title = (f"{spec.number} — ImageNet-1k top-1 (%), throughput ({bench_desc(won)}), speed-up over Base, "
             f"GFLOPs = GMACs incl. {counted}; {data_desc(won)}")
    notes = [f"Δ = ours − paper. Paper throughput: {PAPER_DEVICE}, batch 512. Speed-up × = throughput / Base's.",
             THROUGHPUT_NOTE]
    if spec.table == "table5":
        notes.append("Attn = eager attention + class-attention scores (the paper's baseline); "
                     "Ours = L2 representation shift at the MLP with FlashAttention; "
                     "Attn+SDPA (when present) is our hybrid; Static / Random (when present) are controls the "
                     "paper does not report (no score: keep the first tokens; seeded random scores).")
    if spec.table == "table7":
        notes.append("GFLOPs = GMACs: linear layers, patch embedding and causal convolutions as torch's FLOP counter "
                     "counts them (1.293 G for ViM-T), plus the selective scans derived from their operations, "
                     "(6·d_state + 5) / 2 = 50.5 MACs per channel, token and direction (0.183 G): 1.476 G, and 1.266 G "
                     "on the pruning schedule (docs/vim.md). fvcore on Vim's code counts 1.438 G / 1.233 G (its "
                     "reference-scan einsums, without the recurrence or the per-channel work), which rounds to "
                     "1.4 / 1.2.")
    if no_paper:
        notes.append("No paper numbers for " + ", ".join(g for m, g in groups if m in no_paper)
                     + ": only our values are shown.")
    return finish(df, title, notes, cells.duplicates, bool(tainted))


for _name, _spec in CLS_SPECS.items():
    register(_name)(lambda runs, spec=_spec: build_cls(spec, runs))


# --------------------------------------------------------------------------- table 8

T8_COLUMNS = ("L1", "L3", "L5", "L7", "L9", "L11")


def _table8_selection(run: Run) -> str | None:
    """``top50`` / ``bottom50`` for Ours (the paper's rows), ``random:top50`` ... for the control."""
    r = run.record
    keep = r.compress.keep if r.compress else None
    if r.method.name in ("top50", "bottom50"):  # the demo names its Table 8 runs so (method.name=${compress.keep}50)
        return r.method.name
    if r.method.name in ("ours", "random") and keep in ("top", "bottom"):
        return f"{keep}50" if r.method.name == "ours" else f"random:{keep}50"
    return None


@register("table8")
def build_table8(runs: list[Run]) -> pd.DataFrame:
    grid = Grid()
    for run in runs:
        selection, layer = _table8_selection(run), first_layer(run.record)
        if selection is None or layer is None:
            continue
        grid.add(f"{run.record.model.name}{SEP}{selection}", f"L{layer + 1}", run.record.metric_value("top1"), run)
    cells = grid.resolve()
    tainted = cells.tainted_rows()
    extra_cols = {k[1] for k in grid.cells} - set(T8_COLUMNS)
    cols = sorted([*T8_COLUMNS, *extra_cols], key=lambda c: int(c[1:]))
    models = order_present(["deit_s"], {k[0].split(SEP)[0] for k in grid.cells})
    random_label = _label_of("random", runs, "random")
    records, index = [], []
    notes = ["Layer labels count from 1 (paper): L{k} = pruning at 0-based block k−1. Δ = ours − paper.",
             "Random (control) rows, when present: seeded random scores, so its top and bottom halves are "
             "complementary random halves (a control the paper does not report)."]
    for model in models:
        prefix = "" if model == "deit_s" and len(models) == 1 else f"{model} "
        for method in ("top50", "bottom50"):
            key = f"{model}{SEP}{method}"
            ours = {c: nan(cells.get((key, c))) for c in cols}
            paper = {c: paper_value("table8", model, method, "acc1", column=c) for c in cols}
            diff = {c: delta(ours[c], paper[c]) for c in cols}
            ours_present = [c for c in cols if not math.isnan(ours[c])]
            ours["Avg"] = sum(ours[c] for c in ours_present) / len(ours_present) if ours_present else math.nan
            paper["Avg"] = paper_value("table8", model, method, "acc1", column="Avg")
            paper_layers = [c for c in T8_COLUMNS if not math.isnan(paper[c])]
            both = [c for c in cols if not math.isnan(diff[c])]
            if ours_present and sorted(ours_present) == sorted(paper_layers):
                diff["Avg"] = delta(ours["Avg"], paper["Avg"])
            elif both:
                diff["Avg"] = sum(diff[c] for c in both) / len(both)
                notes.append(f"{prefix}{method}: Avg over {', '.join(ours_present)} only; its Δ is the mean of the "
                             "per-layer Δ.")
            else:
                diff["Avg"] = math.nan
            mark = f" {DAGGER}" if key in tainted else ""
            for kind, rec in (("ours", ours), ("paper", paper), ("Δ", diff)):
                records.append(rec)
                index.append(f"{prefix}{method}{SEP}{kind}" + (mark if kind != "paper" else ""))
        for method in ("top50", "bottom50"):  # the control's rows, when it ran
            key = f"{model}{SEP}random:{method}"
            values = {c: nan(cells.get((key, c))) for c in cols}
            present = [c for c in cols if not math.isnan(values[c])]
            if not present:
                continue
            values["Avg"] = sum(values[c] for c in present) / len(present)
            records.append(values)
            index.append(f"{prefix}{random_label} {method}{SEP}ours" + (f" {DAGGER}" if key in tainted else ""))
    df = pd.DataFrame(records, index=pd.Index(index, name="selection"), columns=[*cols, "Avg"])
    title = ("Table 8 — ImageNet-1k top-1 (%) keeping the top / bottom 50% of tokens by representation shift "
             f"at one layer (DeiT-S); {data_desc(cells.winners())}")
    return finish(df, title, notes, cells.duplicates, bool(tainted))


# --------------------------------------------------------------------------- figures 3 / 5 as tables

def build_fig(fig: str, runs: list[Run]) -> pd.DataFrame:
    grid, base = Grid(), Grid()
    for run in runs:
        r, layer = run.record, first_layer(run.record)
        if layer is None or r.method.name == "base":
            base.add(r.model.name, "base", r.metric_value("top1"), run)
            continue
        grid.add(f"{r.model.name}{SEP}{score_label(r, fig)}", f"layer {layer}", r.metric_value("top1"), run)
    cells, baseline_cells = grid.resolve(), base.resolve()
    tainted = cells.tainted_rows() | baseline_cells.tainted_rows()
    rows = sorted(grid.rows(), key=score_sort_key)
    models = {row.split(SEP)[0] for row in rows} | {k[0] for k in baseline_cells.values}
    cols = sorted({k[1] for k in grid.cells}, key=lambda c: int(c.split()[1]))
    records = [{c: nan(cells.get((row, c))) for c in cols} for row in rows]
    index = [(row.split(SEP, 1)[1] if len(models) <= 1 else row) + (f" {DAGGER}" if row in tainted else "")
             for row in rows]
    df = pd.DataFrame(records, index=pd.Index(index, name="score"), columns=cols)
    baseline = {m: v for (m, _), v in baseline_cells.values.items()}
    what = ("attention score vs representation shift" if fig == "fig3"
            else "representation shift by distance × site (metric-site)")
    won = cells.winners() + baseline_cells.winners()
    title = (f"Figure {fig[-1]} — top-1 (%) after pruning at one layer (0-based block index), {what}; "
             f"{data_desc(won)}")
    notes = ["The paper only plots this figure: no paper numbers to compare with. "
             "Random / Static (control) rows, when present, are controls the paper does not plot."]
    if baseline:
        notes.append("Baseline without pruning: " + ", ".join(f"{m} {v:.2f}" for m, v in sorted(baseline.items())))
    return finish(df, title, notes, cells.duplicates + baseline_cells.duplicates, bool(tainted),
                  extra={"baseline": baseline})


register("fig3")(lambda runs: build_fig("fig3", runs))
register("fig5")(lambda runs: build_fig("fig5", runs))


# --------------------------------------------------------------------------- readings

READINGS = ("literal", "update", "normed")


@register("readings")
def build_readings(runs: list[Run]) -> pd.DataFrame:
    """Top-1 at the DeiT schedule per reading of every metric × site, and the Table 8 gap per reading."""
    schedule, gaps = Grid(), Grid()
    for run in runs:
        r = run.record
        layers = (r.compress.layers or []) if r.compress else []
        if r.metric not in ("l1", "l2", "cos") or not layers:
            continue
        score = f"{r.model.name}{SEP}{r.metric}-{r.site}"
        if len(layers) == 1:  # experiment=readings_table8: one block, top or bottom 50 %
            gaps.add(f"{score}{SEP}{r.compress.keep}", f"{r.reading}{SEP}L{layers[0] + 1}", r.metric_value("top1"), run)
        else:
            schedule.add(score, r.reading, r.metric_value("top1"), run)
    cells, gap_cells = schedule.resolve(), gaps.resolve()
    records, index = [], []
    for row in sorted(schedule.rows(), key=score_sort_key):
        model, score = row.split(SEP)
        rec = {reading: nan(cells.get((row, reading))) for reading in READINGS}
        rec["paper"] = (paper_value("table5", model, "ours", "acc1", dataset="imagenet") if score == "l2-mlp"
                        else math.nan)
        records.append(rec)
        index.append(row + (f" {DAGGER}" if row in cells.tainted_rows() else ""))
    gap_tainted = {k[0].rsplit(SEP, 1)[0] for k, run in gap_cells.runs.items() if run.record.tainted}
    for row in sorted({k[0].rsplit(SEP, 1)[0] for k in gap_cells.values}):
        rec = {}
        for reading in READINGS:
            per_layer = []
            for (key, col), top in gap_cells.values.items():
                if key == f"{row}{SEP}top" and col.startswith(f"{reading}{SEP}"):
                    bottom = gap_cells.get((f"{row}{SEP}bottom", col))
                    if bottom is not None:
                        per_layer.append(top - bottom)
            rec[reading] = sum(per_layer) / len(per_layer) if per_layer else math.nan
        model = row.split(SEP)[0]
        rec["paper"] = (paper_value("table8", model, "top50", "acc1", column="Avg")
                        - paper_value("table8", model, "bottom50", "acc1", column="Avg"))
        records.append(rec)
        index.append(f"{row}{SEP}Table 8 gap (top − bottom 50 %)" + (f" {DAGGER}" if row in gap_tainted else ""))
    df = pd.DataFrame(records, index=pd.Index(index, name=f"model{SEP}score"), columns=[*READINGS, "paper"])
    won = cells.winners() + gap_cells.winners()
    title = ("Readings of D(F(x), x) — top-1 (%) at the DeiT schedule (20 % after blocks 0, 3, 6) per reading; "
             f"gap rows: mean top-50 % minus bottom-50 % top-1 over the pruned layer (Table 8); {data_desc(won)}")
    notes = ["literal = D(g(F(N(x))), x) (Eqs. 4-6 as written), update = D(x + g(F(N(x))), x), "
             "normed = D(F(N(x)), N(x)); for site=block all three are D(x̂, x). The paper column is Table 5's Ours "
             "(l2-mlp rows) or Table 8's Avg gap: the reading that reaches it with the real weights is the one the "
             "paper ran."]
    tainted = bool(cells.tainted_rows() or gap_tainted)
    return finish(df, title, notes, cells.duplicates + gap_cells.duplicates, tainted)


# --------------------------------------------------------------------------- demo

DEMO_COLUMNS = ("Acc-1", "Top-5", "img/s", "GMACs", "tokens")
DEMO_ORDER = ("base", "attn", "ours", "attn_sdpa", "static", "random")


@register("demo")
def build_demo(runs: list[Run]) -> pd.DataFrame:
    grid = Grid()
    for run in runs:
        r = run.record
        values = (r.metric_value("top1"), r.metric_value("top5"), r.bench.throughput if r.bench else None, r.gmacs,
                  float(r.tokens[-1]) if r.tokens else None)
        for column, value in zip(DEMO_COLUMNS, values):
            grid.add(r.method.name, column, value, run)
    cells = grid.resolve()
    tainted = cells.tainted_rows()
    rows = order_present([m for m in DEMO_ORDER if m in grid.rows()], grid.rows())
    records = [{column: nan(cells.get((row, column))) for column in DEMO_COLUMNS} for row in rows]
    index = [row + (f" {DAGGER}" if row in tainted else "") for row in rows]
    df = pd.DataFrame(records, index=pd.Index(index, name="method"), columns=list(DEMO_COLUMNS))
    won = cells.winners()
    title = (f"Demo — ShapeBench, tiny ViT trained here (not ImageNet): top-1 / top-5 (%), "
             f"throughput ({bench_desc(won)}), GMACs, final token count; {data_desc(won)}")
    notes = ["No paper columns: ShapeBench is our own synthetic benchmark. static (keep the first tokens) and "
             "random (seeded scores) are controls the paper does not report."]
    # The demo is synthetic by design: the dagger is still shown so nobody mistakes it for ImageNet.
    return finish(df, title, notes, cells.duplicates, bool(tainted))
