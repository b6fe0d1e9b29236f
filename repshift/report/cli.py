"""The one command-line style of every report entry point: argparse with subcommands.

:class:`Parser` is :class:`argparse.ArgumentParser` that also reads the ``key=value`` spelling of earlier
releases (``results=outputs`` for ``--results outputs``; ``smoke=true`` for the flag ``--smoke``), so the
commands written in older notes keep working. ``--help`` documents the options only. The runner-side map
commands (:mod:`repshift.maps`) use the same parser.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

__all__ = ["Parser", "int_list", "str_list"]

_TRUE = ("1", "true", "yes", "on")


class Parser(argparse.ArgumentParser):
    """argparse, plus ``key=value`` for ``--key=value`` (and ``flag=true`` for ``--flag``) for its own options."""

    def __init__(self, *args, **kwargs):
        self.spelled_as_key: dict[str, tuple[str, bool]] = {}  # key -> (option string, is a flag)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *names, **kwargs):
        action = super().add_argument(*names, **kwargs)
        for name in names:
            if name.startswith("--"):
                self.spelled_as_key[name[2:].replace("-", "_")] = (name, action.nargs == 0)
        return action

    def _respell(self, args: Sequence[str]) -> list[str]:
        out = []
        for arg in args:
            key, sep, value = arg.partition("=")
            known = self.spelled_as_key.get(key.replace("-", "_")) if sep and not arg.startswith("-") else None
            if known is None:
                out.append(arg)
            elif known[1]:  # a flag: key=true sets it, key=false leaves it off
                if value.strip().lower() in _TRUE:
                    out.append(known[0])
            else:
                out.append(f"{known[0]}={value}")
        return out

    def parse_known_args(self, args: Optional[Sequence[str]] = None, namespace=None):
        import sys

        return super().parse_known_args(self._respell(sys.argv[1:] if args is None else args), namespace)


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.strip().strip("[]").split(",") if item.strip()]


def int_list(text: str) -> tuple[int, ...]:
    """``0,4,8`` or ``[0,4,8]`` -> ``(0, 4, 8)``."""
    try:
        return tuple(int(item) for item in _items(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 0,4,8, got {text!r}") from None


def str_list(text: str) -> tuple[str, ...]:
    """``fig6,fig4`` or ``[fig6,fig4]`` -> ``("fig6", "fig4")``."""
    return tuple(_items(text))
