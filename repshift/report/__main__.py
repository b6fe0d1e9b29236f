"""``python -m repshift.report table=table5 [results=outputs] [out=outputs/tables]``.

Collects ``<results>/<experiment>/**/result.json`` (the experiment folder is named after
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
         "[experiment=<folder under results, default: the table name>]")


def main(argv: list[str] | None = None) -> int:
    from repshift.report.results import load_results
    from repshift.report.tables import TABLES, build, write

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        print("tables: " + ", ".join(TABLES))
        return 0
    bad = [a for a in argv if "=" not in a]
    if bad:
        print(f"error: arguments must be key=value, got {' '.join(bad)}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        cli = OmegaConf.to_container(OmegaConf.from_cli(argv), resolve=True)
    except Exception as exc:  # noqa: BLE001 - bad override syntax
        print(f"error: cannot parse arguments: {exc}\n{USAGE}", file=sys.stderr)
        return 2
    known = {"table", "results", "out", "experiment"}
    unknown = sorted(set(cli) - known)
    if unknown:
        print(f"error: unknown argument(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}\n{USAGE}",
              file=sys.stderr)
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
    if table in ("fig3", "fig5") and len(df):
        from repshift.report.figures import plot_layer_curves

        written.append(plot_layer_curves(df, out_dir / f"{table}.png", ylabel="top-1 (%)"))
    print(f"[{len(results)} result file(s) from {folder}] wrote " + ", ".join(str(p) for p in written),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
