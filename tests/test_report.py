"""Tests for repshift.report: result files, paper numbers, tables, CLI, W&B, figures.

Fast and offline: W&B runs in "disabled" or "offline" mode with every W&B folder in tmp_path.
"""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from repshift import provenance
from repshift.report import results as R
from repshift.report import tables as T
from repshift.report.__main__ import main as report_main


# --------------------------------------------------------------------------- helpers

LABELS = {"base": "Base", "attn": "Attn", "ours": "Ours", "attn+sdpa": "Attn+SDPA"}


def make_result(experiment="table5", model="deit_s", method="ours", top1=None, ips=None, gmacs=None,
                attention="sdpa", layers=(0, 3, 6), real=True, synthetic=False, metric="l2", site="mlp",
                keep="top", tokens=None, dataset="imagenet", device="NVIDIA H200", precision="fp16"):
    """A result dict in the shape of docs/architecture.md (schema repshift.result/2)."""
    r = {
        "schema": R.SCHEMA,
        "experiment": experiment,
        "method": {"name": method, "label": LABELS.get(method, method)},
        "model": {"name": model, "arch": f"{model}_patch16_224", "family": "timm-vit"},
        "metric": metric,
        "site": site,
        "attention": attention,
        "compress": {"layers": list(layers), "ratio": 0.2, "num": None, "keep": keep},
        "dataset": {"name": dataset, "root": f"/data/{dataset}", "synthetic": synthetic, "n": 50000},
        "weights": {"real": real, "source": "hub" if real else "random"},
        "config": {},
        "env": {"device": device},
    }
    if top1 is not None:
        r["metrics"] = {"top1": top1, "top5": min(100.0, top1 + 15), "n": 50000, "skipped": 0}
    if ips is not None:
        r["bench"] = {"throughput": ips, "unit": "img/s", "batch": 512, "precision": precision, "device": device,
                      "kernel": [attention], "num_repeats": 20}
    if gmacs is not None:
        r["gmacs"] = gmacs
    if tokens is not None:
        r["tokens"] = tokens
    return r


def put(root: Path, name: str, result: dict, mtime: float | None = None) -> Path:
    path = R.write_result(root / result["experiment"] / name, result)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def cell(df: pd.DataFrame, row: str, col: str) -> float:
    return float(df.loc[row, col])


# --------------------------------------------------------------------------- result files

