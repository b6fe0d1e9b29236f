"""Video tables and figures from run results: Table 2, the data of Fig. 1, Fig. 3 for UMT, Table 3 (vid-TLDR).

Same conventions as :mod:`repshift.report.tables` (whose helpers this module uses): a
:class:`pandas.DataFrame` with flat string columns ``"<label> · ours" / "· paper" / "· Δ"``, NaN for a
missing cell, title and notes in ``df.attrs``, ``†`` on rows fed by random weights or synthetic data.
:data:`BUILDERS` holds this module's table builders, for ``repshift.report.tables.BUILDERS``.

Retrieval quantities are the evaluator's ``hm_r1/5/10``: the harmonic mean of text-to-video and
video-to-text R@K, which is what the paper's Table 2 reports (its UMT-B MSRVTT Base R@1 of 50.0 is the
harmonic mean of UMT's 51.0 T2V and 49.0 V2T), of the ranking the run reported (UMT's ITM re-ranking
unless ``+dataset.itm=false``).

A column is a *variant*: a method and the kind of attention kernel it ran. Accuracy does not depend on
the kernel (the same tokens are kept), throughput does:

====================  ========  ===========  =================================================
variant               method    kernel       in the paper
====================  ========  ===========  =================================================
Base                  base      eager        Table 2 "Base" (32 / 12 vid/s = Table 1 self-attention)
Attn                  attn      eager        Table 2 "Attn"
Ours                  ours      fused        Table 2 "Ours" (FlashAttention)
Base+FA               base      fused        Table 1 FlashAttention (UMT-B 85 vid/s)
Ours (self-attn)      ours      eager        Fig. 1 "Ours" (no FlashAttention)
Attn+SDPA             attn      fused        not in the paper: our hybrid
====================  ========  ===========  =================================================

"fused" is ``sdpa`` or ``flash_attn``. The last three show when results have them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import pandas as pd

from repshift.report.results import RunResult
from repshift.report.tables import (
    DAGGER,
    SEP,
    _bench_desc,
    _data_desc,
    _finish,
    _Grid,
    _nan,
    _runs,
    _tainted_rows,
    paper_cells,
    paper_value,
)

__all__ = ["BUILDERS", "DATASETS", "MODELS", "VARIANTS", "build_table2", "build_fig1", "build_fig3_umt",
           "variant_of", "fig1_points", "TABLE3_VARIANTS", "build_table3", "QA_DATASETS", "QA_MODELS",
           "build_table4"]

#: Dataset config name -> (paper's name in paper_numbers.csv, label).
DATASETS: dict[str, tuple[str, str]] = {
    "msrvtt": ("msrvtt", "MSRVTT"),
    "msvd": ("msvd", "MSVD"),
    "anet": ("activitynet", "ActivityNet"),
    "didemo": ("didemo", "DiDeMo"),
    "lsmdc": ("lsmdc", "LSMDC"),
    "ssv2_label": ("ssv2-label", "SSV2-Label"),
    "ssv2_template": ("ssv2-template", "SSV2-Template"),
}
#: Model config name -> label.
MODELS: dict[str, str] = {"umt_b": "UMT-B", "umt_l": "UMT-L"}
RECALLS = (("hm_r1", "R@1", "r@1"), ("hm_r5", "R@5", "r@5"), ("hm_r10", "R@10", "r@10"))
FUSED = ("sdpa", "flash_attn")


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    method: str
    kernel: str  # "eager" or "fused"
    paper: Optional[tuple[str, str]]  # (table, method) of its paper throughput, None when the paper has none
    always: bool  # shown even without results (the paper's columns)


VARIANTS: tuple[Variant, ...] = (
    Variant("base", "Base", "base", "eager", ("table2", "base"), True),
    Variant("attn", "Attn", "attn", "eager", ("table2", "attn"), True),
    Variant("ours", "Ours", "ours", "fused", ("table2", "ours"), True),
    Variant("base+fa", "Base+FA", "base", "fused", ("table1", "flash-attention"), False),
    Variant("ours-sa", "Ours (self-attn)", "ours", "eager", None, False),
    Variant("attn+sdpa", "Attn+SDPA", "attn", "fused", None, False),
)
_BY_KEY = {v.key: v for v in VARIANTS}


def _method(r: RunResult) -> str:
    return "attn" if r.method == "attn+sdpa" else r.method


def _kernel(r: RunResult) -> str:
    return "fused" if (r.attention or "") in FUSED else "eager"


def variant_of(r: RunResult) -> Optional[Variant]:
    """The column of a run's throughput (None for a method none of the columns shows)."""
    for v in VARIANTS:
        if v.method == _method(r) and v.kernel == _kernel(r):
            return v
    return None


