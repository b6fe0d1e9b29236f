"""repshift: Representation Shift token pruning for timm ViTs, with FlashAttention kept on.

    import timm, repshift
    model = timm.create_model("deit_small_patch16_224")
    repshift.patch(model, metric="l2", site="mlp", layers=(0, 3, 6), ratio=0.2, attention="sdpa")
    logits = model(images)
    model.repshift.tokens   # tokens entering each block in the last forward
"""
from __future__ import annotations

from torch import Tensor

from repshift.patch import is_patched, patch, record_scores, unpatch

__all__ = ["patch", "unpatch", "is_patched", "representation_shift", "attention_scores"]
__version__ = "0.1.0"


def representation_shift(model, images: Tensor, metric: str = "l2", site: str = "mlp", reading: str = "literal") -> Tensor:
    """Representation shift of every token at every block of an unpatched forward: ``[B, depth, N]``.

    ``metric`` is the distance (l2, l1, cos); ``site`` the operation it spans (attn, mlp, block);
    ``reading`` how ``D(F(x), x)`` is read (literal, update, normed: see ``repshift.patch.base.Branch``).
    Prefix tokens (class, distillation, registers) are included at the front of ``N``.
    """
    if metric not in ("l2", "l1", "cos"):
        raise ValueError(f"representation shift uses metric l2, l1 or cos; got {metric!r}")
    return record_scores(model, images, metric=metric, site=site, reading=reading)


def attention_scores(model, images: Tensor, metric: str = "attn_cls") -> Tensor:
    """Attention-based scores (Eq. 2 ``attn_cls`` / Eq. 3 ``attn_mean``) of every block: ``[B, depth, N]``."""
    if metric not in ("attn", "attn_cls", "attn_mean"):
        raise ValueError(f"attention scores use metric attn, attn_cls or attn_mean; got {metric!r}")
    return record_scores(model, images, metric=metric)
