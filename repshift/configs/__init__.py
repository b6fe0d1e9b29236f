"""The suite's Hydra configs, shipped inside the package so a plain ``pip install`` finds them.

One loader for every entry point (the runner, reports, the data checker, scripts and tests):
:data:`CONFIG_DIR` is the folder, :func:`compose` the composed run config as ``python -m repshift.run``
sees it, :func:`load` one config file of a group.

Two lookups that tables, figures, bench scripts and the demo use instead of spelling names themselves:

- the method vocabulary (:func:`methods`, :func:`method_spec`): each ``method/<name>.yaml`` declares its
  name (the file's stem, the one spelling used everywhere), its label and what a run must do to be
  recorded under it (``method.declares``: score, site, attention kernel, pruning mode, ...);
- where an experiment writes (:func:`experiment_folder`, :func:`experiments_in`): the ``experiment_name``
  its config declares, followed through its defaults list (``fig1`` writes into ``table2``).

This module reads YAML only: no torch, no models.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent

__all__ = [
    "CONFIG_DIR", "MethodSpec", "compose", "experiment_folder", "experiments_in", "load", "method_spec", "methods",
    "names", "register_resolvers",
]


def register_resolvers() -> None:
    """The resolvers the configs use before Hydra is set up (``${cwd:}``: the launch directory)."""
    if not OmegaConf.has_resolver("cwd"):
        OmegaConf.register_new_resolver("cwd", os.getcwd)


def names(group: str) -> list[str]:
    """The config names of a group (``model`` -> ``["deit_b", "deit_s", ...]``); base configs in a group's
    ``base/`` folder are not options."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def load(group: str, name: str) -> DictConfig:
    """One file of a group, as written (no defaults list applied); an unknown name lists the known ones."""
    path = CONFIG_DIR / group / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{group}={name}: no {path}; known: {', '.join(names(group))}")
    return OmegaConf.load(path)


def compose(overrides: Sequence[str] = (), config_name: str = "run", return_hydra_config: bool = False) -> DictConfig:
    """The run config composed with ``overrides``, as ``python -m repshift.run`` would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)


# ------------------------------------------------------------------------------------------ methods

#: What a method may declare about a run (``method.declares`` in ``method/<name>.yaml``). A key left out
#: accepts any value; a list accepts any of its values.
DECLARABLE = ("prunes", "metric", "site", "attention", "mode", "proportional", "blocks")


@dataclass(frozen=True)
class MethodSpec:
    """One method: its name (= the config file's stem), the label tables show, and what a run does to be
    recorded under it (``declares``: config key -> accepted values)."""

    name: str
    label: str
    declares: Mapping[str, tuple]

    def matches(self, settings: Mapping[str, Any]) -> bool:
        """Whether a run with these ``settings`` (the keys of :data:`DECLARABLE`) is this method."""
        return all(settings.get(key) in accepted for key, accepted in self.declares.items())

    def conflicts(self, settings: Mapping[str, Any]) -> list[str]:
        """``key=value`` of each setting that this method does not accept."""
        return [f"{key}={settings.get(key)}" for key, accepted in self.declares.items()
                if settings.get(key) not in accepted]

    def describe(self) -> str:
        """``method=ours (metric l2, site mlp|mixer, ...)``: what the method declares, for messages."""
        parts = [f"{key} {'|'.join(str(v).lower() if isinstance(v, bool) else str(v) for v in accepted)}"
                 for key, accepted in self.declares.items()]
        return f"method={self.name} ({', '.join(parts)})"


@functools.cache
def methods() -> dict[str, MethodSpec]:
    """Every method of ``repshift/configs/method/``, by name."""
    table = {}
    for name in names("method"):
        node = OmegaConf.to_container(load("method", name).get("method") or {}, resolve=False)
        if node.get("name") != name:
            raise ValueError(f"{CONFIG_DIR / 'method' / name}.yaml: method.name must be {name!r} (the file's stem: one "
                             f"spelling per method), got {node.get('name')!r}")
        declares = node.get("declares") or {}
        unknown = sorted(set(declares) - set(DECLARABLE))
        if unknown or not node.get("label"):
            raise ValueError(f"{CONFIG_DIR / 'method' / name}.yaml: method needs a label and declares only "
                             f"{list(DECLARABLE)} (got {sorted(declares)})")
        table[name] = MethodSpec(
            name=name, label=str(node["label"]),
            declares={key: tuple(value) if isinstance(value, list) else (value,) for key, value in declares.items()},
        )
    return table


def method_spec(name: str) -> MethodSpec:
    """The method called ``name``; an unknown name lists the known ones."""
    table = methods()
    if name not in table:
        raise KeyError(f"no method {name!r}; known: {', '.join(table)}")
    return table[name]


# ------------------------------------------------------------------------------------------ experiments

def _experiment_names(name: str, seen: tuple = ()) -> Optional[str]:
    if name in seen:
        raise ValueError(f"experiment={name}: its defaults list loops ({' -> '.join((*seen, name))})")
    node = load("experiment", name)
    if "experiment_name" in node:
        return str(node.experiment_name)
    for entry in node.get("defaults") or []:
        if isinstance(entry, str) and entry != "_self_":  # another experiment of this group (or a base/ one)
            found = _experiment_names(entry.split("@")[0], (*seen, name))
            if found is not None:
                return found
    return None


def experiment_folder(name: str) -> str:
    """The folder (under the outputs folder) that ``experiment=<name>`` writes into: the ``experiment_name``
    its config declares, or one of the experiments it builds on declares (``fig1`` -> ``table2``)."""
    folder = _experiment_names(name)
    if folder is None:
        raise ValueError(f"experiment={name} declares no experiment_name (repshift/configs/experiment/{name}.yaml)")
    return folder


def experiments_in(folder: str) -> list[str]:
    """The experiments that write into ``folder`` (``table2`` -> ``["fig1", "table2", "table2_bench"]``)."""
    return [name for name in names("experiment") if experiment_folder(name) == folder]