def _video_runs(results: Iterable) -> list[RunResult]:
    return [r for r in _runs(results) if r.model in MODELS or r.model.startswith("umt")]


def _model_label(model: str) -> str:
    return MODELS.get(model, model)


def _paper_throughput(model: str, v: Variant) -> float:
    if v.paper is None:
        return math.nan
    table, method = v.paper
    if table == "table1":
        return paper_value("table1", model, method, "throughput")
    return paper_value("table2", model, method, "throughput", dataset="")


def _paper_gflops(model: str, v: Variant) -> float:
    if v.method == "base":  # the kernel does not change the count
        return paper_value("table2", model, "base", "gflops", dataset="")
    if v.method in ("attn", "ours"):
        return paper_value("table2", model, v.method, "gflops", dataset="")
    return math.nan


def _collect(results: list[RunResult]) -> tuple[_Grid, _Grid]:
    """(accuracy grid: (model·dataset·quantity, model·method), efficiency grid: (model·quantity, model·variant))."""
    accuracy, efficiency = _Grid(), _Grid()
    for r in results:
        if r.metrics and r.dataset:
            for metric, label, _ in RECALLS:
                accuracy.add(f"{r.model}{SEP}{r.dataset}{SEP}{label}", f"{r.model}{SEP}{_method(r)}",
                             r.metric_value(metric), r)
        _add_efficiency(efficiency, r)
    return accuracy, efficiency


def _add_efficiency(grid: _Grid, r: RunResult) -> None:
    """A run's throughput in its variant's column and its GFLOPs in its method's (Tables 2 and 4)."""
    v = variant_of(r)
    if v is None:
        return
    grid.add(f"{r.model}{SEP}throughput", f"{r.model}{SEP}{v.key}", r.throughput, r)
    if v.always:  # GFLOPs do not depend on the kernel (counted through the math path): one per method
        grid.add(f"{r.model}{SEP}gflops", f"{r.model}{SEP}{v.method}", r.gmacs, r)


class _Rows:
    """A video table's rows as they are added; columns of ``extras`` (variants shown only where measured)
    get NaN in rows that have no value for them."""

    def __init__(self, extra_labels: Iterable[str] = ()):
        self.extra_labels = list(extra_labels)
        self.records: list[dict] = []
        self.index: list[str] = []

    def add(self, name: str, cells: dict, marked: bool) -> None:
        for extra in self.extra_labels:
            cells.setdefault(f"{extra}{SEP}ours", math.nan)
        self.records.append(cells)
        self.index.append(name + (f" {DAGGER}" if marked else ""))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.records, index=pd.Index(self.index, name=f"dataset{SEP}quantity"))


def _efficiency_rows(rows: _Rows, eff: dict, tainted: set, models: list[str], columns: list, extras: list,
                     label: Callable[[str, Variant], str], paper_throughput: Callable[[str, Variant], float],
                     paper_gflops: Callable[[str, Variant], float]) -> None:
    """Throughput, Speed-up (over Base, self-attention) and GFLOPs rows of Tables 2 and 4, ours beside the paper's."""
    def throughput(model: str, key: str) -> Optional[float]:
        return eff.get((f"{model}{SEP}throughput", f"{model}{SEP}{key}"))

    def speedup(model: str, key: str) -> Optional[float]:
        ours, base = throughput(model, key), throughput(model, "base")
        return ours / base if ours is not None and base else None

    marked = any(f"{m}{SEP}throughput" in tainted for m in models)
    for name, value, paper in (
        ("Throughput", throughput, paper_throughput),
        ("Speed-up ×", speedup, lambda m, v: paper_throughput(m, v) / paper_throughput(m, _BY_KEY["base"])),
    ):
        rec = {}
        for model, v in columns:
            paper_cells(rec, label(model, v), value(model, v.key), paper(model, v))
        for model, v in extras:
            rec[f"{label(model, v)}{SEP}ours"] = _nan(value(model, v.key))
        rows.add(name, rec, marked)
    rec = {}
    for model, v in columns:
        paper_cells(rec, label(model, v), eff.get((f"{model}{SEP}gflops", f"{model}{SEP}{v.method}")),
                    paper_gflops(model, v))
    rows.add("GFLOPs", rec, any(f"{m}{SEP}gflops" in tainted for m in models))


