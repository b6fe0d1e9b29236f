"""The merging table (repshift.report.merging_table) on hand-made run records, and the merging experiment's configs."""
from __future__ import annotations

import pytest

from repshift.configs import compose
from repshift.record import scan
from repshift.report.merging_table import merging_table
from repshift.report.tables import build, render
from support import make_record, make_smoke

BLOCKS = list(range(12))
MATCH = {"merging": {"match_to": "ours"}}


def _record(method, label, gmacs, throughput, top1, compress=None, metric="l2", site="mlp", tokens=(), **fields):
    return make_record(experiment="merging", run_name=f"model=deit_s,method={method}",
                       method={"name": method, "label": label}, metric=metric, site=site, compress=compress,
                       gmacs=gmacs, tokens=list(tokens), config=MATCH,
                       bench={"throughput": throughput, "unit": "img/s", "repeats": [throughput],
                              "kernel": ["sdpa:flash"], "batch": 16, "iters": 20, "warmup": 2, "num_repeats": 5,
                              "precision": "fp32", "device": "CPU"},
                       metrics={"top1": top1, "top5": 95.0, "n": 50000, "skipped": 0}, **fields)


def _records():
    prune = {"layers": [0, 3, 6], "ratio": 0.2}
    tome = {"layers": None, "num": 13, "mode": "merge", "proportional": True}  # layers null: every block, as runs write it
    tome_listed = {**tome, "layers": BLOCKS}
    return [
        _record("tome_ours", "ToMe + Ours", 2.70, 1500.0, 78.9, tome_listed, site="attn", tokens=[197, 184, 54]),
        _record("ours", "Ours", 2.99, 1400.0, 79.0, prune, tokens=[197, 158, 102]),
        _record("base", "Base", 4.61, 1000.0, 79.8, metric="l2"),
        _record("tome", "ToMe", 2.70, 1550.0, 79.1, tome, metric="none", site="attn", tokens=[197, 184, 54]),
        _record("static", "Static (control)", 2.99, 1420.0, 77.0, prune, metric="none", tokens=[197, 158, 102]),
    ]


def test_rows_columns_and_the_budget_share():
    df = merging_table(_records())
    assert list(df.index) == ["Base", "Ours", "Static (control)", "ToMe", "ToMe + Ours"]
    assert df.loc["Ours", "% of budget"] == pytest.approx(100.0)
    assert df.loc["ToMe", "% of budget"] == pytest.approx(2.70 / 2.99 * 100)
    assert df.loc["ToMe", "× Base"] == pytest.approx(1.55)
    assert df.loc["Base", "spends budget by"] == "—" and df.loc["Base", "tokens"] == "all"
    assert df.loc["ToMe", "spends budget by"] == "merge (ToMe)" and df.loc["Ours", "spends budget by"] == "prune"
    assert df.loc["ToMe", "score"] == "none (ToMe)" and df.loc["Static (control)", "score"] == "none (keep first)"
    assert df.loc["ToMe + Ours", "score"] == "shift L2 @attn"
    assert df.loc["ToMe", "schedule"] == "r=13 in every block"
    assert df.loc["ToMe + Ours", "schedule"] == "r=13 x 12 blocks"
    assert df.loc["Ours", "schedule"] == "20 % @ blocks 0,3,6"
    assert df.loc["ToMe", "tokens"] == "197→54"
    assert "smallest r whose GMACs do not exceed those of Ours" in df.attrs["notes"][0]
    assert not any("Synthetic" in note for note in df.attrs["notes"])  # real weights, ImageNet
    markdown = render("merging", df)[0]
    assert markdown.startswith("## Three ways to spend one budget") and "| ToMe + Ours" in markdown


def test_synthetic_records_are_marked_and_repeats_are_named():
    records = _records()
    shapebench = {"name": "synthetic", "root": "/data/shapebench", "synthetic": True, "n": 800}
    records.append(_record("ours", "Ours", 2.99, 1300.0, 50.0, {"layers": [0, 3, 6], "ratio": 0.2}, dataset=shapebench))
    df = merging_table(records)
    assert df.loc["Ours", "Acc-1"] == 50.0  # the later record of a pair is shown
    assert any("several records" in note and "deit_s/ours" in note for note in df.attrs["notes"])
    assert any(note.startswith("Synthetic data") for note in df.attrs["notes"])


def test_the_report_registry_builds_it_from_result_files(tmp_path):
    paths = [record.write(tmp_path / str(i)) for i, record in enumerate(_records())]
    runs = scan(tmp_path).records
    assert [str(p) for p in paths] == [path for path, _ in runs]
    assert list(build("merging", runs).index) == list(merging_table(_records()).index)


def test_merging_configs_compose():
    cfg = compose(["experiment=merging", "method=tome_ours"])
    assert (cfg.metric, cfg.site, cfg.attention) == ("l2", "attn", "sdpa")
    assert (cfg.compress.mode, cfg.compress.layers, cfg.compress.num) == ("merge", None, None)
    assert cfg.merging.match_to in cfg.merging.methods and cfg.model.name == "vit_convstem_tiny"
    attn = compose(["experiment=merging", "method=tome_attn"])
    assert (attn.metric, attn.attention, attn.method.name) == ("attn", "eager", "tome_attn")


@pytest.mark.slow
def test_make_reproduce_merging_smoke_prints_the_table(tmp_path):
    stdout, outputs = make_smoke("reproduce-merging", tmp_path)
    assert "## Three ways to spend one budget" in stdout and "| ToMe + Ours" in stdout
    found = scan(outputs / "merging", "merging")
    assert not found.problems and len(found.records) == 9
    by_method = {record.method.name: record for _, record in found.records}
    budget = by_method["ours"].gmacs
    merged = [by_method[m] for m in ("tome", "tome_ours", "tome_attn", "tome_random")]
    assert all(r.gmacs <= budget and r.compress.mode == "merge" for r in merged)
    assert len({r.compress.num for r in merged}) == 1  # one r, matched once
    assert (outputs / "tables" / "merging.md").is_file()
