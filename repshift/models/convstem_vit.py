"""A ViT with a small convolutional stem, registered with timm (``vit_convstem_tiny``).

A from-scratch ViT with a linear 16x16 patch embedding needs far more optimisation steps than a
CPU demo can afford before it learns anything on ShapeBench: a timm ViT (width 64, 7 blocks,
2 heads) kept its training loss at ln 8 (chance) for 500 steps of batch 64, and likewise with JAX
initialisation, with batch 16 for 750 steps, and even on a variant without distractor strokes
(measurements in docs/reproduction.md). Four stride-2 3x3 convolutions
in front ("early convolutions", Xiao et al., NeurIPS 2021) make it learnable in a CPU hour and
still produce a 14x14 grid of tokens at 224 input, one per 16x16 patch, plus a class token:
everything repshift does to a DeiT (scoring, pruning, masks per patch) applies unchanged.
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

from timm.layers import HybridEmbed
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer
from torch import nn


def conv_stem(channels: Sequence[int] = (16, 32, 64, 96), in_chans: int = 3) -> nn.Sequential:
    """Stride-2 conv + BN + ReLU per entry of ``channels``: 4 entries downsample by 16."""
    layers: list[nn.Module] = []
    for out in channels:
        layers += [nn.Conv2d(in_chans, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        in_chans = out
    return nn.Sequential(*layers)


@register_model
def vit_convstem_tiny(pretrained: bool = False, stem_channels: Sequence[int] = (16, 32, 64, 96), **kwargs) -> VisionTransformer:
    if pretrained:
        raise ValueError("vit_convstem_tiny has no pretrained weights; train it (task=train) or pass model.checkpoint")
    # timm's factory also passes its own bookkeeping (pretrained_cfg, cache_dir, ...)
    args = dict(img_size=224, embed_dim=64, depth=8, num_heads=2, num_classes=8)
    args.update({k: v for k, v in kwargs.items() if not k.startswith(("pretrained_cfg", "cache_dir"))})
    embed = partial(HybridEmbed, backbone=conv_stem(tuple(stem_channels), kwargs.get("in_chans", 3)))
    return VisionTransformer(patch_size=1, embed_layer=embed, **args)
