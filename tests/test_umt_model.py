"""UMT model: official key names/shapes, strict loading, encoding, per-frame pooling, text side, GMACs."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertModel

from repshift.configs import CONFIG_DIR
from repshift.models import RUNNER_KEYS, build_model, umt, umt_weights
from repshift.models.umt_text import load_tokenizer, write_vocab

CONFIGS = CONFIG_DIR / "model"
TINY_VISION = dict(embed_dim=64, depth=2, num_heads=2, proj_dim=32)
TINY_TEXT = dict(
    hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=128, vocab_size=128,
    max_position_embeddings=64,
)
TINY_FUSION = 2
FRAMES = 2
PATCHES = 196


# ------------------------------------------------------------------ official key lists (research notes §1.6, §2.2)


def official_vision_keys(width: int, depth: int, proj_dim: int) -> dict[str, tuple[int, ...]]:
    """Vision keys and shapes of UMT's retrieval checkpoints."""
    keys = {
        "vision_encoder.encoder.patch_embed.proj.weight": (width, 3, 1, 16, 16),
        "vision_encoder.encoder.patch_embed.proj.bias": (width,),
    }
    for i in range(depth):
        block = f"vision_encoder.encoder.blocks.{i}."
        keys.update({
            block + "norm1.weight": (width,), block + "norm1.bias": (width,),
            block + "attn.q_bias": (width,), block + "attn.v_bias": (width,),
            block + "attn.qkv.weight": (3 * width, width),
            block + "attn.proj.weight": (width, width), block + "attn.proj.bias": (width,),
            block + "norm2.weight": (width,), block + "norm2.bias": (width,),
            block + "mlp.fc1.weight": (4 * width, width), block + "mlp.fc1.bias": (4 * width,),
            block + "mlp.fc2.weight": (width, 4 * width), block + "mlp.fc2.bias": (width,),
        })
    keys.update({
        "vision_encoder.encoder.norm.weight": (width,), "vision_encoder.encoder.norm.bias": (width,),
        "vision_encoder.pool_norm.weight": (width,), "vision_encoder.pool_norm.bias": (width,),
        "vision_proj.weight": (proj_dim, width), "vision_proj.bias": (proj_dim,),
    })
    return keys


def official_text_keys(
    width: int, layers: int, fusion: int, proj_dim: int, vocab: int = 30522, positions: int = 512, inner: int = 0
) -> dict[str, tuple[int, ...]]:
    """Text keys and shapes of UMT's retrieval checkpoints (BertModel without pooler, no ``bert.`` prefix)."""
    inner = inner or 4 * width
    keys = {
        "text_encoder.embeddings.word_embeddings.weight": (vocab, width),
        "text_encoder.embeddings.position_embeddings.weight": (positions, width),
        "text_encoder.embeddings.token_type_embeddings.weight": (2, width),
        "text_encoder.embeddings.LayerNorm.weight": (width,), "text_encoder.embeddings.LayerNorm.bias": (width,),
    }

    def attention(prefix: str) -> dict:
        out = {}
        for name in ("self.query", "self.key", "self.value", "output.dense"):
            out[f"{prefix}.{name}.weight"] = (width, width)
            out[f"{prefix}.{name}.bias"] = (width,)
        out[f"{prefix}.output.LayerNorm.weight"] = (width,)
        out[f"{prefix}.output.LayerNorm.bias"] = (width,)
        return out

    for i in range(layers):
        layer = f"text_encoder.encoder.layer.{i}"
        keys.update(attention(f"{layer}.attention"))
        if i >= fusion:
            keys.update(attention(f"{layer}.crossattention"))
        keys.update({
            f"{layer}.intermediate.dense.weight": (inner, width), f"{layer}.intermediate.dense.bias": (inner,),
            f"{layer}.output.dense.weight": (width, inner), f"{layer}.output.dense.bias": (width,),
            f"{layer}.output.LayerNorm.weight": (width,), f"{layer}.output.LayerNorm.bias": (width,),
        })
    keys.update({
        "text_proj.weight": (proj_dim, width), "text_proj.bias": (proj_dim,),
        "itm_head.weight": (2, width), "itm_head.bias": (2,),
    })
    return keys


