"""Tests for repshift.report: tables from run records, paper numbers, the command line, W&B, figures.

Records are built with tests.support.make_record (schema repshift.result/3) and, where a file is needed,
written with RunRecord.write. Fast and offline: W&B runs in "disabled" or "offline" mode in tmp_path.
"""
from __future__ import annotations

import ast
import re
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from repshift import provenance
from repshift.record import Identity
from repshift.report import core
from repshift.report import tables as T
from repshift.report.__main__ import main as report_main
from support import make_record

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"base": "Base", "attn": "Attn", "ours": "Ours", "attn_sdpa": "Attn+SDPA", "static": "Static (control)",
          "random": "Random (control)"}


# --------------------------------------------------------------------------- helpers

def record(experiment="table5", model="deit_s", method="ours", top1=None, ips=None, gmacs=None, attention="sdpa",
           layers=(0, 3, 6), real=True, synthetic=False, metric="l2", site="mlp", keep="top", tokens=None,
           dataset="imagenet", device="NVIDIA H200", reading="literal", ratio=0.2, label=None, **fields):
    """A valid run record: evaluated when ``top1`` is given, benchmarked when ``ips`` is."""
    gpu = not device.startswith("CPU")
    identity = Identity.of({"experiment": experiment, "model": model, "method": method, "metric": metric,
                            "site": site, "layers": list(layers), "keep": keep, "reading": reading, "top1": top1,
                            "ips": ips, "real": real}, [], f"cuda:{device}" if gpu else "cpu", "test")
    evaluated = top1 is not None
    return make_record(
        identity=identity, experiment=experiment, run_name=f"{model},{method}", model={"name": model,
        "arch": f"{model}_patch16_224", "family": "timm-vit"}, method={"name": method, "label": label or
        LABELS.get(method, method)}, metric=metric, site=site, reading=reading, attention=attention,
        compress={"layers": list(layers), "ratio": ratio, "keep": keep} if layers else None,
        weights={"real": real, "source": "hub" if real else "random-init"},
        evaluator="classification" if evaluated else None,
        dataset={"name": dataset, "root": f"/data/{dataset}", "synthetic": synthetic, "n": 50000} if evaluated else None,
        metrics={"top1": top1, "top5": min(100.0, top1 + 15), "n": 50000, "skipped": 0} if evaluated else {},
        bench={"throughput": ips, "unit": "img/s", "repeats": [ips], "kernel": [attention], "batch": 512, "iters": 10,
               "warmup": 2, "num_repeats": 1, "precision": "amp-float16", "device": device} if ips else None,
        gmacs=gmacs if gmacs is not None else (1.0 if ips else None), tokens=tokens or [], **fields)


def put(root: Path, name: str, rec, mtime: float | None = None) -> Path:
    path = rec.write(root / rec.experiment / name)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def cell(df: pd.DataFrame, row: str, col: str) -> float:
    return float(df.loc[row, col])


# --------------------------------------------------------------------------- environment

def test_environment_has_the_keys():
    env = provenance.environment()
    for key in ("git_commit", "git_dirty", "python", "torch", "cuda", "cudnn", "timm", "hydra", "omegaconf",
                "wandb", "pandas", "device", "num_gpus", "hostname", "slurm_job_id", "slurm_array_job_id",
                "slurm_array_task_id"):
        assert key in env, key
    assert isinstance(env["git_commit"], str) and env["git_commit"]
    assert env["python"].count(".") == 2
    assert env["pandas"] == pd.__version__
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
    assert provenance.git_info(tmp_path) == {"git_commit": "a" * 40, "git_dirty": None}


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
    (("table8", "deit_s", "bottom50", "acc1", None, "L9"), 56.1),
    (("table8", "deit_s", "top50", "acc1", None, "Avg"), 78.0),
    (("table2", "umt_l", "ours", "throughput"), 66),
    (("table2", "umt_l", "attn", "r@1", "activitynet"), 53.2),
    (("table1", "deit_s", "flash-attention", "throughput"), 3552),
    (("table1", "umt_b", "self-attention", "r@1"), 50.0),
    (("table3", "umt_l", "vid_tldr_ours", "throughput", "didemo"), 51.5),
    (("table4", "umt_b", "ours", "acc", "msvd-qa"), 47.0),
    (("table6", "resnet50", "line_wise", "throughput"), 3553),
    (("table7", "vim_t", "top_vim", "acc1"), 75.1),
])
def test_paper_numbers_spot_checks(args, expected):
    assert T.paper_value(*args) == pytest.approx(expected)


