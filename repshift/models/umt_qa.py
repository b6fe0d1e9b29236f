"""UMT's video question answering model (``UMT_QA``); its official checkpoints load through :mod:`repshift.models.umt_weights`.

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
``text_decoder.bert.*`` and ``text_decoder.cls.predictions.*``. :func:`repshift.models.umt_weights.load_official_qa`
maps an official file onto them (``vision_encoder.encoder.X`` -> ``vision.X``).
"""
from __future__ import annotations

import copy
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEmbeddings, BertLayer, BertOnlyMLMHead

from repshift.models.umt import UMTVision, text_side, vision_encoder
from repshift.models.umt_text import TOKENIZER, UMTTextEncoder, tokenize
from repshift.models.umt_weights import build_part, load_official_qa, load_qa_vision


#: UMT's padding-mask convention (``(1 - mask) * -10000`` added to the logits), also for the causal mask.
_MASKED_LOGIT = -10000.0
#: Label value that cross-entropy ignores: UMT sets every padding position of an answer to it.
IGNORE_INDEX = -100


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
        """``(input_ids, attention_mask)`` ``[len(texts), max_length]`` (:func:`repshift.models.umt_text.tokenize`)."""
        return tokenize(self.tokenizer, texts, max_length, owner=type(self).__name__)

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


# ------------------------------------------------------------------------------------------ config entry


def build(config: Mapping[str, Any]) -> tuple[nn.Module, dict]:
    """A QA model config (``_target_: repshift.models.umt_qa.build``) -> ``(model, weights)``
    (:func:`repshift.models.umt_weights.build_part`).

    ``part: qa`` gives the whole model, ``part: vision`` its encoder only (no pooling head: benchmarks, GFLOPs).
    """
    def qa(size, num_frames, vision, config):
        tokenizer = config.get("tokenizer", TOKENIZER.get(size))
        return qa_model(size, num_frames, vision=vision, text=dict(config.get("text") or {}), tokenizer=tokenizer)

    def encoder(size, num_frames, vision, config):
        return vision_encoder(size, num_frames, **{**vision, "pooled": False})

    parts = {"qa": (qa, load_official_qa), "vision": (encoder, load_qa_vision)}
    return build_part(config, parts, default_part="qa", what="UMT QA")
