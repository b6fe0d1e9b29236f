"""ImageNet-layout folders, corrupt-file handling and the eval/train transforms (repshift.data)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from repshift.data import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    SKIPPED_LABEL,
    CorruptImageError,
    ImageFolderDataset,
    eval_transform,
    train_transform,
)

LAYOUT = "<root>/<split>/<class_name>/<image>.JPEG"


def _img(path, size=(40, 30), value=0, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), value, np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return path


@pytest.fixture()
def tree(tmp_path):
    """val/ with classes in non-sorted creation order, mixed extensions and junk that must be ignored."""
    root = tmp_path / "imagenet"
    val = root / "val"
    _img(val / "n02" / "b.JPEG", value=20, fmt="JPEG")
    _img(val / "n02" / "a.png", value=21)
    _img(val / "n01" / "z.jpg", value=10, fmt="JPEG")
    _img(val / "n01" / "y.PNG", value=11, fmt="PNG")
    _img(val / "n01" / "x.bmp", value=12, fmt="BMP")
    _img(val / "n03" / "c.webp", value=30, fmt="WEBP")
    (val / "n01" / "notes.txt").write_text("not an image")
    (val / "n01" / ".hidden.png").write_bytes(b"")
    (val / ".cache").mkdir()
    _img(val / ".cache" / "ignored.png")
    return root


def test_folder_classes_labels_and_order(tree):
    ds = ImageFolderDataset(tree, split="val")
    assert ds.classes == ["n01", "n02", "n03"]
    assert ds.class_to_idx == {"n01": 0, "n02": 1, "n03": 2}
    names = [(p.name, label) for p, label in ds.samples]
    assert names == [("x.bmp", 0), ("y.PNG", 0), ("z.jpg", 0), ("a.png", 1), ("b.JPEG", 1), ("c.webp", 2)]
    assert len(ds) == 6 and ds.targets == [0, 0, 0, 1, 1, 2]
    img, label = ds[4]  # transform=None -> the PIL RGB image
    assert isinstance(img, Image.Image) and img.mode == "RGB" and label == 1
    # the right file is read for each index (values survive JPEG within a few levels)
    assert abs(int(np.asarray(img).mean()) - 20) <= 3


def test_folder_with_eval_transform_and_loader(tree):
    ds = ImageFolderDataset(tree, split="val", transform=eval_transform())
    x, y = ds[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == 0
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=6)))
    assert xb.shape == (6, 3, 224, 224) and yb.tolist() == [0, 0, 0, 1, 1, 2]


def test_missing_root_error_names_config_key_and_layout(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError) as e:
        ImageFolderDataset(missing, split="val")
    msg = str(e.value)
    assert f"dataset.root={missing}" in msg and "not found" in msg and LAYOUT in msg


def test_missing_split_error(tree):
    with pytest.raises(FileNotFoundError) as e:
        ImageFolderDataset(tree, split="train")
    msg = str(e.value)
    assert f"dataset.root={tree}" in msg and "train/" in msg and LAYOUT in msg and "val" in msg


def test_no_images_error(tmp_path):
    root = tmp_path / "empty"
    (root / "val" / "n01").mkdir(parents=True)
    (root / "val" / "n01" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError) as e:
        ImageFolderDataset(root, split="val")
    assert "dataset.root=" in str(e.value) and "no images" in str(e.value) and LAYOUT in str(e.value)
    (root / "val2").mkdir()
    with pytest.raises(FileNotFoundError, match="no class folders"):
        ImageFolderDataset(root, split="val2")


def test_corrupt_image_raises_with_path(tree):
    bad = tree / "val" / "n02" / "broken.JPEG"
    bad.write_bytes(b"\x00garbage, definitely not a JPEG" * 10)
    ds = ImageFolderDataset(tree, split="val", transform=eval_transform())
    idx = [p for p, _ in ds.samples].index(bad)
    with pytest.raises(CorruptImageError) as e:
        ds[idx]
    assert "Corrupt or unreadable image" in str(e.value) and "cannot identify image file" in str(e.value)
    assert str(bad) in str(e.value) and "dataset.skip_corrupt=true" in str(e.value)
    assert e.value.path == str(bad)
    # survives pickling (DataLoader workers send exceptions across processes)
    again = pickle.loads(pickle.dumps(e.value))
    assert type(again) is CorruptImageError and again.path == str(bad) and str(again) == str(e.value)


def test_truncated_jpeg_is_corrupt(tree):
    good = _img(tree / "val" / "n01" / "full.JPEG", size=(256, 256), value=128, fmt="JPEG")
    data = good.read_bytes()
    cut = tree / "val" / "n01" / "cut.JPEG"
    cut.write_bytes(data[: len(data) // 2])
    ds = ImageFolderDataset(tree, split="val")
    idx = [p for p, _ in ds.samples].index(cut)
    with pytest.raises(CorruptImageError, match="cut.JPEG"):
        ds[idx]


def test_skip_corrupt_returns_zeros_and_minus_one(tree):
    bad = tree / "val" / "n03" / "broken.JPEG"
    bad.write_bytes(b"not an image at all")
    ds = ImageFolderDataset(tree, split="val", transform=eval_transform(), skip_corrupt=True)
    idx = [p for p, _ in ds.samples].index(bad)
    x, y = ds[idx]
    good, _ = ds[0]
    assert y == SKIPPED_LABEL == -1
    assert x.shape == good.shape == (3, 224, 224) and x.dtype == good.dtype and not x.any()
    # a batch mixing skipped and good samples collates
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=len(ds))))
    assert xb.shape[0] == len(ds) and (yb == -1).sum() == 1
    # blank shape follows the transform's output size
    ds96 = ImageFolderDataset(tree, split="val", transform=eval_transform(img_size=96), skip_corrupt=True)
    assert ds96[idx][0].shape == (3, 96, 96)


def _denorm(x):
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    return x * std + mean


def test_eval_transform_deit_default():
    t = eval_transform()
    names = [type(op).__name__ for op in t.transforms]
    assert names[:2] == ["Resize", "CenterCrop"] and "Normalize" in names
    assert list(t.transforms[0].size) == [256] and "bicubic" in str(t.transforms[0].interpolation).lower()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))  # H=300, W=400
    x = t(img)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    # equals resize-shorter-side-to-256 then centre crop
    ref = TF.center_crop(TF.resize(img, 256, interpolation=TF.InterpolationMode.BICUBIC), 224)
    assert torch.allclose(_denorm(x), TF.to_tensor(ref), atol=1e-5)
    # and what timm builds for DeiT's evaluation, to float rounding
    from timm.data import create_transform

    timm_t = create_transform(input_size=224, is_training=False, interpolation="bicubic", crop_pct=0.875)
    assert (x - timm_t(img)).abs().max() < 1e-5


def test_eval_transform_crop_pct_1_keeps_geometry():
    arr = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    x = eval_transform(crop_pct=1.0)(Image.fromarray(arr))
    assert x.shape == (3, 224, 224)
    back = (_denorm(x).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(back, arr)  # pixel-exact: no resampling, no crop


def test_eval_transform_rejects_bad_crop_pct():
    with pytest.raises(ValueError, match="crop_pct"):
        eval_transform(crop_pct=1.5)


def test_train_transform_is_light_and_random():
    t = train_transform()
    names = [type(op).__name__ for op in t.transforms]
    assert "ColorJitter" not in names and "RandomHorizontalFlip" in names
    rrc = t.transforms[0]
    assert tuple(rrc.scale) == (0.8, 1.0) and rrc.ratio[0] >= 0.85 and rrc.ratio[1] <= 1.0 / 0.85
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    torch.manual_seed(0)
    outs = [t(img) for _ in range(4)]
    assert all(o.shape == (3, 224, 224) for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("make", [lambda: eval_transform(crop_pct=0.5), lambda: train_transform(color_jitter=0.4)],
                         ids=["eval", "train"])
def test_a_mask_moves_with_its_image(make):
    """A tv_tensors.Mask beside the image gets the same resize/crop/flip, and no colour change or normalisation."""
    from torchvision import tv_tensors

    # the image is its own mask: white where the mask is 255, so they must still agree after the transform
    rng = np.random.default_rng(3)
    mask = np.zeros((180, 240), np.uint8)
    mask[40:110, 30:160] = 255
    mask[rng.integers(0, 180, 50), rng.integers(0, 240, 50)] = 255
    img = Image.fromarray(np.repeat(mask[..., None], 3, axis=-1))
    t = make()
    for seed in range(4):
        torch.manual_seed(seed)
        x, m = t(img, tv_tensors.Mask(torch.from_numpy(mask)[None]))
        assert m.dtype == torch.uint8 and set(m.unique().tolist()) <= {0, 255}  # nearest: no blending, no scaling
        bright = _denorm(x).mean(0) > 0.5
        agree = (bright == (m[0] == 255)).float().mean()
        assert agree > 0.97, f"seed {seed}: only {agree:.3f} of the pixels agree"
