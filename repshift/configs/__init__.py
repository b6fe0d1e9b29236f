"""The suite's Hydra configs, shipped inside the package so a plain ``pip install`` finds them.

One loader for every entry point (the runner, reports, the data checker, scripts and tests):
:data:`CONFIG_DIR` is the folder, :func:`compose` the composed run config as ``python -m repshift.run``
sees it, :func:`load` one config file of a group.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent


def register_resolvers() -> None:
    """The resolvers the configs use before Hydra is set up (``${cwd:}``: the launch directory)."""
    if not OmegaConf.has_resolver("cwd"):
        OmegaConf.register_new_resolver("cwd", os.getcwd)


def names(group: str) -> list[str]:
    """The config names of a group (``model`` -> ``["deit_b", "deit_s", ...]``)."""
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