#: Entries that released files hold beside the model and that evaluation does not use.
UNUSED_EXTRAS = {
    "clip_teacher.transformer.resblocks.0.attn.in_proj_weight": (12, 4),
    "vision_encoder.clip_decoder.0.head.weight": (4, 4),
    "vision_encoder.clip_decoder.0.norm.bias": (4,),
    "temp": (),
    "text_encoder.embeddings.position_ids": (1, 64),
}


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}


def tiny_vision(**overrides) -> umt.UMTVision:
    torch.manual_seed(0)
    return umt.vision_encoder("b", num_frames=FRAMES, **{**TINY_VISION, **overrides}).eval()


def tiny_retrieval(tokenizer=None) -> umt.UMTRetrieval:
    torch.manual_seed(0)
    text = dict(TINY_TEXT, fusion_layer=TINY_FUSION)
    return umt.retrieval_model("b", FRAMES, vision=TINY_VISION, text=text, tokenizer=tokenizer).eval()


def tiny_video(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, FRAMES, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def tiny_official_state() -> dict[str, torch.Tensor]:
    shapes = {
        **official_vision_keys(64, 2, 32),
        **official_text_keys(64, 4, TINY_FUSION, 32, vocab=128, positions=64, inner=128),
        **UNUSED_EXTRAS,
    }
    return random_state(shapes)


# ------------------------------------------------------------------ key names and shapes of the full sizes


@pytest.mark.parametrize("size,width,depth,proj_dim", [("b", 768, 12, 512), ("l", 1024, 24, 768)])
def test_full_size_vision_keys_match_the_official_names_and_shapes(size, width, depth, proj_dim):
    with torch.device("meta"):
        model = umt.vision_encoder(size)
    official = official_vision_keys(width, depth, proj_dim)
    mapped = {}
    for key, shape in official.items():
        own = umt_weights.vision_key(key)
        assert own is not None, key
        mapped[own] = shape
    own_shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert own_shapes == mapped


@pytest.mark.parametrize("size,width,layers,fusion,proj_dim", [("b", 768, 12, 9, 512), ("l", 1024, 24, 19, 768)])
def test_full_size_text_keys_match_the_official_names_and_shapes(size, width, layers, fusion, proj_dim):
    with torch.device("meta"):
        model = umt.retrieval_model(size)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("vision.")}
    assert own == official_text_keys(width, layers, fusion, proj_dim)


# ------------------------------------------------------------------ loading


def test_tiny_official_checkpoint_loads_strictly_and_filters_unused_keys(tmp_path):
    state = tiny_official_state()
    path = tmp_path / "ret_tiny.pth"
    torch.save({"model": state, "epoch": 3}, path)
    model = tiny_vision()
    missing, unexpected = umt_weights.load_official(model, path)
    assert (missing, unexpected) == ([], [])
    own = model.state_dict()
    assert torch.equal(own["blocks.1.attn.q_bias"], state["vision_encoder.encoder.blocks.1.attn.q_bias"])
    assert torch.equal(own["pool_norm.weight"], state["vision_encoder.pool_norm.weight"])
    assert torch.equal(own["vision_proj.bias"], state["vision_proj.bias"])
    # An already loaded raw state dict works the same.
    assert umt_weights.load_official(tiny_vision(), state) == ([], [])


def test_load_official_reports_missing_and_unknown_keys():
    state = tiny_official_state()
    del state["vision_encoder.pool_norm.weight"]  # a QA checkpoint has no pool_norm
    state["vision_encoder.encoder.blocks.0.attn.k_bias"] = torch.zeros(64)
    state["some_head.weight"] = torch.zeros(2)
    missing, unexpected = umt_weights.load_official(tiny_vision(), state)
    assert missing == ["pool_norm.weight"]
    assert unexpected == ["some_head.weight", "vision_encoder.encoder.blocks.0.attn.k_bias"]