def test_paper_numbers_shape():
    df = T.paper_numbers()
    assert list(df.columns) == ["table", "model", "dataset", "method", "quantity", "column", "value"]
    assert not df.duplicated(["table", "model", "dataset", "method", "quantity", "column"]).any()
    assert set(df["table"]) == {f"table{i}" for i in range(1, 9)}
    assert math.isnan(T.paper_value("table1", "umt_b", "flash-attention", "r@1"))  # blank in the paper
    assert len(T.paper_numbers("table8").query("method == 'top50'")) == 7  # 6 layers + Avg, no stray 51.4
    assert len(T.paper_numbers("table2")) == 2 * 3 * (2 + 7 * 3)


# --------------------------------------------------------------------------- tables

def table5_records(device="NVIDIA H200"):
    return [
        record(method="base", top1=79.9, ips=3100.0, gmacs=4.61, layers=(), device=device),
        record(method="attn", top1=72.0, ips=4900.0, gmacs=3.05, attention="eager", device=device),
        record(method="ours", top1=77.5, ips=6000.0, gmacs=3.05, device=device),
        record(model="deit_t", method="ours", top1=68.0),
    ]


def test_table5_layout_delta_and_speedup():
    df = T.build("table5", table5_records())
    assert list(df.index[:4]) == ["deit_t · Acc", "deit_t · Throughput", "deit_t · Speed-up ×", "deit_t · GFLOPs"]
    for g in ("Base", "Attn", "Ours"):
        for k in ("ours", "paper", "Δ"):
            assert f"{g} · {k}" in df.columns
    assert cell(df, "deit_s · Acc", "Attn · Δ") == pytest.approx(72.0 - 72.1)
    assert cell(df, "deit_s · GFLOPs", "Base · ours") == 4.61
    # throughput: ours beside the paper's, no Δ across devices (H200 here, RTX A6000 in the paper) ...
    assert cell(df, "deit_s · Throughput", "Ours · ours") == 6000.0
    assert cell(df, "deit_s · Throughput", "Ours · paper") == 5948
    assert math.isnan(cell(df, "deit_s · Throughput", "Ours · Δ"))
    # ... the speed-ups compare instead: ours over our Base, the paper's over its Base
    assert cell(df, "deit_s · Speed-up ×", "Ours · ours") == pytest.approx(6000 / 3100)
    assert cell(df, "deit_s · Speed-up ×", "Ours · paper") == pytest.approx(5948 / 3002)
    assert cell(df, "deit_s · Speed-up ×", "Ours · Δ") == pytest.approx(6000 / 3100 - 5948 / 3002)
    assert cell(df, "deit_s · Speed-up ×", "Base · ours") == 1.0
    # missing cells are empty (NaN), never zero
    assert math.isnan(cell(df, "deit_t · Throughput", "Ours · ours"))
    assert math.isnan(cell(df, "deit_b · Acc", "Base · ours"))
    md, csv = T.render("table5", df)
    assert md.startswith("## Table 5") and "NVIDIA H200" in md.splitlines()[0]
    assert "Throughput Δ only where ours ran on the paper's GPU" in md
    assert "-5947" not in md and "+52" not in md  # no difference of absolute rates across GPUs
    parsed = pd.read_csv(__import__("io").StringIO(csv), index_col=0)
    assert parsed.loc["deit_s · Acc", "Attn · paper"] == 72.1


def test_throughput_delta_only_on_the_papers_gpu():
    df = T.build("table5", table5_records(device="NVIDIA RTX A6000"))
    assert cell(df, "deit_s · Throughput", "Ours · Δ") == pytest.approx(6000 - 5948)


def test_speedup_needs_one_device():
    runs = [record(method="base", top1=79.9, ips=3000.0, layers=(), device="NVIDIA H200"),
            record(method="ours", top1=77.5, ips=6000.0, device="NVIDIA A100")]
    df = T.build("table5", runs)
    assert math.isnan(cell(df, "deit_s · Speed-up ×", "Ours · ours"))


