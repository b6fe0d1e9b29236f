"""Inputs read once and read right (issue 19, input half): each bad input fails naming the file or entry.

Symlink loops, truncated videos, bad annotation entries, class-count mismatches, empty evaluations, unreadable or
code-carrying checkpoints, the boolean-only unsafe switch, embedding resampling, training checkpoints, and the
``_target_`` builders of datasets and models. Every file is made here, in ``tmp_path``, and kept tiny.
"""
from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from omegaconf import OmegaConf
from PIL import Image

from repshift.checkpoints import UnreadableCheckpointError, UnsafeCheckpointError, load_checkpoint
from repshift.data.build import build_dataset, check_limit
from repshift.data.folder import ImageFolderDataset
from repshift.data.video import CorruptVideoError, available_readers, read_frames, sample_middle_indices
from repshift.data.video_qa import VideoQADataset
from repshift.data.video_text import AnnotationError, VideoTextRetrievalDataset
from repshift.evaluate.classification import evaluate
from repshift.evaluate.errors import EmptyEvaluationError
from repshift.models import build_model
from repshift.train import train

from support import run_module

READERS = [name for name, why in available_readers().items() if why is None]
TINY_VIT = dict(embed_dim=32, depth=1, num_heads=2)


def _image(path: Path, value: int = 0, size: int = 24) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)
    return path


def _folder(root: Path, classes: int, per_class: int = 2) -> Path:
    for c in range(classes):
        for i in range(per_class):
            _image(root / "val" / f"n{c:02d}" / f"{i}.png", value=10 * c + i)
    return root


# ------------------------------------------------------------------------------------------ image folders

def test_a_symlink_loop_is_not_followed_and_each_image_keeps_its_own_class(tmp_path):
    root = _folder(tmp_path / "imagenet", classes=3, per_class=4)  # 12 images
    val = root / "val"
    os.symlink("..", val / "n01" / "loop")  # val/n01/loop -> val: every class again, labelled n01
    os.symlink(".", val / "n02" / "self")  # a folder linking to itself
    os.symlink("../n00/0.png", val / "n02" / "alias.png")  # an image of another class
    outside = _image(tmp_path / "elsewhere" / "extra.png").parent  # a link out of the split is data: followed
    os.symlink(outside, val / "n00" / "more")
    os.symlink("n02", val / "n00_alias")  # a class folder that is another class's (sorts before it)
    ds = ImageFolderDataset(root, "val")
    assert len(ds) == 13
    assert len({p.resolve() for p, _ in ds.samples}) == 13  # each file once
    for path, label in ds.samples:
        assert ds.classes[label] == path.relative_to(val).parts[0]  # the class of its own folder
    assert sum(1 for p, _ in ds.samples if "more" in p.parts) == 1


# ------------------------------------------------------------------------------------------ videos

def _write_faststart_mp4(path: Path, frames: int = 20, size: int = 32) -> Path:
    """An MPEG-4 clip whose index (moov) sits before its data (mdat), as web videos are written."""
    import av

    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for rgb in rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _truncate(path: Path, keep: float = 0.6) -> Path:
    data = path.read_bytes()
    cut = path.with_name("cut_" + path.name)
    cut.write_bytes(data[: int(len(data) * keep)])
    return cut


@pytest.fixture
def truncated_mp4(tmp_path):
    good = _write_faststart_mp4(tmp_path / "videos" / "clip.mp4")
    data = good.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # faststart: the whole index is still there after the cut
    return good, _truncate(good)


@pytest.mark.parametrize("reader", READERS)
def test_a_truncated_faststart_mp4_is_corrupt_for_every_reader(truncated_mp4, reader, monkeypatch):
    good, cut = truncated_mp4
    pick = lambda vlen, fps: sample_middle_indices(4, vlen)  # noqa: E731
    assert read_frames(good, pick, reader).num_frames == 20
    with pytest.raises(CorruptVideoError, match=rf"{cut}.*'mdat' box ends at byte \d+ but the file has \d+ bytes"):
        read_frames(cut, pick, reader)
    # without the container check the reader still refuses it: decord fails to read it (or counts fewer frames than
    # the header claims), PyAV decodes to the end and finds fewer frames than the header claims
    monkeypatch.setattr("repshift.data.video.truncation", lambda path: None)
    with pytest.raises(CorruptVideoError, match=str(cut)) as error:
        read_frames(cut, pick, reader)
    if reader == "pyav":
        assert "the container claims 20 frames but PyAV finds only" in str(error.value)


