"""Result files, paper numbers, tables and figures (W&B logging is the runner's: repshift.wandb_log).

``results`` is loaded eagerly; the pandas / wandb / matplotlib parts load on first use of their names.
"""

from __future__ import annotations

import importlib
from typing import Any

from repshift.report.results import RunResult, collect, is_finished, load_results, read_result, write_result

_LAZY = {
    "TABLES": "repshift.report.tables",
    "build": "repshift.report.tables",
    "render": "repshift.report.tables",
    "write": "repshift.report.tables",
    "paper_numbers": "repshift.report.tables",
    "paper_value": "repshift.report.tables",
    "save_score_maps": "repshift.report.figures",
    "plot_layer_curves": "repshift.report.figures",
    "save_figure": "repshift.report.figures",
    "layer_figure": "repshift.report.figures",
    "make_layer_figures": "repshift.report.figures",
}

__all__ = ["write_result", "read_result", "collect", "load_results", "RunResult", "is_finished", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'repshift.report' has no attribute {name!r}")
