"""UMT (Unmasked Teacher) B/16 and L/16 for video-text retrieval, loading the official checkpoints.

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
``vision_proj.X`` -> ``vision_proj.X`` (see :func:`load_official`).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm, Mlp
from torch import Tensor, nn

from repshift.checkpoints import extract_state_dict, load_checkpoint
from repshift.models.umt_text import FUSION_LAYER, TOKENIZER, UMTTextEncoder, bert_config, load_tokenizer

log = logging.getLogger("repshift.models.umt")

#: Vision encoder sizes (UMT ``exp/finetuning/ret_*/{b16,l16}_25m.py``); ``proj_dim`` is vision_proj's output.
VISION_SIZES = {
    "b": dict(embed_dim=768, depth=12, num_heads=12, proj_dim=512),
    "l": dict(embed_dim=1024, depth=24, num_heads=16, proj_dim=768),
}

#: Official checkpoint prefixes -> prefixes in ``UMTVision``'s own state_dict.
VISION_PREFIXES = (
    ("vision_encoder.encoder.", ""),
    ("vision_encoder.pool_norm.", "pool_norm."),
    ("vision_proj.", "vision_proj."),
)
#: Checkpoint entries that UMT's retrieval evaluation does not use: the CLIP teacher and the
#: pre-training decoders kept in released files, the contrastive temperature, BERT's position-id
#: buffer and MLM head (pre-trained files), a QA decoder.
UNUSED_PREFIXES = (
    "clip_teacher.",
    "vision_encoder.clip_decoder.",
    "text_encoder.cls.",
    "text_decoder.",
)
UNUSED_KEYS = ("temp", "text_encoder.embeddings.position_ids")
#: Text-side entries, unused when only the vision encoder is loaded.
TEXT_PREFIXES = ("text_encoder.", "text_proj.", "itm_head.")


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
        """``(input_ids, attention_mask)`` ``[len(texts), max_length]``, padded to max_length as UMT does.

        Texts should already be cleaned the UMT way (``pre_text``: lower case, punctuation removed).
        """
        if self.tokenizer is None:
            raise RuntimeError("this UMTRetrieval has no tokenizer; build it with tokenizer=... (a folder or hub name)")
        batch = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )
        return batch["input_ids"], batch["attention_mask"]


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


# ------------------------------------------------------------------------------------------ loading


def _as_state_dict(checkpoint, unsafe_full_unpickle: bool) -> tuple[dict[str, Tensor], str]:
    if isinstance(checkpoint, (str, os.PathLike)):
        source = str(checkpoint)
        checkpoint = load_checkpoint(checkpoint, unsafe_full_unpickle=unsafe_full_unpickle)
    else:
        source = "the checkpoint dict"
    return extract_state_dict(checkpoint, source=source), source


def _is_unused(key: str) -> bool:
    return key in UNUSED_KEYS or key.startswith(UNUSED_PREFIXES)


def _vision_key(key: str) -> Optional[str]:
    for official, own in VISION_PREFIXES:
        if key.startswith(official):
            return own + key[len(official) :]
    return None


def _load(
    model: nn.Module, mapped: dict[str, tuple[str, Tensor]], unexpected: list[str], source: str
) -> tuple[list[str], list[str]]:
    """Copy ``mapped`` (own key -> (official key, tensor)) into ``model`` after checking every shape."""
    own = model.state_dict()
    for key, (official, tensor) in mapped.items():
        if key not in own:
            unexpected.append(official)
        elif own[key].shape != tensor.shape:
            raise ValueError(
                f"{source}: {official} has shape {tuple(tensor.shape)} but the model expects "
                f"{tuple(own[key].shape)} (for {key} of {type(model).__name__}); is it the same UMT size (B/L)?"
            )
    values = {key: tensor for key, (_, tensor) in mapped.items() if key in own}
    result = model.load_state_dict(values, strict=False)
    missing = sorted(result.missing_keys)
    if missing or unexpected:
        log.warning("%s: %d model keys missing, %d checkpoint keys unexpected", source, len(missing), len(unexpected))
    return missing, sorted(unexpected)


def load_official(
    model: UMTVision | UMTRetrieval, checkpoint, *, unsafe_full_unpickle: bool = False
) -> tuple[list[str], list[str]]:
    """Load the vision part of an official UMT retrieval checkpoint into ``model``.

    A :class:`UMTRetrieval` ``model`` gets the whole checkpoint (:func:`load_official_retrieval`).

    ``checkpoint``: a path (read by :func:`repshift.checkpoints.load_checkpoint`, no full unpickle
    unless asked) or an already loaded ``{"model": state_dict}`` / state_dict. The keys
    ``vision_encoder.encoder.*``, ``vision_encoder.pool_norm.*`` and ``vision_proj.*`` are mapped
    one to one; a shape that differs raises ``ValueError`` naming the key and both shapes.
    Returns ``(missing, unexpected)``: model keys the checkpoint lacks, and checkpoint keys that fit
    nowhere, leaving out the known unused ones (text side, CLIP teacher/decoders, ``temp``).
    """
    if isinstance(model, UMTRetrieval):
        return load_official_retrieval(model, checkpoint, unsafe_full_unpickle=unsafe_full_unpickle)
    state, source = _as_state_dict(checkpoint, unsafe_full_unpickle)
    mapped, unexpected = {}, []
    for key, tensor in state.items():
        own = _vision_key(key)
        if own is not None:
            mapped[own] = (key, tensor)
        elif not (_is_unused(key) or key.startswith(TEXT_PREFIXES)):
            unexpected.append(key)
    return _load(model, mapped, unexpected, source)


def load_official_retrieval(
    model: UMTRetrieval, checkpoint, *, unsafe_full_unpickle: bool = False
) -> tuple[list[str], list[str]]:
    """Load a whole official UMT retrieval checkpoint (vision + text) into a :class:`UMTRetrieval`.

    As :func:`load_official`, plus ``text_encoder.*``, ``text_proj.*`` and ``itm_head.*``; a
    pre-trained file's ``text_encoder.bert.X`` is read as ``text_encoder.X`` (what UMT does for
    zero-shot evaluation). Returns ``(missing, unexpected)`` over the whole model.
    """
    state, source = _as_state_dict(checkpoint, unsafe_full_unpickle)
    mapped, unexpected = {}, []
    for key, tensor in state.items():
        own = _vision_key(key)
        if own is not None:
            mapped["vision." + own] = (key, tensor)
            continue
        if key.startswith("text_encoder.bert."):
            own = "text_encoder." + key[len("text_encoder.bert.") :]
        else:
            own = key
        if _is_unused(own):
            continue
        if own.startswith(TEXT_PREFIXES):
            mapped[own] = (key, tensor)
        else:
            unexpected.append(key)
    return _load(model, mapped, unexpected, source)


# ------------------------------------------------------------------------------------------ config entry


#: Keys a model config (``repshift/configs/model/umt_*.yaml``) may hold.
CONFIG_KEYS = frozenset(
    ("family", "name", "size", "num_frames", "part", "pretrained", "checkpoint", "unsafe_full_unpickle", "tokenizer",
     "vision", "text")
)


#: One buildable part of a UMT model: ``make(size, num_frames, vision_overrides, config) -> model`` and the
#: loader of an official checkpoint into it (returning ``(missing, unexpected)``).
Part = tuple[Callable[[str, int, dict, Mapping[str, Any]], nn.Module], Callable[..., tuple[list[str], list[str]]]]


def build_part(config: Mapping[str, Any], parts: Mapping[str, Part], *, default_part: str, what: str,
               config_keys: frozenset = CONFIG_KEYS) -> tuple[nn.Module, dict]:
    """``(model, weights)`` of ``parts[config.part]``, as ``repshift.models.build_model`` returns them.

    Shared by the UMT builders (retrieval here, QA in :mod:`repshift.models.umt_qa`). With ``checkpoint``
    set, a checkpoint key the model does not use, or a model key the checkpoint lacks, is an error: a
    partly loaded model would evaluate silently wrong.
    """
    unknown = set(config) - config_keys
    if unknown:
        raise ValueError(f"unknown {what} model config keys {sorted(unknown)}; known: {sorted(config_keys)}")
    if config.get("pretrained"):
        raise ValueError(
            "UMT has no weights on a hub: set model.pretrained=false and pass an official file "
            "with model.checkpoint=..."
        )
    size = config.get("size", "b")
    part = config.get("part", default_part)
    if part not in parts:
        raise ValueError(f"model.part must be one of {sorted(parts)} for a {what} model, got {part!r}")
    make, loader = parts[part]
    model = make(size, int(config.get("num_frames", 12)), dict(config.get("vision") or {}), config)
    checkpoint = config.get("checkpoint")
    if not checkpoint:
        return model, {"real": False, "source": "random-init"}
    missing, unexpected = loader(model, checkpoint, unsafe_full_unpickle=bool(config.get("unsafe_full_unpickle")))
    if missing or unexpected:
        raise RuntimeError(
            f"model.checkpoint={checkpoint} does not fit {what} size {size.upper()} (part {part}): "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
        )
    return model, {"real": True, "source": f"file:{os.path.abspath(checkpoint)}"}


def build(config: Mapping[str, Any]) -> tuple[nn.Module, dict]:
    """A UMT retrieval model config -> ``(model, weights)`` (:func:`build_part`).

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