def _video_set(root: Path, videos: list[str], qa: bool = False) -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    if qa:
        entries = [{"video": v, "question": f"what is {i}", "answer": "red", "question_id": i}
                   for i, v in enumerate(videos)]
        (root / "annotations" / "msrvtt_qa_answer_list.json").write_text(json.dumps(["red", "blue"]))
        name = "msrvtt_qa_test.json"
    else:
        entries = [{"video": v, "caption": f"clip {i}"} for i, v in enumerate(videos)]
        name = "msrvtt_ret_test1k.json"
    (root / "annotations" / name).write_text(json.dumps(entries))
    return root / "annotations" / name


@pytest.mark.parametrize("reader", READERS)
def test_the_checker_reports_a_truncated_video(truncated_mp4, reader, capsys):
    from repshift.data.check import main as check

    good, cut = truncated_mp4
    root = good.parents[1]
    _video_set(root, [good.name, cut.name])
    code = check(["dataset=msrvtt", f"dataset.root={root}", f"dataset.video_reader={reader}", "dataset.num_frames=4",
                  "--workers", "0"])
    out = capsys.readouterr().out
    assert code == 1
    assert f"unreadable {cut}:" in out and "truncated" in out and "present and readable: 1/2" in out


def test_bad_annotation_entries_are_named(tmp_path):
    root = tmp_path / "set"
    (root / "videos" / "a_folder.mp4").mkdir(parents=True)
    for qa, Dataset in ((False, VideoTextRetrievalDataset), (True, VideoQADataset)):
        args = (lambda anno: (anno, root / "annotations" / "msrvtt_qa_answer_list.json", root / "videos")) if qa \
            else (lambda anno: (anno, root / "videos"))
        anno = _video_set(root, [], qa=qa)
        with pytest.raises(AnnotationError, match=rf"{anno} is an empty list"):
            Dataset(*args(anno))
        for video, why in (("../../etc/x.mp4", "leaves the video folder"), ("/etc/x.mp4", "is an absolute path"),
                           ("a/../../x.mp4", "leaves the video folder")):
            anno = _video_set(root, ["fine.mp4", video], qa=qa)
            with pytest.raises(AnnotationError, match=rf"{anno}, entry 1: video '{video}' {why}"):
                Dataset(*args(anno))
        anno = _video_set(root, ["a_folder.mp4"], qa=qa)
        with pytest.raises(CorruptVideoError, match=rf"Expected a video file, found a directory: {root}/videos/a_folder"):
            Dataset(*args(anno))[0]
        with pytest.raises(ValueError, match=r"dataset.limit=-3: give a positive number"):
            Dataset(*args(anno), limit=-3)


def test_a_negative_limit_is_refused_for_every_dataset_kind(tmp_path):
    for limit in (-3, 0, True, 2.5):
        with pytest.raises(ValueError, match="dataset.limit"):
            check_limit(limit)
    assert check_limit(None) is None and check_limit(3) == 3
    cfg = OmegaConf.create({"_target_": "repshift.data.folder.build", "name": "imagenet", "root": str(tmp_path),
                            "img_size": 32, "crop_pct": 1.0, "interpolation": "bicubic", "skip_corrupt": False,
                            "limit": -3, "generate": None})
    _folder(tmp_path, classes=2)
    with pytest.raises(ValueError, match=r"dataset.limit=-3"):
        build_dataset(cfg, "val")


# ------------------------------------------------------------------------------------------ dataset _target_

