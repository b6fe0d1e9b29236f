"""The merging table (issue 23): pruning by representation shift, ToMe merging and ToMe + representation shift
on the same ViT at matched GMACs, with the Attn, static and random controls, from run records.

:func:`merging_table` is a pure function of :class:`repshift.record.RunRecord` records (those of
``experiment=merging``, written by :mod:`repshift.merging_experiment`). One row per model and method: how the
budget is spent (prune / merge), the score that steers it, the schedule, top-1, GMACs, GMACs as a share of the
budget (the record of ``merging.match_to``, Ours by default, for the same model), throughput, speed-up over
Base, the tokens entering the first and the last block (``197→92``; Base keeps all) and the attention kernels
that ran.
"""
from __future__ import annotations

from typing import Iterable, Optional

import pandas as pd

from repshift.record import RunRecord
from repshift.report.core import as_runs, register

#: Method order within a model; methods not listed follow, by name.
METHOD_ORDER = ("base", "ours", "attn", "static", "random", "tome", "tome_ours", "tome_attn", "tome_random")
#: Model order; models not listed follow, by name.
MODEL_ORDER = ("vit_shapebench", "deit_t", "deit_s", "deit_b")
COLUMNS = ("model", "spends budget by", "score", "schedule", "Acc-1", "GMACs", "% of budget", "img/s", "× Base",
           "tokens", "attention kernel")
MATCHING_RULE = ("Matching rule: pruning keeps its schedule (the paper's DeiT schedule, 20 % of the tokens after "
                 "blocks 0, 3, 6); every merge row uses ToMe's constant r, the smallest r whose GMACs do not exceed "
                 "those of {budget} on the same model (% of budget <= 100, as close to it as a constant r gets). "
                 "Scores add no multiply-adds, so ToMe and ToMe + a score spend the same.")
_SCORES = {"l2": "shift L2", "l1": "shift L1", "cos": "shift cos", "attn_cls": "Attn (Eq. 2)",
           "attn_mean": "Attn (Eq. 3)", "attn_entropy": "attention entropy", "random": "random"}


def _score(record: RunRecord) -> str:
    metric = record.metric_resolved or record.metric
    merging = record.compress is not None and record.compress.mode == "merge"
    if record.compress is None:
        return "—"
    if metric == "none":
        return "none (ToMe)" if merging else "none (keep first)"
    label = _SCORES.get(metric, metric)
    return f"{label} @{record.site}" if metric in ("l2", "l1", "cos") else label


def _spending(record: RunRecord) -> str:
    if record.compress is None:
        return "—"
    return "merge (ToMe)" if record.compress.mode == "merge" else "prune"


def _schedule(record: RunRecord) -> str:
    c = record.compress
    if c is None:
        return "—"
    if c.mode == "merge":
        r = c.num if c.num is not None else f"{c.ratio:g} of the tokens"
        if isinstance(r, list):
            r = "[" + ",".join(map(str, r)) + "]"
        if c.layers is None:  # ToMe's schedule: every block
            return f"r={r} in every block"
        blocks = ",".join(str(b) for b in c.layers)
        return f"r={r} x {len(c.layers)} blocks" if isinstance(c.num, int) else f"r={r} @ blocks {blocks}"
    blocks = ",".join(str(b) for b in c.layers)
    amount = f"{c.ratio * 100:g} %" if c.ratio is not None else f"{c.num}"
    return f"{amount} @ blocks {blocks}"


def _order(values: Iterable[str], preferred: tuple[str, ...]) -> list[str]:
    values = set(values)
    return [v for v in preferred if v in values] + sorted(values - set(preferred))


def _describe(records: list[RunRecord]) -> str:
    data = sorted({f"{r.dataset.name} (n={r.dataset.n}{', synthetic' if r.dataset.synthetic else ''})"
                   for r in records if r.dataset is not None})
    timed = [r.bench for r in records if r.bench is not None]
    bench = sorted({f"{b.device}, {b.precision}, batch {b.batch}" for b in timed})
    return f"data {' / '.join(data) or 'n/a'}; throughput {' / '.join(bench) or 'n/a'}"


def merging_table(records: list[RunRecord]) -> pd.DataFrame:
    """One row per (model, method) of the merging records; ``attrs`` carry the title and the notes.

    Two records of the same model and method: the later one in ``records`` is shown and a note says so.
    """
    records = [r for r in records if r.experiment == "merging"]
    cells: dict[tuple[str, str], RunRecord] = {}
    repeated = []
    for record in records:
        key = (record.model.name or record.model.arch, record.method.name)
        if key in cells:
            repeated.append("/".join(key))
        cells[key] = record
    rows, index = [], []
    budgets = set()
    for model in _order({m for m, _ in cells}, MODEL_ORDER):
        methods = {name: r for (m, name), r in cells.items() if m == model}
        base = methods.get("base")
        for name in _order(methods, METHOD_ORDER):
            r = methods[name]
            budget_name = r.config.get("merging", {}).get("match_to", "ours")
            budgets.add(methods[budget_name].method.label if budget_name in methods else budget_name)
            budget = methods.get(budget_name)
            throughput = r.bench.throughput if r.bench else None
            rows.append({
                "model": model,
                "spends budget by": _spending(r),
                "score": _score(r),
                "schedule": _schedule(r),
                "Acc-1": r.metric_value("top1"),
                "GMACs": r.gmacs,
                "% of budget": _ratio(r.gmacs, budget.gmacs if budget else None, 100.0),
                "img/s": throughput,
                "× Base": _ratio(throughput, base.bench.throughput if base and base.bench else None, 1.0),
                "tokens": f"{r.tokens[0]}→{r.tokens[-1]}" if r.tokens else "all",
                "attention kernel": ", ".join(r.bench.kernel) if r.bench else "",
            })
            index.append(r.method.label)
    df = pd.DataFrame(rows, index=pd.Index(index, name="method"), columns=list(COLUMNS))
    df.attrs["title"] = ("Three ways to spend one budget: pruning by representation shift, ToMe merging, ToMe + "
                         f"representation shift, at matched GMACs — {_describe(records)}")
    notes = [MATCHING_RULE.format(budget=" / ".join(sorted(budgets)) or "Ours"),
             "ToMe + <score>: the score weights each merge as vid-TLDR's saliency does (normalised per image, "
             "sources below the mean dropped, the rest averaged in by saliency x size); ToMe alone is the "
             "score-free control, ToMe + Random the random one (docs/merging.md)."]
    if any(r.tainted for r in records):
        notes.append("Synthetic data or random weights (ShapeBench, trained here): a check of the pipeline and of "
                     "the methods' ranking on this benchmark, not evidence about ImageNet.")
    if repeated:
        notes.append(f"{len(repeated)} (model, method) pair(s) had several records; the last one read is shown: "
                     + ", ".join(repeated))
    df.attrs["notes"] = notes
    return df


def _ratio(value: Optional[float], reference: Optional[float], scale: float) -> Optional[float]:
    return None if value is None or not reference else value / reference * scale


@register("merging")
def build_merging_table(runs: Iterable) -> pd.DataFrame:
    """The registry's builder: :func:`merging_table` of the runs' records."""
    return merging_table([run.record for run in as_runs(runs)])
