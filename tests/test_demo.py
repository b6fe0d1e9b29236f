"""`make demo` scaled down: every step runs and writes what it should (not what it finds)."""
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from repshift.record import scan
from repshift.report.claims import ledger

ROOT = Path(__file__).resolve().parents[1]


def agreement_literal_block0(out):
    return pd.read_csv(out / "mask_agreement.csv", index_col=0).loc["l2-mlp", "block 0"]


@pytest.mark.e2e
def test_demo_end_to_end_small(tmp_path):
    out = tmp_path / "demo"
    command = [
        sys.executable, "-m", "repshift.demo",
        "--out", str(out), "--data", str(tmp_path / "shapebench"), "--checkpoint", str(tmp_path / "vit.pth"),
        "--train-per-class", "3", "--val-per-class", "2", "--epochs", "3", "--mask-images", "8",
        "--overrides", "model.kwargs.embed_dim=32", "model.kwargs.num_heads=2",
        "train.batch_size=8", "train.lr=3e-3", "train.warmup_epochs=0", "dataset.num_workers=0",
        "bench.cpu.batch_size=2", "bench.cpu.warmup=0", "bench.cpu.iters=1", "bench.cpu.repeats=1", "progress=false",
    ]
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=str(ROOT))
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    # data: images with masks
    masks = list((tmp_path / "shapebench/masks/val").rglob("*.png"))
    assert len(masks) == 16 and len(list((tmp_path / "shapebench/val").rglob("*.png"))) == 16

    # training ran through the suite's train task and lowered the loss
    (train_result,) = (out / "runs/demo_train").rglob("result.json")
    history = json.loads(train_result.read_text())["train"]["history"]
    assert len(history) == 3 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert (tmp_path / "vit.pth").exists()

    # Base / Attn / Ours, the last two with the paper's DeiT schedule as it is
    found = scan(out / "runs/demo")
    assert not found.problems
    runs = {record.method.name: record for _, record in found.records}
    assert runs["base"].compress is None or runs["base"].compress.ratio == 0
    for method in ("attn", "ours"):
        assert runs[method].compress.layers == [0, 3, 6] and runs[method].compress.ratio == 0.2

    # tables and figure
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"base", "attn", "ours", "static", "random"}
    readings = pd.read_csv(out / "readings.csv", index_col=0)
    assert list(readings.index) == ["literal", "update", "normed"]
    assert readings.loc["literal", "top-1 (DeiT schedule)"] == summary["methods"]["ours"]["Acc-1"]
    assert readings.loc["literal", "block 0"] == agreement_literal_block0(out)
    assert "representation shift beats a random choice of tokens" in proc.stdout
    assert "ShapeBench, tiny ViT trained here" in (out / "methods.md").read_text()
    agreement = pd.read_csv(out / "mask_agreement.csv", index_col=0)
    assert {"l2-mlp", "l1-attn", "cos-block", "attn_cls", "attn_mean"} <= set(agreement.index)
    assert agreement.filter(like="block").stack().between(0, 1).all()
    reliability = pd.read_csv(out / "table8_check.csv", index_col=0)
    assert {"top50", "bottom50", "gap (top − bottom)"} <= set(reliability.index)
    # the demo's 8-block ViT: one 50 % cut at each block but the last
    assert [c for c in reliability.columns if c.startswith("block")] == [f"block {b}" for b in range(7)]
    for i in range(3):
        png = out / f"score_maps_{i}.png"
        assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "Claims of the paper, checked on ShapeBench" in proc.stdout

    # the mask agreement as run records, one per score, with the CSV's numbers; the ledger reads them
    masks = {record.run_name: record for _, record in scan(out / "runs/demo_masks").records}
    assert set(masks) == set(agreement.index)
    assert masks["l2-mlp"].metric_value("auroc_block0") == agreement.loc["l2-mlp", "block 0"]
    assert masks["l2-mlp"].tainted and masks["l2-mlp"].weights.real  # trained here, on synthetic data
    rows = {(row.claim, row.setting): row for row in ledger([out]).rows}
    assert rows[("fig6-foreground", "shapebench")].verdict in ("reproduced", "not reproduced")
    assert rows[("table5-accuracy", "shapebench")].verdict in ("reproduced", "not reproduced")
    assert rows[("table5-accuracy", "paper")].verdict == "not measured"  # ShapeBench is no ImageNet

    # scripts/shift_vs_token_norm.py reads the same model, data and images: its l2-mlp column is the demo's
    script = runpy.run_path(str(ROOT / "scripts/shift_vs_token_norm.py"))
    frame = script["main"](["--out", str(out), "--data", str(tmp_path / "shapebench"), "--mask-images", "8"])
    assert list(frame.columns) == ["norm", "update", "l2-mlp", "corr(norm, l2-mlp)"]
    assert np.allclose(frame["l2-mlp"].to_numpy(), agreement.loc["l2-mlp", frame.index].to_numpy(dtype=float))
    assert frame.drop(columns="corr(norm, l2-mlp)").stack().between(0, 1).all()
    assert frame["corr(norm, l2-mlp)"].between(-1, 1).all()