def test_a_cell_with_two_records_says_which_file_it_used_and_why(tmp_path):
    root = tmp_path / "out"
    put(root, "old", record(method="ours", top1=70.0, gmacs=3.0, ips=1.0), mtime=1_000_000)
    put(root, "new", record(method="ours", top1=77.0, gmacs=3.1, ips=1.0), mtime=2_000_000)
    put(root, "smoke_newer", record(method="attn", top1=1.0, real=False, attention="eager"), mtime=3_000_000)
    put(root, "real_older", record(method="attn", top1=72.0, attention="eager"), mtime=500_000)
    runs, problems = core.load_runs(root, "table5")
    assert not problems
    df = T.build("table5", runs)
    assert cell(df, "deit_s · Acc", "Ours · ours") == 77.0  # the newer file
    assert cell(df, "deit_s · Acc", "Attn · ours") == 72.0  # real weights beat a newer random-weight run
    notes = " ".join(df.attrs["notes"])
    assert f"used {root / 'table5/new/result.json'}, not {root / 'table5/old/result.json'} (the newer file" in notes
    assert (f"used {root / 'table5/real_older/result.json'}, not {root / 'table5/smoke_newer/result.json'} "
            "(real weights and data over random weights / synthetic data)") in notes


def test_the_same_run_written_twice_is_named_so(tmp_path):
    a = put(tmp_path, "a", record(method="ours", top1=77.0), mtime=1_000_000)
    b = put(tmp_path, "b", record(method="ours", top1=77.0), mtime=2_000_000)
    df = T.build("table5", core.load_runs(tmp_path, "table5")[0])
    assert f"used {b}, not {a} (the same run (identity" in " ".join(df.attrs["notes"])


def test_labels_come_from_the_records():
    df = T.build("table5", [*table5_records(), record(method="static", top1=70.0),
                            record(method="random", top1=71.0), record(method="attn_sdpa", top1=72.5),
                            record(method="mine", top1=60.0, label="My score")])
    assert cell(df, "deit_s · Acc", "Static (control) · ours") == 70.0
    assert cell(df, "deit_s · Acc", "Random (control) · ours") == 71.0
    assert cell(df, "deit_s · Acc", "Attn+SDPA · ours") == 72.5
    assert cell(df, "deit_s · Acc", "My score · ours") == 60.0  # no config of it anywhere: the record's label
    assert "Static (control) · paper" not in df.columns  # the paper has no controls


def test_tainted_rows_are_marked():
    df = T.build("table5", [record(model="deit_b", method="base", top1=0.1, real=False, layers=()),
                            record(model="deit_t", method="base", top1=0.2, synthetic=True, layers=()),
                            record(method="base", top1=79.0, layers=())])
    assert {"deit_b · Acc †", "deit_t · Acc †", "deit_s · Acc"} <= set(df.index)
    assert "† random weights / synthetic data: not comparable with the paper" in T.render("table5", df)[0]


def test_table8_layout():
    recs = []
    ours = {"top": [76.0, 76.2, 78.4, 79.5, 78.6, 78.8], "bottom": [51.0, 52.0, 47.5, 49.0, 56.0, 54.0]}
    for keep, vals in ours.items():
        for block, v in zip((0, 2, 4, 6, 8, 10), vals):
            recs.append(record("table8", method="ours", top1=v, layers=(block,), keep=keep, ratio=0.5))
    df = T.build("table8", recs)
    assert list(df.columns) == ["L1", "L3", "L5", "L7", "L9", "L11", "Avg"]
    assert list(df.index) == ["top50 · ours", "top50 · paper", "top50 · Δ",
                              "bottom50 · ours", "bottom50 · paper", "bottom50 · Δ"]
    assert cell(df, "top50 · ours", "L1") == 76.0  # block 0 -> L1
    assert cell(df, "bottom50 · Δ", "L9") == pytest.approx(56.0 - 56.1)
    assert cell(df, "top50 · Δ", "Avg") == pytest.approx(np.mean(ours["top"]) - 78.0)


def test_table8_partial_layers_and_controls():
    df = T.build("table8", [record("table8", top1=77.0, layers=(4,), ratio=0.5),
                            record("table8", top1=70.0, layers=(1,), real=False, ratio=0.5),
                            record("table8", method="random", top1=64.0, layers=(0,), ratio=0.5),
                            record("table8", method="random", top1=63.0, layers=(0,), keep="bottom", ratio=0.5)])
    assert "L2" in df.columns  # a layer the paper does not have
    assert {"top50 · ours †", "top50 · Δ †", "top50 · paper"} <= set(df.index)
    assert cell(df, "top50 · ours †", "Avg") == pytest.approx(73.5)
    assert cell(df, "top50 · Δ †", "Avg") == pytest.approx(77.0 - 78.5)  # the mean of the Δ that exist
    assert cell(df, "Random (control) top50 · ours", "L1") == 64.0
    assert cell(df, "Random (control) bottom50 · ours", "L1") == 63.0
    assert "Avg over" in T.render("table8", df)[0]


