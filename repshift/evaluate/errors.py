"""The error every evaluator raises when nothing was evaluated: a run that measured no sample has no result."""
from __future__ import annotations

from repshift.data.build import location

__all__ = ["EmptyEvaluationError", "nothing_evaluated"]


class EmptyEvaluationError(RuntimeError):
    """An evaluation ended with zero evaluated samples; the message names the data and why."""


def nothing_evaluated(dataset, *, total: int, skipped: int, unit: str) -> EmptyEvaluationError:
    """The error for an evaluation of ``dataset`` (``total`` ``unit``, ``skipped`` of them unreadable) that scored
    none: all skipped as corrupt, or an empty split (``dataset.limit``, an empty folder or annotation list)."""
    if total == 0:
        why = f"the split holds no {unit} (an empty split or annotation list, or dataset.limit)"
    elif skipped >= total:
        check = "; `python -m repshift.data.check` lists the unreadable videos" if unit != "images" else ""
        why = f"all {total} {unit} were skipped as unreadable (dataset.skip_corrupt=true){check}"
    else:
        why = f"{total} {unit}, {skipped} skipped as unreadable, none left to score"
    return EmptyEvaluationError(f"nothing was evaluated on {location(dataset)}: {why}. A run with no evaluated "
                                "sample has no result.")
