"""Vision Mamba ViM-T with a middle class token (Zhu et al., ICML 2024), runnable without CUDA.

Registered with timm as ``vim_t_midclstok``: the model that hustvl/Vim registers as
``vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2`` and releases as
``vim_t_midclstok_76p1acc.pth`` (76.1 % top-1). :func:`load_official_checkpoint` loads that file
strictly: every parameter here has the official name and shape.

Architecture (ViM-T: width 192, 24 layers, 16 states)::

    tokens  = 196 patch embeddings with the class token inserted at index 196 // 2 = 98, + pos_embed
    layer i : residual = residual + hidden (fp32; the embeddings at layer 0); hidden = mixer(RMSNorm(residual))
    output  = head(RMSNorm(residual + hidden)[class-token index])

The mixer is "bimamba v2": one shared ``in_proj`` gives ``x, z``; a forward and a backward
direction (the ``*_b`` parameters, run on the reversed sequence) each apply a causal depthwise
conv + SiLU, the input-dependent projections to ``Δ, B, C`` and the selective scan, gated by
SiLU(z); ``out_proj`` maps the mean of the two directions (the backward one reversed back).
The scan and conv run in PyTorch (:mod:`repshift.ops`) or, with ``scan_backend="cuda"``, in the
``mamba_ssm`` / ``causal_conv1d`` kernels.

For token pruning: :meth:`VisionMamba.forward_layers` is the one loop over ``model.layers``
(each layer maps ``(hidden, residual)`` to ``(hidden, residual)``), and the class token's index
travels beside the tokens as a per-sample tensor, so an adapter can override that loop, gather
both streams with :func:`gather_streams` (scan order kept) and the head still reads the class token.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, PatchEmbed, lecun_normal_, trunc_normal_
from timm.models import register_model
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from repshift.checkpoints import extract_state_dict, load_checkpoint
from repshift.ops import BACKENDS, causal_conv1d, selective_scan, tally_macs
from repshift.select import gather_tokens

#: Evaluation preprocessing of hustvl/Vim (``datasets.py``): resize 256 bicubic, centre crop 224.
VIM_DATA_CONFIG = dict(
    input_size=(3, 224, 224), interpolation="bicubic", crop_pct=0.875, crop_mode="center",
    mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, num_classes=1000,
)


class BiMambaMixer(nn.Module):
    """Bidirectional Mamba mixer ("bimamba v2", outputs of the two directions averaged)."""

    def __init__(self, dim: int, *, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: Optional[int] = None, scan_backend: str = "torch"):
        super().__init__()
        self.d_inner = expand * dim
        self.d_state = d_state
        self.dt_rank = dt_rank or math.ceil(dim / 16)
        self.scan_backend = _check_backend(scan_backend)
        self.in_proj = nn.Linear(dim, 2 * self.d_inner, bias=False)
        # Parameter names are the official ones; the ``_b`` set belongs to the backward direction.
        self.conv1d, self.x_proj, self.dt_proj = self._direction_modules(d_conv)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.conv1d_b, self.x_proj_b, self.dt_proj_b = self._direction_modules(d_conv)
        self.A_b_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D_b = nn.Parameter(torch.empty(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False)

    def _direction_modules(self, d_conv: int) -> tuple[nn.Conv1d, nn.Linear, nn.Linear]:
        # The conv's padding is not used (causal_conv1d pads on the left only); it is set so that
        # calling the module itself, as the original slow path does, gives the same first outputs.
        conv = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False)
        dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        return conv, x_proj, dt_proj

    @torch.no_grad()
    def reset_parameters(self, depth: int, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        """Mamba's initialisation: S4D-real ``A``, ``D = 1``, step sizes log-uniform in [dt_min, dt_max]."""
        for dt_proj, A_log, D in ((self.dt_proj, self.A_log, self.D), (self.dt_proj_b, self.A_b_log, self.D_b)):
            bound = self.dt_rank ** -0.5
            dt_proj.weight.uniform_(-bound, bound)
            dt = torch.exp(torch.empty_like(dt_proj.bias).uniform_(math.log(dt_min), math.log(dt_max))).clamp(min=1e-4)
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)
            A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=A_log.dtype)).expand_as(A_log))
            D.fill_(1.0)
        # Residual-branch output scaled by 1/√depth (GPT-2 style), as Vim initialises it.
        nn.init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))
        self.out_proj.weight.div_(math.sqrt(depth))

    def _scan_direction(self, xz: Tensor, conv: nn.Conv1d, x_proj: nn.Linear, dt_proj: nn.Linear,
                        A_log: Tensor, D: Tensor) -> Tensor:
        """One direction on ``xz: (batch, 2·d_inner, length)``; returns ``(batch, d_inner, length)``."""
        x, z = xz.chunk(2, dim=1)
        x = causal_conv1d(x, conv.weight, conv.bias, activation="silu", backend=self.scan_backend)
        dt, B, C = x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # dt_proj's bias goes into the scan as delta_bias (added in fp32 before the softplus), as in the kernel.
        delta = F.linear(dt, dt_proj.weight).transpose(1, 2)
        return selective_scan(
            x, delta, -torch.exp(A_log.float()), B.transpose(1, 2), C.transpose(1, 2), D.float(), z=z,
            delta_bias=dt_proj.bias.float(), delta_softplus=True, backend=self.scan_backend,
        )

    def directional_outputs(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """``(forward, backward)``, each ``(batch, d_inner, length)`` before ``out_proj``.

        ``backward`` is in the order of the reversed sequence (its index 0 is the last token), as
        the kernels return it; ToP-ViM's score reads this tensor.
        """
        xz = self.in_proj(hidden).transpose(1, 2)
        forward = self._scan_direction(xz, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        backward = self._scan_direction(xz.flip(-1), self.conv1d_b, self.x_proj_b, self.dt_proj_b,
                                        self.A_b_log, self.D_b)
        return forward, backward

    def project(self, forward: Tensor, backward: Tensor) -> Tensor:
        """The mixer output ``(batch, length, dim)`` from :meth:`directional_outputs`."""
        return self.out_proj(((forward + backward.flip(-1)) / 2).transpose(1, 2))

    def forward(self, hidden: Tensor) -> Tensor:
        return self.project(*self.directional_outputs(hidden))


class VimBlock(nn.Module):
    """Add → RMSNorm → mixer. Returns ``(mixer output, residual)``; layer 0 gets ``residual=None``."""

    def __init__(self, dim: int, *, norm_eps: float = 1e-5, residual_in_fp32: bool = True, drop_path: float = 0.0,
                 **mixer_args):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.mixer = BiMambaMixer(dim, **mixer_args)
        self.norm = nn.RMSNorm(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, hidden: Tensor, residual: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        residual = hidden if residual is None else residual + self.drop_path(hidden)
        if self.residual_in_fp32:
            residual = residual.float()
        return self.mixer(self.norm(residual.to(self.norm.weight.dtype))), residual


class VisionMamba(nn.Module):
    """ViM with a middle class token; the defaults are ViM-T at 224 (7.15 M parameters)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 192, depth: int = 24, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 norm_eps: float = 1e-5, residual_in_fp32: bool = True, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, scan_backend: str = "torch"):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_position = num_patches // 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        # Vim's schedule: layer i drops its incoming mixer output with rate linspace(0, rate, depth)[i-1].
        rates = [0.0] + [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.layers = nn.ModuleList(
            VimBlock(embed_dim, norm_eps=norm_eps, residual_in_fp32=residual_in_fp32, drop_path=rates[i],
                     d_state=d_state, d_conv=d_conv, expand=expand, scan_backend=scan_backend)
            for i in range(depth)
        )
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm_f = nn.RMSNorm(embed_dim, eps=norm_eps)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        for layer in self.layers:
            layer.mixer.reset_parameters(depth=len(self.layers))

    @property
    def scan_backend(self) -> str:
        return self.layers[0].mixer.scan_backend

    @scan_backend.setter
    def scan_backend(self, backend: str) -> None:
        _check_backend(backend)
        for layer in self.layers:
            layer.mixer.scan_backend = backend

    def embed(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(tokens, cls_index)``: patch tokens with the class token at ``cls_position``, + pos_embed."""
        patches = self.patch_embed(images)
        batch, middle = patches.shape[0], self.cls_position
        tokens = torch.cat([patches[:, :middle], self.cls_token.expand(batch, -1, -1), patches[:, middle:]], dim=1)
        cls_index = torch.full((batch,), middle, dtype=torch.long, device=tokens.device)
        return self.pos_drop(tokens + self.pos_embed), cls_index

    def forward_layers(self, hidden: Tensor, cls_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """All layers: ``(hidden, residual, cls_index)``; the place where an adapter prunes."""
        residual = None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual)
        return hidden, residual, cls_index

    def final_norm(self, hidden: Tensor, residual: Tensor) -> Tensor:
        """The normalised last residual stream, ``(batch, tokens, dim)``."""
        residual = residual + self.drop_path(hidden)
        return self.norm_f(residual.to(self.norm_f.weight.dtype))

    def forward_features(self, images: Tensor) -> Tensor:
        """The class token's final features, ``(batch, dim)``, read at each sample's class-token index."""
        hidden, cls_index = self.embed(images)
        hidden, residual, cls_index = self.forward_layers(hidden, cls_index)
        tokens = self.final_norm(hidden, residual)
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), cls_index]

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        return features if pre_logits else self.head(features)

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(images))


