import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from torchvision.transforms import functional as TF

from repshift.data import synthetic_video as S
from repshift.data.check import load_dataset_config, main as check_main
from repshift.data.video import (
    available_readers,
    ClipLoader,
    CorruptVideoError,
    read_frames,
    resize_normalize,
    resolve_reader,
    sample_middle_indices,
    trimmed_length,
)
from repshift.data.video_text import (
    SKIPPED_INDEX,
    AnnotationError,
    VideoTextRetrievalDataset,
    build_retrieval_index,
    load_annotations,
    pre_text,
)

# torchcodec joins every reader test where it loads (it needs FFmpeg shared libraries)
READERS = [r for r, why_not in available_readers().items() if why_not is None]
N_VIDEOS = 6
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_video")
    S.generate(root, n_videos=N_VIDEOS, num_frames=8, size=64, fps=8, seed=0)
    return root


def all_frames(vlen, fps):
    return list(range(vlen))


# ------------------------------------------------------------------------------------------ sampling
def test_middle_sampling_hand_values():
    # edges int(linspace(0, 100, 13)) = 0 8 16 25 33 41 50 58 66 75 83 91 100; centre (e_i + e_{i+1} - 1) // 2
    assert sample_middle_indices(12, 100) == [3, 11, 20, 28, 36, 45, 53, 61, 70, 78, 86, 95]
    assert sample_middle_indices(4, 8) == [0, 2, 4, 6]
    # shorter than num_frames: every frame once, then the last repeated
    assert sample_middle_indices(12, 5) == [0, 1, 2, 3, 4] + [4] * 7
    with pytest.raises(ValueError):
        sample_middle_indices(12, 0)


def test_trimmed30_limits_sampling_to_first_30_seconds():
    assert trimmed_length(1000, 25.0) == 750  # 40 s at 25 fps -> first 30 s
    assert trimmed_length(500, 25.0) == 500  # 20 s: untouched
    loader = ClipLoader(num_frames=4, trimmed30=True)
    # 40 frames at 1 fps -> 30 frames: edges 0 7 15 22 30
    assert loader.indices(40, 1.0) == [3, 10, 18, 25]
    assert ClipLoader(num_frames=4).indices(40, 1.0) == sample_middle_indices(4, 40)


@pytest.mark.parametrize("reader", READERS)
def test_trimmed30_on_a_real_40_second_video(tmp_path, reader):
    frames = np.zeros((40, 32, 32, 3), dtype=np.uint8)  # decord mis-sizes 16x16 frames
    for t in range(40):
        frames[t] = 6 * t  # brightness encodes the frame index
    path = S.write_mp4(tmp_path / "long.mp4", frames, fps=1)
    got = ClipLoader(num_frames=4, trimmed30=True, reader=reader).read(path)
    assert (got.num_frames, got.fps) == (40, 1.0)
    brightness = got.frames.reshape(4, -1).mean(1)
    np.testing.assert_allclose(brightness, [6 * 3, 6 * 10, 6 * 18, 6 * 25], atol=3)


# ------------------------------------------------------------------------------------------ readers
def test_readers_agree_on_frame_indices(synth_root):
    assert {"decord", "pyav"} <= set(READERS)
    path = synth_root / "videos" / "clip_002.mp4"
    drawn = S.render_clip(*S.clip_attributes(N_VIDEOS)[2], num_frames=8, size=64).astype(int)
    decoded = {r: read_frames(path, all_frames, r) for r in READERS}
    for r, got in decoded.items():
        assert (got.num_frames, got.fps, got.frames.shape) == (8, 8.0, (8, 64, 64, 3)), r
        # every decoded frame is closest to the drawn frame with the same index (the shape moves each frame)
        dist = np.abs(got.frames[:, None].astype(int) - drawn[None]).mean(axis=(2, 3, 4))
        assert dist.argmin(1).tolist() == list(range(8)), r
        assert dist.diagonal().max() < 4, r
    for r in READERS:
        assert np.abs(decoded["decord"].frames.astype(int) - decoded[r].frames).max() <= 2, r
    middle = {r: ClipLoader(num_frames=3, reader=r).read(path).frames for r in READERS}
    for r in READERS:
        np.testing.assert_array_equal(middle[r], decoded[r].frames[sample_middle_indices(3, 8)])