def test_table1_kernels_and_speedup():
    df = T.build("table1", [
        record("table1", method="base", top1=79.8, ips=2400.0, attention="eager", layers=(), device="NVIDIA RTX A6000"),
        record("table1", method="base", top1=79.8, ips=3600.0, attention="sdpa", layers=(), device="NVIDIA RTX A6000"),
        record("table1", method="ours", top1=77.0, ips=9000.0, attention="sdpa"),  # not base: ignored
    ])
    assert list(df.index) == ["deit_s · self-attention", "deit_s · flash-attention",
                              "umt_b · self-attention", "umt_b · flash-attention"]
    assert cell(df, "deit_s · flash-attention", "Thr · Δ") == pytest.approx(3600 - 3552)  # on the paper's GPU
    assert cell(df, "deit_s · flash-attention", "Speed-up × · ours") == pytest.approx(1.5)
    assert cell(df, "deit_s · flash-attention", "Speed-up × · paper") == pytest.approx(3552 / 2308)
    assert cell(df, "umt_b · flash-attention", "Speed-up × · paper") == pytest.approx(85 / 32)
    assert math.isnan(cell(df, "umt_b · flash-attention", "Acc-1/R@1 · paper"))


def test_fig5_and_fig3_layout():
    recs = [record("fig5", method=f"{m}-{s}", metric=m, site=s, top1=70 + b + len(m), layers=(b,))
            for b in (0, 2, 4) for m in ("l1", "l2", "cos") for s in ("attn", "mlp", "block")]
    recs.append(record("fig5", method="base", top1=79.8, layers=()))
    df = T.build("fig5", recs)
    assert list(df.columns) == ["layer 0", "layer 2", "layer 4"]
    assert len(df) == 9 and df.index[0] == "l1-attn" and "cos-block" in df.index
    assert cell(df, "l2-mlp", "layer 4") == 76.0
    assert df.attrs["baseline"] == {"deit_s": 79.8}
    fig3 = T.build("fig3", [record("fig3", method="random", metric="random", top1=60.0, layers=(2,)),
                            record("fig3", method="static", metric="none", top1=58.0, layers=(2,)),
                            record("fig3", method="attn", metric="attn_cls", attention="eager", top1=61.5, layers=(2,)),
                            record("fig3", method="l2-attn", metric="l2", site="attn", top1=61.0, layers=(2,))])
    assert list(fig3.index) == ["attn_cls", "l2-attn", "Random (control)", "Static (control)"]


def test_readings_table_and_table8_gap_per_reading():
    recs = []
    for reading, top1 in (("literal", 70.0), ("update", 74.0), ("normed", 76.0)):
        recs.append(record("readings", top1=top1, reading=reading))
        for block, (top, bottom) in zip((0, 2), ((60.0, 50.0), (64.0, 50.0))):
            for keep, value in (("top", top), ("bottom", bottom)):
                recs.append(record("readings", top1=value + (reading == "normed"), layers=(block,), keep=keep,
                                   reading=reading, ratio=0.5))
    df = T.build("readings", recs)
    assert cell(df, "deit_s · l2-mlp", "update") == 74.0
    assert cell(df, "deit_s · l2-mlp", "paper") == 77.8
    gap = "deit_s · l2-mlp · Table 8 gap (top − bottom 50 %)"
    assert cell(df, gap, "literal") == pytest.approx(12.0)  # (10 + 14) / 2
    assert cell(df, gap, "paper") == pytest.approx(78.0 - 51.7)


def test_demo_layout():
    recs = [record("demo", model="vit_shapebench", method=m, top1=t, ips=1000.0, gmacs=0.1, tokens=tok,
                   dataset="shapebench", synthetic=True)
            for m, t, tok in (("base", 95.0, [65] * 6), ("ours", 93.0, [65, 52, 52, 41, 41, 33]))]
    df = T.build("demo", recs)
    assert list(df.columns) == ["Acc-1", "Top-5", "img/s", "GMACs", "tokens"]
    assert list(df.index) == ["base †", "ours †"]
    assert cell(df, "ours †", "tokens") == 33
    assert "ShapeBench, tiny ViT trained here (not ImageNet)" in T.render("demo", df)[0].splitlines()[0]