def test_datasets_are_built_by_their_target_and_only_from_repshift_data(tmp_path):
    _folder(tmp_path, classes=3)
    cfg = OmegaConf.create({"_target_": "repshift.data.folder.build", "name": "imagenet", "root": str(tmp_path),
                            "img_size": 32, "crop_pct": 1.0, "interpolation": "bicubic", "skip_corrupt": False,
                            "limit": 4, "generate": None})
    ds = build_dataset(cfg, "val")
    assert len(ds) == 4 and sorted({label for _, label in ds}) == [0, 1, 2]  # spread over every class
    with pytest.raises(ValueError, match=r"dataset._target_='os.system': a dataset is built by a function under "
                                         r"repshift.data. only"):
        build_dataset(OmegaConf.merge(cfg, {"_target_": "os.system"}), "val")
    with pytest.raises(ValueError, match="the dataset config has no _target_"):
        build_dataset(OmegaConf.create({"name": "x"}), "val")
    with pytest.raises(ValueError, match="dataset.generate is set"):
        build_dataset(OmegaConf.merge(cfg, {"generate": {"seed": 0}}), "val")


# ------------------------------------------------------------------------------------------ evaluation

def test_a_head_of_another_class_count_is_refused(tmp_path):
    from repshift.data.transforms import eval_transform

    root = _folder(tmp_path / "five", classes=5, per_class=1)
    ds = ImageFolderDataset(root, "val", eval_transform(32, crop_pct=1.0))
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=2, **TINY_VIT)
    with pytest.raises(ValueError, match=rf"head has 2 classes but dataset.root={root} .* has 5 class folders"):
        evaluate(model, ds, progress=False)
    with pytest.raises(ValueError, match="head has 2 classes"):
        train(model, ds, epochs=1, progress=False)

    class Logits2(torch.nn.Module):  # no num_classes attribute: caught on the logits
        def forward(self, x):
            return torch.zeros(len(x), 2)

    with pytest.raises(ValueError, match=rf"gives 2 logits per image but dataset.root={root} .* has 5 classes"):
        evaluate(Logits2(), ds, progress=False)
    five = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=5, **TINY_VIT)
    result = evaluate(five, ds, progress=False)
    assert result["n"] == 5 and result["top5"] == 100.0  # 5 classes: top-5 is defined (and trivially 100)


def test_an_evaluation_of_zero_samples_is_an_error_naming_the_data(tmp_path):
    from repshift.data.transforms import eval_transform

    root = tmp_path / "broken"
    for c in range(2):
        (root / "val" / f"n{c}").mkdir(parents=True)
        (root / "val" / f"n{c}" / "x.png").write_bytes(b"not a png")
    ds = ImageFolderDataset(root, "val", eval_transform(32, crop_pct=1.0), skip_corrupt=True, image_size=32)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=2, **TINY_VIT)
    with pytest.raises(EmptyEvaluationError, match=rf"nothing was evaluated on dataset.root={root} .*all 2 images "
                                                   r"were skipped as unreadable"):
        evaluate(model, ds, progress=False)


def test_empty_video_evaluations_are_errors(tmp_path):
    from repshift.data.video import ClipLoader
    from repshift.evaluate.qa import evaluate_qa
    from repshift.evaluate.retrieval import evaluate_retrieval
    from repshift.models import umt, umt_qa

    root = tmp_path / "set"
    (root / "videos").mkdir(parents=True)
    (root / "videos" / "bad.mp4").write_bytes(b"not a video")
    loader = ClipLoader(num_frames=2, img_size=32, reader=READERS[0])
    small = dict(img_size=32, embed_dim=16, depth=1, num_heads=2, proj_dim=8)
    text = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, vocab_size=128,
                max_position_embeddings=64, fusion_layer=1)
    retrieval = VideoTextRetrievalDataset(_video_set(root, ["bad.mp4"]), root / "videos", loader, skip_corrupt=True)
    model = umt.retrieval_model("b", 2, vision=small, text=text, tokenizer="tiny")
    with pytest.raises(EmptyEvaluationError, match=rf"nothing was evaluated on {root}/annotations/msrvtt_ret_test1k"
                                                   r".*all 1 videos were skipped as unreadable"):
        evaluate_retrieval(model, retrieval, progress=False)
    qa = VideoQADataset(_video_set(root, ["bad.mp4"], qa=True), root / "annotations" / "msrvtt_qa_answer_list.json",
                        root / "videos", loader, skip_corrupt=True)
    qa_model = umt_qa.qa_model("b", 2, vision=small, text=text, tokenizer="tiny")
    with pytest.raises(EmptyEvaluationError, match=r"msrvtt_qa_test.json .*all 1 questions were skipped"):
        evaluate_qa(qa_model, qa, progress=False)


