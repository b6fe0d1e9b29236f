"""UMT (Unmasked Teacher) B/16 and L/16 for video-text retrieval (official checkpoints: :mod:`repshift.models.umt_weights`).

Vision encoder (``UMTVision``), as in UMT's multi-modality ViT:

- ``patch_embed.proj``: Conv3d 3 -> C with kernel = stride = (1, 16, 16), i.e. each frame is
  patchified on its own; tokens are ordered time-major, token ``t * 196 + p`` is patch ``p`` of
  frame ``t``, and there is no class token;
- a fixed 1-D sinusoidal table over the ``T * 196`` flat positions, added once; it is a
  non-persistent buffer, so it is not in the state_dict (UMT's checkpoints do not hold it either);
- pre-norm blocks ``x1 = x + attn(norm1(x)); x2 = x1 + mlp(norm2(x1))``, LayerNorm eps 1e-6,
  attention with a bias-free ``qkv`` plus separate ``q_bias``/``v_bias`` (no key bias), exact GELU,
  no layer scale; a final ``norm``;
- per-frame pooling: mean over the frame's tokens -> ``pool_norm`` -> ``vision_proj`` (UMT's
  ``keep_temporal=True``); ``keep_temporal=False`` is vid-TLDR's global pooling instead: one unweighted mean
  over all the clip's (remaining) tokens -> ``pool_norm`` -> ``vision_proj``, ``[B, 1, D]``.

Token provenance: the encoder carries ``frame_ids`` ``[B, N]`` (long; the frame of each token)
beside the tokens. A pruning adapter that drops tokens gathers ``frame_ids`` with the same indices,
and pooling then averages, per frame, exactly the tokens of that frame that are still present.
**A frame that has lost all its tokens** gets the mean of all the clip's remaining tokens (the
clip-level mean) in place of its own mean. It is not dropped, so ``frame_embeddings`` keep their
``[B, T, D]`` shape, and it adds no video-independent vector to the frame-averaged similarity.

The model is for evaluation: no dropout or drop-path (UMT's are inactive at eval).

Hook points for adapters: ``model.blocks`` (an ``nn.ModuleList`` of :class:`Block`), each with
``attn`` (:class:`Attention`: ``qkv_heads`` -> q, k, v ``[B, H, N, hd]``, then
``scaled_dot_product_attention``, then ``proj``) and ``mlp``; ``model.run_blocks(x, frame_ids)``
is the block loop an adapter can replace.

State-dict keys of ``UMTVision`` are the official ones with the prefixes removed:
``vision_encoder.encoder.X`` -> ``X``, ``vision_encoder.pool_norm.X`` -> ``pool_norm.X``,
``vision_proj.X`` -> ``vision_proj.X``; :mod:`repshift.models.umt_weights` reads the official files.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm, Mlp
from torch import Tensor, nn

from repshift.models.umt_text import FUSION_LAYER, TOKENIZER, UMTTextEncoder, bert_config, load_tokenizer, tokenize
from repshift.models.umt_weights import build_part, load_official, load_official_retrieval


#: Vision encoder sizes (UMT ``exp/finetuning/ret_*/{b16,l16}_25m.py``); ``proj_dim`` is vision_proj's output.
VISION_SIZES = {
    "b": dict(embed_dim=768, depth=12, num_heads=12, proj_dim=512),
    "l": dict(embed_dim=1024, depth=24, num_heads=16, proj_dim=768),
}

# ------------------------------------------------------------------------------------------ vision


def sinusoid_table(num_positions: int, dim: int) -> Tensor:
    """``[num_positions, dim]`` float32: even dims ``sin(pos / 10000^(2*(j//2)/dim))``, odd dims ``cos``.

    Computed in float64, as UMT does, then rounded to float32.
    """
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    exponent = 2 * (torch.arange(dim, dtype=torch.float64) // 2) / dim
    angle = position / torch.pow(10000.0, exponent)
    table = torch.where(torch.arange(dim) % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.to(torch.float32)


class Attention(nn.Module):
    """Multi-head self-attention with a bias-free ``qkv``, a query bias and a value bias (no key bias)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``q, k, v`` each ``[B, H, N, head_dim]`` (unscaled)."""
        batch, tokens, dim = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def merge_heads(self, out: Tensor) -> Tensor:
        """``[B, H, N, head_dim]`` -> ``proj`` of ``[B, N, C]``."""
        batch, heads, tokens, head_dim = out.shape
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, heads * head_dim))

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv_heads(x)
        return self.merge_heads(F.scaled_dot_product_attention(q, k, v, scale=self.scale))


class Block(nn.Module):
    """Pre-norm transformer block: ``x1 = x + attn(norm1(x)); x2 = x1 + mlp(norm2(x1))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: Tensor) -> Tensor:
        x1 = x + self.attn(self.norm1(x))
        return x1 + self.mlp(self.norm2(x1))


class PatchEmbed3d(nn.Module):
    """Tubelet-1 Conv3d patchify: ``[B, 3, T, H, W]`` -> ``[B, T * (H/16) * (W/16), C]`` (time-major)."""

    def __init__(self, img_size: int, patch_size: int, embed_dim: int, tubelet_size: int = 1):
        super().__init__()
        self.img_size = img_size
        self.patches_per_frame = (img_size // patch_size) ** 2
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(3, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, video: Tensor) -> Tensor:
        return self.proj(video).flatten(2).transpose(1, 2)


class UMTVision(nn.Module):
    """UMT's video encoder with per-frame pooling; ``encode(video)`` -> ``(tokens, frame_embeddings)``."""

    def __init__(
        self,
        *,
        embed_dim: int,
        depth: int,
        num_heads: int,
        proj_dim: int,
        num_frames: int = 12,
        img_size: int = 224,
        patch_size: int = 16,
        mlp_ratio: float = 4.0,
        pooled: bool = True,
        keep_temporal: bool = True,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        # True: one pooled vector per frame (UMT); False: one per clip, the mean of all tokens (vid-TLDR).
        self.keep_temporal = keep_temporal
        self.num_frames = num_frames
        self.patch_embed = PatchEmbed3d(img_size, patch_size, embed_dim)
        self.register_buffer(
            "pos_embed",
            sinusoid_table(num_frames * self.patch_embed.patches_per_frame, embed_dim)[None],
            persistent=False,
        )
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = LayerNorm(embed_dim, eps=1e-6)
        # The retrieval pooling head; UMT's QA model has none (it reads the tokens only), so pooled=False
        # leaves these keys out of the state_dict as the QA checkpoints do.
        if pooled:
            self.pool_norm = LayerNorm(embed_dim, eps=1e-6)
            self.vision_proj = nn.Linear(embed_dim, proj_dim)

    @property
    def patches_per_frame(self) -> int:
        return self.patch_embed.patches_per_frame

    def embed(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """Patch tokens with positions ``[B, T*P, C]`` and their frame ids ``[B, T*P]``."""
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be [B, T, 3, H, W]; got shape {tuple(video.shape)}")
        size = self.patch_embed.img_size
        if video.shape[-2:] != (size, size):
            raise ValueError(f"UMT takes {size}x{size} frames; got {video.shape[-2]}x{video.shape[-1]}")
        batch, frames = video.shape[:2]
        x = self.patch_embed(video.transpose(1, 2))  # Conv3d wants [B, 3, T, H, W]
        if x.shape[1] == self.pos_embed.shape[1]:
            pos = self.pos_embed
        else:  # another clip length: the table is analytic, so build the one that fits
            pos = sinusoid_table(x.shape[1], self.embed_dim).to(x.device)[None]
        x = x + pos.to(x.dtype)
        frame_ids = torch.arange(frames, device=x.device).repeat_interleave(self.patches_per_frame)
        return x, frame_ids.expand(batch, -1)

    def run_blocks(self, x: Tensor, frame_ids: Tensor) -> tuple[Tensor, Tensor]:
        """The block loop; an adapter that drops tokens gathers ``frame_ids`` along with ``x``."""
        for block in self.blocks:
            x = block(x)
        return x, frame_ids

    def forward_features(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """Normed tokens ``[B, N, C]`` and their frame ids ``[B, N]``."""
        x, frame_ids = self.run_blocks(*self.embed(video))
        return self.norm(x), frame_ids

    def pool(self, tokens: Tensor, frame_ids: Tensor, num_frames: int) -> Tensor:
        """``vision_proj(pool_norm(per-frame mean))`` ``[B, T, D]``, not normalised; with ``keep_temporal=False``
        ``vision_proj(pool_norm(mean of all tokens))`` ``[B, 1, D]``.

        A frame with no token left is given the mean of all the clip's tokens (see the module doc).
        Sums and counts are taken in float32, so fp16 activations lose no precision in the mean.
        """
        batch, _, width = tokens.shape
        values = tokens.float()
        if not self.keep_temporal:
            return self.vision_proj(self.pool_norm(values.mean(dim=1, keepdim=True).to(tokens.dtype)))
        sums = values.new_zeros(batch, num_frames, width).scatter_add_(
            1, frame_ids[..., None].expand(-1, -1, width), values
        )
        counts = values.new_zeros(batch, num_frames).scatter_add_(1, frame_ids, values.new_ones(frame_ids.shape))
        frame_means = sums / counts.clamp(min=1)[..., None]
        frame_means = torch.where(counts[..., None] > 0, frame_means, values.mean(dim=1, keepdim=True))
        return self.vision_proj(self.pool_norm(frame_means.to(tokens.dtype)))

    def encode(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """``video [B, T, 3, 224, 224]`` -> ``(tokens [B, N, C], frame_embeddings [B, T, D])`` (``[B, 1, D]``
        with ``keep_temporal=False``)."""
        tokens, frame_ids = self.forward_features(video)
        return tokens, self.pool(tokens, frame_ids, video.shape[1])

    def forward(self, video: Tensor) -> tuple[Tensor, Tensor] | Tensor:
        """:meth:`encode`; an encoder without pooling head (``pooled=False``) returns the normed tokens only."""
        if not hasattr(self, "pool_norm"):
            return self.forward_features(video)[0]
        return self.encode(video)


def vision_encoder(size: str = "b", num_frames: int = 12, **overrides) -> UMTVision:
    """UMT-B/16 (``size="b"``) or UMT-L/16 (``"l"``) vision encoder, random weights.

    ``overrides`` replace fields of the size (``embed_dim``, ``depth``, ``num_heads``, ``proj_dim``,
    ``img_size``, ``patch_size``, ``mlp_ratio``), e.g. for tiny test models; ``pooled=False`` builds
    the encoder without the retrieval pooling head (``pool_norm``, ``vision_proj``), as UMT's QA model has it;
    ``keep_temporal=False`` pools the clip into one vector, as vid-TLDR evaluates (model config:
    ``model.vision.keep_temporal=false``).
    """
    if size not in VISION_SIZES:
        raise ValueError(f"unknown UMT size {size!r}; expected one of {sorted(VISION_SIZES)}")
    return UMTVision(num_frames=num_frames, **{**VISION_SIZES[size], **overrides})


# ------------------------------------------------------------------------------------------ retrieval


class UMTRetrieval(nn.Module):
    """UMT retrieval model: vision encoder, BERT text/fusion encoder, ``text_proj`` and ``itm_head``.

    State-dict keys: ``vision.*`` (see :class:`UMTVision`), then the official ``text_encoder.*``,
    ``text_proj.*``, ``itm_head.*``. The contrastive ``temp`` is not kept: evaluation does not use it.
    """

    def __init__(self, vision: UMTVision, text_encoder: UMTTextEncoder, tokenizer=None):
        super().__init__()
        proj_dim = vision.vision_proj.out_features
        text_width = text_encoder.config.hidden_size
        self.vision = vision
        self.text_encoder = text_encoder
        self.text_proj = nn.Linear(text_width, proj_dim)
        self.itm_head = nn.Linear(text_width, 2)
        self.tokenizer = tokenizer

    def encode_video(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """``(video_tokens [B, N, C], frame_feats [B, T, D])``; frame_feats are not normalised."""
        return self.vision.encode(video)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(text_hidden [B, L, Ct], text_feat [B, D])``: text-layer states and ``text_proj`` of [CLS]."""
        text_hidden = self.text_encoder.forward_text(input_ids, attention_mask)
        return text_hidden, self.text_proj(text_hidden[:, 0])

    def itm_logits(self, video_tokens: Tensor, text_hidden: Tensor, text_mask: Tensor) -> Tensor:
        """``itm_head`` on the fused [CLS], ``[B, 2]`` (index 1 = match); every video token is attended."""
        fused = self.text_encoder.forward_fusion(text_hidden, text_mask, video_tokens)
        return self.itm_head(fused[:, 0])

    def itm_scores(self, video_tokens: Tensor, text_hidden: Tensor, text_mask: Tensor) -> Tensor:
        """UMT's re-ranking score ``[B]`` of pair (video b, text b): the match *logit* ``itm_logits[:, 1]``.

        UMT ranks by this raw logit, not by the softmax probability (which would order pairs by
        ``logit1 - logit0`` instead); :meth:`itm_logits` gives both logits.
        """
        return self.itm_logits(video_tokens, text_hidden, text_mask)[:, 1]

    def tokenize(self, texts: Sequence[str], max_length: int) -> tuple[Tensor, Tensor]:
        """``(input_ids, attention_mask)`` ``[len(texts), max_length]`` (:func:`repshift.models.umt_text.tokenize`)."""
        return tokenize(self.tokenizer, texts, max_length, owner=type(self).__name__)


def retrieval_model(
    size: str = "b",
    num_frames: int = 12,
    *,
    vision: Optional[Mapping[str, Any]] = None,
    text: Optional[Mapping[str, Any]] = None,
    tokenizer: Any = None,
) -> UMTRetrieval:
    """UMT-B or UMT-L retrieval model with random weights.

    ``vision`` overrides :func:`vision_encoder` fields; ``text`` overrides BertConfig fields and may
    set ``fusion_layer``. ``tokenizer``: None (none attached), a tokenizer object, ``"tiny"``, or a
    folder / hub name in the HF cache (:func:`repshift.models.umt_text.load_tokenizer`).
    """
    vision_model = vision_encoder(size, num_frames, **dict(vision or {}))
    text_encoder, tokenizer = text_side(size, vision_model, text, tokenizer)
    return UMTRetrieval(vision_model, text_encoder, tokenizer)


def text_side(size: str, vision_model: UMTVision, text: Optional[Mapping[str, Any]], tokenizer: Any):
    """``(text_encoder, tokenizer)`` of a UMT model built around ``vision_model`` (retrieval and QA).

    ``text`` overrides BertConfig fields and may set ``fusion_layer`` (the first layer that cross-attends to the
    video: 9 for B, 19 for L); a tokenizer given by name or folder is loaded for the config's vocabulary.
    """
    text = dict(text or {})
    fusion_layer = text.pop("fusion_layer", FUSION_LAYER[size])
    config = bert_config(size, **text)
    text_encoder = UMTTextEncoder(config, fusion_layer, encoder_width=vision_model.embed_dim)
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer, config.vocab_size)
    return text_encoder, tokenizer


# ------------------------------------------------------------------------------------------ config entry


def build(config: Mapping[str, Any]) -> tuple[nn.Module, dict]:
    """A UMT retrieval model config (``_target_: repshift.models.umt.build``) -> ``(model, weights)``
    (:func:`repshift.models.umt_weights.build_part`).

    ``part: vision`` gives the vision encoder only (benchmarks, GFLOPs), ``part: retrieval`` the whole model.
    """
    def retrieval(size, num_frames, vision, config):
        tokenizer = config.get("tokenizer", TOKENIZER.get(size))
        return retrieval_model(size, num_frames, vision=vision, text=dict(config.get("text") or {}), tokenizer=tokenizer)

    parts = {
        "vision": (lambda size, num_frames, vision, config: vision_encoder(size, num_frames, **vision), load_official),
        "retrieval": (retrieval, load_official_retrieval),
    }
    return build_part(config, parts, default_part="retrieval", what="UMT")