def test_write_result_is_atomic_when_replace_crashes(tmp_path, monkeypatch):
    run = tmp_path / "run"

    def crash(src, dst):
        raise KeyboardInterrupt("killed between temp write and rename")

    monkeypatch.setattr(R.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        R.write_result(run, {"experiment": "table5", "x": 1})
    assert not (run / "result.json").exists()
    assert list(run.iterdir()) == []  # temp file cleaned up
    assert not R.is_finished(run)

    monkeypatch.undo()
    path = R.write_result(run, {"experiment": "table5", "x": 1, "nan": float("nan"),
                                "arr": np.arange(3), "f32": np.float32(1.5), "p": tmp_path})
    assert path == run / "result.json"
    data = json.loads(path.read_text())
    assert data["x"] == 1 and data["nan"] is None and data["arr"] == [0, 1, 2] and data["f32"] == 1.5
    assert data["p"] == str(tmp_path)
    assert [p.name for p in run.iterdir()] == ["result.json"]
    assert R.is_finished(run)


def test_result_file_is_readable_like_any_other_file(tmp_path):
    old = os.umask(0o022)
    try:
        path = R.write_result(tmp_path / "run", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's private 0600


def test_crash_during_overwrite_keeps_previous_result(tmp_path, monkeypatch):
    run = tmp_path / "run"
    R.write_result(run, {"v": 1})
    monkeypatch.setattr(R.os, "replace", lambda s, d: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError):
        R.write_result(run, {"v": 2})
    monkeypatch.undo()
    assert R.read_result(run)["v"] == 1
    assert [p.name for p in run.iterdir()] == ["result.json"]


def test_collect_and_is_finished(tmp_path):
    put(tmp_path, "a", make_result(experiment="table5", top1=1.0))
    put(tmp_path, "deep/er/b", make_result(experiment="table5", top1=2.0))
    put(tmp_path, "c", make_result(experiment="table8", top1=3.0))
    (tmp_path / "table5" / "broken").mkdir()
    (tmp_path / "table5" / "broken" / "result.json").write_text("{not json")
    (tmp_path / "table5" / "unfinished").mkdir()

    with pytest.warns(UserWarning, match="unreadable"):
        everything = R.collect(tmp_path)
    assert len(everything) == 3
    assert all(Path(r["_path"]).name == "result.json" and "_mtime" in r for r in everything)
    with pytest.warns(UserWarning):
        only5 = R.collect(tmp_path, experiment="table5")
    assert sorted(r["metrics"]["top1"] for r in only5) == [1.0, 2.0]
    assert R.collect(tmp_path / "missing") == []

    assert R.is_finished(tmp_path / "table5" / "a")
    assert not R.is_finished(tmp_path / "table5" / "broken")
    assert not R.is_finished(tmp_path / "table5" / "unfinished")
    assert R.read_result(tmp_path / "table8" / "c")["method"]["name"] == "ours"


def test_environment_has_the_keys():
    env = provenance.environment()
    for key in ("git_commit", "git_dirty", "python", "torch", "cuda", "cudnn", "timm", "hydra", "omegaconf",
                "wandb", "pandas", "device", "num_gpus", "hostname", "slurm_job_id", "slurm_array_job_id",
                "slurm_array_task_id"):
        assert key in env, key
    assert isinstance(env["git_commit"], str) and env["git_commit"]
    assert env["python"].count(".") == 2
    assert env["pandas"] == pd.__version__
    assert isinstance(env["device"], str) and env["device"]
    json.dumps(env)  # serialisable


def test_git_info_outside_a_checkout(tmp_path):
    assert provenance.git_info(tmp_path)["git_commit"] == "unknown"


def test_git_info_reads_head_files_without_git(tmp_path, monkeypatch):
    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text("a" * 40 + "\n")

    def no_git(*a, **k):
        raise FileNotFoundError("git")

    monkeypatch.setattr(provenance.subprocess, "run", no_git)
    info = provenance.git_info(tmp_path)
    assert info == {"git_commit": "a" * 40, "git_dirty": None}


def test_environment_slurm_ids(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    env = provenance.environment()
    assert env["slurm_job_id"] == "123" and env["slurm_array_task_id"] == "4"


# --------------------------------------------------------------------------- paper numbers

@pytest.mark.parametrize("args,expected", [
    (("table5", "deit_s", "attn", "acc1"), 72.1),
    (("table5", "deit_s", "ours", "throughput"), 5948),
    (("table5", "deit_b", "base", "gflops"), 17.6),
    (("table5", "deit_t", "ours", "throughput"), 13296),
    (("table8", "deit_s", "bottom50", "acc1", None, "L9"), 56.1),
    (("table8", "deit_s", "top50", "acc1", None, "Avg"), 78.0),
    (("table8", "deit_s", "top50", "acc1", None, "L1"), 76.3),
    (("table8", "deit_s", "top50", "acc1", None, "L3"), 76.1),
    (("table2", "umt_l", "ours", "throughput"), 66),
    (("table2", "umt_b", "attn", "gflops"), 156.4),
    (("table2", "umt_l", "attn", "r@1", "activitynet"), 53.2),
    (("table2", "umt_b", "base", "r@10", "ssv2-template"), 96.8),
    (("table1", "deit_s", "flash-attention", "throughput"), 3552),
    (("table1", "umt_b", "self-attention", "r@1"), 50.0),
    (("table3", "umt_l", "vid-tldr+ours", "throughput", "didemo"), 51.5),
    (("table4", "umt_b", "ours", "acc", "msvd-qa"), 47.0),
    (("table6", "resnet50", "line-wise", "throughput"), 3553),
    (("table7", "vim_t", "top-vim", "acc1"), 75.1),
])
def test_paper_numbers_spot_checks(args, expected):
    assert T.paper_value(*args) == pytest.approx(expected)


def test_paper_numbers_shape():
    df = T.paper_numbers()
    assert list(df.columns) == ["table", "model", "dataset", "method", "quantity", "column", "value"]
    assert not df.duplicated(["table", "model", "dataset", "method", "quantity", "column"]).any()
    assert set(df["table"]) == {f"table{i}" for i in range(1, 9)}
    # the blank FlashAttention R@1 cell of Table 1 is left out
    assert math.isnan(T.paper_value("table1", "umt_b", "flash-attention", "r@1"))
    # the stray 51.4 in the Top-50% row is not there: exactly 6 layers + Avg per row
    assert len(T.paper_numbers("table8").query("method == 'top50'")) == 7
    assert len(T.paper_numbers("table2")) == 2 * 3 * (2 + 7 * 3)
    assert set(df["model"]) <= {"deit_t", "deit_s", "deit_b", "umt_b", "umt_l", "resnet34", "resnet50", "vim_t"}


# --------------------------------------------------------------------------- tables

def table5_results():
    return [
        make_result(method="base", top1=79.9, ips=3100.0, gmacs=4.61, layers=()),
        make_result(method="attn", top1=72.0, ips=4900.0, gmacs=3.05, attention="eager"),
        make_result(method="ours", top1=77.5, ips=6000.0, gmacs=3.05),
        make_result(model="deit_t", method="ours", top1=68.0),
    ]


def test_table5_layout_and_delta():
    df = T.build("table5", table5_results())
    assert list(df.index[:3]) == ["deit_t · Acc", "deit_t · Throughput", "deit_t · GFLOPs"]
    assert "deit_b · GFLOPs" in df.index  # paper models always shown
    for g in ("Base", "Attn", "Ours"):
        for k in ("ours", "paper", "Δ"):
            assert f"{g} · {k}" in df.columns
    assert not any(c.startswith("Attn+SDPA") for c in df.columns)
    assert cell(df, "deit_s · Acc", "Attn · paper") == 72.1
    assert cell(df, "deit_s · Acc", "Attn · ours") == 72.0
    assert cell(df, "deit_s · Acc", "Attn · Δ") == pytest.approx(72.0 - 72.1)
    assert cell(df, "deit_s · Throughput", "Ours · Δ") == pytest.approx(6000 - 5948)
    assert cell(df, "deit_s · GFLOPs", "Base · ours") == 4.61
    assert cell(df, "deit_b · GFLOPs", "Base · paper") == 17.6
    # missing cells are empty (NaN), never zero
    assert math.isnan(cell(df, "deit_t · Throughput", "Ours · ours"))
    assert math.isnan(cell(df, "deit_t · Throughput", "Ours · Δ"))
    assert math.isnan(cell(df, "deit_b · Acc", "Base · ours"))

    md, csv = T.render("table5", df)
    first = md.splitlines()[0]
    assert "Table 5" in first and "NVIDIA H200" in first and "fp16" in first
    assert "| deit_s · Acc" in md
    assert "-0.1" in md  # signed Δ
    assert " 0 |" not in md.replace("0.0 |", "")  # empties stay empty
    parsed = pd.read_csv(__import__("io").StringIO(csv), index_col=0)
    assert math.isnan(parsed.loc["deit_t · Throughput", "Ours · ours"])
    assert parsed.loc["deit_s · Acc", "Attn · paper"] == 72.1


def test_table5_extra_group_marking_and_newest_wins(tmp_path):
    root = tmp_path / "out"
    put(root, "old", make_result(method="ours", top1=70.0, gmacs=3.0), mtime=1_000_000)
    put(root, "new", make_result(method="ours", top1=77.0, gmacs=3.1), mtime=2_000_000)
    put(root, "sdpa", make_result(method="attn+sdpa", top1=72.5))
    put(root, "rand", make_result(model="deit_b", method="base", top1=0.1, real=False, layers=()))
    put(root, "synth", make_result(model="deit_t", method="base", top1=0.2, synthetic=True, layers=()))
    df = T.build("table5", R.collect(root))
    assert cell(df, "deit_s · Acc", "Ours · ours") == 77.0  # newest file kept
    assert cell(df, "deit_s · GFLOPs", "Ours · ours") == 3.1
    assert cell(df, "deit_s · Acc", "Attn+SDPA · ours") == 72.5
    assert "deit_b · Acc †" in df.index and "deit_t · Acc †" in df.index
    assert "deit_s · Acc" in df.index  # real weights, real data: not marked
    md, _ = T.render("table5", df)
    assert "† random weights / synthetic data: not comparable with the paper" in md
    assert "newest file was kept" in md and "old/result.json" in md


def test_unversioned_result_files_are_read_like_current_ones():
    """Files written before the schema version (method a string, bench.img_per_s) still load."""
    old = make_result(method="attn+sdpa", top1=72.5, ips=1000.0)
    old.pop("schema")
    old["method"] = "attn+sdpa"
    old["bench"] = {"img_per_s": 1000.0, "batch": 16, "precision": "fp32", "device": "CPU", "kernel": "sdpa"}
    (run,) = T._runs([old])
    assert (run.method, run.method_label, run.throughput, run.throughput_unit) == ("attn+sdpa", "attn+sdpa", 1000.0, "img/s")
    df = T.build("table5", [old])
    assert cell(df, "deit_s · Acc", "Attn+SDPA · ours") == 72.5  # label from repshift/configs/method/attn_sdpa.yaml


def test_table5_shows_controls_with_their_declared_labels():
    df = T.build("table5", [*table5_results(), make_result(method="static", top1=70.0),
                            make_result(method="random", top1=71.0)])
    assert cell(df, "deit_s · Acc", "Static (control) · ours") == 70.0
    assert cell(df, "deit_s · Acc", "Random (control) · ours") == 71.0
    assert "Static (control) · paper" not in df.columns  # the paper has no controls


def test_table8_layout():
    res = []
    ours = {"top50": [76.0, 76.2, 78.4, 79.5, 78.6, 78.8], "bottom50": [51.0, 52.0, 47.5, 49.0, 56.0, 54.0]}
    for method, vals in ours.items():
        for block, v in zip((0, 2, 4, 6, 8, 10), vals):
            res.append(make_result("table8", method=method, top1=v, layers=(block,),
                                   keep="top" if method == "top50" else "bottom"))
    df = T.build("table8", res)
    assert list(df.columns) == ["L1", "L3", "L5", "L7", "L9", "L11", "Avg"]
    assert list(df.index) == ["top50 · ours", "top50 · paper", "top50 · Δ",
                              "bottom50 · ours", "bottom50 · paper", "bottom50 · Δ"]
    assert cell(df, "top50 · ours", "L1") == 76.0  # block 0 -> L1
    assert cell(df, "bottom50 · ours", "L9") == 56.0  # block 8 -> L9
    assert cell(df, "bottom50 · paper", "L9") == 56.1
    assert cell(df, "bottom50 · Δ", "L9") == pytest.approx(56.0 - 56.1)
    assert cell(df, "top50 · ours", "Avg") == pytest.approx(np.mean(ours["top50"]))
    assert cell(df, "top50 · paper", "Avg") == 78.0
    assert cell(df, "top50 · Δ", "Avg") == pytest.approx(np.mean(ours["top50"]) - 78.0)


def test_table8_partial_layers():
    df = T.build("table8", [make_result("table8", method="top50", top1=77.0, layers=(4,)),
                            make_result("table8", method="top50", top1=70.0, layers=(1,), real=False)])
    assert "L2" in df.columns  # a layer the paper does not have
    # one random-weight result taints the whole "ours" row (and its Δ), not the paper row
    assert {"top50 · ours †", "top50 · Δ †", "top50 · paper", "bottom50 · ours"} <= set(df.index)
    assert cell(df, "top50 · ours †", "L5") == 77.0
    assert cell(df, "top50 · ours †", "L2") == 70.0
    assert cell(df, "top50 · ours †", "Avg") == pytest.approx(73.5)
    assert math.isnan(cell(df, "top50 · ours †", "L1"))
    assert math.isnan(cell(df, "top50 · paper", "L2"))
    # Avg Δ over a partial set of layers = mean of the per-layer Δ that exist (only L5 here)
    assert cell(df, "top50 · Δ †", "Avg") == pytest.approx(77.0 - 78.5)
    assert all(not math.isnan(v) for v in df.loc["bottom50 · paper"].drop("L2"))  # paper rows still shown
    assert "Avg over" in T.render("table8", df)[0]


def test_table1_kernel_from_bench_when_attention_missing():
    r = make_result("table1", method="base", top1=79.8, ips=2300.0, attention="eager", layers=())
    del r["attention"]
    r["bench"]["kernel"] = ["eager"]
    df = T.build("table1", [r])
    assert cell(df, "deit_s · self-attention", "Thr · ours") == 2300.0


def test_table1_kernels():
    res = [
        make_result("table1", method="base", top1=79.8, ips=2400.0, attention="eager", layers=()),
        make_result("table1", method="base", top1=79.8, ips=3600.0, attention="sdpa", layers=()),
        make_result("table1", method="ours", top1=77.0, ips=9000.0, attention="sdpa"),  # not base: ignored
    ]
    df = T.build("table1", res)
    assert list(df.index) == ["deit_s · self-attention", "deit_s · flash-attention",
                              "umt_b · self-attention", "umt_b · flash-attention"]
    assert cell(df, "deit_s · self-attention", "Thr · ours") == 2400.0
    assert cell(df, "deit_s · self-attention", "Thr · paper") == 2308
    assert cell(df, "deit_s · flash-attention", "Thr · Δ") == pytest.approx(3600 - 3552)
    assert cell(df, "deit_s · flash-attention", "Acc-1/R@1 · Δ") == pytest.approx(0.0)
    assert cell(df, "umt_b · self-attention", "Acc-1/R@1 · paper") == 50.0
    assert math.isnan(cell(df, "umt_b · flash-attention", "Acc-1/R@1 · paper"))
    assert cell(df, "umt_b · flash-attention", "Thr · paper") == 85
    md, _ = T.render("table1", df)
    assert md.startswith("## Table 1")


def test_fig5_and_fig3_layout():
    res = []
    for block in (0, 2, 4):
        for metric in ("l1", "l2", "cos"):
            for site in ("attn", "mlp", "block"):
                res.append(make_result("fig5", method=f"{metric}-{site}", metric=metric, site=site,
                                       top1=70 + block + len(metric), layers=(block,)))
    res.append(make_result("fig5", method="base", top1=79.8, layers=()))
    df = T.build("fig5", res)
    assert list(df.columns) == ["layer 0", "layer 2", "layer 4"]
    assert len(df) == 9 and df.index[0] == "l1-attn" and "l2-mlp" in df.index and "cos-block" in df.index
    assert cell(df, "l2-mlp", "layer 4") == 76.0
    assert not any("paper" in c for c in df.columns)
    assert df.attrs["baseline"] == {"deit_s": 79.8}
    md, _ = T.render("fig5", df)
    assert "no paper numbers" in md

    res3 = [make_result("fig3", method="attn", metric="attn_cls", site=None, attention="eager", top1=60.0,
                        layers=(2,)),
            make_result("fig3", method="l2-attn", metric="l2", site="attn", top1=61.0, layers=(2,))]
    df3 = T.build("fig3", res3)
    assert list(df3.index) == ["attn_cls", "l2-attn"] and list(df3.columns) == ["layer 2"]


def test_demo_layout():
    res = [make_result("demo", model="vit_tiny_shapes", method=m, top1=t, ips=1000.0, gmacs=0.1,
                       tokens=tok, dataset="shapebench")
           for m, t, tok in (("base", 95.0, [65] * 6), ("ours", 93.0, [65, 52, 52, 41, 41, 33]))]
    df = T.build("demo", res)
    assert list(df.columns) == ["Acc-1", "Top-5", "img/s", "GMACs", "tokens"]
    assert list(df.index) == ["base", "ours"]
    assert cell(df, "ours", "tokens") == 33
    assert cell(df, "base", "Acc-1") == 95.0
    md, _ = T.render("demo", df)
    assert "ShapeBench, tiny ViT trained here (not ImageNet)" in md.splitlines()[0]


def test_build_unknown_table_and_write(tmp_path):
    with pytest.raises(ValueError, match="valid tables"):
        T.build("table99", [])
    df = T.build("table5", table5_results())
    md_path, csv_path = T.write("table5", df, tmp_path / "tables")
    assert md_path == tmp_path / "tables" / "table5.md" and md_path.read_text().startswith("## Table 5")
    assert csv_path.read_text().startswith("model · quantity,")


# --------------------------------------------------------------------------- CLI

def test_cli_prints_and_writes(tmp_path, capsys):
    for i, r in enumerate(table5_results()):
        put(tmp_path / "outputs", f"run{i}", r)
    out = tmp_path / "tables"
    rc = report_main(["table=table5", f"results={tmp_path / 'outputs'}", f"out={out}"])
    captured = capsys.readouterr()
    assert rc == 0
    assert captured.out.startswith("## Table 5")
    assert "deit_s · Acc" in captured.out
    assert (out / "table5.md").exists() and (out / "table5.csv").exists()


def test_cli_default_out_and_fig_png(tmp_path, capsys):
    root = tmp_path / "outputs"
    for block in (0, 2):
        put(root, f"r{block}", make_result("fig3", method="l2-attn", metric="l2", site="attn",
                                           top1=70.0 + block, layers=(block,)))
    assert report_main(["table=fig3", f"results={root}"]) == 0
    assert (root / "tables" / "fig3.md").exists()
    assert (root / "tables" / "fig3.png").stat().st_size > 0


def test_cli_errors(tmp_path, capsys):
    assert report_main(["table=nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown table 'nope'" in err and "table5" in err and "fig5" in err and "demo" in err

    assert report_main(["table=table8", f"results={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert "no result.json found" in err and str(tmp_path / "table8") in err

    assert report_main([f"results={tmp_path}"]) == 2  # table= missing


def test_cli_as_module(tmp_path):
    for i, r in enumerate(table5_results()):
        put(tmp_path, f"run{i}", r)
    proc = subprocess.run([sys.executable, "-m", "repshift.report", "table=table5", f"results={tmp_path}"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("## Table 5")
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()  # no Hydra run dir
    assert (tmp_path / "tables" / "table5.md").exists()  # out defaults to <results>/tables


# W&B logging is the runner's (repshift/wandb_log.py): tests/test_runner_wandb.py


# --------------------------------------------------------------------------- figures

def test_save_score_maps_png(tmp_path):
    torch = pytest.importorskip("torch")
    from repshift.report.figures import save_score_maps, to_uint8_image

    rng = np.random.default_rng(0)
    rows = {
        "Attn (cls)": {f"layer {k}": rng.random((14, 14)) for k in (1, 5, 9)},
        "Ours (L2, MLP)": {f"layer {k}": torch.rand(14, 14) for k in (1, 5, 9)},
    }
    img_u8 = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)
    p1 = save_score_maps(tmp_path / "a" / "maps.png", img_u8, rows, title="DeiT-B")
    assert p1.stat().st_size > 1000 and p1.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    x = torch.rand(3, 64, 64)
    back = to_uint8_image((x - mean) / std)
    assert back.shape == (64, 64, 3) and back.dtype == np.uint8
    assert np.abs(back.astype(int) - (x.permute(1, 2, 0).numpy() * 255).round().astype(int)).max() <= 1
    p2 = save_score_maps(tmp_path / "b.png", (x - mean) / std, {"Ours": {"layer 1": torch.rand(8, 8)}})
    assert p2.stat().st_size > 0


def test_normalise_and_resize():
    from repshift.report.figures import normalise_map, resize_map

    m = normalise_map(np.array([[2.0, 4.0], [6.0, 10.0]]))
    assert m.min() == 0.0 and m.max() == 1.0
    assert normalise_map(np.ones((3, 3))).max() == 0.0
    up = resize_map(np.array([[0.0, 1.0], [0.0, 1.0]]), 8, 8)
    assert up.shape == (8, 8) and up[:, 0].max() < up[:, -1].min()
    assert resize_map(np.arange(16.0), 4, 4).shape == (4, 4)  # a square token vector


def test_plot_layer_curves(tmp_path):
    from repshift.report.figures import plot_layer_curves

    df = pd.DataFrame({"layer 0": [70.0, 71.0], "layer 2": [72.0, math.nan]}, index=["attn_cls", "l2-attn"])
    df.attrs["baseline"] = {"deit_s": 79.8}
    path = plot_layer_curves(df, tmp_path / "curves.png", ylabel="top-1 (%)")
    assert path.stat().st_size > 0


def test_readings_table_and_table8_gap_per_reading():
    res = []
    for reading, top1 in (("literal", 70.0), ("update", 74.0), ("normed", 76.0)):
        r = make_result("readings", method="ours", top1=top1)
        r["reading"] = reading
        res.append(r)
        for block, (top, bottom) in zip((0, 2), ((60.0, 50.0), (64.0, 50.0))):
            for keep, value in (("top", top), ("bottom", bottom)):
                r = make_result("readings", method="ours", top1=value + (reading == "normed"), layers=(block,), keep=keep)
                r["reading"] = reading
                r["compress"]["ratio"] = 0.5
                res.append(r)
    df = T.build("readings", res)
    assert cell(df, "deit_s · l2-mlp", "update") == 74.0
    assert cell(df, "deit_s · l2-mlp", "paper") == 77.8
    gap = "deit_s · l2-mlp · Table 8 gap (top − bottom 50 %)"
    assert cell(df, gap, "literal") == pytest.approx(12.0)  # (10 + 14) / 2
    assert cell(df, gap, "paper") == pytest.approx(78.0 - 51.7)  # paper Avg top50 − bottom50


def test_table8_and_fig3_show_the_controls():
    res = [make_result("table8", method=m, top1=v, layers=(0,), keep=k)
           for m, k, v in (("ours", "top", 76.0), ("ours", "bottom", 51.0), ("random", "top", 64.0), ("random", "bottom", 63.0))]
    df = T.build("table8", res)
    assert cell(df, "top50 · ours", "L1") == 76.0
    assert cell(df, "Random (control) top50 · ours", "L1") == 64.0
    assert cell(df, "Random (control) bottom50 · ours", "L1") == 63.0
    fig = T.build("fig3", [make_result("fig3", method="random", metric="random", top1=60.0, layers=(2,)),
                           make_result("fig3", method="static", metric="none", top1=58.0, layers=(2,)),
                           make_result("fig3", method="l2-attn", metric="l2", site="attn", top1=61.0, layers=(2,))])
    assert list(fig.index) == ["l2-attn", "Random (control)", "Static (control)"]
