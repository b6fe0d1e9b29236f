"""Every paper-shaped table: the registry of :mod:`repshift.report.core` filled by the builder modules.

Importing this module imports the builder modules (:mod:`repshift.report.image_tables`,
:mod:`repshift.report.video_tables`, :mod:`repshift.report.merging_table`), which register themselves; :data:`TABLES` then names every table
``python -m repshift.report table`` knows, :func:`build` builds one from run records.
"""
from __future__ import annotations

from typing import Iterable

import pandas as pd

from repshift.report import image_tables, merging_table, video_tables  # noqa: F401  (they register their builders)
from repshift.report.core import as_runs, builder, paper_numbers, paper_value, registry, render, render_html, write

__all__ = ["TABLES", "build", "render", "render_html", "write", "paper_numbers", "paper_value"]

#: Table names :func:`build` understands, in the order the report shows them.
TABLES: tuple[str, ...] = tuple(registry())


def build(table: str, runs: Iterable) -> pd.DataFrame:
    """Build the paper-shaped table ``table`` (one of :data:`TABLES`) from run records: ``Run`` s, ``(path, record)``
    pairs as :func:`repshift.record.scan` gives them, or bare :class:`~repshift.record.RunRecord` s."""
    return builder(table)(as_runs(runs))
