"""UMT's video question answering model (``UMT_QA``), loading the official QA checkpoints.

Three parts, as in UMT's ``models/umt_qa.py``:

- ``vision``: the UMT video encoder without the retrieval pooling head (:func:`repshift.models.umt.vision_encoder`
  with ``pooled=False``); the QA model reads its normed tokens only. ``repshift.patch`` prunes it through
  the model (the UMT adapter serves any model holding a ``UMTVision`` as ``.vision``);
- ``text_encoder``: the question encoder, UMT's BERT (:class:`repshift.models.umt_text.UMTTextEncoder`) run
  through all its layers, the layers from ``fusion_layer`` on (9 for B, 19 for L) cross-attending to every
  video token;
- ``text_decoder``: a BERT language model over the answer (UMT's ``BertLMHeadModel``) with
  ``L - fusion_layer`` layers (3 for B, 5 for L), each with causal self-attention, then cross-attention to
  the question states, then the feed-forward; its prediction head's output matrix *is* its word embedding
  matrix, and the output bias is ``cls.predictions.bias`` (both tied, as transformers ties them).

Answers are not generated: :meth:`UMTQA.rank_answers` ranks a fixed answer list as UMT does (see there).

State-dict keys: ``vision.*`` (:class:`~repshift.models.umt.UMTVision`'s), then the official ``text_encoder.*``,
``text_decoder.bert.*`` and ``text_decoder.cls.predictions.*``. :func:`load_official_qa` maps an official file
onto them (``vision_encoder.encoder.X`` -> ``vision.X``).
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEmbeddings, BertLayer, BertOnlyMLMHead

from repshift.models.umt import UMTVision, _as_state_dict, _load, _vision_key, build_part, text_side, vision_encoder
from repshift.models.umt_text import TOKENIZER, UMTTextEncoder

log = logging.getLogger("repshift.models.umt_qa")

#: UMT's padding-mask convention (``(1 - mask) * -10000`` added to the logits), also for the causal mask.
_MASKED_LOGIT = -10000.0
#: Label value that cross-entropy ignores: UMT sets every padding position of an answer to it.
IGNORE_INDEX = -100

#: Parameters of the model that are the same tensor as another: ``alias -> source`` (own key names).
TIED = {
    "text_decoder.cls.predictions.decoder.weight": "text_decoder.bert.embeddings.word_embeddings.weight",
    "text_decoder.cls.predictions.decoder.bias": "text_decoder.cls.predictions.bias",
}
#: Checkpoint entries a QA evaluation does not use: the CLIP teacher and pre-training decoders kept in released
#: files, the contrastive temperature, BERT's position-id buffers (transformers rebuilds them).
UNUSED_PREFIXES = ("clip_teacher.", "vision_encoder.clip_decoder.")
UNUSED_KEYS = ("temp", "text_encoder.embeddings.position_ids", "text_decoder.bert.embeddings.position_ids")
#: Retrieval heads a *pre-trained* file holds and UMT's QA model deletes (``vision_proj``, ``text_proj``, ``temp``,
#: ``itm_head``; its ViT has no ``pool_norm``). A fine-tuned QA file has none of them.
PRETRAINED_ONLY_PREFIXES = ("vision_encoder.pool_norm.", "vision_proj.", "text_proj.", "itm_head.")
_WORD_EMBEDDINGS = "text_encoder.embeddings.word_embeddings.weight"


class UMTTextDecoder(nn.Module):
    """UMT's answer decoder (a ``BertLMHeadModel`` with cross-attention in every layer).

    ``bert.embeddings``, ``bert.encoder.layer.{i}`` (transformers' ``BertLayer``: causal self-attention,
    cross-attention to the question, feed-forward, each post-LN) and ``cls`` (transformers'
    ``BertOnlyMLMHead``), whose ``predictions.decoder`` weight and bias are tied to the word embeddings and
    to ``predictions.bias``.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        config = copy.deepcopy(config)
        config.is_decoder = True
        config.add_cross_attention = True
        self.config = config
        self.bert = nn.Module()
        self.bert.embeddings = BertEmbeddings(config)
        self.bert.encoder = nn.Module()
        self.bert.encoder.layer = nn.ModuleList(BertLayer(config, layer_idx=i) for i in range(config.num_hidden_layers))
        for layer in self.bert.encoder.layer:
            # the causal mask is passed explicitly (with the padding): the kernel must not add its own
            layer.attention.self.is_causal = False
        self.cls = BertOnlyMLMHead(config)
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight
        self.cls.predictions.decoder.bias = self.cls.predictions.bias

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor], question_states: Tensor,
                question_mask: Tensor) -> Tensor:
        """Next-token logits ``[B, L, vocab]``; position ``i`` sees answer tokens ``0..i`` and the whole question."""
        hidden = self.bert.embeddings(input_ids=input_ids)
        batch, length = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        causal = torch.ones(length, length, device=input_ids.device).tril()
        visible = causal[None, None] * attention_mask[:, None, None, :].to(causal.dtype)
        self_mask = ((1.0 - visible) * _MASKED_LOGIT).to(hidden.dtype)
        cross_mask = ((1.0 - question_mask[:, None, None, :].to(hidden.dtype)) * _MASKED_LOGIT)
        for layer in self.bert.encoder.layer:
            hidden = layer(hidden, attention_mask=self_mask, encoder_hidden_states=question_states,
                           encoder_attention_mask=cross_mask)
        return self.cls(hidden)

    def sequence_loss(self, input_ids: Tensor, attention_mask: Tensor, question_states: Tensor,
                      question_mask: Tensor, pad_token_id: int) -> Tensor:
        """``[B]``: the summed cross-entropy of each answer's tokens after the first (teacher forcing).

        As UMT's decoder computes it: labels are the ids with every padding id set to ``-100`` (ignored),
        the logits at position ``i`` predict the token at ``i + 1``, and the per-token losses are summed.
        """
        logits = self(input_ids, attention_mask, question_states, question_mask)
        labels = input_ids.masked_fill(input_ids == pad_token_id, IGNORE_INDEX)
        losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX,
                                 reduction="none")
        return losses.sum(dim=1)