def gather_streams(hidden: Tensor, residual: Tensor, cls_index: Tensor, keep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Keep tokens ``keep: (batch, kept)`` of both streams; returns them and the new class-token index.

    ``keep`` must be sorted ascending (the kept tokens scan in their original order) and hold
    each sample's ``cls_index``; the class token's new index is the number of kept tokens before it.
    """
    return gather_tokens(hidden, keep), gather_tokens(residual, keep), (keep < cls_index[:, None]).sum(dim=1)


# ------------------------------------------------------------------------------------ weights
def load_state_dict_checked(model: nn.Module, state: dict[str, Tensor], *, source: str = "state dict") -> None:
    """``model.load_state_dict(state)``, strict, with errors that name keys and shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise KeyError(f"{source} does not match {type(model).__name__}: missing {_few(missing)}, "
                       f"unexpected {_few(unexpected)}")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise ValueError(f"{source}: {key} has shape {tuple(tensor.shape)} in the checkpoint but "
                             f"{tuple(expected[key].shape)} in the model (check the size arguments, e.g. embed_dim, "
                             "depth, d_state, img_size)")
    model.load_state_dict(state, strict=True)


def load_official_checkpoint(model: VisionMamba, path: str, *, unsafe_full_unpickle: bool = False) -> None:
    """Load hustvl/Vim's ``.pth`` (weights under ``checkpoint["model"]``) strictly into ``model``."""
    loaded = load_checkpoint(path, unsafe_full_unpickle=unsafe_full_unpickle)
    state = extract_state_dict(loaded, source=f"checkpoint {path}")
    load_state_dict_checked(model, state, source=f"checkpoint {path}")


def _few(keys: list[str], limit: int = 5) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"scan_backend={backend!r} is not one of {BACKENDS}")
    return backend


