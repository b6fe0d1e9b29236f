"""The browsable report (`python -m repshift.report html`): one self-contained page, opened in headless Chromium."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from repshift.record import Identity
from repshift.report import figures
from repshift.report.__main__ import main as report_main
from support import make_record

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def table5_result(method: str, top1: float, *, real: bool = True):
    return make_record(
        identity=Identity.of({"method": method}, [], "cuda:NVIDIA H200", "test"),
        run_name=f"method={method},model=deit_s", method={"name": method, "label": method.capitalize()},
        weights={"real": real, "source": "timm:facebook/deit_small" if real else "random-init"},
        metrics={"top1": top1, "top5": 90.0, "n": 50000, "skipped": 0},
        bench={"throughput": 3000.0, "unit": "img/s", "repeats": [3000.0], "kernel": ["flash"], "batch": 512,
               "iters": 10, "warmup": 2, "num_repeats": 1, "precision": "fp16", "device": "NVIDIA H200"},
        env={"device": "NVIDIA H200", "git_commit": "0123456789abcdef0123", "git_dirty": True})


@pytest.fixture
def report(tmp_path) -> Path:
    """Table 5 results (Ours from random weights) and one figure, rendered to report/index.html."""
    results = tmp_path / "outputs"
    table5_result("base", 79.9).write(results / "table5" / "base")
    table5_result("ours", 10.0, real=False).write(results / "table5" / "ours")
    (results / "table5" / "broken").mkdir()
    (results / "table5" / "broken" / "result.json").write_text('{"schema": "repshift.result/3"}')
    fig = Figure(figsize=(3, 2))
    fig.subplots().plot([0, 2, 4], [70, 72, 71])
    fig.suptitle("a test figure")
    figures.save_figure(fig, tmp_path / "figures", "fig3")
    assert report_main(["html", "--results", str(results), "--figures", str(tmp_path / "figures"),
                        "--out", str(tmp_path / "report")]) == 0
    return tmp_path / "report" / "index.html"


def test_page_is_self_contained_with_tables_figures_and_provenance(report):
    page = report.read_text(encoding="utf-8")
    assert page.index('<section id="claims"><h2>Claims ledger</h2>') < page.index('<section id="table-table5">')
    assert ">table5-accuracy</span>" in page
    assert "<td>not measured: DeiT-T, DeiT-B: no run (table5); needs the DeiT-T/S/B ImageNet-1k weights" in page
    assert "<h3>Table 5 — ImageNet-1k top-1 (%)" in page
    assert "<th>deit_s · Acc †</th>" in page  # the random-weight row is marked
    assert "<th>Ours · paper</th>" in page and "<th>Base · Δ</th>" in page
    broken = re.search(r'<div class="problems">(.*?)</div>', page, re.S).group(1)  # named, and the rest built
    assert "1 result file(s) could not be used" in broken and "table5/broken/result.json</code>: identity:" in broken
    assert page.count('src="data:image/png;base64,') == 1
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # nothing loaded from elsewhere
    details = re.search(r"<details><summary>Provenance: 2 run\(s\)</summary>(.*?)</details>", page, re.S).group(1)
    for fact in ("0123456789ab (dirty)", "NVIDIA H200", "flash", "fp16", "random: random-init",
                 "real: timm:facebook/deit_small"):
        assert fact in details


def test_empty_results_say_what_to_run(tmp_path):
    assert report_main(["html", "--results", str(tmp_path), "--out", str(tmp_path / "r")]) == 0
    assert "make figures first" in (tmp_path / "r" / "index.html").read_text(encoding="utf-8")


def chromium() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium found (looked for " + ", ".join(CHROMIUM_NAMES) + "); install the Debian package: "
                "apt-get install -y chromium")


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = chromium()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = report.resolve().as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<table>" in dom.stdout and "Table 5 — ImageNet-1k top-1" in dom.stdout
    assert "Provenance: 2 run(s)" in dom.stdout and 'src="data:image/png;base64,' in dom.stdout
    shot = tmp_path / "report.png"
    run = subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,1600", "--hide-scrollbars", url],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 1600)
        darkest, lightest = image.convert("L").getextrema()
        assert lightest - darkest > 100  # text and tables drawn, not a blank page
