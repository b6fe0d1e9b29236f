"""Video tables from run records: Table 2, the data of Fig. 1, Fig. 3 for UMT, Table 3 (vid-TLDR), Table 4 (QA).

Each builder registers itself with :func:`repshift.report.core.register`; conventions are those of
:mod:`repshift.report.core`: flat string columns ``"<label> · ours" / "· paper" / "· Δ"``, NaN for a missing
cell, title and notes in ``df.attrs``, ``†`` on rows fed by random weights or synthetic data, a throughput Δ only
on the paper's GPU and a Speed-up row beside the paper's ratios.

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

"fused" is ``sdpa`` or ``flash_attn``. The last three show when results have them. A variant's label is the
paper's column header (the table's layout); the method of every record is read from ``record.method.name``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import pandas as pd

from repshift.record import RunRecord
from repshift.report.core import (
    DAGGER, PAPER_DEVICE, SEP, THROUGHPUT_NOTE, Grid, Resolved, Rows, Run, as_runs, bench_desc, data_desc,
    dataset_of, finish, first_layer, nan, paper_cells, paper_value, register, speedup, throughput_cells,
)

__all__ = ["DATASETS", "MODELS", "VARIANTS", "build_table2", "build_fig1", "build_fig3_umt", "variant_of",
           "fig1_points", "FIG1_LABELS", "TABLE3_VARIANTS", "build_table3", "QA_DATASETS", "QA_MODELS",
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
    Variant("attn_sdpa", "Attn+SDPA", "attn", "fused", None, False),
)
_BY_KEY = {v.key: v for v in VARIANTS}


def _method(r: RunRecord) -> str:
    return "attn" if r.method.name == "attn_sdpa" else r.method.name


def _kernel(r: RunRecord) -> str:
    return "fused" if r.attention in FUSED else "eager"


def variant_of(r: RunRecord) -> Optional[Variant]:
    """The column of a run's throughput (None for a method none of the columns shows)."""
    for v in VARIANTS:
        if v.method == _method(r) and v.kernel == _kernel(r):
            return v
    return None


def _video_runs(runs: Iterable) -> list[Run]:
    return [run for run in as_runs(runs) if run.record.model.name in MODELS or run.record.model.name.startswith("umt")]


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
    if v.method in ("base", "attn", "ours"):  # the kernel does not change the count
        return paper_value("table2", model, v.method, "gflops", dataset="")
    return math.nan


def _collect(runs: list[Run]) -> tuple[Grid, Grid]:
    """(accuracy grid: (model·dataset·quantity, model·method), efficiency grid: (model·quantity, model·variant))."""
    accuracy, efficiency = Grid(), Grid()
    for run in runs:
        r = run.record
        if r.dataset is not None:
            for metric, label, _ in RECALLS:
                accuracy.add(f"{r.model.name}{SEP}{r.dataset.name}{SEP}{label}", f"{r.model.name}{SEP}{_method(r)}",
                             r.metric_value(metric), run)
        _add_efficiency(efficiency, run)
    return accuracy, efficiency


def _add_efficiency(grid: Grid, run: Run) -> None:
    """A run's throughput in its variant's column and its GFLOPs in its method's (Tables 2 and 4)."""
    r = run.record
    v = variant_of(r)
    if v is None or r.bench is None:
        return
    grid.add(f"{r.model.name}{SEP}throughput", f"{r.model.name}{SEP}{v.key}", r.bench.throughput, run)
    if v.always:  # GFLOPs do not depend on the kernel (counted through the math path): one per method
        grid.add(f"{r.model.name}{SEP}gflops", f"{r.model.name}{SEP}{v.method}", r.gmacs, run)