def _models(results: list[RunResult]) -> list[str]:
    """The paper's models (always: their paper numbers are shown), then any other UMT that has results."""
    return list(MODELS) + sorted({r.model for r in results} - set(MODELS))


def _mean_r1(values: dict, model: str, method: str, datasets: Iterable[str]) -> tuple[float, list[str]]:
    got = [(d, values.get((f"{model}{SEP}{d}{SEP}R@1", f"{model}{SEP}{method}"))) for d in datasets]
    got = [(d, v) for d, v in got if v is not None]
    return (sum(v for _, v in got) / len(got) if got else math.nan), [d for d, _ in got]


def _clip_desc(runs: Iterable[RunResult]) -> str:
    """``12 x 3 x 224 x 224`` from the benched runs' ``model.input_size`` (the paper's clip), or n/a."""
    sizes = {tuple(((r.raw.get("config") or {}).get("model") or {}).get("input_size") or ()) for r in runs}
    sizes.discard(())
    return " / ".join(" × ".join(str(d) for d in size) for size in sorted(sizes)) or "n/a"


def _paper_mean_r1(model: str, method: str) -> float:
    values = [paper_value("table2", model, method, "r@1", dataset=paper) for paper, _ in DATASETS.values()]
    return sum(values) / len(values)


# --------------------------------------------------------------------------- table 2

def build_table2(results: Iterable) -> pd.DataFrame:
    """Table 2: rows Throughput, Speed-up, GFLOPs, then R@1/5/10 per dataset and the mean R@1; columns
    ``<model> <variant>`` with ours / paper / Δ."""
    results = _video_runs(results)
    accuracy, efficiency = _collect(results)
    acc, acc_won, acc_dups = accuracy.resolve()
    eff, eff_won, eff_dups = efficiency.resolve()
    tainted = _tainted_rows(acc_won) | _tainted_rows(eff_won)
    models = _models(results)
    present_datasets = {k[0].split(SEP)[1] for k in acc}
    datasets = [d for d in DATASETS] + sorted(present_datasets - set(DATASETS))
    columns = [(m, v) for m in models for v in VARIANTS if v.always]
    # the other variants, where measured: throughput only, no paper column
    extras = [(m, v) for m in models for v in VARIANTS
              if not v.always and (f"{m}{SEP}throughput", f"{m}{SEP}{v.key}") in eff]

    def label(model: str, v: Variant) -> str:
        return f"{_model_label(model)} {v.label}"

    rows = _Rows(label(m, v) for m, v in extras)
    _efficiency_rows(rows, eff, tainted, models, columns, extras, label, _paper_throughput, _paper_gflops)

    # accuracy rows
    for dataset in datasets:
        paper_name, dataset_label = DATASETS.get(dataset, (dataset, dataset))
        for _, quantity, paper_quantity in RECALLS:
            rec, marked = {}, False
            for model, v in columns:
                row = f"{model}{SEP}{dataset}{SEP}{quantity}"
                paper_cells(rec, label(model, v), acc.get((row, f"{model}{SEP}{v.method}")),
                            paper_value("table2", model, v.method, paper_quantity, dataset=paper_name))
                marked |= row in tainted
            rows.add(f"{dataset_label}{SEP}{quantity}", rec, marked)
    rec, partial = {}, []
    for model, v in columns:
        mean, used = _mean_r1(acc, model, v.method, DATASETS)
        if used and len(used) < len(DATASETS):
            partial.append(f"{label(model, v)}: {', '.join(used)}")
        paper_cells(rec, label(model, v), mean, _paper_mean_r1(model, v.method) if len(used) in (0, len(DATASETS))
                    else math.nan)
    rows.add(f"Mean of 7{SEP}R@1", rec, bool(tainted))

    df = rows.frame()
    won = list({id(r): r for r in [*acc_won.values(), *eff_won.values()]}.values())
    rankings = sorted({(r.raw.get("dataset") or {}).get("ranking", {}).get("name", "itm") for r in acc_won.values()})
    title = (f"Table 2 — video-text retrieval, R@K = harmonic mean of T2V and V2T R@K (%) "
             f"[{'/'.join(rankings) or 'itm'} ranking]; throughput ({_bench_desc(won)}) and GFLOPs (= GMACs) of the "
             f"vision encoder, one clip of {_clip_desc(eff_won.values())}; {_data_desc(won)}")
    notes = [
        "Δ = ours − paper. Paper throughput: NVIDIA RTX A6000, batch 20, vision encoder; Base is self-attention "
        "(its 32 / 12 vid/s equal Table 1's self-attention row), Attn is eager attention with Eq. 3 scores, Ours is "
        "L2 representation shift across the MLP with FlashAttention; 20 % pruned after blocks 0, 1, 2.",
        "Speed-up = throughput / Base (self-attention). Base+FA (no pruning, FlashAttention; the paper's Table 1: "
        "85 vid/s for UMT-B), Ours (self-attn) (Fig. 1's Ours without FlashAttention) and Attn+SDPA (our hybrid) "
        "show their throughput when measured; their accuracy is that of Base, Ours and Attn (the kernel does not "
        "change which tokens are kept).",
        "GFLOPs: our count leaves LayerNorm out (the paper's fvcore count has it: +0.23 G for UMT-B, +0.59 G for "
        "UMT-L); UMT-B base counts 303.12 where the paper says 303.3 (docs/video.md).",
    ]
    if "emb" in rankings:
        notes.append("Some runs ranked by embeddings only (+dataset.itm=false): UMT's reported numbers are ITM "
                     "re-ranked.")
    if partial:
        notes.append("Mean R@1 over the datasets present only (no paper value): " + "; ".join(partial))
    return _finish(df, title, notes, acc_dups + eff_dups, bool(tainted))