class UMTQA(nn.Module):
    """UMT video QA: ``encode_video`` -> ``encode_question`` -> ``rank_answers`` over a fixed answer list."""

    def __init__(self, vision: UMTVision, text_encoder: UMTTextEncoder, text_decoder: UMTTextDecoder, tokenizer=None):
        super().__init__()
        if hasattr(vision, "pool_norm"):
            raise ValueError("UMT's QA model reads the video tokens only: build its encoder with pooled=False")
        self.vision = vision
        self.text_encoder = text_encoder
        self.text_decoder = text_decoder
        self.tokenizer = tokenizer

    @property
    def pad_token_id(self) -> int:
        return int(self.text_decoder.config.pad_token_id)

    def encode_video(self, video: Tensor) -> Tensor:
        """``video [B, T, 3, H, W]`` -> normed video tokens ``[B, N, C]`` (fewer than ``T * 196`` when pruned)."""
        return self.vision.forward_features(video)[0]

    def encode_question(self, input_ids: Tensor, attention_mask: Tensor, video_tokens: Tensor) -> Tensor:
        """Question states ``[B, Lq, Ct]``: every BERT layer, the fusion layers cross-attending to all video tokens."""
        hidden = self.text_encoder.forward_text(input_ids, attention_mask)
        return self.text_encoder.forward_fusion(hidden, attention_mask, video_tokens)

    @torch.no_grad()
    def rank_answers(self, question_states: Tensor, question_mask: Tensor, answer_ids: Tensor, answer_mask: Tensor,
                     k: int = 128) -> tuple[Tensor, Tensor]:
        """UMT's answer ranking: ``(candidates [B, k'], scores [B, k'])``, best first, ``k' = min(k, #answers)``.

        ``answer_ids`` ``[A, La]`` is the tokenised answer list (``[CLS] answer [SEP] [SEP]`` padded to
        ``max_a_len``, see :meth:`tokenize_answers`). For each question:

        1. the decoder reads ``[CLS]`` (``answer_ids[0, 0]``, the begin-of-sequence token) and gives a
           distribution over the first answer token; each answer is scored by the probability of its
           first token ``answer_ids[:, 1]``, and the ``k`` best are kept;
        2. each kept answer is re-scored as ``log p(first token) - loss``, ``loss`` being the summed
           cross-entropy of all its tokens after ``[CLS]`` (:meth:`UMTTextDecoder.sequence_loss`), so the
           first token counts twice, as in UMT;
        3. candidates are sorted by that score (UMT's softmax over it does not change the order); the first is
           the prediction. ``scores`` are the re-scored log-likelihoods.
        """
        num_questions = question_states.shape[0]
        num_answers = answer_ids.shape[0]
        k = min(int(k), num_answers)
        start_ids = answer_ids[:1, :1].expand(num_questions, 1)
        first_logits = self.text_decoder(start_ids, None, question_states, question_mask)[:, 0].float()
        first_probs = first_logits.softmax(dim=-1).index_select(1, answer_ids[:, 1])
        top_probs, top_ids = first_probs.topk(k, dim=1)
        candidate_ids = answer_ids[top_ids.reshape(-1)]
        candidate_mask = answer_mask[top_ids.reshape(-1)]
        loss = self.text_decoder.sequence_loss(
            candidate_ids, candidate_mask, question_states.repeat_interleave(k, dim=0),
            question_mask.repeat_interleave(k, dim=0), self.pad_token_id,
        ).view(num_questions, k)
        scores = top_probs.log() - loss
        order = torch.argsort(scores, dim=1, descending=True, stable=True)
        return top_ids.gather(1, order), scores.gather(1, order)

    def tokenize(self, texts: Sequence[str], max_length: int) -> tuple[Tensor, Tensor]:
        """``(input_ids, attention_mask)`` ``[len(texts), max_length]``, padded to ``max_length`` as UMT does."""
        if self.tokenizer is None:
            raise RuntimeError("this UMTQA has no tokenizer; build it with tokenizer=... (a folder or hub name)")
        batch = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length,
                               return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"]

    def tokenize_answers(self, answers: Sequence[str], max_length: int) -> tuple[Tensor, Tensor]:
        """The answer list as UMT feeds it to the decoder: each answer followed by ``" [SEP]"`` (its end of answer)."""
        return self.tokenize([f"{answer} [SEP]" for answer in answers], max_length)