def test_html_of_a_table_is_the_same_cells():
    df = T.build("table5", table5_records())
    page = T.render_html("table5", df)
    body = page.split("<tbody>")[1].split("</tbody>")[0]
    assert page.startswith("<h3>Table 5")
    assert body.count("<tr>") == len(df)  # one row per row of the frame, with its label and every column
    assert body.count("<td>") == len(df) * len(df.columns) and "<th>deit_s · Acc</th>" in body
    assert "<td>-0.1</td>" in page and "<td>+1.2</td>" not in page  # the Δ as the Markdown shows it
    markdown_cells = [c.strip() for line in T.render("table5", df)[0].splitlines() if line.startswith("| deit")
                      for c in line.strip("|").split("|")[1:]]
    assert markdown_cells == re.findall(r"<td>(.*?)</td>", body)


def test_unknown_table_and_write(tmp_path):
    with pytest.raises(ValueError, match="valid tables"):
        T.build("table99", [])
    md_path, csv_path = T.write("table5", T.build("table5", table5_records()), tmp_path / "tables")
    assert md_path.read_text().startswith("## Table 5") and csv_path.read_text().startswith("model · quantity,")


# --------------------------------------------------------------------------- the registry and the layers

def test_every_table_registered_once_and_core_knows_no_builder():
    assert set(T.TABLES) == {"table1", "table2", "table3", "table4", "table5", "table6", "table7", "table8", "fig1",
                             "fig3", "fig3_umt", "fig5", "readings", "demo", "merging"}
    with pytest.raises(ValueError, match="registered twice"):
        core.register("table5")(lambda runs: None)
    source = (ROOT / "repshift/report/core.py").read_text()
    assert "image_tables" not in source.split('"""', 2)[2] and "video_tables" not in source.split('"""', 2)[2]


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
    return found


def test_report_reads_records_and_knows_no_models_data_or_benchmarks():
    forbidden = ("torch", "timm", "repshift.models", "repshift.patch", "repshift.data", "repshift.bench",
                 "repshift.run", "repshift.tasks", "repshift.maps", "repshift.evaluate", "repshift.configs",
                 "repshift.report.results")
    for path in sorted((ROOT / "repshift/report").glob("*.py")):
        if path.name == "wandb_logger.py":  # moving to the runner side
            continue
        for module, names in _imports(path):
            assert not module.startswith(forbidden), f"{path.name} imports {module}"
            private = [n for n in names if n.startswith("_") and module.startswith("repshift")]
            assert not private, f"{path.name} takes private names {private} from {module}"


# --------------------------------------------------------------------------- command line