# --------------------------------------------------------------------------------------- MACs
@torch.no_grad()
def count_macs(model: VisionMamba, images: Tensor) -> dict[str, int]:
    """Multiply-accumulates of one forward pass of ``images``, by part.

    ``counted``: what ``torch.utils.flop_counter`` sees, halved: the linear layers, the patch
    embedding and, on the PyTorch path used here, the causal convolutions (``causal_conv``, also
    counted explicitly by :func:`repshift.ops.causal_conv_macs`, which agrees). ``scan``: the
    selective scans, counted by :func:`repshift.ops.scan_macs` (the counter cannot see them).
    ``total = counted + scan``. The PyTorch path is forced for the count (a kernel's cost is
    invisible to the counter) and the model runs in eval mode; pruning adapters are counted at
    the token counts they actually produce.
    """
    backend, was_training = model.scan_backend, model.training
    model.scan_backend = "torch"
    model.eval()
    try:
        with tally_macs() as tally, FlopCounterMode(display=False) as counter:
            model(images)
    finally:
        model.scan_backend = backend
        model.train(was_training)
    counted = counter.get_total_flops() // 2
    return {"counted": counted, "scan": tally.scan, "causal_conv": tally.conv, "total": counted + tally.scan}


# ----------------------------------------------------------------------------------- registry
@register_model
def vim_t_midclstok(pretrained: bool = False, **kwargs) -> VisionMamba:
    """ViM-T with a middle class token, registered by hustvl/Vim as
    ``vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2``.

    Size arguments of :class:`VisionMamba` (``embed_dim``, ``depth``, ``d_state``, ...) can be
    overridden for small test models; the official weights need the defaults.
    """
    if pretrained:
        raise ValueError("vim_t_midclstok has no weights in timm's hub; pass model.checkpoint=/path/to/"
                         "vim_t_midclstok_76p1acc.pth (hustvl/Vim's release) and model.pretrained=false")
    # timm's factory also passes its own bookkeeping (pretrained_cfg, cache_dir, ...)
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith(("pretrained_cfg", "cache_dir"))}
    model = VisionMamba(**kwargs)
    input_size = (model.patch_embed.proj.in_channels, *model.patch_embed.img_size)
    model.pretrained_cfg = model.default_cfg = dict(VIM_DATA_CONFIG, input_size=input_size,
                                                    num_classes=model.num_classes, architecture="vim_t_midclstok")
    return model
