"""The callable a config node names in ``_target_``, limited to the suite's own builders.

Model and dataset configs say what builds them (``_target_: repshift.models.umt.build``), as Hydra's
``instantiate`` reads it; the node is then passed to that function whole. A config is an input the
user may have been handed, so a target must lie inside the package section it builds for: a
``_target_`` such as ``os.system`` is refused before anything is imported.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from hydra.errors import InstantiationException
from hydra.utils import get_method

TARGET_KEY = "_target_"


def target_of(node: Mapping[str, Any], *, section: str, what: str) -> Callable[..., Any]:
    """The function ``node["_target_"]`` names; it must lie under ``section`` (e.g. ``"repshift.models."``).

    ``what`` is the config group (``model``, ``dataset``), used in the error messages.
    """
    target = node.get(TARGET_KEY)
    if not target:
        raise ValueError(f"the {what} config has no {TARGET_KEY} (the function that builds it, e.g. "
                         f"{_EXAMPLES.get(what, section + '...')}); add one to its yaml file")
    if not isinstance(target, str) or not target.startswith(section):
        raise ValueError(f"{what}.{TARGET_KEY}={target!r}: a {what} is built by a function under {section} only")
    try:
        function = get_method(target)
    except (ImportError, InstantiationException, ValueError) as error:
        raise ValueError(f"{what}.{TARGET_KEY}={target}: no such function ({error})") from None
    return function


_EXAMPLES = {"model": "repshift.models.build_timm", "dataset": "repshift.data.folder.build"}
