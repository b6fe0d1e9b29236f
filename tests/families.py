"""One tiny random-weight model per host family, and the patch settings the compile, export and AMP tests
run on them: every family and mode, every metric, site and reading at least once (tests/test_compile.py,
tests/test_export.py, tests/test_amp.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import timm
import torch
from hf_towers import make as hf_tower
from omegaconf import OmegaConf
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from repshift.data.shapebench import render
from repshift.data.transforms import eval_transform
from repshift.demo import SHIPPED_CHECKPOINT
from repshift.models import build_model, umt
from repshift.models.vim import VisionMamba
from repshift.select import keep_grid_lines
from support import CONFIGS


def vit(**kwargs) -> nn.Module:
    """A 64x64 DeiT-shaped ViT (class token, 16 patches, 4 blocks)."""
    torch.manual_seed(0)
    args = dict(img_size=64, patch_size=16, embed_dim=32, depth=4, num_heads=2, num_classes=5)
    return timm.models.vision_transformer.VisionTransformer(**{**args, **kwargs}).eval()


def umt_encoder() -> nn.Module:
    """UMT's video encoder with its pooling head: 2 frames of 64x64 (32 tokens), 4 blocks."""
    torch.manual_seed(0)
    return umt.vision_encoder("b", 2, embed_dim=32, depth=4, num_heads=2, proj_dim=8, img_size=64).eval()


def resnet() -> nn.Module:
    """A narrow timm ResNet with one BasicBlock per stage (BatchNorm made non-trivial)."""
    torch.manual_seed(0)
    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10, stem_width=8, channels=(8, 16, 16, 16))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.normal_(module.bias, 0.0, 0.1)
    return model.eval()


def vim() -> nn.Module:
    """Vision Mamba at 64x64: 16 patches and a middle class token, 4 layers of width 16."""
    torch.manual_seed(0)
    return VisionMamba(img_size=64, embed_dim=16, depth=4, d_state=4, num_classes=5).eval()


@dataclass(frozen=True)
class Case:
    """A family's tiny model, a patch setting and the input shape it runs on."""

    build: Callable[[], nn.Module]
    patch: dict
    shape: tuple
    options: dict = field(default_factory=dict)

    def inputs(self, batch: int = 2, seed: int = 0) -> torch.Tensor:
        return torch.randn(batch, *self.shape, generator=torch.Generator().manual_seed(seed))


IMAGE, VIDEO, MAP, HF_IMAGE = (3, 64, 64), (2, 3, 64, 64), (3, 64, 64), (3, 32, 32)
VIT_LAYERS = dict(layers=(0, 1, 2), ratio=0.25)
CASES = {
    # timm ViT: every metric, site, reading and keep; a num schedule; register tokens without a class token.
    "vit-l2-mlp": Case(vit, dict(metric="l2", site="mlp", **VIT_LAYERS), IMAGE),
    "vit-l1-attn-update": Case(vit, dict(metric="l1", site="attn", reading="update", **VIT_LAYERS), IMAGE),
    "vit-cos-block-normed-bottom": Case(vit, dict(metric="cos", site="block", reading="normed", keep="bottom",
                                                  **VIT_LAYERS), IMAGE),
    "vit-attn_cls-eager": Case(vit, dict(metric="attn_cls", attention="eager", **VIT_LAYERS), IMAGE),
    "vit-attn_mean-num": Case(vit, dict(metric="attn_mean", layers=(1, 3), num=(4, 3)), IMAGE),
    "vit-random": Case(vit, dict(metric="random", seed=3, **VIT_LAYERS), IMAGE),
    "vit-static": Case(vit, dict(metric="none", **VIT_LAYERS), IMAGE),
    "vit-registers": Case(lambda: vit(class_token=False, reg_tokens=2, global_pool="avg", init_values=1e-3),
                          dict(metric="l2", site="mlp", reading="normed", **VIT_LAYERS), IMAGE),
    # UMT: pruning and vid-TLDR merging, with and without proportional attention.
    "umt-l2-mlp": Case(umt_encoder, dict(metric="l2", site="mlp", layers=(0, 1, 2), ratio=0.2), VIDEO),
    "umt-attn": Case(umt_encoder, dict(metric="attn", layers=(0, 2), ratio=0.3), VIDEO),
    "umt-merge-entropy": Case(umt_encoder, dict(metric="attn_entropy", site="attn", mode="merge", layers=(0, 1, 2),
                                                num=4), VIDEO),
    "umt-merge-l2-mlp": Case(umt_encoder, dict(metric="l2", site="mlp", mode="merge", layers=(0, 1), ratio=0.25),
                             VIDEO),
    "umt-merge-flash": Case(umt_encoder, dict(metric="l2", site="attn", mode="merge", layers=(0, 1), num=4,
                                              proportional=False), VIDEO),
    # ResNet: line- and token-wise, both sites, the static crop.
    "resnet-line-mlp": Case(resnet, dict(metric="l2", site="mlp", mode="line", layers=(0, 1), num=(2, 1)), MAP),
    "resnet-token-stage": Case(resnet, dict(metric="cos", site="stage", mode="token", layers=(0, 1), num=(2, 1)),
                               MAP),
    "resnet-static": Case(resnet, dict(metric="none", mode="line", layers=(0,), num=(3,)), MAP),
    # ViM: the mixer site under each reading, ToP-ViM's score, the static control.
    "vim-l2": Case(vim, dict(metric="l2", site="mixer", layers=(1, 2), ratio=0.25), IMAGE),
    "vim-cos-update": Case(vim, dict(metric="cos", site="mixer", reading="update", layers=(0, 2), num=(3, 2)),
                           IMAGE),
    "vim-top_vim": Case(vim, dict(metric="top_vim", site="mixer", layers=(1,), ratio=0.3), IMAGE),
    "vim-static": Case(vim, dict(metric="none", site="mixer", layers=(1,), ratio=0.3), IMAGE),
    # Hugging Face towers: ToMe merging (r per layer, proportional attention through SDPA's mask) weighted by the shift.
    "hf-vit-tome-l2": Case(lambda: hf_tower("ViTModel"), dict(metric="l2", site="attn", mode="merge", r=3), HF_IMAGE),
}


