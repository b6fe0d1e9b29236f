"""Attention kernels behind one call, and a record of which kernel actually ran.

``q``, ``k``, ``v`` are ``[B, H, N, head_dim]`` (timm's layout after splitting heads); every
function returns the attention output merged back to ``[B, N, H * head_dim]``.

- ``eager``: the map ``softmax(q kᵀ / √d)`` is materialised (the paper's "Attn" setting).
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``; on CUDA the FlashAttention
  kernel is put first in the priority list, so it runs whenever dtype and shape allow it.
- ``flash_attn``: the flash-attn package (fp16/bf16 CUDA tensors only).

``key_bias`` ``[B, N]`` (optional) is added to every query's logit for key ``j``: token merging's
proportional attention, ``softmax(q kᵀ · scale + log size) v`` (:mod:`repshift.merge`). SDPA takes it as a
float ``attn_mask``, which its FlashAttention kernel on CUDA cannot: there the memory-efficient kernel runs
(on the CPU, PyTorch's CPU flash kernel takes masks); the flash-attn package has no per-key bias, so it
refuses one. :func:`record_kernels` labels a kernel that received a bias ``<kernel>+bias``.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

BACKENDS = ("sdpa", "flash_attn", "eager")

# Recent PyTorch prefers cuDNN attention on Hopper; the paper's claim is about FlashAttention,
# so FlashAttention is asked for first and the others remain as fallbacks.
_FLASH_FIRST = [
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.MATH,
]


def check_backend(backend: str) -> None:
    """Fail early, with the fix, for an unknown backend or a missing flash-attn package."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")
    if backend == "flash_attn":
        _flash_attn_func()


def _flash_attn_func() -> Callable:
    try:
        from flash_attn import flash_attn_func
    except ImportError as error:
        raise ImportError(
            "attention='flash_attn' needs the flash-attn package, which is not installed "
            "(pip install 'repshift[flash]' on a CUDA machine). attention='sdpa' runs PyTorch's "
            "own FlashAttention kernel on CUDA without it."
        ) from error
    return flash_attn_func


def _merge_heads(out: Tensor) -> Tensor:
    batch, heads, tokens, head_dim = out.shape
    return out.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


def _key_mask(key_bias: Tensor, like: Tensor) -> Tensor:
    """``[B, N]`` per-key bias -> a float mask ``[B, 1, 1, N]`` that broadcasts over heads and queries."""
    return key_bias[:, None, None, :].to(like.dtype)


def attention_map(q: Tensor, k: Tensor, scale: float, dropout_p: float = 0.0) -> Tensor:
    """The softmax attention probabilities ``[B, H, N, N]`` (queries on dim 2)."""
    probs = ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    return F.dropout(probs, p=dropout_p) if dropout_p > 0 else probs


def attend_with_map(q: Tensor, k: Tensor, v: Tensor, scale: float, dropout_p: float = 0.0,
                    key_bias: Optional[Tensor] = None):
    """Eager attention that also returns a probability map: ``(out, probs)``.

    Without ``key_bias`` ``probs`` are the ones ``out`` used. With it, ``out`` uses the biased softmax and
    ``probs`` stay the **unbiased** ones, as vid-TLDR scores saliency from the map before its size bias.
    """
    if key_bias is None:
        probs = attention_map(q, k, scale, dropout_p)
        return _merge_heads(probs @ v), probs
    logits = (q * scale) @ k.transpose(-2, -1)
    used = (logits + _key_mask(key_bias, logits)).softmax(dim=-1)
    if dropout_p > 0:
        used = F.dropout(used, p=dropout_p)
    return _merge_heads(used @ v), logits.softmax(dim=-1)


def attend(q: Tensor, k: Tensor, v: Tensor, backend: str, scale: float, dropout_p: float = 0.0,
           key_bias: Optional[Tensor] = None) -> Tensor:
    """Attention output ``[B, N, C]`` through ``backend``; ``key_bias`` ``[B, N]`` is added to the logits per key."""
    if key_bias is not None:
        if backend == "sdpa":
            mask = _key_mask(key_bias, q)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
            return _merge_heads(out)
        if backend == "eager":
            return attend_with_map(q, k, v, scale, dropout_p, key_bias)[0]
        if backend == "flash_attn":
            raise ValueError(
                "attention='flash_attn' has no per-key bias, which proportional attention needs: use attention='sdpa' "
                "(the bias runs on its memory-efficient kernel) or merge without proportional attention"
            )
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")
    if backend == "sdpa":
        # SDPA's default scale is 1/sqrt(head_dim); passing timm's own keeps custom head dims exact.
        return _merge_heads(F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale))
    if backend == "eager":
        return attend_with_map(q, k, v, scale, dropout_p)[0]
    if backend == "flash_attn":
        if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16) or q.shape[-1] > 256:
            raise RuntimeError(
                "attention='flash_attn' runs on CUDA fp16/bf16 tensors with head_dim <= 256; got "
                f"{q.dtype} on {q.device} with head_dim {q.shape[-1]}. Run under torch.autocast or "
                "use attention='sdpa'."
            )
        out = _flash_attn_func()(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_p, softmax_scale=scale
        )
        return out.flatten(2)
    raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")


def kernel_preference(backend: str, device: torch.device):
    """Context that makes SDPA try FlashAttention first on CUDA (a no-op elsewhere)."""
    if backend == "sdpa" and device.type == "cuda":
        return sdpa_kernel(_FLASH_FIRST, set_priority=True)
    return contextlib.nullcontext()


# aten op name -> readable kernel label; the math fallback of SDPA shows up as _safe_softmax.
_KERNEL_OPS = {
    "_scaled_dot_product_flash_attention_for_cpu": "sdpa:flash(cpu)",
    "_scaled_dot_product_flash_attention": "sdpa:flash",
    "_scaled_dot_product_efficient_attention": "sdpa:efficient",
    "_scaled_dot_product_cudnn_attention": "sdpa:cudnn",
    "_scaled_dot_product_fused_attention_overrideable": "sdpa:overrideable",
    "_safe_softmax": "sdpa:math",
    "_flash_attn_forward": "flash_attn",
    "_softmax": "eager",
}


class _KernelRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.kernels: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in _KERNEL_OPS:
            label = _KERNEL_OPS[name]
            # A fused SDPA kernel gets the mask as a tensor after q, k, v (positional or attn_mask=...).
            if name.startswith("_scaled_dot_product") and any(
                isinstance(a, torch.Tensor) for a in (*args[3:], *(kwargs or {}).values())
            ):
                label += "+bias"
            self.kernels.add(label)
        return func(*args, **(kwargs or {}))


def record_kernels(fn: Callable, *args, **kwargs) -> tuple[list[str], object]:
    """Run ``fn`` once and return ``(sorted attention-kernel labels that ran, fn's result)``."""
    # Under inference mode, composite ops such as SDPA reach the recorder before they are split
    # into the backend kernel, so the run is made in plain no-grad mode.
    with torch.inference_mode(False), torch.no_grad(), _KernelRecorder() as recorder:
        result = fn(*args, **kwargs)
    return sorted(recorder.kernels), result