@pytest.mark.slow
def test_an_empty_run_fails_and_writes_no_result(tmp_path):
    root = tmp_path / "broken"
    for c in range(2):
        (root / "val" / f"n{c}").mkdir(parents=True)
        (root / "val" / f"n{c}" / "x.png").write_bytes(b"not a png")
    outputs = tmp_path / "outputs"
    proc = run_module(tmp_path, "model=tiny", "+model.kwargs.num_classes=2", "dataset=imagenet",
                      f"dataset.root={root}", "dataset.skip_corrupt=true", "dataset.num_workers=0", "task=[evaluate]",
                      "logger=none", f"paths.output_dir={outputs}", "progress=false", "device=cpu", check=False)
    assert proc.returncode != 0
    assert "nothing was evaluated" in proc.stderr + proc.stdout
    assert not list(outputs.rglob("result.json")) and not list(outputs.rglob("predictions.json"))


# ------------------------------------------------------------------------------------------ checkpoints

class _CreatesAFile:
    """A pickle payload that creates a file when loaded: stands in for a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_that_would_create_a_file_is_refused_and_creates_nothing(tmp_path):
    marker = tmp_path / "created_by_the_payload"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "payload": _CreatesAFile(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match=rf"{path} pickles classes outside the allowlist \((builtins|io)"
                                                    r"\.open\).*model.unsafe_full_unpickle=true"):
        load_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError, match=rf"model.checkpoint={path}"):
        build_model("vit_tiny_patch16_224", checkpoint=str(path), kwargs=TINY_VIT)
    assert not marker.exists()


def _unreadable_files(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(64)}, good)
    assert zipfile.is_zipfile(good)
    files = {"random bytes": os.urandom(4096), "text": "not a checkpoint\n" * 30, "empty": b"",
             "truncated zip": good.read_bytes()[: good.stat().st_size // 2]}
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name.replace(' ', '_')}.pth"
        if isinstance(content, str):
            paths[name].write_text(content)
        else:
            paths[name].write_bytes(content)
    return paths


def test_corrupt_or_foreign_files_are_unreadable_without_the_unsafe_hint(tmp_path):
    for name, path in _unreadable_files(tmp_path).items():
        for load in (lambda: load_checkpoint(path),
                     lambda: build_model("vit_tiny_patch16_224", checkpoint=str(path), kwargs=TINY_VIT),
                     lambda: load_checkpoint(path, unsafe_full_unpickle=True)):
            with pytest.raises(UnreadableCheckpointError) as error:
                load()
            message = str(error.value)
            assert f"checkpoint {path} is unreadable: not a PyTorch checkpoint" in message, name
            assert "unsafe" not in message and "weights_only" not in message, (name, message)
    with pytest.raises(FileNotFoundError, match=rf"checkpoint {tmp_path} is a directory"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("value", ["no", "off", "false", "true", 1, 0, None])
def test_the_unsafe_switch_opens_only_on_a_real_true(tmp_path, value):
    marker = tmp_path / "created_by_the_payload"
    path = tmp_path / "evil.pth"
    torch.save({"payload": _CreatesAFile(marker)}, path)
    key = rf"model.unsafe_full_unpickle={value!r} is not a boolean"
    with pytest.raises(ValueError, match=key):
        load_checkpoint(path, unsafe_full_unpickle=value)
    configs = [
        {"_target_": "repshift.models.build_timm", "name": "vit_tiny_patch16_224", "kwargs": TINY_VIT},
        {"_target_": "repshift.models.efficientnet.build", "name": "tf_efficientnet_lite0", "pretrained": False},
        {"_target_": "repshift.models.umt.build", "size": "b", "part": "vision", "num_frames": 1,
         "vision": dict(img_size=32, embed_dim=16, depth=1, num_heads=2, proj_dim=8)},
    ]
    for config in configs:
        with pytest.raises(ValueError, match=key):
            build_model({**config, "checkpoint": str(path), "unsafe_full_unpickle": value})
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ resampling

@pytest.mark.parametrize("trained_as,resampled", [
    (dict(patch_size=32), {"patch_embed.proj.weight": ([32, 3, 32, 32], [32, 3, 16, 16]),
                           "pos_embed": ([1, 50, 32], [1, 197, 32])}),
    (dict(img_size=384), {"pos_embed": ([1, 577, 32], [1, 197, 32])}),
], ids=["patch32", "384px"])
def test_resampling_embeddings_needs_the_option_and_is_recorded(tmp_path, trained_as, resampled):
    path = tmp_path / "other_size.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", **TINY_VIT, **trained_as).state_dict(), path)
    config = {"_target_": "repshift.models.build_timm", "name": "vit_tiny_patch16_224", "kwargs": TINY_VIT,
              "checkpoint": str(path)}
    with pytest.raises(ValueError, match=rf"model.checkpoint={path} was trained at another size \(.*pos_embed "
                                         r"\(1, \d+, 32\) in the file, \(1, 197, 32\) in the model.*"
                                         r"model.resample_embeddings=true"):
        build_model(config)
    model, weights = build_model({**config, "resample_embeddings": True})
    assert weights["real"] and weights["resampled"] == {k: {"from": a, "to": b} for k, (a, b) in resampled.items()}
    assert model.pos_embed.shape == (1, 197, 32)
    with pytest.raises(ValueError, match=r"model.resample_embeddings='yes' is not a boolean"):
        build_model({**config, "resample_embeddings": "yes"})
    # a file of the model's own size loads with nothing resampled
    torch.save(model.state_dict(), tmp_path / "own.pth")
    assert build_model({**config, "checkpoint": str(tmp_path / "own.pth")})[1]["resampled"] is None


# ------------------------------------------------------------------------------------------ training

class _Blobs(torch.utils.data.Dataset):
    def __init__(self, n=32):
        g = torch.Generator().manual_seed(0)
        self.y = torch.arange(n) % 2
        self.x = torch.randn(n, 2, generator=g) + 3 * self.y[:, None]

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def _net():
    torch.manual_seed(0)
    return torch.nn.Linear(2, 2)


KW = dict(batch_size=8, lr=1e-2, progress=False)


def test_an_unreadable_training_checkpoint_names_its_path(tmp_path):
    ckpt = tmp_path / "run" / "checkpoint.pth"
    train(_net(), _Blobs(), epochs=1, ckpt_path=ckpt, **KW)
    ckpt.write_bytes(ckpt.read_bytes()[:200])  # truncated
    with pytest.raises(UnreadableCheckpointError, match=rf"checkpoint {ckpt} is unreadable"):
        train(_net(), _Blobs(), epochs=2, ckpt_path=ckpt, **KW)
    torch.save({"model": _net().state_dict()}, ckpt)  # a weights file, not a training checkpoint
    with pytest.raises(ValueError, match=rf"cannot resume from {ckpt}: it is not a training checkpoint"):
        train(_net(), _Blobs(), epochs=2, ckpt_path=ckpt, **KW)


def test_a_resumed_run_says_where_and_resume_false_trains_afresh(tmp_path, caplog):
    ckpt = tmp_path / "checkpoint.pth"
    first = train(_net(), _Blobs(), epochs=1, ckpt_path=ckpt, **KW)
    with caplog.at_level(logging.INFO, logger="repshift.train"):
        resumed = train(_net(), _Blobs(), epochs=2, ckpt_path=ckpt, **KW)
    assert resumed["resumed_from"] == 1 and len(resumed["history"]) == 2
    assert f"resuming from {ckpt}: 1 of 2 epochs done" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="repshift.train"):
        fresh = train(_net(), _Blobs(), epochs=2, ckpt_path=ckpt, resume=False, **KW)
    assert fresh["resumed_from"] == 0 and len(fresh["history"]) == 2 and "resuming" not in caplog.text
    assert f"removing the previous checkpoint {ckpt}" in caplog.text
    drop = lambda h: [{k: v for k, v in e.items() if k != "time_s"} for e in h]  # noqa: E731
    assert drop(fresh["history"])[0] == drop(first["history"])[0]  # the same first epoch, trained again
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2