def test_auto_reader_resolves_and_unknown_reader_rejected():
    assert resolve_reader("auto") in ("decord", "torchcodec", "pyav")
    assert resolve_reader("pyav") == "pyav"
    with pytest.raises(ValueError, match="ffmpeg-cli"):
        resolve_reader("ffmpeg-cli")
    with pytest.raises(ValueError, match="middle"):
        ClipLoader(sampling="rand")


def test_resize_is_bicubic_without_antialias_then_imagenet_normalised():
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (2, 20, 30, 3), generator=g, dtype=torch.uint8)
    out = resize_normalize(frames.numpy(), img_size=12)
    assert out.shape == (2, 3, 12, 12) and out.dtype == torch.float32
    # reference: torchvision's tensor Resize on the uint8 frames (UMT's op; its torchvision had no antialias), /255
    ref = TF.resize(frames.permute(0, 3, 1, 2), [12, 12], interpolation=TF.InterpolationMode.BICUBIC, antialias=False)
    ref = ref.float() / 255.0
    torch.testing.assert_close(out, (ref - MEAN) / STD, atol=1e-5, rtol=0)
    flat = torch.full((1, 8, 8, 3), 128, dtype=torch.uint8)
    expected = ((128 / 255.0 - MEAN) / STD).expand(1, 3, 4, 4)
    torch.testing.assert_close(resize_normalize(flat, 4), expected)


@pytest.mark.parametrize("reader", READERS)
def test_corrupt_and_missing_videos_name_their_path(tmp_path, reader):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    with pytest.raises(CorruptVideoError, match="broken.mp4") as info:
        ClipLoader(num_frames=2, img_size=8, reader=reader)(bad)
    assert info.value.path == str(bad)
    assert pickle.loads(pickle.dumps(info.value)).path == str(bad)  # survives a DataLoader worker
    with pytest.raises(CorruptVideoError, match="not found: .*absent.mp4"):
        ClipLoader(reader=reader)(tmp_path / "absent.mp4")