def test_load_official_wrong_shape_names_the_key_and_both_shapes():
    state = tiny_official_state()
    state["vision_encoder.encoder.blocks.1.mlp.fc1.weight"] = torch.zeros(200, 64)
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.fc1\.weight has shape \(200, 64\).*expects \(256, 64\)"):
        umt_weights.load_official(tiny_vision(), state)


def test_load_official_rejects_a_file_without_a_state_dict(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"epoch": 3}, path)
    with pytest.raises(ValueError, match="holds no state dict"):
        umt_weights.load_official(tiny_vision(), path)


def test_retrieval_checkpoint_loads_vision_and_text_strictly():
    state = tiny_official_state()
    model = tiny_retrieval()
    assert umt_weights.load_official_retrieval(model, {"model": state}) == ([], [])
    assert umt_weights.load_official(tiny_retrieval(), state) == ([], [])  # the retrieval model takes everything
    own = model.state_dict()
    key = "text_encoder.encoder.layer.3.crossattention.self.key.weight"
    assert torch.equal(own[key], state[key])
    assert torch.equal(own["vision.blocks.0.attn.v_bias"], state["vision_encoder.encoder.blocks.0.attn.v_bias"])
    assert torch.equal(own["itm_head.weight"], state["itm_head.weight"])


def test_pretrained_checkpoint_bert_prefix_is_removed():
    state = tiny_official_state()
    renamed = {(k.replace("text_encoder.", "text_encoder.bert.", 1) if k.startswith("text_encoder.") else k): v
               for k, v in state.items()}
    renamed["text_encoder.cls.predictions.bias"] = torch.zeros(128)
    model = tiny_retrieval()
    assert umt_weights.load_official_retrieval(model, renamed) == ([], [])
    key = "text_encoder.embeddings.word_embeddings.weight"
    assert torch.equal(model.state_dict()[key], state[key])


# ------------------------------------------------------------------ vision encoder


def test_position_table_is_analytic_and_not_in_the_state_dict():
    model = tiny_vision()
    assert not any("pos" in key for key in model.state_dict())
    table = model.pos_embed[0]
    width = TINY_VISION["embed_dim"]
    assert table.shape == (FRAMES * PATCHES, width)
    for position, dim in [(0, 0), (0, 1), (1, 0), (1, 1), (7, 10), (300, 33), (391, 63)]:
        angle = position / 10000 ** (2 * (dim // 2) / width)
        expected = math.sin(angle) if dim % 2 == 0 else math.cos(angle)
        assert table[position, dim].item() == pytest.approx(expected, abs=1e-6)


def test_attention_has_query_and_value_bias_but_no_key_bias():
    attention = umt.Attention(8, 2)
    torch.nn.init.normal_(attention.q_bias)
    torch.nn.init.normal_(attention.v_bias)
    x = torch.randn(3, 5, 8)
    w_q, w_k, w_v = attention.qkv.weight.chunk(3)
    q = (x @ w_q.T + attention.q_bias).view(3, 5, 2, 4).transpose(1, 2)
    k = (x @ w_k.T).view(3, 5, 2, 4).transpose(1, 2)
    v = (x @ w_v.T + attention.v_bias).view(3, 5, 2, 4).transpose(1, 2)
    probs = ((q @ k.transpose(-1, -2)) / 2.0).softmax(-1)  # head_dim 4: scale 1/2
    expected = attention.proj((probs @ v).transpose(1, 2).reshape(3, 5, 8))
    torch.testing.assert_close(attention(x), expected)


def test_block_equals_timm_block_with_the_key_bias_fixed_at_zero():
    from functools import partial

    from timm.models.vision_transformer import Block as TimmBlock

    torch.manual_seed(0)
    block = umt.Block(16, 2).eval()
    torch.nn.init.normal_(block.attn.q_bias)
    torch.nn.init.normal_(block.attn.v_bias)
    reference = TimmBlock(16, 2, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    state = {k: v for k, v in block.state_dict().items() if not k.endswith(("q_bias", "v_bias"))}
    state["attn.qkv.bias"] = torch.cat([block.attn.q_bias, torch.zeros(16), block.attn.v_bias]).detach()
    reference.load_state_dict(state, strict=True)
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        torch.testing.assert_close(block(x), reference(x))


def test_encode_shapes_and_unnormalised_frame_embeddings():
    model = tiny_vision()
    with torch.no_grad():
        tokens, frames = model.encode(tiny_video())
    assert tokens.shape == (2, FRAMES * PATCHES, 64)
    assert frames.shape == (2, FRAMES, 32)
    assert not torch.allclose(frames.norm(dim=-1), torch.ones(2, FRAMES))
    # Unpruned: the pooled frames equal the plain per-frame spatial mean, as UMT computes it.
    spatial_mean = tokens.view(2, FRAMES, PATCHES, 64).mean(dim=2)
    torch.testing.assert_close(frames, model.vision_proj(model.pool_norm(spatial_mean)))


def _drop_tokens(keep: torch.Tensor):
    """A stand-in adapter: after the blocks, keep only the ``keep`` token indices (same for every clip)."""

    def run_blocks(x, frame_ids, _original=None):
        x, frame_ids = _original(x, frame_ids)
        index = keep.expand(x.shape[0], -1)
        return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1])), frame_ids.gather(1, index)

    return run_blocks