# --------------------------------------------------------------------------- figure 1

FIG1_VARIANTS = ("base", "base+fa", "attn", "ours-sa", "ours")
#: Fig. 1's own names: its "Ours" runs self-attention, "Ours+FA" is Table 2's Ours.
FIG1_LABELS = {"base": "Base", "base+fa": "Base+FA", "attn": "Attn", "ours-sa": "Ours", "ours": "Ours+FA"}


def fig1_points(results: Iterable) -> list[dict]:
    """One point per (model, variant) with a throughput: ``{model, variant, label, throughput, mean_r1,
    datasets, paper_throughput, paper_mean_r1, tainted}``; mean R@1 over the datasets present."""
    results = _video_runs(results)
    accuracy, efficiency = _collect(results)
    acc, acc_won, _ = accuracy.resolve()
    eff, eff_won, _ = efficiency.resolve()
    points = []
    for model in [m for m in _models(results) if any(r.model == m for r in results)]:
        for key in FIG1_VARIANTS:
            v = _BY_KEY[key]
            throughput = eff.get((f"{model}{SEP}throughput", f"{model}{SEP}{key}"))
            mean, used = _mean_r1(acc, model, v.method, DATASETS)
            if throughput is None and not used:
                continue
            row_runs = [r for (row, col), r in [*acc_won.items(), *eff_won.items()] if row.startswith(f"{model}{SEP}")]
            points.append({
                "model": model, "variant": key, "label": f"{_model_label(model)} {FIG1_LABELS[key]}",
                "throughput": _nan(throughput), "mean_r1": mean, "datasets": len(used),
                "paper_throughput": _paper_throughput(model, v) if v.paper and v.paper[0] == "table2" else math.nan,
                "paper_mean_r1": _paper_mean_r1(model, v.method) if v.method in ("base", "attn", "ours") else math.nan,
                "tainted": any(r.tainted for r in row_runs),
            })
    return points


def build_fig1(results: Iterable) -> pd.DataFrame:
    """Fig. 1's points as a table: throughput and mean R@1 (ours, and the paper's from Table 2)."""
    results = _video_runs(results)
    points = fig1_points(results)
    records, index = [], []
    for p in points:
        rec = {}
        paper_cells(rec, "Throughput", None if math.isnan(p["throughput"]) else p["throughput"], p["paper_throughput"])
        paper_cells(rec, "Mean R@1", None if math.isnan(p["mean_r1"]) else p["mean_r1"],
                    p["paper_mean_r1"] if p["datasets"] in (0, len(DATASETS)) else math.nan)
        rec["datasets"] = p["datasets"]
        records.append(rec)
        index.append(p["label"] + (f" {DAGGER}" if p["tainted"] else ""))
    df = pd.DataFrame(records, index=pd.Index(index, name="model · variant"))
    title = (f"Figure 1 — mean R@1 (harmonic mean of T2V and V2T, %) over the Table 2 benchmarks against throughput "
             f"({_bench_desc(results)}); {_data_desc(results)}")
    notes = ["Paper values are derived from Table 2 (mean of its seven R@1 rows; its throughput row). Ours = "
             "representation shift with self-attention, Ours+FA = with FlashAttention (Table 2's Ours); the paper "
             "gives no throughput for Ours or Base+FA. Accuracy does not depend on the kernel.",
             "datasets = how many of the seven benchmarks the mean covers."]
    return _finish(df, title, notes, [], any(p["tainted"] for p in points))