# ------------------------------------------------------------------------------------------ annotations
def write_json(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_pre_text_cleans_like_umt():
    assert pre_text("  A man's dog-walking, (again)!  ") == "a mans dog walking again"
    assert pre_text("<person> puts [something] on/into a box.") == "person puts [something] on into a box"


def test_single_caption_format(tmp_path):  # MSRVTT 1k-A, LSMDC
    entries = load_annotations(write_json(tmp_path / "a.json", [
        {"video": "v0.mp4", "caption": "A cat."}, {"video": "v1.mp4", "caption": "A dog.", "duration": 3}]))
    index = build_retrieval_index(entries)
    assert index.videos == ["v0.mp4", "v1.mp4"] and index.texts == ["a cat", "a dog"]
    assert index.txt2vid == [0, 1] and index.vid2txt == [[0], [1]]


def test_several_captions_per_video(tmp_path):  # MSVD
    entries = load_annotations(write_json(tmp_path / "a.json", [
        {"video": "v0.avi", "caption": ["one", "two", "three"]}, {"video": "v1.avi", "caption": ["four"]}]))
    index = build_retrieval_index(entries)
    assert index.texts == ["one", "two", "three", "four"]
    assert index.txt2vid == [0, 0, 0, 1] and index.vid2txt == [[0, 1, 2], [3]]


def test_paragraph_format(tmp_path):  # ActivityNet, DiDeMo
    entries = load_annotations(write_json(tmp_path / "a.json", [
        {"video": "v0.mp4", "caption": ["He runs.", "He stops."]}, {"video": "v1.mp4", "caption": ["Rain."]}]))
    index = build_retrieval_index(entries, is_paragraph=True)
    assert index.texts == ["he runs he stops", "rain"]
    assert index.txt2vid == [0, 1] and index.vid2txt == [[0], [1]]


def test_several_videos_per_text(tmp_path):  # SSV2 label / template
    entries = load_annotations(write_json(tmp_path / "a.json", [
        {"video": ["a.webm", "b.webm"], "caption": "Pushing [something] left"},
        {"video": "c.webm", "caption": "Lifting [something]"},
        {"video": ["b.webm", "d.webm"], "caption": "Dropping [something]"},
    ]))
    index = build_retrieval_index(entries, has_multi_vision_gt=True)
    assert index.texts == ["pushing [something] left", "lifting [something]", "dropping [something]"]
    assert index.videos == ["a.webm", "b.webm", "c.webm", "d.webm"]  # b listed twice, kept once
    assert index.txt2vid == [[0, 1], [2], [1, 3]]
    assert index.vid2txt == [[0], [0, 2], [1], [2]]


def test_bad_annotation_files_name_file_and_entry(tmp_path):
    with pytest.raises(AnnotationError, match="not found: .*nothere.json"):
        load_annotations(tmp_path / "nothere.json")
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(AnnotationError, match="bad.json is not valid JSON"):
        load_annotations(tmp_path / "bad.json")
    write_json(tmp_path / "nocap.json", [{"video": "a.mp4", "caption": "x"}, {"video": "b.mp4"}])
    with pytest.raises(AnnotationError, match=r"nocap.json, entry 1: no 'caption'"):
        load_annotations(tmp_path / "nocap.json")
    entries = load_annotations(write_json(tmp_path / "multi.json", [{"video": ["a", "b"], "caption": "x"}]))
    with pytest.raises(AnnotationError, match="has_multi_vision_gt"):
        build_retrieval_index(entries)


# ------------------------------------------------------------------------------------------ configs + dataset
EXPECTED = {  # dataset config -> (videos, texts) on the synthetic folder (6 clips)
    "msrvtt": (6, 6), "msvd": (6, 18), "anet": (6, 6), "didemo": (6, 6), "lsmdc": (6, 6),
}


@pytest.mark.parametrize("name", ["msrvtt", "msvd", "anet", "didemo", "lsmdc", "ssv2_label", "ssv2_template"])
def test_every_dataset_config_reads_the_synthetic_folder(synth_root, name):
    cfg = load_dataset_config([f"dataset={name}", f"dataset.root={synth_root}"]).dataset
    assert cfg.evaluator == "retrieval" and cfg.num_frames == 12 and cfg.sampling == "middle"
    ds = VideoTextRetrievalDataset.from_config(cfg)
    attrs = S.clip_attributes(N_VIDEOS)
    if name in EXPECTED:
        assert (len(ds), len(ds.texts)) == EXPECTED[name]
        assert all(isinstance(v, int) for v in ds.txt2vid)
    else:  # SSV2: one text per label / template, a list of ground-truth videos each
        group = (lambda a: (a[1], a[2])) if name == "ssv2_label" else (lambda a: a[2])
        assert len(ds) == N_VIDEOS and len(ds.texts) == len({group(a) for a in attrs})
        assert sorted(v for gts in ds.txt2vid for v in gts) == list(range(N_VIDEOS))
    assert cfg.is_paragraph == (name in ("anet", "didemo"))
    assert cfg.trimmed30 == (name == "didemo")
    assert cfg.max_txt_len == {"msrvtt": 32, "msvd": 64, "anet": 150, "didemo": 64, "lsmdc": 96}.get(name, 25)
    colour, shape, direction = attrs[0]
    if name == "msrvtt":
        assert ds.texts[0] == f"a {colour} {shape} moving {direction}"
    if name == "anet":
        assert ds.texts[0] == f"a {colour} {shape} appears it moves {direction} across the screen then it stops"


def test_synthetic_video_config_generates_and_decodes_in_workers(tmp_path):
    cfg = load_dataset_config(["dataset=synthetic_video", f"dataset.root={tmp_path / 'gen'}",
                               "dataset.img_size=32", "dataset.video_reader=pyav"]).dataset
    ds = VideoTextRetrievalDataset.from_config(cfg)
    assert len(ds) == 8 and (tmp_path / "gen" / "synthetic_video.json").is_file()
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    batches = list(loader)
    clips = torch.cat([b[0] for b in batches])
    assert clips.shape == (8, cfg.num_frames, 3, 32, 32) and clips.dtype == torch.float32
    assert torch.cat([b[1] for b in batches]).tolist() == list(range(8))
    # background pixels (30, 30, 30) after ImageNet normalisation
    torch.testing.assert_close(clips[0, 0, :, 0, 0], ((30 / 255.0 - MEAN) / STD).flatten(), atol=0.05, rtol=0)


def make_broken_copy(synth_root, tmp_path):
    """The synthetic msrvtt split with clip_001 missing and clip_004 corrupt."""
    root = tmp_path / "broken"
    (root / "videos").mkdir(parents=True)
    (root / "annotations").mkdir()
    for f in (synth_root / "annotations").iterdir():
        (root / "annotations" / f.name).write_bytes(f.read_bytes())
    for i in range(N_VIDEOS):
        if i != 1:
            (root / "videos" / f"clip_{i:03d}.mp4").write_bytes((synth_root / "videos" / f"clip_{i:03d}.mp4").read_bytes())
    (root / "videos" / "clip_004.mp4").write_bytes(b"not a video at all")
    return root


def test_corrupt_video_errors_in_worker_or_is_skipped_and_counted(synth_root, tmp_path):
    root = make_broken_copy(synth_root, tmp_path)
    cfg = load_dataset_config(["dataset=msrvtt", f"dataset.root={root}", "dataset.img_size=16",
                               "dataset.num_frames=2"]).dataset
    ds = VideoTextRetrievalDataset.from_config(cfg)
    with pytest.raises(CorruptVideoError, match="clip_001.mp4"):
        list(torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1))
    cfg.skip_corrupt = True
    ds = VideoTextRetrievalDataset.from_config(cfg)
    returned = [int(i) for _, idx in torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1) for i in idx]
    assert returned == [0, SKIPPED_INDEX, 2, 3, SKIPPED_INDEX, 5]
    assert returned.count(SKIPPED_INDEX) == 2
    assert torch.equal(ds[4][0], torch.zeros(2, 3, 16, 16))


