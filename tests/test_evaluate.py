from pathlib import Path

import pytest
import torch
from torch import nn

from repshift import distributed as D
from repshift.evaluate.classification import evaluate
from repshift.evaluate.errors import EmptyEvaluationError

from support import TORCHRUN_VARS, run_torchrun_workers


class LookupModel(nn.Module):
    """Returns fixed logits per sample: the input [B, 1] holds the dataset index."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table.float())
        self.seen: list[int] = []
        self.calls: list[dict] = []

    def forward(self, x):
        idx = x[:, 0].long()
        self.seen.extend(idx.tolist())
        self.calls.append(
            {
                "training": self.training,
                "inference": torch.is_inference_mode_enabled(),
                "autocast": torch.is_autocast_enabled("cpu"),
                "autocast_dtype": torch.get_autocast_dtype("cpu"),
            }
        )
        return self.table[idx]


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, labels, with_mask=False, tensor_labels=False):
        self.labels = list(labels)
        self.with_mask = with_mask
        self.tensor_labels = tensor_labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = torch.tensor([float(i)])
        y = torch.tensor(self.labels[i]) if self.tensor_labels else self.labels[i]
        if self.with_mask:
            return x, y, torch.ones(4, 4)
        return x, y


DESC = torch.tensor([6.0, 5, 4, 3, 2, 1])  # ranking 0, 1, 2, 3, 4, 5
ASC = torch.tensor([1.0, 2, 3, 4, 5, 6])  # ranking 5, 4, 3, 2, 1, 0
# (logits, label): top-1 hit? top-5 hit?
HAND = [
    (DESC, 0),  # yes yes
    (DESC, 4),  # no  yes
    (DESC, 5),  # no  no  (5 is the 6th)
    (ASC, 5),  # yes yes
    (DESC, -1),  # skipped
    (ASC, 0),  # no  no
    (DESC, 1),  # no  yes
]


def hand_problem(**kw):
    table = torch.stack([logits for logits, _ in HAND])
    return LookupModel(table), ToyDataset([label for _, label in HAND], **kw)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 64])
def test_hand_computed_top1_top5_and_skipped(batch_size):
    model, ds = hand_problem()
    res = evaluate(model, ds, batch_size=batch_size, progress=False)
    assert res["n"] == 6
    assert res["skipped"] == 1
    assert res["top1"] == pytest.approx(100 * 2 / 6)
    assert res["top5"] == pytest.approx(100 * 4 / 6)
    # the skipped sample never reaches the model, every other one exactly once
    assert sorted(model.seen) == [0, 1, 2, 3, 5, 6]


def test_extra_elements_and_tensor_labels_accepted():
    model, ds = hand_problem(with_mask=True, tensor_labels=True)
    res = evaluate(model, ds, batch_size=4, progress=True)  # progress bar path too
    assert (res["n"], res["skipped"]) == (6, 1)
    assert res["top1"] == pytest.approx(100 * 2 / 6)
    assert res["top5"] == pytest.approx(100 * 4 / 6)


def test_top5_with_fewer_than_five_classes_is_not_reported():
    table = torch.tensor([[3.0, 2, 1], [3.0, 2, 1], [3.0, 2, 1]])
    res = evaluate(LookupModel(table), ToyDataset([0, 2, 1]), batch_size=2, progress=False)
    assert res["top1"] == pytest.approx(100 / 3)
    assert res["top5"] is None  # top-5 of 3 classes would contain every label: 100 % that means nothing


def test_all_skipped_is_an_error_naming_the_data():
    model, _ = hand_problem()
    with pytest.raises(EmptyEvaluationError, match=r"nothing was evaluated on a ToyDataset of 7 samples: all 7 images "
                                                   r"were skipped as unreadable \(dataset.skip_corrupt=true\)"):
        evaluate(model, ToyDataset([-1] * 7), batch_size=3, progress=False)
    assert model.seen == []
    with pytest.raises(EmptyEvaluationError, match="the split holds no images"):
        evaluate(model, ToyDataset([]), batch_size=3, progress=False)


def test_eval_mode_inference_mode_and_restores_training():
    model, ds = hand_problem()
    model.train()
    evaluate(model, ds, batch_size=4, progress=False)
    assert all(not c["training"] and c["inference"] and not c["autocast"] for c in model.calls)
    assert model.training  # previous mode restored


def test_autocast_dtype_applied():
    model, ds = hand_problem()
    res = evaluate(model, ds, batch_size=4, progress=False, amp_dtype=torch.bfloat16)
    assert all(c["autocast"] and c["autocast_dtype"] == torch.bfloat16 for c in model.calls)
    assert res["top1"] == pytest.approx(100 * 2 / 6)


def test_real_linear_model_under_bfloat16_autocast():
    torch.manual_seed(0)
    x = torch.randn(20, 8)
    w = torch.randn(8, 4)
    labels = (x @ w).argmax(1).tolist()
    model = nn.Linear(8, 4, bias=False)
    with torch.no_grad():
        model.weight.copy_(w.T)

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return 20

        def __getitem__(self, i):
            return x[i], labels[i]

    res = evaluate(model, DS(), batch_size=8, progress=False)
    assert res == {"top1": 100.0, "top5": None, "n": 20, "skipped": 0}  # 4 classes: no top-5
    res16 = evaluate(model, DS(), batch_size=8, progress=False, amp_dtype=torch.bfloat16)
    assert res16["n"] == 20 and res16["top5"] is None and res16["top1"] >= 85.0


# ---------------------------------------------------------------- distributed helpers
@pytest.mark.parametrize("n,world", [(0, 1), (1, 3), (7, 2), (10, 3), (16, 4), (5, 8)])
def test_shard_indices_disjoint_covering_no_padding(n, world):
    shards = [D.shard_indices(n, r, world) for r in range(world)]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == list(range(n))  # covering, no duplicates, no padding
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_shard_indices_validates():
    with pytest.raises(ValueError):
        D.shard_indices(5, 2, 2)
    with pytest.raises(ValueError):
        D.shard_indices(5, 0, 0)


def test_single_process_helpers_without_env(monkeypatch):
    for k in TORCHRUN_VARS:
        monkeypatch.delenv(k, raising=False)
    assert D.init_from_env() == (0, 1, 0)
    assert not D.is_initialized()
    assert D.is_main()
    assert D.all_gather_objects({"a": 1}) == [{"a": 1}]
    D.barrier()
    D.cleanup()


def test_init_from_env_requires_master_addr(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        D.init_from_env()
    assert not D.is_initialized()


# ---------------------------------------------------------------- real 2-process run (gloo)
def random_problem():
    """11 samples (odd), 7 classes, two skipped, about half the labels set to the argmax."""
    g = torch.Generator().manual_seed(123)
    table = torch.randn(11, 7, generator=g)
    labels = torch.randint(0, 7, (11,), generator=g)
    labels[::2] = table[::2].argmax(1)
    labels[3] = -1
    labels[8] = -1
    return LookupModel(table), ToyDataset(labels.tolist(), with_mask=True)


WORKER = """
import json, os, sys
sys.path.insert(0, {tests_dir!r})
from repshift import distributed as D
from repshift.evaluate.classification import evaluate
from test_evaluate import random_problem