# --------------------------------------------------------------------------- figure 3 (UMT)

def build_fig3_umt(results: Iterable) -> pd.DataFrame:
    """Fig. 3 for UMT: R@1 (harmonic mean) after dropping tokens at one block, per score and block."""
    results = _video_runs(results)
    grid, base = _Grid(), _Grid()
    for r in results:
        value = r.metric_value("hm_r1")
        if not r.layers or r.method == "base":
            base.add(r.model, "base", value, r)
            continue
        resolved = r.raw.get("metric_resolved") or r.metric
        score = f"{resolved} (Eq. 3)" if resolved == "attn_mean" else f"{r.metric}-{r.site}"
        grid.add(f"{r.model}{SEP}{score}", f"layer {r.layers[0]}", value, r)
    values, winners, dups = grid.resolve()
    bvalues, bwinners, bdups = base.resolve()
    tainted = _tainted_rows(winners) | _tainted_rows(bwinners)
    rows = sorted(grid.rows())
    cols = sorted({k[1] for k in grid.cells}, key=lambda c: int(c.split()[1]))
    models = {row.split(SEP)[0] for row in rows}
    records = [{c: _nan(values.get((row, c))) for c in cols} for row in rows]
    index = [(row.split(SEP, 1)[1] if len(models) <= 1 else row) + (f" {DAGGER}" if row in tainted else "")
             for row in rows]
    df = pd.DataFrame(records, index=pd.Index(index, name="score"), columns=cols)
    baseline = {m: v for (m, _), v in bvalues.items()}
    won = list({id(r): r for r in [*winners.values(), *bwinners.values()]}.values())
    title = ("Figure 3 (UMT) — R@1 (harmonic mean of T2V and V2T, %) after dropping tokens at one block "
             f"(0-based), attention score (Eq. 3) vs representation shift across attention; {_data_desc(won)}")
    notes = ["The paper only plots this figure (1,100 tokens at blocks 0/2/4/6/8, UMT-B, MSRVTT): no paper numbers."]
    if baseline:
        notes.append("Baseline without pruning: " + ", ".join(f"{m} {v:.2f}" for m, v in sorted(baseline.items())))
    return _finish(df, title, notes, dups + bdups, bool(tainted), extra={"baseline": baseline})


# --------------------------------------------------------------------------- table 3 (vid-TLDR merging)

#: Table 3's columns. Base is self-attention (the paper's 32 / 12 vid/s); vid-TLDR runs eager attention as
#: published; +Ours is representation shift with fused attention, exact (log(size) bias through SDPA's float
#: mask) or flash (no size bias, FlashAttention kept: not a paper column).
TABLE3_VARIANTS: tuple[Variant, ...] = (
    Variant("base", "Base", "base", "eager", ("table3", "base"), True),
    Variant("vid-tldr", "vid-TLDR", "vid-tldr", "eager", ("table3", "vid-tldr"), True),
    Variant("vid-tldr+ours", "+Ours", "vid-tldr+ours", "fused", ("table3", "vid-tldr+ours"), True),
    Variant("vid-tldr+ours-flash", "+Ours (flash)", "vid-tldr+ours-flash", "fused", None, True),
    Variant("base+fa", "Base+FA", "base", "fused", None, False),
)
_ANY_DATASET = "*"  # Base's throughput and GFLOPs do not depend on the dataset (no schedule)


def _table3_variant(r: RunResult) -> Optional[Variant]:
    for v in TABLE3_VARIANTS:
        if v.method == r.method and v.kernel == _kernel(r):
            return v
    return None


def _run_dataset(r: RunResult) -> Optional[str]:
    """The benchmark a run belongs to: its evaluated dataset, or (bench runs) the configured one."""
    return r.dataset or ((r.raw.get("config") or {}).get("dataset") or {}).get("name")