# ------------------------------------------------------------------------------------------ check tool
def test_check_tool_reports_missing_and_corrupt_and_exits_nonzero(synth_root, tmp_path, capsys):
    root = make_broken_copy(synth_root, tmp_path)
    rc = check_main(["dataset=msrvtt", f"dataset.root={root}", "--workers", "0"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "6 entries -> 6 videos, 6 texts" in out
    assert "present and readable: 4/6; missing: 1; unreadable: 1" in out
    assert f"missing    {root / 'videos' / 'clip_001.mp4'}" in out
    assert f"unreadable {root / 'videos' / 'clip_004.mp4'}" in out
    assert "PROBLEMS FOUND" in out
    # existence only: the corrupt file passes, the missing one does not
    assert check_main(["dataset=msrvtt", f"dataset.root={root}", "--no-decode"]) == 1
    assert "missing: 1; unreadable: 0" in capsys.readouterr().out


def test_check_tool_all_splits_ok_and_missing_annotation(synth_root, tmp_path, capsys):
    rc = check_main(["dataset=didemo", f"dataset.root={synth_root}", "--workers", "0"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "[test]" in out and "[val]" in out and out.rstrip().endswith("and decodes")
    assert check_main(["dataset=lsmdc", f"dataset.root={tmp_path / 'empty'}"]) == 1
    assert "ANNOTATION PROBLEM: Annotation file not found" in capsys.readouterr().out
    assert check_main(["dataset=imagenet"]) == 2  # not a video-text dataset
    # a QA set: its questions and answer list parse, every video its questions reference decodes
    assert check_main(["dataset=msrvtt_qa", f"dataset.root={synth_root}", "--workers", "0"]) == 0
    assert "18 entries -> 6 videos, 18 texts" in capsys.readouterr().out
    broken = tmp_path / "broken_qa"
    shutil.copytree(synth_root, broken)
    (broken / "annotations" / "msvd_qa_answer_list.json").write_text("{}")
    assert check_main(["dataset=msvd_qa", f"dataset.root={broken}", "--no-decode"]) == 1
    assert "ANNOTATION PROBLEM: Answer list" in capsys.readouterr().out
    assert check_main(["dataset=msrvtt", "dataset.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
