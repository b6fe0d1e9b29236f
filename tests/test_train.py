import math

import pytest
import torch
from torch import nn

from repshift.train import train, warmup_cosine


class Blobs(torch.utils.data.Dataset):
    """4 well-separated Gaussian blobs in 2-D; samples are (x, label, mask) like ShapeBench."""

    def __init__(self, n, seed, skip=()):
        g = torch.Generator().manual_seed(seed)
        centers = torch.tensor([[3.0, 3.0], [-3.0, 3.0], [-3.0, -3.0], [3.0, -3.0]])
        self.y = torch.arange(n) % 4
        self.x = centers[self.y] + 0.7 * torch.randn(n, 2, generator=g)
        self.skip = set(skip)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        label = -1 if i in self.skip else int(self.y[i])
        return self.x[i], label, torch.zeros(2, 2)


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 4))


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


KW = dict(batch_size=16, lr=1e-2, warmup_epochs=1, progress=False)


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 4, 12) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 12) == pytest.approx(1.0)
    assert warmup_cosine(4, 4, 12) == pytest.approx(1.0)
    assert warmup_cosine(8, 4, 12) == pytest.approx(0.5)  # half-way through the decay
    assert warmup_cosine(12, 4, 12) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(0, 0, 10) == pytest.approx(1.0)  # no warmup


def test_loss_decreases_and_learns_with_skipped_samples():
    skip = {0, 5, 17, 40}  # label -1: cross-entropy would fail on them if they were used
    out = train(make_model(), Blobs(96, 0, skip=skip), Blobs(48, 1), epochs=6, **KW)
    h = out["history"]
    assert [e["epoch"] for e in h] == [1, 2, 3, 4, 5, 6]
    assert h[-1]["train_loss"] < 0.6 * h[0]["train_loss"]
    assert h[-1]["val_top1"] >= 95.0
    assert all(e["skipped"] == 4 and e["n_train"] == 92 for e in h)
    assert out["resumed_from"] == 0 and out["epoch"] == 6


def test_lr_follows_warmup_then_cosine():
    # 64 samples / 16 = 4 steps per epoch; warmup = 4 steps; total = 8 steps
    out = train(make_model(), Blobs(64, 0), epochs=2, **{**KW, "progress": True})
    lrs = [e["lr"] for e in out["history"]]
    assert lrs[0] == pytest.approx(1e-2)  # after 4 steps: start of the decay
    assert lrs[1] == pytest.approx(0.0, abs=1e-12)  # end of the cosine


def test_all_skipped_makes_no_update():
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = train(model, Blobs(32, 0, skip=range(32)), epochs=1, **KW)
    assert math.isnan(out["history"][0]["train_loss"])
    assert out["history"][0]["skipped"] == 32
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_deterministic_given_seed():
    a, b, c = make_model(), make_model(), make_model()
    ha = train(a, Blobs(64, 0), Blobs(16, 1), epochs=2, seed=3, **KW)["history"]
    hb = train(b, Blobs(64, 0), Blobs(16, 1), epochs=2, seed=3, **KW)["history"]
    train(c, Blobs(64, 0), Blobs(16, 1), epochs=2, seed=4, **KW)
    assert same_weights(a, b)
    assert [e["train_loss"] for e in ha] == [e["train_loss"] for e in hb]
    assert not same_weights(a, c)  # another shuffle order


def test_resume_extends_run_and_is_noop_when_complete(tmp_path):
    ckpt = tmp_path / "run" / "ckpt.pt"
    first = train(make_model(), Blobs(64, 0), Blobs(16, 1), epochs=1, ckpt_path=ckpt, **KW)
    assert len(first["history"]) == 1 and ckpt.is_file()

    logged = []
    second = train(
        make_model(), Blobs(64, 0), Blobs(16, 1), epochs=3, ckpt_path=ckpt, log=logged.append, **KW
    )
    assert second["resumed_from"] == 1
    assert [e["epoch"] for e in logged] == [2, 3]  # starts at epoch 2
    assert len(second["history"]) == 3
    assert second["history"][0] == first["history"][0]  # first entry preserved
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 3 and len(state["history"]) == 3

    # already complete: returns at once, does not train, but leaves the trained weights loaded
    logged.clear()
    fresh = make_model(seed=99)
    third = train(fresh, Blobs(64, 0), Blobs(16, 1), epochs=3, ckpt_path=ckpt, log=logged.append, **KW)
    assert logged == [] and third["history"] == second["history"] and third["resumed_from"] == 3
    ref = make_model()
    ref.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    assert same_weights(fresh, ref)


def test_interrupted_run_keeps_last_epoch_and_resumes_identically(tmp_path):
    ckpt = tmp_path / "ckpt.pt"

    def boom(entry):
        if entry["epoch"] == 2:
            raise RuntimeError("killed during epoch 2")

    with pytest.raises(RuntimeError, match="killed"):
        train(make_model(), Blobs(64, 0), Blobs(16, 1), epochs=3, ckpt_path=ckpt, log=boom, **KW)
    state = torch.load(ckpt, weights_only=True)  # a valid checkpoint of epoch 1
    assert state["epoch"] == 1 and len(state["history"]) == 1
    assert {"model", "optimizer", "scheduler", "rng", "history"} <= set(state)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp files left behind

    resumed_model = make_model()
    resumed = train(resumed_model, Blobs(64, 0), Blobs(16, 1), epochs=3, ckpt_path=ckpt, **KW)
    straight_model = make_model()
    straight = train(straight_model, Blobs(64, 0), Blobs(16, 1), epochs=3, **KW)
    # a resumed run ends exactly where an uninterrupted one does
    assert same_weights(resumed_model, straight_model)
    drop = lambda h: [{k: v for k, v in e.items() if k != "time_s"} for e in h]  # noqa: E731
    assert drop(resumed["history"]) == drop(straight["history"])


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    train(make_model(), Blobs(32, 0), epochs=1, ckpt_path=ckpt, **KW)
    wider = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 4))
    with pytest.raises(ValueError, match=r"cannot resume from .*ckpt\.pt: it holds a different model"):
        train(wider, Blobs(32, 0), epochs=2, ckpt_path=ckpt, **KW)