def build_table3(results: Iterable) -> pd.DataFrame:
    """Table 3: per dataset, throughput, speed-up, GFLOPs and R@1 (harmonic mean) of Base / vid-TLDR / +Ours
    (exact) / +Ours (flash), for UMT-B and UMT-L, with ours / paper / Δ; then the mean speed-up and R@1."""
    results = [r for r in _video_runs(results) if r.method in {v.method for v in TABLE3_VARIANTS}]
    accuracy, efficiency = _Grid(), _Grid()
    for r in results:
        dataset = _run_dataset(r)
        if r.metrics and dataset:
            accuracy.add(f"{r.model}{SEP}{dataset}", f"{r.model}{SEP}{r.method}", r.metric_value("hm_r1"), r)
        v = _table3_variant(r)
        if v is None or r.throughput is None:
            continue
        where = _ANY_DATASET if v.method == "base" else dataset
        efficiency.add(f"{r.model}{SEP}{where}{SEP}throughput", f"{r.model}{SEP}{v.key}", r.throughput, r)
        if v.always:  # GFLOPs do not depend on the kernel: one per method
            efficiency.add(f"{r.model}{SEP}{where}{SEP}gflops", f"{r.model}{SEP}{v.method}", r.gmacs, r)
    acc, acc_won, acc_dups = accuracy.resolve()
    eff, eff_won, eff_dups = efficiency.resolve()
    tainted = _tainted_rows(acc_won) | _tainted_rows(eff_won)
    models = _models(results)
    present = ({k[0].split(SEP)[1] for k in acc} | {k[0].split(SEP)[1] for k in eff}) - {_ANY_DATASET}
    datasets = list(DATASETS) + sorted(present - set(DATASETS))
    columns = [(m, v) for m in models for v in TABLE3_VARIANTS if v.always]
    extras = [(m, v) for m in models for v in TABLE3_VARIANTS
              if not v.always and (f"{m}{SEP}{_ANY_DATASET}{SEP}throughput", f"{m}{SEP}{v.key}") in eff]

    def label(model: str, v: Variant) -> str:
        return f"{_model_label(model)} {v.label}"

    def cell(model: str, dataset: str, quantity: str, col: str) -> tuple[Optional[float], str]:
        """The value and the row it came from (Base's rows are the dataset-independent ones)."""
        for where in (dataset, _ANY_DATASET):
            row = f"{model}{SEP}{where}{SEP}{quantity}"
            if (row, f"{model}{SEP}{col}") in eff:
                return eff[(row, f"{model}{SEP}{col}")], row
        return None, ""

    def speedup(model: str, dataset: str, key: str) -> Optional[float]:
        ours, base = cell(model, dataset, "throughput", key)[0], cell(model, dataset, "throughput", "base")[0]
        return ours / base if ours is not None and base else None

    def paper(model: str, v: Variant, quantity: str, dataset_name: str) -> float:
        return paper_value("table3", model, v.paper[1], quantity, dataset=dataset_name) if v.paper else math.nan

    def paper_speedup(model: str, v: Variant, dataset_name: str) -> float:
        return paper(model, v, "throughput", dataset_name) / paper(model, _TABLE3_BASE, "throughput", dataset_name)

    rows = _Rows()

    for dataset in datasets:
        paper_name, dataset_label = DATASETS.get(dataset, (dataset, dataset))
        rec, marked = {}, False
        for model, v in columns:
            value, row = cell(model, dataset, "throughput", v.key)
            paper_cells(rec, label(model, v), value, paper(model, v, "throughput", paper_name))
            marked |= row in tainted
        for model, v in extras:
            value, row = cell(model, dataset, "throughput", v.key)
            rec[f"{label(model, v)}{SEP}ours"] = _nan(value)
            marked |= row in tainted
        rows.add(f"{dataset_label}{SEP}Throughput", rec, marked)
        rec = {}
        for model, v in columns:
            paper_cells(rec, label(model, v), speedup(model, dataset, v.key), paper_speedup(model, v, paper_name))
        for model, v in extras:
            rec[f"{label(model, v)}{SEP}ours"] = _nan(speedup(model, dataset, v.key))
        rows.add(f"{dataset_label}{SEP}Speed-up ×", rec, marked)
        rec, marked = {}, False
        for model, v in columns:
            value, row = cell(model, dataset, "gflops", v.method)
            paper_cells(rec, label(model, v), value, math.nan)
            marked |= row in tainted
        rows.add(f"{dataset_label}{SEP}GFLOPs", rec, marked)
        rec, marked = {}, False
        for model, v in columns:
            row = f"{model}{SEP}{dataset}"
            paper_cells(rec, label(model, v), acc.get((row, f"{model}{SEP}{v.method}")),
                        paper(model, v, "r@1", paper_name))
            marked |= row in tainted
        rows.add(f"{dataset_label}{SEP}R@1", rec, marked)

    rec_speed, rec_r1, partial = {}, {}, []
    for model, v in columns:
        speeds = [s for s in (speedup(model, d, v.key) for d in DATASETS) if s is not None]
        r1s = [acc[(f"{model}{SEP}{d}", f"{model}{SEP}{v.method}")] for d in DATASETS
               if (f"{model}{SEP}{d}", f"{model}{SEP}{v.method}") in acc]
        for what, got in (("speed-up", speeds), ("R@1", r1s)):
            if got and len(got) < len(DATASETS):
                partial.append(f"{label(model, v)} {what}: {len(got)} of {len(DATASETS)}")
        paper_names = [paper_name for paper_name, _ in DATASETS.values()]
        paper_speed = [paper_speedup(model, v, n) for n in paper_names]
        paper_r1 = [paper(model, v, "r@1", n) for n in paper_names]
        paper_cells(rec_speed, label(model, v), sum(speeds) / len(speeds) if speeds else None,
                    sum(paper_speed) / len(paper_speed) if len(speeds) in (0, len(DATASETS)) else math.nan)
        paper_cells(rec_r1, label(model, v), sum(r1s) / len(r1s) if r1s else None,
                    sum(paper_r1) / len(paper_r1) if len(r1s) in (0, len(DATASETS)) else math.nan)
    rows.add(f"Mean of 7{SEP}Speed-up ×", rec_speed, bool(tainted))
    rows.add(f"Mean of 7{SEP}R@1", rec_r1, bool(tainted))

    df = rows.frame()
    won = list({id(r): r for r in [*acc_won.values(), *eff_won.values()]}.values())
    kernels = []
    for model, v in columns + extras:
        ran = sorted({k for (row, col), r in eff_won.items()
                      if row.endswith(f"{SEP}throughput") and col == f"{model}{SEP}{v.key}" for k in r.kernels})
        if ran:
            kernels.append(f"{label(model, v)}: {', '.join(ran)}")
    title = (f"Table 3 — vid-TLDR token merging on video-text retrieval, R@1 = harmonic mean of T2V and V2T R@1 (%); "
             f"throughput ({_bench_desc(won)}) and GFLOPs (= GMACs) of the vision encoder, one clip of "
             f"{_clip_desc(eff_won.values())}; {_data_desc(won)}")
    notes = [
        "Δ = ours − paper. vid-TLDR: attention-entropy saliency, eager attention, proportional attention, global "
        "mean pooling, its published per-task schedules (repshift/configs/compress/vid_tldr.yaml). +Ours: representation "
        "shift (L2, attention branch, at vid-TLDR's merge point) as the saliency with fused attention; exact keeps "
        "the log(size) bias (SDPA with a float mask: memory-efficient kernel on CUDA), flash drops it (FlashAttention "
        "kept; not a paper column). Base: no merging, self-attention, UMT's per-frame pooling.",
        "Speed-up = throughput / Base (self-attention); the paper's ×s are its throughput ratios. Base's throughput "
        "and GFLOPs do not depend on the dataset; the others follow each dataset's schedule. The paper gives no "
        "GFLOPs for Table 3.",
        "Kernels that ran: " + ("; ".join(kernels) if kernels else "n/a (no throughput results)"),
    ]
    if partial:
        notes.append("Means over the datasets present only (no paper value): " + "; ".join(partial))
    return _finish(df, title, notes, acc_dups + eff_dups, bool(tainted))