def qa_model(
    size: str = "b",
    num_frames: int = 12,
    *,
    vision: Optional[Mapping[str, Any]] = None,
    text: Optional[Mapping[str, Any]] = None,
    tokenizer: Any = None,
) -> UMTQA:
    """UMT-B or UMT-L QA model with random weights.

    ``vision`` overrides :func:`repshift.models.umt.vision_encoder` fields; ``text`` overrides BertConfig fields
    and may set ``fusion_layer``. The decoder is the same BERT with ``num_hidden_layers - fusion_layer`` layers
    (UMT's ``build_bert_decoder``). ``tokenizer`` as in :func:`repshift.models.umt.retrieval_model`.
    """
    vision_model = vision_encoder(size, num_frames, **{**dict(vision or {}), "pooled": False})
    text_encoder, tokenizer = text_side(size, vision_model, text, tokenizer)
    config = text_encoder.config
    decoder_config = copy.deepcopy(config)
    decoder_config.num_hidden_layers = config.num_hidden_layers - text_encoder.fusion_layer
    text_decoder = UMTTextDecoder(decoder_config)
    return UMTQA(vision_model, text_encoder, text_decoder, tokenizer)


# ------------------------------------------------------------------------------------------ loading


def remap_pretrained(state: Mapping[str, Tensor], fusion_layer: int) -> dict[str, Tensor]:
    """A pre-trained UMT file's keys as UMT's QA fine-tuning reads them (``tasks/shared_utils.py::setup_model``).

    ``text_encoder.bert.X`` becomes ``text_encoder.X`` (every layer), and the decoder is initialised from the
    same weights: the embeddings, the layers from ``fusion_layer`` on renumbered from 0
    (``text_encoder.bert.encoder.layer.{fusion_layer + i}`` -> ``text_decoder.bert.encoder.layer.{i}``), and the
    masked-LM head ``text_encoder.cls.*`` -> ``text_decoder.cls.*``. Other keys are kept as they are.
    """
    out: dict[str, Tensor] = {}
    for key, tensor in state.items():
        if key.startswith("text_encoder.bert."):
            rest = key[len("text_encoder.bert."):]
            out["text_encoder." + rest] = tensor
            if rest.startswith("encoder.layer."):
                number, tail = rest[len("encoder.layer."):].split(".", 1)
                if int(number) >= fusion_layer:
                    out[f"text_decoder.bert.encoder.layer.{int(number) - fusion_layer}.{tail}"] = tensor
            else:
                out["text_decoder.bert." + rest] = tensor
        elif key.startswith("text_encoder.cls."):
            out["text_decoder." + key[len("text_encoder."):]] = tensor
        else:
            out[key] = tensor
    return out


def _check_text_width(state: Mapping[str, Tensor], model: UMTQA, source: str) -> None:
    width = model.text_encoder.config.hidden_size
    found = state.get(_WORD_EMBEDDINGS)
    if found is not None and found.ndim == 2 and found.shape[1] != width:
        names = {768: "BERT-base (UMT-B)", 1024: "BERT-large (UMT-L)"}
        raise ValueError(
            f"{source}: {_WORD_EMBEDDINGS} is {found.shape[1]} wide, {names.get(found.shape[1], 'another BERT')}, but "
            f"the model's text encoder is {width} wide, {names.get(width, 'a custom size')}: build the size that "
            "matches the file (model=umt_b_qa or umt_l_qa). UMT's own qa_msrvtt/b16_25m.py config builds an "
            "L/16 + BERT-large model, so check which size a 'b16' QA file really holds."
        )


