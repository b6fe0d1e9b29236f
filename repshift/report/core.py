"""The tables' core: run records in, paper-shaped :class:`pandas.DataFrame` out.

Every table is built by a *builder* that a builder module registers with :func:`register`
(:mod:`repshift.report.image_tables`, :mod:`repshift.report.video_tables`; :mod:`repshift.report.tables`
imports both, so importing it fills the registry). A builder takes :class:`Run` s (a
:class:`repshift.record.RunRecord` and the file it came from) and returns a frame whose index holds the
row labels and whose columns are flat strings (``"Base · ours"``, ``"Base · paper"``, ``"Base · Δ"``).
Numbers stay numeric (``NaN`` = missing, rendered empty, never 0); ``Δ = ours − paper``. The title and
the notes travel in ``df.attrs["title"]`` and ``df.attrs["notes"]``; :func:`render` turns the frame into
Markdown + CSV, :func:`render_html` into the HTML of the same cells, :func:`write` stores the files.

**Comparable numbers only.** Accuracy and GFLOPs compare across machines; absolute throughput does not:
a throughput Δ is shown only when our run was timed on the paper's GPU (:data:`PAPER_DEVICE`), and every
table with throughput has a *Speed-up ×* row (throughput over its Base, both timed on one device) beside
the paper's own ratio.

**One cell, several records.** When two records claim one cell, :class:`Grid` keeps one by this rule,
and the table's notes say which files, which was used and why: a record on real weights and real data
beats a random-weight / synthetic one (a SMOKE run never hides a real result); among equals the newest
file (modification time) wins; the path breaks a tie. Two records with the same identity key are one run
written twice.

Paper numbers come from ``paper_numbers.csv`` (long form: ``table, model, dataset, method, quantity,
column, value``). Quantities used there: ``acc1`` (ImageNet top-1, %), ``throughput`` (img/s or vid/s),
``gflops`` (the paper's GFLOPs, i.e. GMACs), ``r@1``/``r@5``/``r@10`` (retrieval recall, %), ``acc``
(video-QA accuracy, %).
"""
from __future__ import annotations

import datetime
import html
import math
import os
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import pandas as pd

from repshift.io import atomic_open
from repshift.record import RecordProblem, RunRecord, scan

__all__ = [
    "SEP", "DAGGER", "TAINT_NOTE", "PAPER_CSV", "PAPER_DEVICE", "Run", "as_runs", "load_runs", "Grid",
    "Resolved", "Rows", "precedence", "register", "registry", "builder", "sources", "TABLE_SOURCES", "paper_numbers",
    "paper_value", "paper_cells", "throughput_cells", "speedup", "nan", "delta", "uniq", "bench_desc",
    "data_desc", "finish", "order_present", "score_label", "score_sort_key", "dataset_of", "first_layer",
    "render", "render_html", "write", "fmt",
]

PAPER_CSV = Path(__file__).with_name("paper_numbers.csv")
#: The GPU of every throughput the paper gives (Table 1's caption; Sec. 4.1).
PAPER_DEVICE = "NVIDIA RTX A6000"

SEP = " · "
DAGGER = "†"
TAINT_NOTE = f"{DAGGER} random weights / synthetic data: not comparable with the paper"


# --------------------------------------------------------------------------- records in

@dataclass(frozen=True)
class Run:
    """One run record and the file it was read from."""

    path: str
    record: RunRecord

    @cached_property
    def mtime(self) -> float:
        try:
            return os.stat(self.path).st_mtime
        except OSError:  # a record built in memory (tests) or a file removed since
            return 0.0


def as_runs(items: Iterable[Union[Run, RunRecord, tuple]]) -> list[Run]:
    """Runs from :class:`Run` s, ``(path, record)`` pairs (as :func:`repshift.record.scan` gives them) or bare
    records (built in memory: their path reads ``<record N>``)."""
    runs = []
    for index, item in enumerate(items):
        if isinstance(item, Run):
            runs.append(item)
        elif isinstance(item, RunRecord):
            runs.append(Run(f"<record {index}>", item))
        else:
            path, record = item
            runs.append(Run(str(path), record))
    return runs


def load_runs(root: Union[str, os.PathLike], table: str) -> tuple[list[Run], list[RecordProblem]]:
    """The valid records under the folders that feed ``table`` (:func:`sources`), and the files that are not."""
    runs, problems = [], []
    for folder in sources(table):
        found = scan(Path(root) / folder)
        runs += as_runs(found.records)
        problems += found.problems
    return runs, problems