_TABLE3_BASE = TABLE3_VARIANTS[0]

# --------------------------------------------------------------------------- table 4 (video QA)

#: QA dataset config name -> (paper's name in paper_numbers.csv, label).
QA_DATASETS: dict[str, tuple[str, str]] = {"msrvtt_qa": ("msrvtt-qa", "MSRVTT-QA"), "msvd_qa": ("msvd-qa", "MSVD-QA")}
#: QA model config name -> (the paper's model in paper_numbers.csv, label).
QA_MODELS: dict[str, tuple[str, str]] = {"umt_b_qa": ("umt_b", "UMT-B"), "umt_l_qa": ("umt_l", "UMT-L")}


def _qa_runs(results: Iterable) -> list[RunResult]:
    return [r for r in _runs(results)
            if r.model in QA_MODELS or (r.model.startswith("umt") and r.model.endswith("_qa"))]


def build_table4(results: Iterable) -> pd.DataFrame:
    """Table 4: rows Throughput, Speed-up, GFLOPs, then the accuracy on MSRVTT-QA and MSVD-QA; columns
    ``<model> <variant>`` (Base / Attn / Ours, the paper's; Base+FA, Ours (self-attn), Attn+SDPA where
    measured) with ours / paper / Δ. Variants are those of Table 2 (:data:`VARIANTS`)."""
    results = _qa_runs(results)
    accuracy, efficiency = _Grid(), _Grid()
    for r in results:
        if r.metrics and r.dataset:
            accuracy.add(f"{r.model}{SEP}{r.dataset}", f"{r.model}{SEP}{_method(r)}", r.metric_value("acc"), r)
        _add_efficiency(efficiency, r)
    acc, acc_won, acc_dups = accuracy.resolve()
    eff, eff_won, eff_dups = efficiency.resolve()
    tainted = _tainted_rows(acc_won) | _tainted_rows(eff_won)
    models = list(QA_MODELS) + sorted({r.model for r in results} - set(QA_MODELS))
    datasets = list(QA_DATASETS) + sorted({k[0].split(SEP)[1] for k in acc} - set(QA_DATASETS))
    columns = [(m, v) for m in models for v in VARIANTS if v.always]
    extras = [(m, v) for m in models for v in VARIANTS
              if not v.always and (f"{m}{SEP}throughput", f"{m}{SEP}{v.key}") in eff]

    def label(model: str, v: Variant) -> str:
        return f"{QA_MODELS.get(model, (model, model))[1]} {v.label}"

    def paper(model: str, method: str, quantity: str, dataset: str = "") -> float:
        if model not in QA_MODELS or method not in ("base", "attn", "ours"):
            return math.nan
        return paper_value("table4", QA_MODELS[model][0], method, quantity, dataset=dataset)

    rows = _Rows(label(m, v) for m, v in extras)
    _efficiency_rows(rows, eff, tainted, models, columns, extras, label,
                     lambda m, v: paper(m, v.method, "throughput"), lambda m, v: paper(m, v.method, "gflops"))
    for dataset in datasets:
        paper_name, dataset_label = QA_DATASETS.get(dataset, (dataset, dataset))
        rec, marked = {}, False
        for model, v in columns:
            row = f"{model}{SEP}{dataset}"
            paper_cells(rec, label(model, v), acc.get((row, f"{model}{SEP}{v.method}")),
                        paper(model, v.method, "acc", paper_name))
            marked |= row in tainted
        rows.add(f"{dataset_label}{SEP}Acc", rec, marked)

    df = rows.frame()
    won = list({id(r): r for r in [*acc_won.values(), *eff_won.values()]}.values())
    title = (f"Table 4 — video question answering, exact-match accuracy (%) of UMT's answer ranking; throughput "
             f"({_bench_desc(won)}) and GFLOPs (= GMACs) of the vision encoder, one clip of "
             f"{_clip_desc(eff_won.values())}; {_data_desc(won)}")
    notes = [
        "Δ = ours − paper. Paper throughput: NVIDIA RTX A6000, batch 20, vision encoder; Base is self-attention, "
        "Attn is eager attention with Eq. 3 scores, Ours is L2 representation shift across the MLP with "
        "FlashAttention; 10 % pruned after blocks 0, 1, 2 (2352 -> 2117 -> 1906 -> 1716 tokens at 12 frames).",
        "Accuracy: the answer ranked first among the answer list (top-128 by first-token probability, re-scored by "
        "the whole answer's likelihood) must equal the annotated answer; per-question predictions are in each "
        "run's predictions.json. Base+FA, Ours (self-attn) and Attn+SDPA show their throughput when measured.",
        "GFLOPs: our count leaves LayerNorm out (the paper's fvcore count has it: +0.23 G for UMT-B, +0.59 G for "
        "UMT-L at 2352 tokens).",
    ]
    return _finish(df, title, notes, acc_dups + eff_dups, bool(tainted))


#: For ``repshift.report.tables.BUILDERS`` (merged there, so ``python -m repshift.report table=...`` knows them).
BUILDERS = {"table2": build_table2, "fig1": build_fig1, "fig3_umt": build_fig3_umt, "table3": build_table3,
            "table4": build_table4}
