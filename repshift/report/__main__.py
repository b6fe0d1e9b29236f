"""``python -m repshift.report table=table5 [results=outputs] [out=outputs/tables]``, and three subcommands:

- ``python -m repshift.report figures [results=outputs] [out=outputs/figures] [logger=wandb|none]``: the
  per-layer accuracy figures (Figs. 3 / 5, the readings) of every experiment folder with results, as PNG + PDF
  (:func:`repshift.report.figures.make_layer_figures`), plus copies of Figs. 1 and 7 when their modules drew
  them (:func:`repshift.report.figures.collect_external_figures`);
- ``python -m repshift.report maps ...``: the score maps (Figs. 4 / 6), see :mod:`repshift.report.maps`;
- ``python -m repshift.report html [results=outputs] [figures=outputs/figures] [out=outputs/report]``: one
  self-contained page with every table that has results and every figure (:mod:`repshift.report.html`).

``table=...`` collects ``<results>/<experiment>/**/result.json`` (the experiment folder is named after
the experiment; ``experiment=`` defaults to the table name), prints the markdown table,
and writes ``<out>/<table>.md`` and ``<out>/<table>.csv`` (plus ``<table>.png`` for fig3 /
fig5). Arguments are ``key=value`` pairs parsed with ``OmegaConf.from_cli``; no Hydra run
folder is created.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

USAGE = ("usage: python -m repshift.report table=<name> [results=outputs] [out=outputs/tables] "
         "[experiment=<folder under results, default: the table name>]\n"
         "       python -m repshift.report figures [results=outputs] [out=outputs/figures] [logger=wandb|none] [dpi=150]\n"
         "       python -m repshift.report maps [model=deit_b] [data=<imagenet root>] [smoke=true] ...\n"
         "       python -m repshift.report html [results=outputs] [figures=outputs/figures] [out=outputs/report]")
SUBCOMMANDS = ("figures", "maps", "html")


def _parse(argv: list[str], known: set[str]) -> dict | None:
    """``key=value`` arguments as a dict, or None after printing why they are wrong."""
    bad = [a for a in argv if "=" not in a]
    if bad:
        print(f"error: arguments must be key=value, got {' '.join(bad)}\n{USAGE}", file=sys.stderr)
        return None
    try:
        cli = OmegaConf.to_container(OmegaConf.from_cli(argv), resolve=True)
    except Exception as exc:  # noqa: BLE001 - bad override syntax
        print(f"error: cannot parse arguments: {exc}\n{USAGE}", file=sys.stderr)
        return None
    unknown = sorted(set(cli) - known)
    if unknown:
        print(f"error: unknown argument(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}\n{USAGE}",
              file=sys.stderr)
        return None
    return cli


def figures_main(argv: list[str]) -> int:
    from repshift.report.figures import (EXTERNAL_FIGURES, LAYER_FIGURES, collect_external_figures, figure_logger,
                                         make_layer_figures)

    cli = _parse(argv, {"results", "out", "logger", "dpi"})
    if cli is None:
        return 2
    results_root = Path(str(cli.get("results", "outputs")))
    out_dir = Path(str(cli.get("out", results_root / "figures")))
    logger = figure_logger(str(cli.get("logger", "wandb")), out_dir, "layer-figures")
    try:
        written = make_layer_figures(results_root, out_dir, logger=logger, dpi=int(cli.get("dpi", 150)))
        written.update(collect_external_figures(results_root, out_dir, logger=logger))
    finally:
        logger.finish()
    sources = {**{name: [str(results_root / f) for f in folders] for name, folders in LAYER_FIGURES.items()},
               **{name: [str(results_root / path)] for name, path in EXTERNAL_FIGURES.items()}}
    for name, where in sources.items():
        if name in written:
            print(f"{name}: wrote " + ", ".join(str(p) for p in written[name]))
        else:
            print(f"{name}: nothing under {', '.join(where)}; skipped (run its experiment first)", file=sys.stderr)
    return 0 if written else 1


def html_main(argv: list[str]) -> int:
    from repshift.report.html import write_report

    cli = _parse(argv, {"results", "figures", "out"})
    if cli is None:
        return 2
    results_root = Path(str(cli.get("results", "outputs")))
    page = write_report(results_root, Path(str(cli.get("figures", results_root / "figures"))),
                        Path(str(cli.get("out", results_root / "report"))))
    print(f"wrote {page}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from repshift.report.results import load_results
    from repshift.report.tables import TABLES, build, write

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        print("tables: " + ", ".join(TABLES))
        return 0
    if argv and argv[0] in SUBCOMMANDS:
        if argv[0] == "maps":
            from repshift.report.maps import main as maps_main

            return maps_main(argv[1:])
        return {"figures": figures_main, "html": html_main}[argv[0]](argv[1:])
    cli = _parse(argv, {"table", "results", "out", "experiment"})
    if cli is None:
        return 2
    table = cli.get("table")
    if table is None:
        print(f"error: table= is required; valid tables: {', '.join(TABLES)}\n{USAGE}", file=sys.stderr)
        return 2
    table = str(table)
    if table not in TABLES:
        print(f"error: unknown table {table!r}; valid tables: {', '.join(TABLES)}", file=sys.stderr)
        return 2
    results_root = Path(str(cli.get("results", "outputs")))
    out_dir = Path(str(cli.get("out", results_root / "tables")))
    folder = results_root / str(cli.get("experiment") or table)
    results = load_results(folder)
    if not results:
        print(f"error: no result.json found under {folder} (searched recursively); "
              f"run the {table} experiment first or pass results=<folder holding {folder.name}/>",
              file=sys.stderr)
        return 1
    df = build(table, results)
    md_path, csv_path = write(table, df, out_dir)
    print(md_path.read_text(encoding="utf-8"), end="")
    written = [md_path, csv_path]
    if table in ("fig3", "fig5", "fig3_umt") and len(df):
        from repshift.report.figures import plot_layer_curves

        written.append(plot_layer_curves(df, out_dir / f"{table}.png", ylabel="top-1 (%)"))
    print(f"[{len(results)} result file(s) from {folder}] wrote " + ", ".join(str(p) for p in written),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