# --------------------------------------------------------------------------- which folder feeds which table

#: Tables fed by another experiment's folder (``experiment_name``); every other table reads the folder of its
#: own name. The only copy of this mapping in repshift.report.
TABLE_SOURCES: dict[str, tuple[str, ...]] = {"fig1": ("table2",)}


def sources(table: str) -> tuple[str, ...]:
    """The experiment folders (under a results root) whose records feed ``table``."""
    return TABLE_SOURCES.get(table, (table,))


# --------------------------------------------------------------------------- the registry

_BUILDERS: dict[str, Callable[[list[Run]], pd.DataFrame]] = {}


def register(name: str) -> Callable:
    """Decorator: make ``builder(runs) -> DataFrame`` the builder of table ``name``."""
    def decorate(builder: Callable[[list[Run]], pd.DataFrame]) -> Callable[[list[Run]], pd.DataFrame]:
        if name in _BUILDERS:
            raise ValueError(f"table {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder
    return decorate


def registry() -> dict[str, Callable[[list[Run]], pd.DataFrame]]:
    """Every registered builder, in registration order (a copy)."""
    return dict(_BUILDERS)


def builder(table: str) -> Callable[[list[Run]], pd.DataFrame]:
    if table not in _BUILDERS:
        raise ValueError(f"unknown table {table!r}; valid tables: {', '.join(_BUILDERS)}")
    return _BUILDERS[table]


# --------------------------------------------------------------------------- paper numbers

@lru_cache(maxsize=1)
def _paper_frame() -> pd.DataFrame:
    df = pd.read_csv(PAPER_CSV, dtype=str, keep_default_na=False)
    df["value"] = df["value"].astype(float)
    return df


def paper_numbers(table: Optional[str] = None) -> pd.DataFrame:
    """The transcribed paper numbers (a copy), optionally for one table."""
    df = _paper_frame()
    if table is not None:
        df = df[df["table"] == table]
    return df.reset_index(drop=True).copy()


def paper_value(table: str, model: str, method: str, quantity: str, dataset: Optional[str] = None,
                column: str = "") -> float:
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
        raise ValueError(f"ambiguous paper cell {table}/{model}/{method}/{quantity}/{dataset}/{column}: pass dataset=")
    return float(hits.iloc[0])


# --------------------------------------------------------------------------- cells

def nan(value: Optional[float]) -> float:
    return math.nan if value is None else value


def delta(ours: Optional[float], paper: Optional[float]) -> float:
    if ours is None or paper is None or math.isnan(ours) or math.isnan(paper):
        return math.nan
    return ours - paper


def paper_cells(rec: dict, label: str, ours: Optional[float], paper: float) -> None:
    """The three cells of one quantity: ``<label> · ours``, ``<label> · paper`` and ``<label> · Δ``."""
    rec[f"{label}{SEP}ours"] = nan(ours)
    rec[f"{label}{SEP}paper"] = paper
    rec[f"{label}{SEP}Δ"] = delta(nan(ours), paper)


def throughput_cells(rec: dict, label: str, ours: Optional[float], paper: float, device: Optional[str]) -> None:
    """As :func:`paper_cells` for an absolute throughput: its Δ only when ours was timed on :data:`PAPER_DEVICE`."""
    paper_cells(rec, label, ours, paper)
    if device != PAPER_DEVICE:
        rec[f"{label}{SEP}Δ"] = math.nan


def speedup(run: Optional[Run], base: Optional[Run]) -> Optional[float]:
    """``run``'s throughput over ``base``'s when both were timed on one device (else None: not comparable)."""
    if run is None or base is None:
        return None
    a, b = run.record.bench, base.record.bench
    if a is None or b is None or a.device != b.device:
        return None
    return a.throughput / b.throughput


THROUGHPUT_NOTE = (f"Throughput Δ only where ours ran on the paper's GPU ({PAPER_DEVICE}); elsewhere compare the "
                   "Speed-up × rows (throughput over Base, both timed on one device) with the paper's ratios.")


# --------------------------------------------------------------------------- cell bookkeeping

@dataclass
class Resolved:
    """A grid's cells after :meth:`Grid.resolve`: one value and one run per cell, and what was left out."""

    values: dict[tuple[str, str], float]
    runs: dict[tuple[str, str], Run]
    duplicates: list[str]

    def get(self, key: tuple[str, str]) -> Optional[float]:
        return self.values.get(key)

    def tainted_rows(self) -> set[str]:
        return {row for (row, _), run in self.runs.items() if run.record.tainted}

    def winners(self) -> list[Run]:
        return list({id(run): run for run in self.runs.values()}.values())


def precedence(run: Run) -> tuple:
    """The order of :class:`Grid`'s rule: real weights and data first, then the newest file, then the path."""
    return (not run.record.tainted, run.mtime, run.path)


def _why(kept: Run, dropped: Run) -> str:
    if kept.record.tainted != dropped.record.tainted:
        return "real weights and data over random weights / synthetic data"
    if kept.record.identity.key == dropped.record.identity.key:
        return f"the same run (identity {kept.record.identity.key}) written twice: the newer file"
    if kept.mtime != dropped.mtime:
        stamp = datetime.datetime.fromtimestamp(kept.mtime).strftime("%Y-%m-%d %H:%M:%S")
        return f"the newer file (modified {stamp})"
    return "same age: the later path"


@dataclass
class Grid:
    """Candidate values per ``(row, column)`` cell; :meth:`resolve` keeps one per cell (rule: module docstring)."""

    cells: dict[tuple[str, str], list[tuple[float, Run]]] = field(default_factory=dict)

    def add(self, row: str, col: str, value: Optional[float], run: Run) -> None:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        self.cells.setdefault((row, col), []).append((float(value), run))

    def resolve(self) -> Resolved:
        values, runs, duplicates = {}, {}, []
        for key, candidates in self.cells.items():
            candidates = sorted(candidates, key=lambda c: precedence(c[1]))
            value, kept = candidates[-1]
            values[key], runs[key] = value, kept
            for _, dropped in candidates[:-1]:
                if dropped is not kept:
                    duplicates.append(f"{key[0]} / {key[1]}: used {kept.path}, not {dropped.path} "
                                      f"({_why(kept, dropped)})")
        return Resolved(values, runs, duplicates)

    def rows(self) -> set[str]:
        return {k[0] for k in self.cells}


class Rows:
    """A table's rows as they are added; the columns in ``extra_labels`` (shown only where measured) get NaN in
    rows that have no value for them."""

    def __init__(self, index_name: str, extra_labels: Iterable[str] = ()):
        self.index_name = index_name
        self.extra_labels = list(extra_labels)
        self.records: list[dict] = []
        self.index: list[str] = []

    def add(self, name: str, cells: dict, marked: bool) -> None:
        for extra in self.extra_labels:
            cells.setdefault(f"{extra}{SEP}ours", math.nan)
        self.records.append(cells)
        self.index.append(name + (f" {DAGGER}" if marked else ""))

    def frame(self, columns: Optional[list[str]] = None) -> pd.DataFrame:
        return pd.DataFrame(self.records, index=pd.Index(self.index, name=self.index_name), columns=columns)


# --------------------------------------------------------------------------- what a record holds

def dataset_of(record: RunRecord) -> Optional[str]:
    """The benchmark a run belongs to: its evaluated dataset, or (benchmark-only runs) the configured one."""
    if record.dataset is not None:
        return record.dataset.name
    return (record.config.get("dataset") or {}).get("name")


def first_layer(record: RunRecord) -> Optional[int]:
    """The first pruned block (0-based), None for an unpruned run."""
    compress = record.compress
    return compress.layers[0] if compress is not None and compress.layers else None


def score_label(record: RunRecord, fig: str = "fig5") -> str:
    """A pruning score's row label in Figs. 3 / 5: ``<metric>-<site>`` (``@<reading>`` unless literal), a control's
    method label, or the attention metric itself in Fig. 3."""
    metric = record.metric
    if metric in ("random", "none"):  # controls: the site plays no part
        return record.method.label
    if fig == "fig3" and metric.startswith("attn"):
        return metric
    label = f"{metric}-{record.site}"
    return label if record.reading == "literal" else f"{label}@{record.reading}"


_METRIC_ORDER = ("attn_cls", "attn_mean", "l1", "l2", "cos")
_SITE_ORDER = ("attn", "mlp", "block")


def score_sort_key(row: str) -> tuple:
    """Rows ``<model> · <score label>`` in the figures' order: attention, then l1 / l2 / cos by site, controls last."""
    model, label = row.split(SEP, 1)
    metric, _, site = label.partition("-")
    control = "(control)" in label
    mi = _METRIC_ORDER.index(metric) if metric in _METRIC_ORDER else len(_METRIC_ORDER)
    si = _SITE_ORDER.index(site) if site in _SITE_ORDER else len(_SITE_ORDER)
    return (model, control, mi, metric, si, site)


# --------------------------------------------------------------------------- titles and notes

def uniq(values: Iterable[Any]) -> list[str]:
    seen: list[str] = []
    for v in values:
        if v is None or v == "":
            continue
        if str(v) not in seen:
            seen.append(str(v))
    return seen


def bench_desc(runs: Iterable[Run]) -> str:
    benched = [r.record.bench for r in runs if r.record.bench is not None]
    units = uniq(b.unit for b in benched) or ["img/s"]
    parts = [" / ".join(units), "device " + (" / ".join(uniq(b.device for b in benched)) or "n/a"),
             "precision " + (" / ".join(uniq(b.precision for b in benched)) or "n/a")]
    batches = uniq(b.batch for b in benched)
    if batches:
        parts.append("batch " + " / ".join(batches))
    return ", ".join(parts)


def data_desc(runs: Iterable[Run]) -> str:
    evaluated = [r.record.dataset for r in runs if r.record.dataset is not None]
    names = uniq(d.name for d in evaluated)
    if not names:
        return "data n/a"
    return "data " + " / ".join(names) + " (n=" + " / ".join(uniq(d.n for d in evaluated)) + ")"


def finish(df: pd.DataFrame, title: str, notes: list[str], duplicates: list[str], tainted: bool,
           extra: Optional[dict] = None) -> pd.DataFrame:
    """Attach the title and notes (the taint note, then which file each contested cell used and why)."""
    notes = list(notes)
    if tainted:
        notes.append(TAINT_NOTE)
    if duplicates:
        notes.append(f"{len(duplicates)} cell(s) had several results (rule: real weights and data first, then the "
                     "newest file): " + "; ".join(duplicates))
    df.attrs["title"] = title
    df.attrs["notes"] = notes
    if extra:
        df.attrs.update(extra)
    return df


def order_present(preferred: Iterable[str], present: Iterable[str]) -> list[str]:
    preferred = list(preferred)
    return preferred + sorted(set(present) - set(preferred))


# --------------------------------------------------------------------------- rendering and writing

def fmt(v: Any, signed: bool = False) -> str:
    """Numbers for the page: up to 2 decimals (1 above 1000), at least 1 below 1000; NaN -> ""."""
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


def _formatted(df: pd.DataFrame) -> pd.DataFrame:
    """The frame's cells as the page shows them (signed Δ, trimmed zeros, empty for NaN)."""
    cells = []
    for idx, row in zip(df.index, df.itertuples(index=False, name=None)):
        row_signed = str(idx).replace(f" {DAGGER}", "").endswith("Δ")
        cells.append([fmt(v, signed=row_signed or str(col).endswith("Δ")) for col, v in zip(df.columns, row)])
    return pd.DataFrame(cells, index=df.index, columns=[str(c) for c in df.columns], dtype=object)


def render(table: str, df: pd.DataFrame) -> tuple[str, str]:
    """-> (markdown, csv). The markdown starts with the title line and ends with the notes."""
    body = _formatted(df)
    # disable_numparse: keep our formatting (signs, trimmed zeros) instead of tabulate's
    table_md = body.to_markdown(disable_numparse=True, colalign=("left",) + ("right",) * len(body.columns))
    lines = [f"## {df.attrs.get('title') or table}", "", table_md, ""]
    lines += [note if note.startswith(DAGGER) else f"Note: {note}" for note in df.attrs.get("notes", [])]
    return "\n".join(lines).rstrip() + "\n", df.to_csv(na_rep="", float_format="%.6g")


def render_html(table: str, df: pd.DataFrame) -> str:
    """The same frame as HTML: title, the table (``DataFrame.to_html`` of the cells :func:`render` shows), notes."""
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in df.attrs.get("notes", []))
    return (f"<h3>{html.escape(df.attrs.get('title') or table)}</h3>\n"
            + _formatted(df).to_html(na_rep="", border=0, classes="numbers")
            + (f'\n<ul class="notes">{notes}</ul>' if notes else ""))


def write(table: str, df: pd.DataFrame, out_dir: Union[str, os.PathLike]) -> tuple[Path, Path]:
    """Write ``out_dir/<table>.md`` and ``out_dir/<table>.csv``; returns both paths."""
    out_dir = Path(out_dir)
    markdown, csv = render(table, df)
    md_path, csv_path = out_dir / f"{table}.md", out_dir / f"{table}.csv"
    for path, text in ((md_path, markdown), (csv_path, csv)):
        with atomic_open(path, "w") as fh:
            fh.write(text)
    return md_path, csv_path
