"""ShapeBench: generated files, masks, determinism, ensure(), the dataset and its mask alignment."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from repshift.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, eval_transform, train_transform
from repshift.data import shapebench_generate as sb
from repshift.data.folder import CorruptImageError
from repshift.data.shapebench import ShapeBenchDataset, load_mask
from repshift.data.shapebench_generate import CLASSES, ensure, generate, is_complete

N_TRAIN, N_VAL = 2, 3


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sb") / "shapebench"
    return generate(root, n_train_per_class=N_TRAIN, n_val_per_class=N_VAL, seed=0, progress=False, workers=0)


def _rows(root):
    with open(root / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_files_and_labels_agree(bench):
    assert (bench / "classes.txt").read_text().split() == list(CLASSES) == sorted(CLASSES)
    rows = _rows(bench)
    assert list(rows[0]) == ["split", "path", "label", "class_name", "mask_path"]
    assert len(rows) == len(CLASSES) * (N_TRAIN + N_VAL)
    for r in rows:
        img_p, mask_p = bench / r["path"], bench / r["mask_path"]
        split, cls, stem = Path(r["path"]).parts
        assert split == r["split"] and cls == r["class_name"] and int(r["label"]) == CLASSES.index(cls)
        assert r["mask_path"] == f"masks/{split}/{cls}/{stem}"
        with Image.open(img_p) as im, Image.open(mask_p) as m:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (224, 224)
            assert m.format == "PNG" and m.mode == "L" and m.size == (224, 224)
            assert set(np.unique(np.asarray(m)).tolist()) <= {0, 255}
    # every file on disk is listed, nothing extra
    on_disk = {p.relative_to(bench).as_posix() for p in bench.rglob("*.png")}
    assert on_disk == {r["path"] for r in rows} | {r["mask_path"] for r in rows}
    meta = json.loads((bench / ".complete").read_text())
    assert meta["seed"] == 0 and meta["n_train_per_class"] == N_TRAIN and meta["n_val_per_class"] == N_VAL
    assert meta["n_images"] == len(rows) and meta["classes"] == list(CLASSES)


def test_masks_nonempty_and_plausible(bench):
    for r in _rows(bench):
        m = load_mask(bench / r["mask_path"])
        assert m.dtype == bool and m.shape == (224, 224)
        frac = m.mean()
        assert 0.02 <= frac <= 0.40, (r["path"], frac)
        # the shape stays off the border (margin), so random crops rarely cut it
        assert not m[0].any() and not m[-1].any() and not m[:, 0].any() and not m[:, -1].any()


def _erode(m, r=2):
    out = m.copy()
    for ax in (0, 1):
        for s in range(-r, r + 1):
            out &= np.roll(m, s, axis=ax)
    return out


def test_mask_edges_are_image_edges(bench):
    """The saved mask is the drawn shape: image gradients are strong on the mask outline and weak inside it
    (inside, only gentle shading and pixel noise vary)."""
    for r in _rows(bench):
        img = np.asarray(Image.open(bench / r["path"]), dtype=np.float32)
        m = load_mask(bench / r["mask_path"])
        gy, gx = np.gradient(img, axis=(0, 1))
        g = (np.abs(gx) + np.abs(gy)).mean(-1)
        inner = _erode(m, 2)
        outline = m & ~_erode(m, 1)
        assert inner.any() and outline.any()
        assert g[outline].mean() > 3 * g[inner].mean(), (r["path"], g[outline].mean(), g[inner].mean())


def test_same_seed_is_byte_identical_other_seed_differs(bench, tmp_path):
    again = generate(tmp_path / "again", n_train_per_class=N_TRAIN, n_val_per_class=N_VAL, seed=0,
                     progress=False, workers=0)
    assert _files(again) == _files(bench)
    other = generate(tmp_path / "other", n_train_per_class=N_TRAIN, n_val_per_class=N_VAL, seed=1,
                     progress=False, workers=0)
    a, b = _files(bench), _files(other)
    imgs = [k for k in a if k.endswith(".png") and not k.startswith("masks/")]
    assert set(a) - {".complete"} == set(b) - {".complete"}
    assert all(a[k] != b[k] for k in imgs)


def test_worker_count_does_not_change_output(tmp_path):
    one = generate(tmp_path / "w0", n_train_per_class=1, n_val_per_class=1, seed=3, progress=False, workers=0)
    two = generate(tmp_path / "w2", n_train_per_class=1, n_val_per_class=1, seed=3, progress=False, workers=2)
    assert _files(one) == _files(two)


def test_train_and_val_differ_and_prefix_stable(tmp_path, bench):
    a = np.asarray(Image.open(bench / "train/circle/circle_00000.png"))
    b = np.asarray(Image.open(bench / "val/circle/circle_00000.png"))
    assert not np.array_equal(a, b)
    # a bigger run keeps the images of a smaller one (RNG per (seed, split, class, index))
    img, mask = sb.render(0, "val", 0, 0)
    assert np.array_equal(np.asarray(img), b)
    assert np.array_equal(np.asarray(mask) > 0, load_mask(bench / "masks/val/circle/circle_00000.png"))


def test_ensure_skips_when_complete_and_regenerates_otherwise(tmp_path, monkeypatch):
    params = dict(n_train_per_class=1, n_val_per_class=1, seed=0, progress=False, workers=0)
    root = ensure(tmp_path / "sb", **params)
    assert is_complete(root, **params)
    marker = root / "train" / "circle" / "circle_00000.png"
    before = marker.stat().st_mtime_ns

    calls = []
    real_generate = sb.generate
    monkeypatch.setattr(sb, "generate", lambda *a, **k: calls.append(1) or real_generate(*a, **k))
    ensure(root, **params)
    assert calls == [] and marker.stat().st_mtime_ns == before  # complete: nothing redone

    (root / ".complete").unlink()  # a half-written folder looks like this
    stale = root / "train" / "circle" / "stale_99999.png"
    shutil.copy(marker, stale)
    ensure(root, **params)
    assert calls == [1] and (root / ".complete").is_file() and not stale.exists()

    marker.unlink()  # a file lost after completion is noticed too
    ensure(root, **params)
    assert calls == [1, 1] and marker.is_file()

    ensure(root, **{**params, "n_val_per_class": 2})  # other parameters: regenerate with them
    assert calls == [1, 1, 1] and len(_rows(root)) == len(CLASSES) * 3
    assert json.loads((root / ".complete").read_text())["n_val_per_class"] == 2


def test_generate_keeps_unrelated_files(tmp_path):
    root = tmp_path / "sb"
    root.mkdir()
    (root / "notes.md").write_text("mine")
    generate(root, n_train_per_class=1, n_val_per_class=1, progress=False, workers=0)
    assert (root / "notes.md").read_text() == "mine"


def _denorm_uint8(x):
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    return ((x * std + mean).permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def test_dataset_returns_aligned_image_label_mask(bench):
    ds = ShapeBenchDataset(bench, "val", transform=eval_transform(crop_pct=1.0))
    assert ds.classes == list(CLASSES) and len(ds) == len(CLASSES) * N_VAL
    for i in range(0, len(ds), 4):
        img, label, mask = ds[i]
        path = ds.samples[i][0]
        assert label == CLASSES.index(path.parent.name)
        assert img.shape == (3, 224, 224) and mask.shape == (224, 224) and mask.dtype == torch.float32
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        saved = load_mask(ds.mask_paths[i])
        assert ds.mask_paths[i].stem == path.stem
        assert np.array_equal(mask.numpy().astype(bool), saved)
        assert np.array_equal(_denorm_uint8(img), np.asarray(Image.open(path)))  # crop_pct=1: untouched pixels
    x, y = ShapeBenchDataset(bench, "train", transform=eval_transform(crop_pct=1.0), with_masks=False)[0]
    assert x.shape == (3, 224, 224) and y == 0
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    xb, yb, mb = next(iter(loader))
    assert xb.shape == (8, 3, 224, 224) and mb.shape == (8, 224, 224)


@pytest.mark.parametrize("make", [lambda: eval_transform(), lambda: train_transform()], ids=["eval0.875", "train"])
def test_mask_follows_resize_crop_and_flip(bench, tmp_path, make):
    """Replace images by their own masks: after any resize/crop/flip the image must still equal the mask."""
    root = tmp_path / "copy"
    shutil.copytree(bench, root)
    for r in _rows(root):
        if r["split"] == "val":
            m = np.asarray(Image.open(root / r["mask_path"]))
            Image.fromarray(np.repeat(m[..., None], 3, -1)).save(root / r["path"])
    ds = ShapeBenchDataset(root, "val", transform=make())
    torch.manual_seed(0)
    for i in range(len(ds)):
        for _ in range(2):
            img, _, mask = ds[i]
            as_mask = torch.from_numpy(_denorm_uint8(img)[..., 0] >= 128)
            # the image is resized bicubic, its mask nearest-neighbour: they may differ only next to an edge (a crop
            # or flip that missed the mask would leave whole regions wrong)
            grown = torch.nn.functional.max_pool2d(mask[None, None], 3, 1, 1)[0, 0]
            shrunk = -torch.nn.functional.max_pool2d(-mask[None, None], 3, 1, 1)[0, 0]
            wrong = as_mask != mask.bool()
            assert not (wrong & (grown == shrunk)).any(), (i, int((wrong & (grown == shrunk)).sum()))


def test_skip_corrupt_in_shapebench(bench, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(bench, root)
    bad = root / "val" / "star" / "star_00001.png"
    bad.write_bytes(b"garbage")
    ds = ShapeBenchDataset(root, "val", transform=eval_transform(crop_pct=1.0))
    idx = [p for p, _ in ds.samples].index(bad)
    with pytest.raises(CorruptImageError, match="star_00001.png"):
        ds[idx]
    ds.skip_corrupt = True
    img, label, mask = ds[idx]
    assert label == -1 and img.shape == (3, 224, 224) and mask.shape == (224, 224) and not mask.any()


def test_dataset_requires_complete_folder(tmp_path, bench):
    root = tmp_path / "copy"
    shutil.copytree(bench, root)
    (root / ".complete").unlink()
    with pytest.raises(FileNotFoundError) as e:
        ShapeBenchDataset(root, "val")
    assert f"dataset.root={root}" in str(e.value) and "python -m repshift.data.shapebench" in str(e.value)


def test_class_not_readable_from_colour(bench):
    """Per-class mean colours differ by little compared with the spread within a class, and a nearest-class-mean
    classifier on mean RGB (leave-one-out) is near chance."""
    feats, labels = [], []
    for r in _rows(bench):
        img = np.asarray(Image.open(bench / r["path"]), dtype=np.float64)
        feats.append(img.reshape(-1, 3).mean(0))
        labels.append(int(r["label"]))
    X, y = np.array(feats), np.array(labels)
    k = len(CLASSES)
    class_means = np.stack([X[y == c].mean(0) for c in range(k)])
    within = np.sqrt(np.mean([X[y == c].var(0, ddof=1) for c in range(k)], 0))
    between = class_means.std(0, ddof=1)
    assert np.all(between < within), (between, within)
    hits = 0
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        cm = np.stack([X[keep & (y == c)].mean(0) for c in range(k)])
        hits += int(np.argmin(((cm - X[i]) ** 2).sum(1)) == y[i])
    assert hits / len(y) <= 0.35, hits / len(y)


def test_cli(tmp_path, capsys):
    root = tmp_path / "cli"
    args = ["--root", str(root), "--train-per-class", "1", "--val-per-class", "1", "--seed", "5", "--quiet"]
    assert sb.main(args) == 0
    out = capsys.readouterr().out
    assert "wrote 16 images" in out and str(root.resolve()) in out
    assert sb.main(args) == 0
    assert "already complete" in capsys.readouterr().out
    # the command the Makefile and the README give, on the dataset module's name
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "repshift.data.shapebench", *args], capture_output=True, text=True)
    assert proc.returncode == 0 and "already complete" in proc.stdout, proc.stderr


def test_concurrent_runs_generate_the_folder_once(tmp_path):
    """Two runs of a sweep starting together on one folder: one generates, the other waits and reuses it."""
    import threading

    from repshift.data import shapebench_generate as shapebench

    calls = []
    original = shapebench.generate

    def counted(root, **kwargs):
        calls.append(root)
        return original(root, **kwargs)

    shapebench.generate = counted
    try:
        spec = dict(n_train_per_class=1, n_val_per_class=1, seed=0, progress=False, workers=0)
        threads = [threading.Thread(target=shapebench.ensure, args=(tmp_path / "sb",), kwargs=spec) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        shapebench.generate = original
    assert len(calls) == 1 and shapebench.is_complete(tmp_path / "sb", n_train_per_class=1, n_val_per_class=1, seed=0,
                                                       img_size=224)
