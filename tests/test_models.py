"""Building models by name and loading weights from local files (the hub is out of reach here)."""
import pytest
import timm
import torch

from repshift.models import build_model
from repshift.train import train

TINY = dict(embed_dim=32, depth=2, num_heads=2, num_classes=3)


def tiny(seed):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", **TINY)


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_random_init_is_labelled_as_such():
    model, weights = build_model("vit_tiny_patch16_224", kwargs=TINY)
    assert weights == {"real": False, "source": "random-init"}
    assert model.head.out_features == 3


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "ddp"])
def test_local_checkpoint_formats(tmp_path, wrap):
    source = tiny(1)
    state = source.state_dict()
    payload = {
        "plain": state,
        "model": {"model": state, "epoch": 3},  # official DeiT .pth and repshift.train checkpoints
        "state_dict": {"state_dict": state},
        "ddp": {f"module.{k}": v for k, v in state.items()},
    }[wrap]
    torch.save(payload, tmp_path / "w.pth")
    model, weights = build_model("vit_tiny_patch16_224", checkpoint=str(tmp_path / "w.pth"), kwargs=TINY)
    assert same(model, source)
    assert weights["real"] and weights["source"].startswith("file:")


def test_a_training_checkpoint_loads(tmp_path):
    trained = tiny(2)
    images = torch.randn(8, 3, 224, 224)
    dataset = [(images[i], i % 3) for i in range(8)]
    train(trained, dataset, epochs=1, batch_size=4, ckpt_path=tmp_path / "t.pth", progress=False)
    model, _ = build_model("vit_tiny_patch16_224", checkpoint=str(tmp_path / "t.pth"), kwargs=TINY)
    assert same(model, trained)


def test_missing_or_mismatched_checkpoint_names_the_config_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.checkpoint=.*nope.pth"):
        build_model("vit_tiny_patch16_224", checkpoint=str(tmp_path / "nope.pth"), kwargs=TINY)
    torch.save(tiny(0).state_dict(), tmp_path / "w.pth")
    with pytest.raises(RuntimeError, match="does not fit"):
        build_model("vit_tiny_patch16_224", checkpoint=str(tmp_path / "w.pth"), kwargs=dict(TINY, embed_dim=64))


def test_unreachable_hub_gives_the_ways_out(monkeypatch):
    def offline(*args, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("no network")
        return tiny(0)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match="model.checkpoint=/path/to/weights.*model.pretrained=false"):
        build_model("deit_small_patch16_224", pretrained=True)


class _RunsCodeWhenUnpickled:
    """A pickle payload that creates a file when loaded: stands in for a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": tiny(0).state_dict(), "payload": _RunsCodeWhenUnpickled(marker)}, tmp_path / "evil.pth")
    with pytest.raises(RuntimeError, match=r"model.checkpoint=.*evil.pth.*model.unsafe_full_unpickle=true"):
        build_model("vit_tiny_patch16_224", checkpoint=str(tmp_path / "evil.pth"), kwargs=TINY)
    assert not marker.exists()
    # the user's explicit opt-in unpickles fully (and so runs the payload: the option's name says the risk)
    model, _ = build_model("vit_tiny_patch16_224", checkpoint=str(tmp_path / "evil.pth"), kwargs=TINY,
                           unsafe_full_unpickle=True)
    assert marker.exists() and same(model, tiny(0))


def test_official_extra_classes_and_safetensors_load_without_a_full_unpickle(tmp_path):
    import argparse

    from safetensors.torch import save_file

    source = tiny(3)
    torch.save({"model": source.state_dict(), "args": argparse.Namespace(lr=1e-3)}, tmp_path / "vim_style.pth")
    assert same(build_model("vit_tiny_patch16_224", checkpoint=str(tmp_path / "vim_style.pth"), kwargs=TINY)[0], source)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    assert same(build_model("vit_tiny_patch16_224", checkpoint=str(tmp_path / "w.safetensors"), kwargs=TINY)[0], source)
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.safetensors is not a valid safetensors file"):
        build_model("vit_tiny_patch16_224", checkpoint=str(tmp_path / "bad.safetensors"), kwargs=TINY)
