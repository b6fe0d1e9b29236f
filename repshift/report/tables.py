"""Paper-shaped tables from run results (:class:`~repshift.report.results.RunResult`), paper numbers beside ours.

``build(table, results)`` returns a :class:`pandas.DataFrame` whose index holds the
row labels and whose columns are flat strings (``"Base · ours"``, ``"Base · paper"``,
``"Base · Δ"``, ...). Numbers stay numeric (``NaN`` = missing, rendered empty, never 0);
``Δ = ours − paper``. The title and the notes travel in ``df.attrs["title"]`` and
``df.attrs["notes"]``; :func:`render` turns the frame into markdown + CSV and
:func:`write` stores ``<table>.md`` and ``<table>.csv``.

Paper numbers come from ``paper_numbers.csv`` (long form: ``table, model, dataset,
method, quantity, column, value``). Quantities used there: ``acc1`` (ImageNet top-1, %),
``throughput`` (img/s or vid/s), ``gflops`` (the paper's GFLOPs, i.e. GMACs),
``r@1``/``r@5``/``r@10`` (retrieval recall, %), ``acc`` (video-QA accuracy, %).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from repshift.configs import CONFIG_DIR
from repshift.io import atomic_open
from repshift.report.results import RunResult

__all__ = [
    "TABLES",
    "PAPER_CSV",
    "paper_numbers",
    "paper_value",
    "build",
    "render",
    "write",
]

PAPER_CSV = Path(__file__).with_name("paper_numbers.csv")

METHOD_CONFIGS = CONFIG_DIR / "method"

SEP = " · "
DAGGER = "†"
TAINT_NOTE = f"{DAGGER} random weights / synthetic data: not comparable with the paper"


# --------------------------------------------------------------------------- paper numbers

@lru_cache(maxsize=1)
def _paper_frame() -> pd.DataFrame:
    df = pd.read_csv(PAPER_CSV, dtype=str, keep_default_na=False)
    df["value"] = df["value"].astype(float)
    return df


def paper_numbers(table: str | None = None) -> pd.DataFrame:
    """The transcribed paper numbers (a copy), optionally for one table."""
    df = _paper_frame()
    if table is not None:
        df = df[df["table"] == table]
    return df.reset_index(drop=True).copy()


def paper_value(table: str, model: str, method: str, quantity: str,
                dataset: str | None = None, column: str = "") -> float:
    """One number from the paper, or NaN when the paper has none for that cell."""
    df = _paper_frame()
    mask = ((df["table"] == table) & (df["model"] == model) & (df["method"] == method)
            & (df["quantity"] == quantity) & (df["column"] == column))
    if dataset is not None:
        mask &= df["dataset"] == dataset
    hits = df.loc[mask, "value"]
    if len(hits) == 0:
        return math.nan
    if len(hits) > 1:
        raise ValueError(f"ambiguous paper cell {table}/{model}/{method}/{quantity}/{dataset}/{column}: "
                         "pass dataset=")
    return float(hits.iloc[0])


# --------------------------------------------------------------------------- result access

def _runs(results: Iterable[RunResult | dict]) -> list[RunResult]:
    """Results as :class:`RunResult` (dicts, e.g. from :func:`repshift.report.results.collect`, are read)."""
    return [r if isinstance(r, RunResult) else RunResult.from_dict(r) for r in results if isinstance(r, (RunResult, dict))]


@lru_cache(maxsize=1)
def method_labels() -> dict[str, str]:
    """Method name -> the label tables show, as declared in ``repshift/configs/method/*.yaml``."""
    from omegaconf import OmegaConf

    labels = {}
    for path in sorted(METHOD_CONFIGS.glob("*.yaml")):
        node = OmegaConf.load(path).get("method") or {}
        if node.get("name") and node.get("label"):
            labels[str(node["name"])] = str(node["label"])
    return labels


def label_of(method: str, runs: Iterable[RunResult] = ()) -> str:
    """A method's label: as its results recorded it, else as its method config declares it, else its name."""
    for r in runs:
        if r.method == method and r.method_label != method:
            return r.method_label
    return method_labels().get(method, method)


def attention_of(r: RunResult) -> str | None:
    return r.attention or (r.kernels[0] if r.kernels else None)


QUANTITY_GETTERS: dict[str, Callable[[RunResult], float | None]] = {
    "acc1": lambda r: r.metric_value("top1"),
    "top5": lambda r: r.metric_value("top5"),
    "throughput": lambda r: r.throughput,
    "gflops": lambda r: r.gmacs,
    "tokens": lambda r: float(r.tokens[-1]) if r.tokens else None,
}


def paper_cells(rec: dict, label: str, ours: float | None, paper: float) -> None:
    """The three cells of one quantity: ``<label> · ours``, ``<label> · paper`` and ``<label> · Δ``."""
    rec[f"{label}{SEP}ours"] = _nan(ours)
    rec[f"{label}{SEP}paper"] = paper
    rec[f"{label}{SEP}Δ"] = _delta(_nan(ours), paper)


# --------------------------------------------------------------------------- cell bookkeeping

@dataclass
class _Grid:
    """Collects candidate values per cell; the newest result file wins."""

    cells: dict[tuple[str, str], list[tuple[float, int, float, RunResult]]] = field(default_factory=dict)
    _order: int = 0

    def add(self, row: str, col: str, value: float | None, r: RunResult) -> None:
        if value is None:
            return
        self._order += 1
        self.cells.setdefault((row, col), []).append((r.mtime, self._order, float(value), r))

    def resolve(self) -> tuple[dict, dict, list[str]]:
        """-> (values[(row, col)], winners[(row, col)] = result, duplicate notes)."""
        values, winners, dups = {}, {}, []
        for key, cands in self.cells.items():
            cands = sorted(cands, key=lambda c: (c[0], c[1]))
            _, _, value, r = cands[-1]
            values[key] = value
            winners[key] = r
            if len(cands) > 1:
                dropped = [c[3].path or "?" for c in cands[:-1]]
                dups.append(f"{key[0]} / {key[1]}: kept {r.path or '?'} over {', '.join(dropped)}")
        return values, winners, dups

    def rows(self) -> set[str]:
        return {k[0] for k in self.cells}


def _tainted_rows(winners: dict) -> set[str]:
    return {row for (row, _), r in winners.items() if r.tainted}


def _delta(ours: float, paper: float) -> float:
    if ours is None or paper is None or math.isnan(ours) or math.isnan(paper):
        return math.nan
    return ours - paper


def _nan(v: float | None) -> float:
    return math.nan if v is None else v


# --------------------------------------------------------------------------- title helpers

def _uniq(values: Iterable[Any]) -> list[str]:
    seen: list[str] = []
    for v in values:
        if v is None or v == "":
            continue
        s = str(v)
        if s not in seen:
            seen.append(s)
    return seen


def _bench_desc(results: list[RunResult]) -> str:
    benched = [r for r in results if r.throughput is not None]
    devices = _uniq(r.bench_device for r in benched) or _uniq(r.env_device for r in benched)
    precisions = _uniq(r.bench_precision for r in results)
    batches = _uniq(r.bench_batch for r in results)
    units = _uniq(r.throughput_unit for r in benched) or ["img/s"]
    parts = [" / ".join(units), "device " + (" / ".join(devices) if devices else "n/a"),
             "precision " + (" / ".join(precisions) if precisions else "n/a")]
    if batches:
        parts.append("batch " + " / ".join(batches))
    return ", ".join(parts)


def _data_desc(results: list[RunResult]) -> str:
    names = _uniq(r.dataset for r in results if r.metrics)
    ns = _uniq(r.dataset_n for r in results if r.metrics)
    if not names:
        return "data n/a"
    desc = "data " + " / ".join(names)
    if ns:
        desc += " (n=" + " / ".join(ns) + ")"
    return desc


def _finish(df: pd.DataFrame, title: str, notes: list[str], dups: list[str], tainted: bool,
            extra: dict | None = None) -> pd.DataFrame:
    notes = list(notes)
    if tainted:
        notes.append(TAINT_NOTE)
    if dups:
        notes.append(f"{len(dups)} cell(s) had several results; the newest file was kept: " + "; ".join(dups))
    df.attrs["title"] = title
    df.attrs["notes"] = notes
    if extra:
        df.attrs.update(extra)
    return df


def _order_present(preferred: list[str], present: Iterable[str]) -> list[str]:
    present = list(present)
    return [p for p in preferred] + sorted(p for p in set(present) if p not in preferred)


# --------------------------------------------------------------------------- table 1

KERNEL_OF = {"eager": "self-attention", "sdpa": "flash-attention", "flash_attn": "flash-attention"}


def _build_table1(results: list[RunResult]) -> pd.DataFrame:
    grid = _Grid()
    used = []
    for r in results:
        if r.method != "base":
            continue
        kernel = KERNEL_OF.get(attention_of(r) or "")
        if kernel is None:
            continue
        row = f"{r.model}{SEP}{kernel}"
        # Table 1 reports MSRVTT R@1 for UMT as the mean of both directions (hm_r1: 50.0 = hm(51.0, 49.0)), top-1 for DeiT
        grid.add(row, "acc", r.metric_value("hm_r1") if r.model.startswith("umt") else r.metric_value("top1"), r)
        grid.add(row, "thr", QUANTITY_GETTERS["throughput"](r), r)
        used.append(r)
    values, winners, dups = grid.resolve()
    tainted = _tainted_rows(winners)
    models = _order_present(["deit_s", "umt_b"], (k.split(SEP)[0] for k in grid.rows()))
    records, index = [], []
    for model in models:
        acc_q = "r@1" if model.startswith("umt") else "acc1"
        for kernel in ("self-attention", "flash-attention"):
            row = f"{model}{SEP}{kernel}"
            rec = {}
            for col, label, q in (("acc", "Acc-1/R@1", acc_q), ("thr", "Thr", "throughput")):
                paper_cells(rec, label, values.get((row, col)), paper_value("table1", model, kernel, q))
            records.append(rec)
            index.append(row + (f" {DAGGER}" if row in tainted else ""))
    df = pd.DataFrame(records, index=pd.Index(index, name=f"model{SEP}attention"))
    won = list({id(r): r for r in winners.values()}.values()) or used
    title = (f"Table 1 — self-attention (eager) vs FlashAttention (sdpa / flash_attn), method base: "
             f"top-1 (%) [UMT: MSRVTT R@1], throughput ({_bench_desc(won)}); {_data_desc(won)}")
    notes = ["Δ = ours − paper. Paper throughput: NVIDIA RTX A6000; the UMT-B FlashAttention R@1 cell is blank in the paper."]
    return _finish(df, title, notes, dups, bool(tainted))


# --------------------------------------------------------------------------- tables 5 / 6 / 7

@dataclass(frozen=True)
class _ClsSpec:
    table: str
    number: str
    models: tuple[str, ...]
    methods: tuple[str, ...]  # the paper's columns, always shown
    optional_methods: tuple[str, ...]  # shown when results have them, in this order
    what: str


CLS_SPECS = {
    "table5": _ClsSpec("table5", "Table 5", ("deit_t", "deit_s", "deit_b"), ("base", "attn", "ours"),
                       ("attn+sdpa", "static", "random"), "DeiT"),
    "table6": _ClsSpec("table6", "Table 6", ("resnet34", "resnet50"), ("base", "line-wise", "token-wise"),
                       ("static",), "ResNet"),
    "table7": _ClsSpec("table7", "Table 7", ("vim_t",), ("base", "top-vim", "ours"), ("static",), "ViM"),
}

CLS_QUANTITIES = (("acc1", "Acc"), ("throughput", "Throughput"), ("gflops", "GFLOPs"))


def _build_cls(spec: _ClsSpec, results: list[RunResult]) -> pd.DataFrame:
    grid = _Grid()
    for r in results:
        for q, qlabel in CLS_QUANTITIES:
            grid.add(f"{r.model}{SEP}{qlabel}", r.method, QUANTITY_GETTERS[q](r), r)
    values, winners, dups = grid.resolve()
    tainted = _tainted_rows(winners)
    present_models = {k[0].split(SEP)[0] for k in grid.cells}
    present_methods = {k[1] for k in grid.cells}
    models = _order_present(list(spec.models), present_models)
    methods = list(spec.methods) + [m for m in spec.optional_methods if m in present_methods]
    methods += sorted(present_methods - set(methods) - set(spec.optional_methods))
    groups = [(m, label_of(m, results)) for m in methods]
    table_paper = paper_numbers(spec.table)
    no_paper = {m for m, _ in groups if not (table_paper["method"] == m).any()}
    records, index = [], []
    for model in models:
        for q, qlabel in CLS_QUANTITIES:
            row = f"{model}{SEP}{qlabel}"
            rec = {}
            for method, glabel in groups:
                if method in no_paper:
                    rec[f"{glabel}{SEP}ours"] = _nan(values.get((row, method)))
                else:
                    paper_cells(rec, glabel, values.get((row, method)),
                                paper_value(spec.table, model, method, q, dataset="imagenet"))
            records.append(rec)
            index.append(row + (f" {DAGGER}" if row in tainted else ""))
    df = pd.DataFrame(records, index=pd.Index(index, name=f"model{SEP}quantity"))
    won = list({id(r): r for r in winners.values()}.values())
    counted = "the selective scans" if spec.table == "table7" else "attention matmuls"
    title = (f"{spec.number} — ImageNet-1k top-1 (%), throughput ({_bench_desc(won)}), "
             f"GFLOPs = GMACs incl. {counted}; {_data_desc(won)}")
    notes = ["Δ = ours − paper. Paper throughput: NVIDIA RTX A6000, batch 512 (Table 5)."]
    if spec.table == "table5":
        notes.append("Attn = eager attention + class-attention scores (the paper's baseline); "
                     "Ours = L2 representation shift at the MLP with FlashAttention; "
                     "Attn+SDPA (when present) is our hybrid; Static / Random (when present) are controls the "
                     "paper does not report (no score: keep the first tokens; seeded random scores).")
    if no_paper:
        notes.append("No paper numbers for " + ", ".join(g for m, g in groups if m in no_paper)
                     + ": only our values are shown.")
    return _finish(df, title, notes, dups, bool(tainted))


# --------------------------------------------------------------------------- table 8

T8_COLUMNS = ("L1", "L3", "L5", "L7", "L9", "L11")


def _table8_selection(r: RunResult) -> str | None:
    """``top50`` / ``bottom50`` for Ours (the paper's rows), ``random:top50`` ... for the control."""
    if r.method in ("top50", "bottom50"):  # files written before Table 8 runs kept method=ours
        return r.method
    if r.method in ("ours", "random") and r.keep in ("top", "bottom"):
        return f"{r.keep}50" if r.method == "ours" else f"{r.method}:{r.keep}50"
    return None


def _build_table8(results: list[RunResult]) -> pd.DataFrame:
    grid = _Grid()
    for r in results:
        selection = _table8_selection(r)
        if selection is None or not r.layers:
            continue
        grid.add(f"{r.model}{SEP}{selection}", f"L{r.layers[0] + 1}", r.metric_value("top1"), r)
    values, winners, dups = grid.resolve()
    tainted = _tainted_rows(winners)
    present_cols = {k[1] for k in grid.cells}
    extra_cols = sorted((c for c in present_cols if c not in T8_COLUMNS), key=lambda c: int(c[1:]))
    cols = sorted(list(T8_COLUMNS) + extra_cols, key=lambda c: int(c[1:]))
    models = _order_present(["deit_s"], {k[0].split(SEP)[0] for k in grid.cells})
    records, index = [], []
    notes = ["Layer labels count from 1 (paper): L{k} = pruning at 0-based block k−1. Δ = ours − paper.",
             "Random (control) rows, when present: seeded random scores, so its top and bottom halves are "
             "complementary random halves (a control the paper does not report)."]
    for model in models:
        prefix = "" if model == "deit_s" and len(models) == 1 else f"{model} "
        for method in ("top50", "bottom50"):
            key = f"{model}{SEP}{method}"
            ours = {c: _nan(values.get((key, c))) for c in cols}
            paper = {c: paper_value("table8", model, method, "acc1", column=c) for c in cols}
            delta = {c: _delta(ours[c], paper[c]) for c in cols}
            ours_present = [c for c in cols if not math.isnan(ours[c])]
            ours["Avg"] = (sum(ours[c] for c in ours_present) / len(ours_present)) if ours_present else math.nan
            paper["Avg"] = paper_value("table8", model, method, "acc1", column="Avg")
            paper_layers = [c for c in T8_COLUMNS if not math.isnan(paper[c])]
            both = [c for c in cols if not math.isnan(delta[c])]
            if ours_present and sorted(ours_present) == sorted(paper_layers):
                delta["Avg"] = _delta(ours["Avg"], paper["Avg"])
            elif both:
                delta["Avg"] = sum(delta[c] for c in both) / len(both)
                notes.append(f"{prefix}{method}: Avg over {', '.join(ours_present)} only; "
                             f"its Δ is the mean of the per-layer Δ.")
            else:
                delta["Avg"] = math.nan
            mark = f" {DAGGER}" if key in tainted else ""
            for kind, rec in (("ours", ours), ("paper", paper), ("Δ", delta)):
                records.append(rec)
                index.append(f"{prefix}{method}{SEP}{kind}" + (mark if kind != "paper" else ""))
        for method in ("top50", "bottom50"):  # the control's rows, when it ran
            key = f"{model}{SEP}random:{method}"
            values_of = {c: _nan(values.get((key, c))) for c in cols}
            present = [c for c in cols if not math.isnan(values_of[c])]
            if not present:
                continue
            values_of["Avg"] = sum(values_of[c] for c in present) / len(present)
            records.append(values_of)
            index.append(f"{prefix}{label_of('random')} {method}{SEP}ours" + (f" {DAGGER}" if key in tainted else ""))
    df = pd.DataFrame(records, index=pd.Index(index, name="selection"), columns=[*cols, "Avg"])
    won = list({id(r): r for r in winners.values()}.values())
    title = ("Table 8 — ImageNet-1k top-1 (%) keeping the top / bottom 50% of tokens by representation shift "
             f"at one layer (DeiT-S); {_data_desc(won)}")
    return _finish(df, title, notes, dups, bool(tainted))


# --------------------------------------------------------------------------- figures 3 / 5

def _score_label(r: RunResult, fig: str) -> str:
    metric = r.metric or "?"
    if metric in ("random", "none"):  # controls: the site plays no part
        return label_of("random" if metric == "random" else "static")
    if fig == "fig3" and metric.startswith("attn"):
        return metric
    label = f"{metric}-{r.site}" if r.site else metric
    return label if r.reading == "literal" else f"{label}@{r.reading}"


_METRIC_ORDER = ("attn_cls", "attn_mean", "l1", "l2", "cos", "Random (control)", "Static (control)")
_SITE_ORDER = ("attn", "mlp", "block")


def _score_sort_key(row: str) -> tuple:
    model, label = row.split(SEP, 1)
    metric, _, site = label.partition("-")
    mi = _METRIC_ORDER.index(metric) if metric in _METRIC_ORDER else len(_METRIC_ORDER)
    si = _SITE_ORDER.index(site) if site in _SITE_ORDER else len(_SITE_ORDER)
    return (model, mi, metric, si, site)


def _build_fig(fig: str, results: list[RunResult]) -> pd.DataFrame:
    grid = _Grid()
    base = _Grid()
    for r in results:
        if not r.layers or r.method == "base":
            base.add(r.model, "base", r.metric_value("top1"), r)
            continue
        grid.add(f"{r.model}{SEP}{_score_label(r, fig)}", f"layer {r.layers[0]}", r.metric_value("top1"), r)
    values, winners, dups = grid.resolve()
    bvalues, bwinners, bdups = base.resolve()
    tainted = _tainted_rows(winners) | _tainted_rows(bwinners)
    rows = sorted(grid.rows(), key=_score_sort_key)
    models = sorted({r.split(SEP)[0] for r in rows} | {k[0] for k in bvalues})
    cols = sorted({k[1] for k in grid.cells}, key=lambda c: int(c.split()[1]))
    records, index = [], []
    for row in rows:
        model, label = row.split(SEP, 1)
        records.append({c: _nan(values.get((row, c))) for c in cols})
        shown = label if len(models) <= 1 else row
        index.append(shown + (f" {DAGGER}" if row in tainted else ""))
    df = pd.DataFrame(records, index=pd.Index(index, name="score"), columns=cols)
    baseline = {m: v for (m, _), v in bvalues.items()}
    what = ("attention score vs representation shift" if fig == "fig3"
            else "representation shift by distance × site (metric-site)")
    won = list({id(r): r for r in [*winners.values(), *bwinners.values()]}.values())
    title = (f"Figure {fig[-1]} — top-1 (%) after pruning at one layer (0-based block index), {what}; "
             f"{_data_desc(won)}")
    notes = ["The paper only plots this figure: no paper numbers to compare with. "
             "Random / Static (control) rows, when present, are controls the paper does not plot."]
    if baseline:
        notes.append("Baseline without pruning: " + ", ".join(f"{m} {v:.2f}" for m, v in sorted(baseline.items())))
    return _finish(df, title, notes, dups + bdups, bool(tainted), extra={"baseline": baseline})


# --------------------------------------------------------------------------- readings

def _build_readings(results: list[RunResult]) -> pd.DataFrame:
    """Top-1 at the DeiT schedule per reading of every metric × site, and the Table 8 gap per reading."""
    schedule, gaps = _Grid(), _Grid()
    for r in results:
        if r.metric not in ("l1", "l2", "cos") or not r.layers:
            continue
        if len(r.layers) == 1 and r.keep in ("top", "bottom"):  # experiment=readings_table8
            gaps.add(f"{r.model}{SEP}{r.metric}-{r.site}{SEP}{r.keep}", f"{r.reading}{SEP}L{r.layers[0] + 1}",
                     r.metric_value("top1"), r)
        else:
            schedule.add(f"{r.model}{SEP}{r.metric}-{r.site}", r.reading, r.metric_value("top1"), r)
    values, winners, dups = schedule.resolve()
    gap_values, gap_winners, gap_dups = gaps.resolve()
    readings = ("literal", "update", "normed")
    records, index = [], []
    for row in sorted(schedule.rows(), key=_score_sort_key):
        model, score = row.split(SEP)
        rec = {reading: _nan(values.get((row, reading))) for reading in readings}
        rec["paper"] = paper_value("table5", model, "ours", "acc1", dataset="imagenet") \
            if score == "l2-mlp" else math.nan
        records.append(rec)
        index.append(row)
    for row in sorted({k[0].rsplit(SEP, 1)[0] for k in gap_values}):
        rec = {}
        for reading in readings:
            per_layer = []
            for (key, col), top in gap_values.items():
                if key == f"{row}{SEP}top" and col.startswith(f"{reading}{SEP}"):
                    bottom = gap_values.get((f"{row}{SEP}bottom", col))
                    if bottom is not None:
                        per_layer.append(top - bottom)
            rec[reading] = sum(per_layer) / len(per_layer) if per_layer else math.nan
        rec["paper"] = paper_value("table8", row.split(SEP)[0], "top50", "acc1", column="Avg") \
            - paper_value("table8", row.split(SEP)[0], "bottom50", "acc1", column="Avg")
        records.append(rec)
        index.append(f"{row}{SEP}Table 8 gap (top − bottom 50 %)")
    all_winners = {**winners, **gap_winners}
    tainted = _tainted_rows(winners) | {k[0].rsplit(SEP, 1)[0] for k, r in gap_winners.items() if r.tainted}
    index = [i + (f" {DAGGER}" if i.split(f"{SEP}Table 8")[0] in tainted else "") for i in index]
    df = pd.DataFrame(records, index=pd.Index(index, name=f"model{SEP}score"),
                      columns=[*readings, "paper"])
    won = list({id(r): r for r in all_winners.values()}.values())
    title = ("Readings of D(F(x), x) — top-1 (%) at the DeiT schedule (20 % after blocks 0, 3, 6) per reading; "
             f"gap rows: mean top-50 % minus bottom-50 % top-1 over the pruned layer (Table 8); {_data_desc(won)}")
    notes = ["literal = D(g(F(N(x))), x) (Eqs. 4-6 as written), update = D(x + g(F(N(x))), x), "
             "normed = D(F(N(x)), N(x)); for site=block all three are D(x̂, x). The paper column is Table 5's Ours "
             "(l2-mlp rows) or Table 8's Avg gap: the reading that reaches it with the real weights is the one the "
             "paper ran."]
    return _finish(df, title, notes, dups + gap_dups, bool(tainted))


# --------------------------------------------------------------------------- demo

DEMO_COLUMNS = (("acc1", "Acc-1"), ("top5", "Top-5"), ("throughput", "img/s"), ("gflops", "GMACs"),
                ("tokens", "tokens"))


def _build_demo(results: list[RunResult]) -> pd.DataFrame:
    grid = _Grid()
    for r in results:
        for q, label in DEMO_COLUMNS:
            grid.add(r.method, label, QUANTITY_GETTERS[q](r), r)
    values, winners, dups = grid.resolve()
    tainted = _tainted_rows(winners)
    rows = _order_present([m for m in ("base", "attn", "ours", "attn+sdpa", "static", "random") if m in grid.rows()],
                          grid.rows())
    records = [{label: _nan(values.get((row, label))) for _, label in DEMO_COLUMNS} for row in rows]
    index = [row + (f" {DAGGER}" if row in tainted else "") for row in rows]
    df = pd.DataFrame(records, index=pd.Index(index, name="method"), columns=[c for _, c in DEMO_COLUMNS])
    won = list({id(r): r for r in winners.values()}.values())
    title = (f"Demo — ShapeBench, tiny ViT trained here (not ImageNet): top-1 / top-5 (%), "
             f"throughput ({_bench_desc(won)}), GMACs, final token count; {_data_desc(won)}")
    notes = ["No paper columns: ShapeBench is our own synthetic benchmark. static (keep the first tokens) and "
             "random (seeded scores) are controls the paper does not report."]
    # The demo is synthetic by design: the dagger is still shown so nobody mistakes it for ImageNet.
    return _finish(df, title, notes, dups, bool(tainted))


# --------------------------------------------------------------------------- public API

#: table name -> builder of this module (see :func:`builders` for every table).
BUILDERS: dict[str, Callable[[list[RunResult]], pd.DataFrame]] = {
    "table1": _build_table1,
    **{name: (lambda results, spec=spec: _build_cls(spec, results)) for name, spec in CLS_SPECS.items()},
    "table8": _build_table8,
    "fig3": lambda results: _build_fig("fig3", results),
    "fig5": lambda results: _build_fig("fig5", results),
    "readings": _build_readings,
    "demo": _build_demo,
}


def build(table: str, results: Iterable[RunResult | dict]) -> pd.DataFrame:
    """Build the paper-shaped table ``table`` (one of ``TABLES``) from results."""
    known = builders()
    if table not in known:
        raise ValueError(f"unknown table {table!r}; valid tables: {', '.join(known)}")
    return known[table](_runs(results))


def _fmt(v: Any, signed: bool = False) -> str:
    """Numbers for the markdown: up to 2 decimals (1 above 1000), at least 1 below 1000; NaN -> ""."""
    if v is None:
        return ""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return ""
    decimals = 1 if abs(f) >= 1000 else 2
    f = round(f, decimals)
    if abs(f) >= 100 and f == int(f):  # 3002, 197 tokens, +463: no ".0"
        return f"{int(f):+d}" if signed else f"{int(f):d}"
    if f == 0:
        return "0.0" if abs(float(v)) < 1000 else "0"
    s = f"{f:+.{decimals}f}" if signed else f"{f:.{decimals}f}"
    s = s.rstrip("0")
    if s.endswith("."):
        s = s[:-1] if abs(f) >= 1000 else s + "0"
    return s


def render(table: str, df: pd.DataFrame) -> tuple[str, str]:
    """-> (markdown, csv). The markdown starts with the title line and ends with the notes."""
    cells = []
    for idx, row in zip(df.index, df.itertuples(index=False, name=None)):
        row_signed = str(idx).replace(f" {DAGGER}", "").endswith("Δ")
        cells.append([_fmt(v, signed=row_signed or str(col).endswith("Δ")) for col, v in zip(df.columns, row)])
    body = pd.DataFrame(cells, index=df.index, columns=[str(c) for c in df.columns], dtype=object)
    title = df.attrs.get("title") or table
    # disable_numparse: keep our formatting (signs, trimmed zeros) instead of tabulate's
    table_md = body.to_markdown(disable_numparse=True, colalign=("left",) + ("right",) * len(body.columns))
    lines = [f"## {title}", "", table_md, ""]
    lines += [f"{note}" if note.startswith(DAGGER) else f"Note: {note}" for note in df.attrs.get("notes", [])]
    markdown = "\n".join(lines).rstrip() + "\n"
    csv = df.to_csv(na_rep="", float_format="%.6g")
    return markdown, csv


def write(table: str, df: pd.DataFrame, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``out_dir/<table>.md`` and ``out_dir/<table>.csv``; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown, csv = render(table, df)
    md_path, csv_path = out_dir / f"{table}.md", out_dir / f"{table}.csv"
    for path, text in ((md_path, markdown), (csv_path, csv)):
        with atomic_open(path, "w") as fh:
            fh.write(text)
    return md_path, csv_path


def builders() -> dict[str, Callable[[list[RunResult]], pd.DataFrame]]:
    """Every table builder: this module's, the video tables' (Table 2, Fig. 1, Fig. 3 for UMT), which build on
    this module's helpers and so are looked up only when asked for, and the merging table's (issue 23)."""
    from repshift.report.merging_table import BUILDERS as merging_builders
    from repshift.report.video_tables import BUILDERS as video_builders

    return {**BUILDERS, **video_builders, **merging_builders}


def __getattr__(name: str):
    if name == "TABLES":  # table names ``build`` understands (also the experiment folder names)
        return tuple(builders())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