def _efficiency_rows(rows: Rows, eff: Resolved, tainted: set, models: list[str], columns: list, extras: list,
                     label: Callable[[str, Variant], str], paper_throughput: Callable[[str, Variant], float],
                     paper_gflops: Callable[[str, Variant], float]) -> None:
    """Throughput, Speed-up (over Base, self-attention) and GFLOPs rows of Tables 2 and 4, ours beside the paper's."""
    def run_of(model: str, key: str) -> Optional[Run]:
        return eff.runs.get((f"{model}{SEP}throughput", f"{model}{SEP}{key}"))

    marked = any(f"{m}{SEP}throughput" in tainted for m in models)
    rec: dict = {}
    for model, v in columns:
        run = run_of(model, v.key)
        throughput_cells(rec, label(model, v), run.record.bench.throughput if run else None,
                         paper_throughput(model, v), run.record.bench.device if run else None)
    for model, v in extras:
        rec[f"{label(model, v)}{SEP}ours"] = run_of(model, v.key).record.bench.throughput
    rows.add("Throughput", rec, marked)
    rec = {}
    for model, v in columns:
        paper_cells(rec, label(model, v), speedup(run_of(model, v.key), run_of(model, "base")),
                    paper_throughput(model, v) / paper_throughput(model, _BY_KEY["base"]))
    for model, v in extras:
        rec[f"{label(model, v)}{SEP}ours"] = nan(speedup(run_of(model, v.key), run_of(model, "base")))
    rows.add("Speed-up ×", rec, marked)
    rec = {}
    for model, v in columns:
        paper_cells(rec, label(model, v), eff.get((f"{model}{SEP}gflops", f"{model}{SEP}{v.method}")),
                    paper_gflops(model, v))
    rows.add("GFLOPs", rec, any(f"{m}{SEP}gflops" in tainted for m in models))


def _models(runs: list[Run]) -> list[str]:
    """The paper's models (always: their paper numbers are shown), then any other UMT that has records."""
    return list(MODELS) + sorted({run.record.model.name for run in runs} - set(MODELS))


def _mean_r1(acc: Resolved, model: str, method: str, datasets: Iterable[str]) -> tuple[float, list[str]]:
    got = [(d, acc.get((f"{model}{SEP}{d}{SEP}R@1", f"{model}{SEP}{method}"))) for d in datasets]
    got = [(d, v) for d, v in got if v is not None]
    return (sum(v for _, v in got) / len(got) if got else math.nan), [d for d, _ in got]


def _clip_desc(runs: Iterable[Run]) -> str:
    """``12 x 3 x 224 x 224`` from the benched runs' ``model.input_size`` (the paper's clip), or n/a."""
    sizes = {tuple((run.record.config.get("model") or {}).get("input_size") or ()) for run in runs}
    sizes.discard(())
    return " / ".join(" × ".join(str(d) for d in size) for size in sorted(sizes)) or "n/a"


def _paper_mean_r1(model: str, method: str) -> float:
    values = [paper_value("table2", model, method, "r@1", dataset=paper) for paper, _ in DATASETS.values()]
    return sum(values) / len(values)


def _ranking(run: Run) -> str:
    """The ranking a retrieval run reported: UMT's ITM re-ranking unless it says otherwise."""
    extra = (run.record.dataset.model_extra or {}) if run.record.dataset is not None else {}
    return (extra.get("ranking") or {}).get("name", "itm")


# --------------------------------------------------------------------------- table 2

