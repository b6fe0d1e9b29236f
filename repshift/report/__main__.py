"""python -m repshift.report <command>: tables, figures, the HTML page and the claims ledger from run records.

    table NAME     one paper-shaped table: prints it, writes <out>/NAME.md and .csv (+ .png for fig3 / fig5 / fig3_umt)
    figures        the per-layer accuracy figures (Figs. 3 / 5, readings) as PNG + PDF, plus copies of Figs. 1 and 7
    maps           the score maps (Figs. 4 / 6): runs `python -m repshift.maps maps`, which builds the model
    fig1           Fig. 1 (mean R@1 against throughput) from Table 2's records: table and PNG
    html           one self-contained page: the claims ledger, every table with records, every figure
    claims         the claims ledger: each headline claim of the paper, our measurement, a verdict

Every command reads run records (result.json, repshift.record) under --results (default outputs); a file
that does not validate is reported with its path and why, and the rest is used.
`python -m repshift.report <command> --help` lists a command's options. The key=value spelling of earlier
releases still works (`python -m repshift.report table=table5 results=outputs`).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from repshift.record import RecordProblem
from repshift.report.cli import Parser

COMMANDS = ("table", "figures", "maps", "fig1", "html", "claims")


def _report_problems(problems: list[RecordProblem]) -> None:
    for problem in problems:
        print(f"skipped {problem.path}: {problem.reason}", file=sys.stderr)


def parser() -> Parser:
    from repshift.report.tables import TABLES

    main = Parser(prog="python -m repshift.report", description=__doc__)
    commands = main.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")

    table = commands.add_parser("table", help="one paper-shaped table", description=(
        "Build one table from the records under <results>/<folder> (the folder of the table's experiment; Fig. 1 "
        "reads Table 2's), print it as Markdown and write <out>/<table>.md and .csv. Tables: " + ", ".join(TABLES)))
    table.add_argument("table", choices=TABLES, metavar="TABLE", help="one of: " + ", ".join(TABLES))
    table.add_argument("--results", default="outputs", help="the results root (default outputs)")
    table.add_argument("--out", default=None, help="where the files go (default <results>/tables)")
    table.add_argument("--experiment", default=None, help="read this folder under --results instead")

    figures = commands.add_parser("figures", help="the per-layer accuracy figures, PNG + PDF")
    figures.add_argument("--results", default="outputs")
    figures.add_argument("--out", default=None, help="default <results>/figures")
    figures.add_argument("--logger", choices=("wandb", "none"), default="wandb", help="log the PNGs to W&B (offline)")
    figures.add_argument("--dpi", type=int, default=150)

    commands.add_parser("maps", add_help=False, help="the score maps (Figs. 4 / 6): python -m repshift.maps maps ...")

    fig1 = commands.add_parser("fig1", help="Fig. 1 from Table 2's records: table and PNG")
    fig1.add_argument("--results", default="outputs")
    fig1.add_argument("--out", default=None, help="default <results>/tables")
    fig1.add_argument("--experiment", default="table2", help="the folder of Table 2's records (default table2)")

    page = commands.add_parser("html", help="one self-contained page: ledger, tables, figures")
    page.add_argument("--results", default="outputs")
    page.add_argument("--figures", default=None, help="the PNGs to inline (default <results>/figures)")
    page.add_argument("--out", default=None, help="default <results>/report")

    claims = commands.add_parser("claims", help="the claims ledger", description=(
        "Each headline claim of the paper (repshift/report/claims.yaml), our measurement and a verdict: reproduced, "
        "not reproduced, or not measured (and why). Prints the ledger and writes claims.md, claims.csv and "
        "claims.json under --out."))
    claims.add_argument("--results", action="append", default=None,
                        help="a results root, searched recursively (repeatable; default outputs)")
    claims.add_argument("--realweights", default=None,
                        help="realweights.json of `make real-weights` "
                             "(default <first root>/realweights/realweights.json)")
    claims.add_argument("--out", default=None, help="default <first root>/claims")
    claims.add_argument("--readme", default=None, metavar="README.md",
                        help="also rewrite the README's claims block from this ledger (and docs/claims.json beside it)")
    claims.add_argument("--check-readme", default=None, metavar="README.md",
                        help="exit 1 when the README's claims block is not the one docs/claims.json renders")
    return main


def _table(args) -> int:
    from repshift.record import scan
    from repshift.report.core import as_runs, load_runs, sources
    from repshift.report.figures import plot_layer_curves
    from repshift.report.tables import build, write

    results = Path(args.results)
    if args.experiment:
        found = scan(results / args.experiment)
        runs, problems, where = as_runs(found.records), found.problems, [results / args.experiment]
    else:
        runs, problems = load_runs(results, args.table)
        where = [results / folder for folder in sources(args.table)]
    _report_problems(problems)
    if not runs:
        print(f"error: no valid result.json under {', '.join(map(str, where))} (searched recursively); run the "
              f"{args.table} experiment first or pass --results <folder holding {where[0].name}/>", file=sys.stderr)
        return 1
    df = build(args.table, runs)
    out = Path(args.out) if args.out else results / "tables"
    md_path, csv_path = write(args.table, df, out)
    print(md_path.read_text(encoding="utf-8"), end="")
    written = [md_path, csv_path]
    if args.table in ("fig3", "fig5", "fig3_umt") and len(df):
        written.append(plot_layer_curves(df, out / f"{args.table}.png", ylabel="top-1 (%)"))
    print(f"[{len(runs)} record(s) from {', '.join(map(str, where))}] wrote " + ", ".join(map(str, written)),
          file=sys.stderr)
    return 0


def _figures(args) -> int:
    from repshift.report.core import sources
    from repshift.report.figures import (EXTERNAL_FIGURES, LAYER_FIGURES, collect_external_figures, figure_logger,
                                         make_layer_figures)

    results = Path(args.results)
    out = Path(args.out) if args.out else results / "figures"
    logger = figure_logger(args.logger, out, "layer-figures")
    try:
        written, problems = make_layer_figures(results, out, logger=logger, dpi=args.dpi)
        written.update(collect_external_figures(results, out, logger=logger))
    finally:
        logger.finish()
    _report_problems(problems)
    where = {**{name: [str(results / f) for t in tables for f in sources(t)] for name, tables in LAYER_FIGURES.items()},
             **{name: [str(results / path)] for name, path in EXTERNAL_FIGURES.items()}}
    for name, folders in where.items():
        if name in written:
            print(f"{name}: wrote " + ", ".join(str(p) for p in written[name]))
        else:
            print(f"{name}: nothing under {', '.join(folders)}; skipped (run its experiment first)", file=sys.stderr)
    return 0 if written else 1


def _fig1(args) -> int:
    from repshift.record import scan
    from repshift.report.core import as_runs, render, write
    from repshift.report.fig1 import plot_fig1
    from repshift.report.video_tables import build_fig1, fig1_points

    results = Path(args.results)
    folder = results / args.experiment
    found = scan(folder)
    _report_problems(found.problems)
    runs = as_runs(found.records)
    if not runs:
        print(f"error: no valid result.json under {folder}; run experiment=table2 and experiment=fig1 first",
              file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else results / "tables"
    df = build_fig1(runs)
    md_path, _ = write("fig1", df, out)
    png = plot_fig1(fig1_points(runs), out / "fig1.png", title="Fig. 1: mean R@1 vs throughput (UMT)")
    print(render("fig1", df)[0], end="")
    print(f"[{len(runs)} record(s) from {folder}] wrote {md_path}, {png}", file=sys.stderr)
    return 0


def _html(args) -> int:
    from repshift.report.html import write_report

    results = Path(args.results)
    page = write_report(results, Path(args.figures) if args.figures else results / "figures",
                        Path(args.out) if args.out else results / "report")
    print(f"wrote {page}")
    return 0


def _claims(args) -> int:
    import json

    from repshift.io import atomic_open
    from repshift.report.claims import (Ledger, ledger, readme_block, render_csv, render_markdown,
                                        replace_readme_block)

    if args.check_readme:
        readme = Path(args.check_readme)
        snapshot = readme.parent / "docs" / "claims.json"
        recorded = Ledger.from_json(json.loads(snapshot.read_text(encoding="utf-8")))
        expected = replace_readme_block(readme.read_text(encoding="utf-8"), readme_block(recorded))
        if expected != readme.read_text(encoding="utf-8"):
            print(f"error: the claims block of {readme} is not what {snapshot} renders: run make claims-readme",
                  file=sys.stderr)
            return 1
        print(f"{readme}: the claims block is current")
        return 0
    roots = args.results or ["outputs"]
    result = ledger(roots, args.realweights)
    markdown = render_markdown(result)
    print(markdown, end="")
    out = Path(args.out) if args.out else Path(roots[0]) / "claims"
    written = []
    for name, text in (("claims.md", markdown), ("claims.csv", render_csv(result)),
                       ("claims.json", json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n")):
        with atomic_open(out / name, "w") as fh:
            fh.write(text)
        written.append(out / name)
    if args.readme:
        readme = Path(args.readme)
        snapshot = readme.parent / "docs" / "claims.json"
        with atomic_open(snapshot, "w") as fh:
            fh.write(json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n")
        with atomic_open(readme, "w") as fh:
            fh.write(replace_readme_block(readme.read_text(encoding="utf-8"), readme_block(result)))
        written += [snapshot, readme]
    print("wrote " + ", ".join(map(str, written)), file=sys.stderr)
    return 0


def _respell_legacy(argv: list[str]) -> list[str]:
    """``table=table5 ...`` (the spelling before subcommands) -> ``table table5 ...``."""
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        where = next((i for i, a in enumerate(argv) if a.startswith("table=")), None)
        if where is not None:
            return ["table", argv[where].split("=", 1)[1], *argv[:where], *argv[where + 1:]]
    return argv


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = _respell_legacy(list(sys.argv[1:] if argv is None else argv))
    if argv and argv[0] == "maps":  # the maps need a model: the runner side builds it, in its own process
        return subprocess.run([sys.executable, "-m", "repshift.maps", "maps", *argv[1:]]).returncode
    command_line = parser()
    if not argv:
        command_line.print_help(sys.stderr)
        return 2
    try:
        args = command_line.parse_args(argv)
    except SystemExit as exit_:  # argparse has printed why
        return int(exit_.code or 0)
    if args.command is None:
        command_line.print_help(sys.stderr)
        return 2
    return {"table": _table, "figures": _figures, "fig1": _fig1, "html": _html, "claims": _claims}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