def test_pooling_after_dropping_tokens_averages_each_frames_remaining_tokens():
    model = tiny_vision()
    video = tiny_video()
    with torch.no_grad():
        full_tokens, _ = model.forward_features(video)
    keep = torch.cat([torch.arange(0, 196, 3), torch.tensor([196, 250, 391])])  # frame 0: 66 tokens, frame 1: 3
    original = model.run_blocks
    model.run_blocks = lambda x, ids: _drop_tokens(keep)(x, ids, _original=original)
    with torch.no_grad():
        tokens, frames = model.encode(video)
    assert tokens.shape == (2, len(keep), 64)
    torch.testing.assert_close(tokens, full_tokens[:, keep])
    by_hand = torch.stack([full_tokens[:, keep[:66]].mean(1), full_tokens[:, [196, 250, 391]].mean(1)], dim=1)
    torch.testing.assert_close(frames, model.vision_proj(model.pool_norm(by_hand)))


def test_a_frame_without_tokens_gets_the_clip_mean():
    model = tiny_vision()
    tokens = torch.randn(2, 5, 64)
    frame_ids = torch.tensor([[0, 0, 0, 2, 2], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        frames = model.pool(tokens, frame_ids, num_frames=3)
        expected_means = torch.stack([
            torch.stack([tokens[0, :3].mean(0), tokens[0].mean(0), tokens[0, 3:].mean(0)]),
            torch.stack([tokens[1].mean(0)] * 3),
        ])
        torch.testing.assert_close(frames, model.vision_proj(model.pool_norm(expected_means)))


def test_video_with_wrong_layout_is_rejected():
    model = tiny_vision()
    with pytest.raises(ValueError, match=r"\[B, T, 3, H, W\]"):
        model.encode(torch.zeros(1, 3, FRAMES, 224, 224))
    with pytest.raises(ValueError, match="224x224"):
        model.encode(torch.zeros(1, FRAMES, 3, 112, 112))


def test_other_clip_lengths_use_the_same_analytic_table():
    model = tiny_vision()
    longer = umt.vision_encoder("b", num_frames=3, **TINY_VISION).eval()
    longer.load_state_dict(model.state_dict())
    video = torch.randn(1, 3, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model.encode(video)[1], longer.encode(video)[1])


# ------------------------------------------------------------------ GMACs (paper: 303.3 / 984.6)


def _macs(size: str) -> tuple[int, int]:
    """(multiply-accumulates of matmuls and the conv from torch's counter, LayerNorm input elements)."""
    with torch.device("meta"):
        model = umt.vision_encoder(size, 12).eval()
        video = torch.empty(1, 12, 3, 224, 224)
    norm_elements = []
    hooks = [m.register_forward_hook(lambda _m, inputs, _o: norm_elements.append(inputs[0].numel()))
             for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.encode(video)
    for hook in hooks:
        hook.remove()
    return counter.get_total_flops() // 2, sum(norm_elements)


@pytest.mark.parametrize("size,paper", [("b", 303.3), ("l", 984.6)])
def test_vision_encoder_gmacs_match_the_paper(size, paper):
    """The paper's GFLOPs are fvcore's: one per multiply-add, plus 5 per LayerNorm element."""
    macs, norm_elements = _macs(size)
    tokens, width, depth = 2352, {"b": 768, "l": 1024}[size], {"b": 12, "l": 24}[size]
    per_block = 12 * width**2 * tokens + 2 * tokens**2 * width  # qkv+proj+mlp, q@k and p@v
    patch = tokens * width * 3 * 16 * 16
    proj = 12 * width * {"b": 512, "l": 768}[size]
    assert macs == depth * per_block + patch + proj
    assert round((macs + 5 * norm_elements) / 1e9, 1) == paper


# ------------------------------------------------------------------ text side


@pytest.fixture
def vocab_folder(tmp_path) -> Path:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "runs", "cat", "sleeps", "##s", "on", "the"]
    write_vocab(tmp_path / "tok", words + [f"[unused{i}]" for i in range(128 - len(words))])
    return tmp_path / "tok"


def test_tokenizer_from_a_written_vocab(vocab_folder):
    model = tiny_retrieval(tokenizer=str(vocab_folder))
    ids, mask = model.tokenize(["A dog runs", "the cats sleep on a mat"], max_length=8)
    assert ids.tolist()[0] == [2, 5, 6, 7, 3, 0, 0, 0]
    assert mask.tolist()[0] == [1, 1, 1, 1, 1, 0, 0, 0]
    assert ids.tolist()[1] == [2, 12, 8, 10, 1, 11, 5, 3]  # truncated to 8, "sleep" unknown


def test_tokenizer_missing_gives_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a local folder nor in the Hugging Face cache"):
        load_tokenizer("repshift-tests/no-such-bert-tokenizer")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no vocab.txt"):
        load_tokenizer(tmp_path / "empty")


def test_tokenizer_with_the_wrong_vocabulary_size_is_rejected(vocab_folder):
    with pytest.raises(ValueError, match="has 128 tokens but the text encoder expects 30522"):
        load_tokenizer(vocab_folder, vocab_size=30522)


def test_text_layers_equal_transformers_bert_with_the_same_weights():
    model = tiny_retrieval()
    reference = BertModel(umt.bert_config("b", **{**TINY_TEXT, "num_hidden_layers": TINY_FUSION}),
                          add_pooling_layer=False).eval()
    text_state = {k[len("text_encoder."):]: v for k, v in model.state_dict().items() if k.startswith("text_encoder.")}
    reference.load_state_dict({k: v for k, v in text_state.items() if k in reference.state_dict()}, strict=True)
    ids = torch.tensor([[2, 5, 6, 7, 3, 0, 0], [2, 9, 3, 0, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        hidden, feat = model.encode_text(ids, mask)
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(hidden, expected)
    torch.testing.assert_close(feat, model.text_proj(hidden[:, 0]))
    assert feat.shape == (2, 32)


def test_itm_scores_depend_on_the_video_and_ignore_padding():
    model = tiny_retrieval()
    ids = torch.tensor([[2, 5, 6, 7, 3, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        for parameter in model.itm_head.parameters():  # random init gives near-equal logits; spread them
            torch.nn.init.normal_(parameter, std=1.0)
        video_tokens, _ = model.encode_video(tiny_video(batch=2))
        hidden, _ = model.encode_text(ids.expand(2, -1), mask.expand(2, -1))
        scores = model.itm_scores(video_tokens, hidden, mask.expand(2, -1))
        logits = model.itm_logits(video_tokens, hidden, mask.expand(2, -1))
        # Fewer padding positions: same [CLS] result.
        short_hidden, _ = model.encode_text(ids[:, :6].expand(2, -1), mask[:, :6].expand(2, -1))
        short = model.itm_scores(video_tokens, short_hidden, mask[:, :6].expand(2, -1))
        # The fusion self-attention is bidirectional (not causal): the last real token reaches [CLS].
        other_hidden = hidden.clone()
        other_hidden[:, 4] += 1.0
        other_scores = model.itm_scores(video_tokens, other_hidden, mask.expand(2, -1))
    assert scores.shape == (2,)
    torch.testing.assert_close(scores, logits[:, 1])
    assert not torch.allclose(scores[0], scores[1])
    torch.testing.assert_close(short, scores)
    assert not torch.allclose(other_scores, scores)


def test_fusion_width_must_match_the_video_width():
    with pytest.raises(ValueError, match="UMT pairs equal widths"):
        umt.retrieval_model("b", FRAMES, vision=dict(TINY_VISION, embed_dim=32), text=dict(TINY_TEXT, fusion_layer=2))


# ------------------------------------------------------------------ configs


def test_tiny_config_builds_a_working_random_model():
    config = yaml.safe_load((CONFIGS / "umt_tiny.yaml").read_text())
    model, weights = build_model(config)  # the runner's entry: _target_ repshift.models.umt.build
    assert weights == {"real": False, "source": "random-init"}
    ids, mask = model.tokenize(["a person is cooking"], max_length=32)
    video = torch.randn(1, config["num_frames"], 3, 224, 224)
    with torch.no_grad():
        tokens, frames = model.encode_video(video)
        hidden, feat = model.encode_text(ids, mask)
        score = model.itm_scores(tokens, hidden, mask)
    assert tokens.shape == (1, config["num_frames"] * PATCHES, 64)
    assert frames.shape == (1, config["num_frames"], 32) and feat.shape == (1, 32) and score.shape == (1,)
    assert (ids[0] != 1).all()  # the built-in tiny vocabulary has no unknown characters here


@pytest.mark.parametrize("name,size", [("umt_b", "b"), ("umt_l", "l")])
def test_full_configs_name_their_size_and_tokenizer(name, size):
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    assert set(config) - set(RUNNER_KEYS) - {"_target_"} <= umt_weights.CONFIG_KEYS
    assert config["_target_"] == "repshift.models.umt.build"
    assert config["unit"] == "vid/s" and config["input_size"][1:] == [3, 224, 224]
    assert config["size"] == size and config["num_frames"] == 12 and config["family"] == "umt"
    assert config["tokenizer"] == f"bert-{'base' if size == 'b' else 'large'}-uncased"


def test_build_rejects_unknown_keys_and_hub_weights():
    with pytest.raises(ValueError, match="unknown UMT model config keys"):
        umt.build({"size": "b", "kwargs": {}})
    with pytest.raises(ValueError, match="no weights on a hub"):
        umt.build({"size": "b", "pretrained": True})


def test_build_with_a_checkpoint_that_does_not_fit_fails(tmp_path):
    config = yaml.safe_load((CONFIGS / "umt_tiny.yaml").read_text())
    config["vision"]["depth"] = 2
    config["num_frames"] = FRAMES
    state = tiny_official_state()
    del state["itm_head.bias"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(RuntimeError, match=r"does not fit UMT size B.*missing \['itm_head.bias'\]"):
        build_model({**config, "text": dict(config["text"], max_position_embeddings=64),
                   "checkpoint": str(tmp_path / "partial.pth")})
    state["itm_head.bias"] = torch.zeros(2)
    torch.save(state, tmp_path / "full.pth")
    model, weights = build_model({**config, "text": dict(config["text"], max_position_embeddings=64),
                                "checkpoint": str(tmp_path / "full.pth")})
    assert weights["real"] and weights["source"].endswith("full.pth")
    assert torch.equal(model.state_dict()["itm_head.weight"], state["itm_head.weight"])