def outputs(result) -> tuple[torch.Tensor, ...]:
    """A forward's tensors: UMT's encoder returns ``(tokens, frame embeddings)``, a transformers model a ``ModelOutput``
    (its tensors in order), the others one tensor."""
    if hasattr(result, "to_tuple"):
        return result.to_tuple()
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


def shapebench_vit() -> tuple[nn.Module, torch.Tensor]:
    """The tiny ViT trained on ShapeBench (shipped with the demo, eval mode) and 8 rendered val images, one per
    class: trained weights on real inputs, where kept-token agreement means something."""
    config = OmegaConf.load(CONFIGS / "model" / "vit_shapebench.yaml")
    model, _ = build_model(config.name, checkpoint=str(SHIPPED_CHECKPOINT), kwargs=dict(config.kwargs))
    transform = eval_transform(224, crop_pct=1.0)
    images = torch.stack([transform(render(0, "val", label, 0)[0].convert("RGB")) for label in range(8)])
    return model.eval(), images


def kept_tokens(model, inputs: torch.Tensor, dtype: Optional[torch.dtype]) -> list[set]:
    """Per sample, the tokens a patched model kept in a forward (under autocast to ``dtype`` on the inputs' device,
    or none): original positions for sequences, the (row, column) pairs of the first pruned stage's grid for a
    ResNet (selected again from its recorded score map)."""
    state = model.repshift
    state.record = state.family == "timm-resnet"
    with torch.no_grad(), torch.autocast(inputs.device.type, dtype=dtype, enabled=dtype is not None):
        model(inputs)
    if state.family != "timm-resnet":
        return [set(row.tolist()) for row in state.book["position"]]
    rows, cols = keep_grid_lines(state.recorded[state.layers[0]], state.num[0], state.num[0])
    return [{(r, c) for r in rs.tolist() for c in cs.tolist()} for rs, cs in zip(rows, cols)]


def kept_agreement(a: list[set], b: list[set]) -> float:
    """The share of the kept tokens of ``a`` (per sample sets) that ``b`` kept too."""
    return sum(len(x & y) for x, y in zip(a, b)) / sum(len(x) for x in a)


def low_precision_run(model, inputs: torch.Tensor, dtype: torch.dtype) -> tuple[list[set], list[set], bool]:
    """A patched model's kept tokens in fp32 and under autocast to ``dtype`` (on the inputs' device), and whether
    its predicted classes are the same under both."""
    fp32, low = kept_tokens(model, inputs, None), kept_tokens(model, inputs, dtype)
    with torch.no_grad():
        labels = model(inputs).argmax(1)
        with torch.autocast(inputs.device.type, dtype=dtype):
            same_predictions = torch.equal(model(inputs).argmax(1), labels)
    return fp32, low, same_predictions
