"""One self-contained HTML page with every table that has results and every figure.

    python -m repshift.report html [results=outputs] [figures=outputs/figures] [out=outputs/report]

Tables are the ones ``python -m repshift.report table=<name>`` prints (:func:`repshift.report.tables.build`
and :func:`~repshift.report.tables.render`: paper beside ours, Δ, † for random weights / synthetic data),
one per name in :data:`~repshift.report.tables.TABLES` whose folder ``<results>/<name>`` holds results.
Under each table, the provenance of its runs (commit, device, kernel, precision, weights, data), read
through :func:`repshift.report.results.load_results`, sits in a ``<details>`` element. Figures are the PNGs
of ``figures=`` (``make figures``) and of ``<results>/tables`` (the reports' own plots), inlined as data
URIs, so the page is one file that opens anywhere, offline.
"""
from __future__ import annotations

import base64
import datetime
import html
import os
from pathlib import Path

from repshift.io import atomic_open
from repshift.report.results import RunResult, load_results

__all__ = ["markdown_table_html", "provenance_html", "write_report", "report_html"]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; } h3 { font-size: 1em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.5em; } td { text-align: right; }
td:first-child, th:first-child { text-align: left; white-space: nowrap; }
tr.paper td { color: #666; } tr.tainted td:first-child { font-style: italic; }
.notes { font-size: 0.8em; color: #444; } details { margin: 0.5em 0 1.5em; font-size: 0.85em; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #444; } nav a { margin-right: 1em; }
"""


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def markdown_table_html(markdown: str) -> str:
    """The markdown of :func:`repshift.report.tables.render` (title, pipe table, notes) as HTML."""
    lines = markdown.splitlines()
    title = lines[0][3:] if lines and lines[0].startswith("## ") else ""
    rows = [line for line in lines if line.startswith("|")]
    notes = [line for line in lines[1:] if line.strip() and not line.startswith("|")]
    parts = [f"<h3>{html.escape(title)}</h3>"]
    if rows:
        header, body = _cells(rows[0]), rows[2:]  # rows[1] is the |:---|---:| alignment line
        parts.append("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in header) + "</tr></thead><tbody>")
        for line in body:
            cells = _cells(line)
            classes = [c for c, hit in (("paper", cells[0].endswith("paper")), ("tainted", "†" in cells[0])) if hit]
            parts.append(f'<tr class="{" ".join(classes)}">' + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                         + "</tr>")
        parts.append("</tbody></table>")
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    return "\n".join(parts)


def _provenance_row(r: RunResult) -> list[str]:
    env = r.raw.get("env") or {}
    commit = str(env.get("git_commit") or "unknown")[:12] + (" (dirty)" if env.get("git_dirty") else "")
    weights = r.raw.get("weights") or {}
    source = weights.get("source") or ""
    if weights.get("initial"):
        source += f" (trained from {weights['initial']})"
    data = r.dataset or ""
    if r.dataset_n is not None:
        data += f" (n={r.dataset_n})"
    if r.synthetic:
        data += ", synthetic"
    return [r.raw.get("run_name") or Path(r.path or "?").parent.name, r.method_label, r.model, commit,
            r.env_device or "", r.bench_device or "", ", ".join(r.kernels), r.bench_precision or "",
            ("real: " if r.real_weights else "random: " if r.real_weights is False else "") + source, data,
            r.path or ""]


def provenance_html(results: list[RunResult]) -> str:
    """A ``<details>`` element listing each run: commit, device, kernel, precision, weights, data, file."""
    header = ["run", "method", "model", "commit", "device", "bench device", "kernel", "precision", "weights",
              "data", "result file"]
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in _provenance_row(r)) + "</tr>"
                   for r in sorted(results, key=lambda r: r.path or ""))
    return (f"<details><summary>Provenance: {len(results)} run(s)</summary><table><thead><tr>"
            + "".join(f"<th>{h}</th>" for h in header) + f"</tr></thead><tbody>{rows}</tbody></table></details>")


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


#: Tables read from another table's folder (as ``python -m repshift.report.fig1`` does); the rest read ``<name>/``.
TABLE_FOLDERS = {"fig1": "table2"}


def report_html(results_root: str | os.PathLike, figures_dir: str | os.PathLike) -> str:
    """The page: every table of :data:`~repshift.report.tables.TABLES` that has results, then every figure."""
    from repshift.report.tables import TABLES, build, render

    results_root = Path(results_root)
    sections, toc = [], []
    for name in TABLES:
        results = load_results(results_root / TABLE_FOLDERS.get(name, name))
        if not results:
            continue
        markdown, _ = render(name, build(name, results))
        sections.append(f'<section id="table-{name}"><h2>{name}</h2>\n{markdown_table_html(markdown)}\n'
                        f"{provenance_html(results)}</section>")
        toc.append(f'<a href="#table-{name}">{name}</a>')
    figures = _figure_files([Path(figures_dir), results_root / "tables"])
    if figures:
        sections.append('<section id="figures"><h2>Figures</h2>\n' + "\n".join(_figure_html(p) for p in figures)
                        + "</section>")
        toc.append('<a href="#figures">figures</a>')
    if not sections:
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