def load_official_qa(model: UMTQA, checkpoint, *, unsafe_full_unpickle: bool = False) -> tuple[list[str], list[str]]:
    """Load an official UMT QA checkpoint (or a pre-trained one, remapped) into ``model``.

    ``checkpoint``: a path (read by :func:`repshift.checkpoints.load_checkpoint`, no full unpickle unless asked)
    or an already loaded ``{"model": state_dict}`` / state_dict. A fine-tuned QA file's keys map one to one
    (``vision_encoder.encoder.X`` -> ``vision.X``; ``text_encoder.*``, ``text_decoder.*`` as they are); a file
    with ``text_encoder.bert.*`` keys and no decoder is a pre-trained one and is read through
    :func:`remap_pretrained`, its retrieval heads ignored. A text width that is not the model's, or any other
    shape that differs, raises ``ValueError`` naming the key. The tied decoder matrix and bias may be given
    under either name; two different tensors under the two names are an error (this model cannot hold both).
    Returns ``(missing, unexpected)``: model keys the file lacks, and file keys that fit nowhere (leaving out
    the known unused ones: CLIP teacher and decoders, ``temp``, position-id buffers).
    """
    state, source = _as_state_dict(checkpoint, unsafe_full_unpickle)
    pretrained = any(k.startswith("text_encoder.bert.") for k in state) and not any(
        k.startswith("text_decoder.") for k in state)
    if pretrained:
        state = remap_pretrained(state, model.text_encoder.fusion_layer)
    _check_text_width(state, model, source)
    mapped: dict[str, tuple[str, Tensor]] = {}
    unexpected: list[str] = []
    for key, tensor in state.items():
        if key in UNUSED_KEYS or key.startswith(UNUSED_PREFIXES):
            continue
        if pretrained and key.startswith(PRETRAINED_ONLY_PREFIXES):
            continue
        own = _vision_key(key)
        if own is not None:
            mapped["vision." + own] = (key, tensor)
        elif key.startswith(("text_encoder.", "text_decoder.")):
            mapped[key] = (key, tensor)
        else:
            unexpected.append(key)
    for alias, origin in TIED.items():
        if alias not in mapped:
            continue
        if origin in mapped:
            if not torch.equal(mapped[alias][1], mapped[origin][1]):
                raise ValueError(f"{source}: {alias} differs from {origin}; UMT ties them and so does this model")
            del mapped[alias]
        else:  # only the alias in the file: load the shared tensor through its own name
            mapped[origin] = mapped.pop(alias)
    missing, unexpected = _load(model, mapped, unexpected, source)
    return [key for key in missing if key not in TIED], unexpected


# ------------------------------------------------------------------------------------------ config entry

#: Keys a QA model config (``repshift/configs/model/umt_*_qa.yaml``) may hold.
CONFIG_KEYS = frozenset(
    ("name", "size", "num_frames", "part", "pretrained", "checkpoint", "unsafe_full_unpickle", "tokenizer",
     "vision", "text")
)


def _load_vision_only(model: UMTVision, checkpoint, *, unsafe_full_unpickle: bool = False):
    """The encoder of a QA file: ``vision_encoder.encoder.*``; the text side is expected and ignored."""
    state, source = _as_state_dict(checkpoint, unsafe_full_unpickle)
    mapped, unexpected = {}, []
    for key, tensor in state.items():
        own = _vision_key(key)
        if own is not None:
            mapped[own] = (key, tensor)
        elif not (key in UNUSED_KEYS or key.startswith(UNUSED_PREFIXES + ("text_encoder.", "text_decoder."))):
            unexpected.append(key)
    return _load(model, mapped, unexpected, source)


def build(config: Mapping[str, Any]) -> tuple[nn.Module, dict]:
    """A QA model config (``family: umt_qa``) -> ``(model, weights)`` (:func:`repshift.models.umt.build_part`).

    ``part: qa`` gives the whole model, ``part: vision`` its encoder only (no pooling head: benchmarks, GFLOPs).
    """
    def qa(size, num_frames, vision, config):
        tokenizer = config.get("tokenizer", TOKENIZER.get(size))
        return qa_model(size, num_frames, vision=vision, text=dict(config.get("text") or {}), tokenizer=tokenizer)

    def encoder(size, num_frames, vision, config):
        return vision_encoder(size, num_frames, **{**vision, "pooled": False})

    parts = {"qa": (qa, load_official_qa), "vision": (encoder, _load_vision_only)}
    return build_part(config, parts, default_part="qa", what="UMT QA", config_keys=CONFIG_KEYS)