rank, world, local_rank = D.init_from_env(backend="gloo")
model, ds = random_problem()
res = evaluate(model, ds, batch_size=2, progress=True)
out = dict(rank=rank, world=world, local_rank=local_rank, initialized=D.is_initialized(),
           main=D.is_main(), res=res, seen=sorted(model.seen))
with open(os.path.join({out_dir!r}, "rank%d.json" % rank), "w") as f:
    json.dump(out, f)
D.barrier()
D.cleanup()
"""


@pytest.mark.e2e
def test_torchrun_two_processes_match_single_process(tmp_path):
    outs = run_torchrun_workers(WORKER, tmp_path, Path(__file__).parent)

    model, ds = random_problem()
    single = evaluate(model, ds, batch_size=2, progress=False)
    assert single["n"] == 9 and single["skipped"] == 2
    assert 0 < single["top1"] < 100  # a non-trivial accuracy
    for r, out in enumerate(outs):
        assert (out["rank"], out["world"], out["local_rank"]) == (r, 2, r)
        assert out["initialized"] and out["main"] == (r == 0)
        assert out["res"] == single  # every rank returns exactly the single-process numbers
    # each rank really evaluated only its own shard: disjoint, together all valid samples
    seen0, seen1 = set(outs[0]["seen"]), set(outs[1]["seen"])
    assert not seen0 & seen1
    assert sorted(seen0 | seen1) == [0, 1, 2, 4, 5, 6, 7, 9, 10]
    assert seen0 and seen1