def test_cli_prints_and_writes(tmp_path, capsys):
    for i, r in enumerate(table5_records()):
        put(tmp_path / "outputs", f"run{i}", r)
    out = tmp_path / "tables"
    assert report_main(["table", "table5", "--results", str(tmp_path / "outputs"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("## Table 5") and "deit_s · Acc" in printed
    assert (out / "table5.md").exists() and (out / "table5.csv").exists()
    # the spelling of earlier releases is the same command
    assert report_main(["table=table5", f"results={tmp_path / 'outputs'}", f"out={tmp_path / 'again'}"]) == 0
    assert (tmp_path / "again" / "table5.md").read_text() == (out / "table5.md").read_text()


def test_cli_reports_bad_files_and_builds_the_rest(tmp_path, capsys):
    root = tmp_path / "outputs"
    for i, r in enumerate(table5_records()):
        put(root, f"run{i}", r)
    (root / "table5" / "empty").mkdir()
    (root / "table5" / "empty" / "result.json").write_text("{}")
    (root / "table5" / "wrong").mkdir()
    bad = json.loads((root / "table5" / "run0" / "result.json").read_text())
    bad["bench"] = "fast"
    (root / "table5" / "wrong" / "result.json").write_text(json.dumps(bad))
    assert report_main(["table", "table5", "--results", str(root)]) == 0
    captured = capsys.readouterr()
    assert f"skipped {root / 'table5/empty/result.json'}: schema None" in captured.err
    assert f"skipped {root / 'table5/wrong/result.json'}: bench:" in captured.err
    assert "deit_s · Acc" in captured.out and "77.5" in captured.out


def test_cli_layer_figure_png(tmp_path):
    root = tmp_path / "outputs"
    for block in (0, 2):
        put(root, f"r{block}", record("fig3", method="l2-attn", metric="l2", site="attn", top1=70.0 + block,
                                      layers=(block,)))
    assert report_main(["table", "fig3", "--results", str(root)]) == 0
    from PIL import Image

    with Image.open(root / "tables" / "fig3.png") as png:
        assert png.size == (660, 456)  # 5.5 x 3.8 in at 120 dpi


def test_cli_errors(tmp_path, capsys):
    assert report_main(["table", "nope"]) == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    assert report_main(["table", "table8", "--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no valid result.json" in err and str(tmp_path / "table8") in err
    assert report_main([]) == 2
    assert report_main(["figures", "--bogus", "1"]) == 2


def test_cli_help_documents_every_command(capsys):
    assert report_main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in ("table", "figures", "maps", "fig1", "html", "claims"):
        assert command in text
    assert report_main(["table", "--help"]) == 0
    assert "table5" in capsys.readouterr().out


def test_cli_as_module(tmp_path):
    for i, r in enumerate(table5_records()):
        put(tmp_path, f"run{i}", r)
    proc = subprocess.run([sys.executable, "-m", "repshift.report", "table", "table5", "--results", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("## Table 5")
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()  # no Hydra run dir
    assert (tmp_path / "tables" / "table5.md").exists()  # out defaults to <results>/tables


# W&B logging is the runner's (repshift/wandb_log.py): tests/test_runner_wandb.py


# --------------------------------------------------------------------------- figures

def test_overlay_grid_draws_each_map_normalised_and_upsampled(tmp_path):
    from repshift.report.figures import save_figure
    from repshift.report.maps import normalise_map, overlay_grid, upsample

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    maps = [[rng.random((8, 8)), None, rng.random(16)], [rng.random((8, 8)), rng.random((4, 4)), rng.random(16)]]
    fig = overlay_grid(images, maps, row_labels=["a", "b"], column_titles=["L1", "L5", "L9"], title="t",
                       panel_labels=[["x1", "x2", "x3"], ["y1", "y2", "y3"]],
                       masks=[np.zeros((64, 64), bool), None])
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 2 * 4 and len(fig.axes) == len(panels) + 1  # one colour bar
    assert [ax.get_title() for ax in panels[:4]] == ["image", "L1", "L5", "L9"]
    assert panels[4 + 3].get_xlabel() == "y3"
    assert panels[2].get_images() == []  # a missing map: an empty panel
    np.testing.assert_allclose(panels[4 + 2].get_images()[1].get_array(),
                               upsample(normalise_map(maps[1][1]), 64, 64))
    assert panels[4 + 3].get_images()[1].get_array().shape == (64, 64)  # a token vector laid out as its 4x4 grid
    assert panels[0].collections and not panels[4].collections  # the mask outlined on its own row only
    png, pdf = save_figure(fig, tmp_path, "grid")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
    with pytest.raises(ValueError, match="need one per row"):
        overlay_grid(images, maps[:1], row_labels=["a", "b"], column_titles=["L1", "L5", "L9"])


def test_normalise_and_upsample_match_torch():
    torch = pytest.importorskip("torch")
    from repshift.report.maps import normalise_map, upsample

    m = normalise_map(np.array([[2.0, 4.0], [6.0, 10.0]]))
    assert m.min() == 0.0 and m.max() == 1.0
    assert normalise_map(np.ones((3, 3))).max() == 0.0
    assert normalise_map(np.full((2, 2), np.nan)).max() == 0.0
    grid = np.random.default_rng(1).random((7, 7))
    reference = torch.nn.functional.interpolate(torch.tensor(grid)[None, None], size=(28, 28), mode="bilinear",
                                                align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(upsample(grid, 28, 28), reference, atol=1e-5)


def test_layer_curves_draw_each_row_and_the_baseline(tmp_path):
    from repshift.report.figures import layer_curves, plot_layer_curves

    df = pd.DataFrame({"layer 2": [72.0, math.nan], "layer 0": [70.0, 71.0]}, index=["attn_cls", "l2-attn"])
    df.attrs["baseline"] = {"deit_s": 79.8}
    ax = layer_curves(df).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["attn_cls"].get_xdata()) == [0, 2] and list(lines["attn_cls"].get_ydata()) == [70.0, 72.0]
    assert np.isnan(lines["l2-attn"].get_ydata()[1])
    assert list(lines["no pruning"].get_ydata()) == [79.8, 79.8] and lines["no pruning"].get_linestyle() == "--"
    from PIL import Image

    with Image.open(plot_layer_curves(df, tmp_path / "curves.png")) as png:
        assert png.size == (660, 456)