@register("table2")
def build_table2(runs: Iterable) -> pd.DataFrame:
    """Table 2: rows Throughput, Speed-up, GFLOPs, then R@1/5/10 per dataset and the mean R@1; columns
    ``<model> <variant>`` with ours / paper / Δ."""
    runs = _video_runs(runs)
    accuracy, efficiency = _collect(runs)
    acc, eff = accuracy.resolve(), efficiency.resolve()
    tainted = acc.tainted_rows() | eff.tainted_rows()
    models = _models(runs)
    present_datasets = {k[0].split(SEP)[1] for k in acc.values}
    datasets = list(DATASETS) + sorted(present_datasets - set(DATASETS))
    columns = [(m, v) for m in models for v in VARIANTS if v.always]
    # the other variants, where measured: throughput only, no paper column
    extras = [(m, v) for m in models for v in VARIANTS
              if not v.always and (f"{m}{SEP}throughput", f"{m}{SEP}{v.key}") in eff.values]

    def label(model: str, v: Variant) -> str:
        return f"{_model_label(model)} {v.label}"

    rows = Rows(f"dataset{SEP}quantity", (label(m, v) for m, v in extras))
    _efficiency_rows(rows, eff, tainted, models, columns, extras, label, _paper_throughput, _paper_gflops)
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
    won = acc.winners() + eff.winners()
    rankings = sorted({_ranking(run) for run in acc.runs.values()})
    title = (f"Table 2 — video-text retrieval, R@K = harmonic mean of T2V and V2T R@K (%) "
             f"[{'/'.join(rankings) or 'itm'} ranking]; throughput ({bench_desc(won)}) and GFLOPs (= GMACs) of the "
             f"vision encoder, one clip of {_clip_desc(eff.runs.values())}; {data_desc(won)}")
    notes = [
        f"Δ = ours − paper. Paper throughput: {PAPER_DEVICE}, batch 20, vision encoder; Base is self-attention "
        "(its 32 / 12 vid/s equal Table 1's self-attention row), Attn is eager attention with Eq. 3 scores, Ours is "
        "L2 representation shift across the MLP with FlashAttention; 20 % pruned after blocks 0, 1, 2.",
        THROUGHPUT_NOTE,
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
    return finish(df, title, notes, acc.duplicates + eff.duplicates, bool(tainted))


# --------------------------------------------------------------------------- figure 1

FIG1_VARIANTS = ("base", "base+fa", "attn", "ours-sa", "ours")
#: Fig. 1's own names: its "Ours" runs self-attention, "Ours+FA" is Table 2's Ours.
FIG1_LABELS = {"base": "Base", "base+fa": "Base+FA", "attn": "Attn", "ours-sa": "Ours", "ours": "Ours+FA"}


def fig1_points(runs: Iterable) -> list[dict]:
    """One point per (model, variant) with a throughput: ``{model, variant, label, throughput, speedup, mean_r1,
    datasets, paper_throughput, paper_speedup, paper_mean_r1, tainted}``; mean R@1 over the datasets present,
    speed-up over Base (self-attention) timed on the same device."""
    runs = _video_runs(runs)
    accuracy, efficiency = _collect(runs)
    acc, eff = accuracy.resolve(), efficiency.resolve()
    points = []
    for model in [m for m in _models(runs) if any(run.record.model.name == m for run in runs)]:
        for key in FIG1_VARIANTS:
            v = _BY_KEY[key]
            throughput = eff.get((f"{model}{SEP}throughput", f"{model}{SEP}{key}"))
            mean, used = _mean_r1(acc, model, v.method, DATASETS)
            if throughput is None and not used:
                continue
            row_runs = [run for (row, _), run in [*acc.runs.items(), *eff.runs.items()]
                        if row.startswith(f"{model}{SEP}")]
            timed = {k: eff.runs.get((f"{model}{SEP}throughput", f"{model}{SEP}{k}")) for k in (key, "base")}
            paper_throughput = _paper_throughput(model, v) if v.paper and v.paper[0] == "table2" else math.nan
            points.append({
                "model": model, "variant": key, "label": f"{_model_label(model)} {FIG1_LABELS[key]}",
                "throughput": nan(throughput), "speedup": nan(speedup(timed[key], timed["base"])), "mean_r1": mean,
                "datasets": len(used), "paper_throughput": paper_throughput,
                "paper_speedup": paper_throughput / _paper_throughput(model, _BY_KEY["base"]),
                "paper_mean_r1": _paper_mean_r1(model, v.method) if v.method in ("base", "attn", "ours") else math.nan,
                "tainted": any(run.record.tainted for run in row_runs),
            })
    return points


@register("fig1")
def build_fig1(runs: Iterable) -> pd.DataFrame:
    """Fig. 1's points as a table: throughput and mean R@1 (ours, and the paper's from Table 2)."""
    runs = _video_runs(runs)
    points = fig1_points(runs)
    records, index = [], []
    for p in points:
        rec: dict = {}
        # no Δ on absolute rates measured on other devices: Table 2's Speed-up row compares ours with the paper's
        rec[f"Throughput{SEP}ours"], rec[f"Throughput{SEP}paper"] = p["throughput"], p["paper_throughput"]
        paper_cells(rec, "Speed-up ×", None if math.isnan(p["speedup"]) else p["speedup"], p["paper_speedup"])
        paper_cells(rec, "Mean R@1", None if math.isnan(p["mean_r1"]) else p["mean_r1"],
                    p["paper_mean_r1"] if p["datasets"] in (0, len(DATASETS)) else math.nan)
        rec["datasets"] = p["datasets"]
        records.append(rec)
        index.append(p["label"] + (f" {DAGGER}" if p["tainted"] else ""))
    df = pd.DataFrame(records, index=pd.Index(index, name="model · variant"))
    title = (f"Figure 1 — mean R@1 (harmonic mean of T2V and V2T, %) over the Table 2 benchmarks against throughput "
             f"({bench_desc(runs)}); {data_desc(runs)}")
    notes = ["Paper values are derived from Table 2 (mean of its seven R@1 rows; its throughput row). Ours = "
             "representation shift with self-attention, Ours+FA = with FlashAttention (Table 2's Ours); the paper "
             "gives no throughput for Ours or Base+FA. Accuracy does not depend on the kernel. No Δ on absolute "
             "throughput (other GPUs): Speed-up × = throughput / Base (self-attention), each timed on one device.",
             "datasets = how many of the seven benchmarks the mean covers."]
    return finish(df, title, notes, [], any(p["tainted"] for p in points))


# --------------------------------------------------------------------------- figure 3 (UMT)

@register("fig3_umt")
def build_fig3_umt(runs: Iterable) -> pd.DataFrame:
    """Fig. 3 for UMT: R@1 (harmonic mean) after dropping tokens at one block, per score and block."""
    runs = _video_runs(runs)
    grid, base = Grid(), Grid()
    for run in runs:
        r, layer = run.record, first_layer(run.record)
        value = r.metric_value("hm_r1")
        if layer is None or r.method.name == "base":
            base.add(r.model.name, "base", value, run)
            continue
        resolved = r.metric_resolved or r.metric
        score = f"{resolved} (Eq. 3)" if resolved == "attn_mean" else f"{r.metric}-{r.site}"
        grid.add(f"{r.model.name}{SEP}{score}", f"layer {layer}", value, run)
    cells, baseline_cells = grid.resolve(), base.resolve()
    tainted = cells.tainted_rows() | baseline_cells.tainted_rows()
    rows = sorted(grid.rows())
    cols = sorted({k[1] for k in grid.cells}, key=lambda c: int(c.split()[1]))
    models = {row.split(SEP)[0] for row in rows}
    records = [{c: nan(cells.get((row, c))) for c in cols} for row in rows]
    index = [(row.split(SEP, 1)[1] if len(models) <= 1 else row) + (f" {DAGGER}" if row in tainted else "")
             for row in rows]
    df = pd.DataFrame(records, index=pd.Index(index, name="score"), columns=cols)
    baseline = {m: v for (m, _), v in baseline_cells.values.items()}
    won = cells.winners() + baseline_cells.winners()
    title = ("Figure 3 (UMT) — R@1 (harmonic mean of T2V and V2T, %) after dropping tokens at one block "
             f"(0-based), attention score (Eq. 3) vs representation shift across attention; {data_desc(won)}")
    notes = ["The paper only plots this figure (1,100 tokens at blocks 0/2/4/6/8, UMT-B, MSRVTT): no paper numbers."]
    if baseline:
        notes.append("Baseline without pruning: " + ", ".join(f"{m} {v:.2f}" for m, v in sorted(baseline.items())))
    return finish(df, title, notes, cells.duplicates + baseline_cells.duplicates, bool(tainted),
                  extra={"baseline": baseline})


# --------------------------------------------------------------------------- table 3 (vid-TLDR merging)

#: Table 3's columns. Base is self-attention (the paper's 32 / 12 vid/s); vid-TLDR runs eager attention as
#: published; +Ours is representation shift with fused attention, exact (log(size) bias through SDPA's float
#: mask) or flash (no size bias, FlashAttention kept: not a paper column).
TABLE3_VARIANTS: tuple[Variant, ...] = (
    Variant("base", "Base", "base", "eager", ("table3", "base"), True),
    Variant("vid_tldr", "vid-TLDR", "vid_tldr", "eager", ("table3", "vid_tldr"), True),
    Variant("vid_tldr_ours", "+Ours", "vid_tldr_ours", "fused", ("table3", "vid_tldr_ours"), True),
    Variant("vid_tldr_ours_flash", "+Ours (flash)", "vid_tldr_ours_flash", "fused", None, True),
    Variant("base+fa", "Base+FA", "base", "fused", None, False),
)
_TABLE3_BASE = TABLE3_VARIANTS[0]
_ANY_DATASET = "*"  # Base's throughput and GFLOPs do not depend on the dataset (no schedule)


def _table3_variant(r: RunRecord) -> Optional[Variant]:
    for v in TABLE3_VARIANTS:
        if v.method == r.method.name and v.kernel == _kernel(r):
            return v
    return None


@register("table3")
def build_table3(runs: Iterable) -> pd.DataFrame:
    """Table 3: per dataset, throughput, speed-up, GFLOPs and R@1 (harmonic mean) of Base / vid-TLDR / +Ours
    (exact) / +Ours (flash), for UMT-B and UMT-L, with ours / paper / Δ; then the mean speed-up and R@1."""
    runs = [run for run in _video_runs(runs) if run.record.method.name in {v.method for v in TABLE3_VARIANTS}]
    accuracy, efficiency = Grid(), Grid()
    for run in runs:
        r = run.record
        dataset = dataset_of(r)
        if r.dataset is not None:
            accuracy.add(f"{r.model.name}{SEP}{dataset}", f"{r.model.name}{SEP}{r.method.name}",
                         r.metric_value("hm_r1"), run)
        v = _table3_variant(r)
        if v is None or r.bench is None:
            continue
        where = _ANY_DATASET if v.method == "base" else dataset
        efficiency.add(f"{r.model.name}{SEP}{where}{SEP}throughput", f"{r.model.name}{SEP}{v.key}",
                       r.bench.throughput, run)
        if v.always:  # GFLOPs do not depend on the kernel: one per method
            efficiency.add(f"{r.model.name}{SEP}{where}{SEP}gflops", f"{r.model.name}{SEP}{v.method}", r.gmacs, run)
    acc, eff = accuracy.resolve(), efficiency.resolve()
    tainted = acc.tainted_rows() | eff.tainted_rows()
    models = _models(runs)
    present = ({k[0].split(SEP)[1] for k in acc.values} | {k[0].split(SEP)[1] for k in eff.values}) - {_ANY_DATASET}
    datasets = list(DATASETS) + sorted(present - set(DATASETS))
    columns = [(m, v) for m in models for v in TABLE3_VARIANTS if v.always]
    extras = [(m, v) for m in models for v in TABLE3_VARIANTS
              if not v.always and (f"{m}{SEP}{_ANY_DATASET}{SEP}throughput", f"{m}{SEP}{v.key}") in eff.values]

    def label(model: str, v: Variant) -> str:
        return f"{_model_label(model)} {v.label}"

    def cell(model: str, dataset: str, quantity: str, col: str) -> tuple[Optional[Run], str]:
        """The run of a cell and the row it came from (Base's rows are the dataset-independent ones)."""
        for where in (dataset, _ANY_DATASET):
            row = f"{model}{SEP}{where}{SEP}{quantity}"
            if (row, f"{model}{SEP}{col}") in eff.runs:
                return eff.runs[(row, f"{model}{SEP}{col}")], row
        return None, ""

    def value(model: str, dataset: str, quantity: str, col: str) -> tuple[Optional[float], str]:
        run, row = cell(model, dataset, quantity, col)
        return (eff.values[(row, f"{model}{SEP}{col}")] if run else None), row

    def ratio(model: str, dataset: str, key: str) -> Optional[float]:
        return speedup(cell(model, dataset, "throughput", key)[0], cell(model, dataset, "throughput", "base")[0])

    def paper(model: str, v: Variant, quantity: str, dataset_name: str) -> float:
        return paper_value("table3", model, v.paper[1], quantity, dataset=dataset_name) if v.paper else math.nan

    def paper_ratio(model: str, v: Variant, dataset_name: str) -> float:
        return paper(model, v, "throughput", dataset_name) / paper(model, _TABLE3_BASE, "throughput", dataset_name)

    rows = Rows(f"dataset{SEP}quantity")
    for dataset in datasets:
        paper_name, dataset_label = DATASETS.get(dataset, (dataset, dataset))
        rec, marked = {}, False
        for model, v in columns:
            run, row = cell(model, dataset, "throughput", v.key)
            throughput_cells(rec, label(model, v), run.record.bench.throughput if run else None,
                             paper(model, v, "throughput", paper_name), run.record.bench.device if run else None)
            marked |= row in tainted
        for model, v in extras:
            got, row = value(model, dataset, "throughput", v.key)
            rec[f"{label(model, v)}{SEP}ours"] = nan(got)
            marked |= row in tainted
        rows.add(f"{dataset_label}{SEP}Throughput", rec, marked)
        rec = {}
        for model, v in columns:
            paper_cells(rec, label(model, v), ratio(model, dataset, v.key), paper_ratio(model, v, paper_name))
        for model, v in extras:
            rec[f"{label(model, v)}{SEP}ours"] = nan(ratio(model, dataset, v.key))
        rows.add(f"{dataset_label}{SEP}Speed-up ×", rec, marked)
        rec, marked = {}, False
        for model, v in columns:
            got, row = value(model, dataset, "gflops", v.method)
            paper_cells(rec, label(model, v), got, math.nan)
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
        speeds = [s for s in (ratio(model, d, v.key) for d in DATASETS) if s is not None]
        r1s = [acc.values[(f"{model}{SEP}{d}", f"{model}{SEP}{v.method}")] for d in DATASETS
               if (f"{model}{SEP}{d}", f"{model}{SEP}{v.method}") in acc.values]
        for what, got in (("speed-up", speeds), ("R@1", r1s)):
            if got and len(got) < len(DATASETS):
                partial.append(f"{label(model, v)} {what}: {len(got)} of {len(DATASETS)}")
        paper_names = [paper_name for paper_name, _ in DATASETS.values()]
        paper_speed = [paper_ratio(model, v, n) for n in paper_names]
        paper_r1 = [paper(model, v, "r@1", n) for n in paper_names]
        paper_cells(rec_speed, label(model, v), sum(speeds) / len(speeds) if speeds else None,
                    sum(paper_speed) / len(paper_speed) if len(speeds) in (0, len(DATASETS)) else math.nan)
        paper_cells(rec_r1, label(model, v), sum(r1s) / len(r1s) if r1s else None,
                    sum(paper_r1) / len(paper_r1) if len(r1s) in (0, len(DATASETS)) else math.nan)
    rows.add(f"Mean of 7{SEP}Speed-up ×", rec_speed, bool(tainted))
    rows.add(f"Mean of 7{SEP}R@1", rec_r1, bool(tainted))

    df = rows.frame()
    won = acc.winners() + eff.winners()
    kernels = []
    for model, v in columns + extras:
        ran = sorted({k for (row, col), run in eff.runs.items()
                      if row.endswith(f"{SEP}throughput") and col == f"{model}{SEP}{v.key}"
                      for k in run.record.bench.kernel})
        if ran:
            kernels.append(f"{label(model, v)}: {', '.join(ran)}")
    title = (f"Table 3 — vid-TLDR token merging on video-text retrieval, R@1 = harmonic mean of T2V and V2T R@1 (%); "
             f"throughput ({bench_desc(won)}) and GFLOPs (= GMACs) of the vision encoder, one clip of "
             f"{_clip_desc(eff.runs.values())}; {data_desc(won)}")
    notes = [
        "Δ = ours − paper. vid-TLDR: attention-entropy saliency, eager attention, proportional attention, global "
        "mean pooling, its published per-task schedules (repshift/configs/compress/vid_tldr.yaml). +Ours: representation "
        "shift (L2, attention branch, at vid-TLDR's merge point) as the saliency with fused attention; exact keeps "
        "the log(size) bias (SDPA with a float mask: memory-efficient kernel on CUDA), flash drops it (FlashAttention "
        "kept; not a paper column). Base: no merging, self-attention, UMT's per-frame pooling.",
        THROUGHPUT_NOTE,
        "Speed-up = throughput / Base (self-attention); the paper's ×s are its throughput ratios. Base's throughput "
        "and GFLOPs do not depend on the dataset; the others follow each dataset's schedule. The paper gives no "
        "GFLOPs for Table 3.",
        "Kernels that ran: " + ("; ".join(kernels) if kernels else "n/a (no throughput results)"),
    ]
    if partial:
        notes.append("Means over the datasets present only (no paper value): " + "; ".join(partial))
    return finish(df, title, notes, acc.duplicates + eff.duplicates, bool(tainted))


# --------------------------------------------------------------------------- table 4 (video QA)

#: QA dataset config name -> (paper's name in paper_numbers.csv, label).
QA_DATASETS: dict[str, tuple[str, str]] = {"msrvtt_qa": ("msrvtt-qa", "MSRVTT-QA"), "msvd_qa": ("msvd-qa", "MSVD-QA")}
#: QA model config name -> (the paper's model in paper_numbers.csv, label).
QA_MODELS: dict[str, tuple[str, str]] = {"umt_b_qa": ("umt_b", "UMT-B"), "umt_l_qa": ("umt_l", "UMT-L")}


def _qa_runs(runs: Iterable) -> list[Run]:
    return [run for run in as_runs(runs) if run.record.model.name in QA_MODELS
            or (run.record.model.name.startswith("umt") and run.record.model.name.endswith("_qa"))]


@register("table4")
def build_table4(runs: Iterable) -> pd.DataFrame:
    """Table 4: rows Throughput, Speed-up, GFLOPs, then the accuracy on MSRVTT-QA and MSVD-QA; columns
    ``<model> <variant>`` (Base / Attn / Ours, the paper's; Base+FA, Ours (self-attn), Attn+SDPA where
    measured) with ours / paper / Δ. Variants are those of Table 2 (:data:`VARIANTS`)."""
    runs = _qa_runs(runs)
    accuracy, efficiency = Grid(), Grid()
    for run in runs:
        r = run.record
        if r.dataset is not None:
            accuracy.add(f"{r.model.name}{SEP}{r.dataset.name}", f"{r.model.name}{SEP}{_method(r)}",
                         r.metric_value("acc"), run)
        _add_efficiency(efficiency, run)
    acc, eff = accuracy.resolve(), efficiency.resolve()
    tainted = acc.tainted_rows() | eff.tainted_rows()
    models = list(QA_MODELS) + sorted({run.record.model.name for run in runs} - set(QA_MODELS))
    datasets = list(QA_DATASETS) + sorted({k[0].split(SEP)[1] for k in acc.values} - set(QA_DATASETS))
    columns = [(m, v) for m in models for v in VARIANTS if v.always]
    extras = [(m, v) for m in models for v in VARIANTS
              if not v.always and (f"{m}{SEP}throughput", f"{m}{SEP}{v.key}") in eff.values]

    def label(model: str, v: Variant) -> str:
        return f"{QA_MODELS.get(model, (model, model))[1]} {v.label}"

    def paper(model: str, method: str, quantity: str, dataset: str = "") -> float:
        if model not in QA_MODELS or method not in ("base", "attn", "ours"):
            return math.nan
        return paper_value("table4", QA_MODELS[model][0], method, quantity, dataset=dataset)

    rows = Rows(f"dataset{SEP}quantity", (label(m, v) for m, v in extras))
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
    won = acc.winners() + eff.winners()
    title = (f"Table 4 — video question answering, exact-match accuracy (%) of UMT's answer ranking; throughput "
             f"({bench_desc(won)}) and GFLOPs (= GMACs) of the vision encoder, one clip of "
             f"{_clip_desc(eff.runs.values())}; {data_desc(won)}")
    notes = [
        f"Δ = ours − paper. Paper throughput: {PAPER_DEVICE}, batch 20, vision encoder; Base is self-attention, "
        "Attn is eager attention with Eq. 3 scores, Ours is L2 representation shift across the MLP with "
        "FlashAttention; 10 % pruned after blocks 0, 1, 2 (2352 -> 2117 -> 1906 -> 1716 tokens at 12 frames).",
        THROUGHPUT_NOTE,
        "Accuracy: the answer ranked first among the answer list (top-128 by first-token probability, re-scored by "
        "the whole answer's likelihood) must equal the annotated answer; per-question predictions are in each "
        "run's predictions.json. Base+FA, Ours (self-attn) and Attn+SDPA show their throughput when measured.",
        "GFLOPs: our count leaves LayerNorm out (the paper's fvcore count has it: +0.23 G for UMT-B, +0.59 G for "
        "UMT-L at 2352 tokens).",
    ]
    return finish(df, title, notes, acc.duplicates + eff.duplicates, bool(tainted))
