"""One self-contained HTML page: the claims ledger, every table that has records, every figure.

    python -m repshift.report html [--results outputs] [--figures outputs/figures] [--out outputs/report]

The page opens with the claims ledger (:mod:`repshift.report.claims`). The tables are the frames that
``python -m repshift.report table`` prints (:func:`repshift.report.tables.build`), rendered by
:func:`repshift.report.core.render_html` (``DataFrame.to_html`` of the same cells), one per name in
:data:`~repshift.report.tables.TABLES` whose folders hold records. Under each table, the provenance of its
runs (commit, device, kernel, precision, weights, data) sits in a ``<details>`` element; result files that
could not be read are listed with their path and why, and the table is built from the rest. Figures are the
PNGs of ``--figures`` (``make figures``) and of ``<results>/tables`` (the reports' own plots), inlined as data
URIs, so the page is one file that opens anywhere, offline.
"""
from __future__ import annotations

import base64
import datetime
import html
import os
from pathlib import Path

from repshift.io import atomic_open
from repshift.record import RecordProblem
from repshift.report.core import Run, load_runs

__all__ = ["provenance_html", "problems_html", "write_report", "report_html"]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; } h3 { font-size: 1em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.5em; } td { text-align: right; }
td:first-child, th:first-child, tbody th { text-align: left; white-space: nowrap; }
#claims td { text-align: left; } tr.reproduced td:nth-child(4) { color: #1a7f37; }
tr.not-reproduced td:nth-child(4) { color: #b42318; } tr.not-measured td:nth-child(4) { color: #666; }
.notes, .problems { font-size: 0.8em; color: #444; } details { margin: 0.5em 0 1.5em; font-size: 0.85em; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #444; } nav a { margin-right: 1em; }
"""


def _provenance_row(run: Run) -> list[str]:
    r = run.record
    commit = str(r.env.get("git_commit") or "unknown")[:12] + (" (dirty)" if r.env.get("git_dirty") else "")
    source = r.weights.source + (f" (trained from {r.weights.initial.source})" if r.weights.initial else "")
    data = ""
    if r.dataset is not None:
        data = f"{r.dataset.name} (n={r.dataset.n})" + (", synthetic" if r.dataset.synthetic else "")
    bench = r.bench
    return [r.run_name, r.method.label, r.model.name, commit, r.identity.device, bench.device if bench else "",
            ", ".join(bench.kernel) if bench else "", bench.precision if bench else "",
            ("real: " if r.weights.real else "random: ") + source, data, run.path]


def provenance_html(runs: list[Run]) -> str:
    """A ``<details>`` element listing each run: commit, device, kernel, precision, weights, data, file."""
    header = ["run", "method", "model", "commit", "device", "bench device", "kernel", "precision", "weights",
              "data", "result file"]
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in _provenance_row(run)) + "</tr>"
                   for run in sorted(runs, key=lambda run: run.path))
    return (f"<details><summary>Provenance: {len(runs)} run(s)</summary><table><thead><tr>"
            + "".join(f"<th>{h}</th>" for h in header) + f"</tr></thead><tbody>{rows}</tbody></table></details>")


def problems_html(problems: list[RecordProblem]) -> str:
    """The result files a table could not use, each with its path and why."""
    if not problems:
        return ""
    items = "".join(f"<li><code>{html.escape(p.path)}</code>: {html.escape(p.reason)}</li>" for p in problems)
    return f'<div class="problems"><p>{len(problems)} result file(s) could not be used:</p><ul>{items}</ul></div>'


def _figure_files(folders: list[Path]) -> list[Path]:
    """PNGs of ``folders``, the first folder's file winning when two share a name."""
    seen: dict[str, Path] = {}
    for folder in folders:
        for path in sorted(folder.glob("*.png")) if folder.is_dir() else ():
            seen.setdefault(path.name, path)
    return sorted(seen.values(), key=lambda p: p.name)


def _figure_html(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    pdf = path.with_suffix(".pdf")
    caption = html.escape(str(path)) + (f" (PDF: {html.escape(str(pdf))})" if pdf.exists() else "")
    return (f'<figure id="{html.escape(path.stem)}"><img alt="{html.escape(path.stem)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{caption}</figcaption></figure>')


def report_html(results_root: str | os.PathLike, figures_dir: str | os.PathLike) -> str:
    """The page: the claims ledger, every table of :data:`~repshift.report.tables.TABLES` that has records, then
    every figure."""
    from repshift.report.claims import ledger, render_html as ledger_html
    from repshift.report.tables import TABLES, build, render_html

    results_root = Path(results_root)
    sections = [f'<section id="claims">{ledger_html(ledger([results_root]))}</section>']
    toc = ['<a href="#claims">claims</a>']
    for name in TABLES:
        runs, problems = load_runs(results_root, name)
        if not runs and not problems:
            continue
        table = render_html(name, build(name, runs)) if runs else "<p>No valid run record.</p>"
        sections.append(f'<section id="table-{name}"><h2>{name}</h2>\n{table}\n{problems_html(problems)}'
                        f"{provenance_html(runs)}</section>")
        toc.append(f'<a href="#table-{name}">{name}</a>')
    figures = _figure_files([Path(figures_dir), results_root / "tables"])
    if figures:
        sections.append('<section id="figures"><h2>Figures</h2>\n' + "\n".join(_figure_html(p) for p in figures)
                        + "</section>")
        toc.append('<a href="#figures">figures</a>')
    if len(sections) == 1:
        sections.append(f"<p>No results under {html.escape(str(results_root))} and no figures in "
                        f"{html.escape(str(figures_dir))}: run an experiment (make reproduce-table5 SMOKE=1) or "
                        "make figures first.</p>")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>repshift report</title>"
            f"<style>{STYLE}</style></head><body>\n<h1>repshift report</h1>\n"
            f"<p>Results from <code>{html.escape(str(results_root))}</code>, written {stamp}. "
            "† marks rows from random weights or synthetic data (not comparable with the paper); "
            "each table's runs are listed under it.</p>\n"
            f"<nav>{' '.join(toc)}</nav>\n" + "\n".join(sections) + "\n</body></html>\n")


def write_report(results_root: str | os.PathLike, figures_dir: str | os.PathLike,
                 out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/index.html`` (atomically) and return its path."""
    page = Path(out_dir) / "index.html"
    with atomic_open(page, "w") as fh:
        fh.write(report_html(results_root, figures_dir))
    return page
