"""The browsable report (`python -m repshift.report html`): one self-contained page, opened in headless Chromium."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from repshift.report import figures
from repshift.report.__main__ import main as report_main
from repshift.report.results import SCHEMA, write_result

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def table5_result(method: str, top1: float, *, real: bool = True) -> dict:
    return {
        "schema": SCHEMA, "experiment": "table5", "run_name": f"method={method},model=deit_s",
        "method": {"name": method, "label": method.capitalize()},
        "model": {"name": "deit_s", "arch": "deit_small_patch16_224", "family": "timm-vit"},
        "metric": "l2", "site": "mlp", "attention": "sdpa",
        "compress": {"layers": [0, 3, 6], "ratio": 0.2, "num": None, "keep": "top"},
        "dataset": {"name": "imagenet", "root": "/data/imagenet", "synthetic": False, "n": 50000},
        "weights": {"real": real, "source": "timm:facebook/deit_small" if real else "random-init"},
        "metrics": {"top1": top1, "top5": 90.0, "n": 50000, "skipped": 0},
        "bench": {"throughput": 3000.0, "unit": "img/s", "batch": 512, "precision": "fp16",
                  "device": "NVIDIA H200", "kernel": ["flash"]},
        "env": {"device": "NVIDIA H200", "git_commit": "0123456789abcdef0123", "git_dirty": True},
    }


@pytest.fixture
def report(tmp_path) -> Path:
    """Table 5 results (Ours from random weights) and one figure, rendered to report/index.html."""
    results = tmp_path / "outputs"
    write_result(results / "table5" / "base", table5_result("base", 79.9))
    write_result(results / "table5" / "ours", table5_result("ours", 10.0, real=False))
    fig = Figure(figsize=(3, 2))
    fig.subplots().plot([0, 2, 4], [70, 72, 71])
    fig.suptitle("a test figure")
    figures.save_figure(fig, tmp_path / "figures", "fig3")
    assert report_main(["html", f"results={results}", f"figures={tmp_path / 'figures'}",
                        f"out={tmp_path / 'report'}"]) == 0
    return tmp_path / "report" / "index.html"


def test_page_is_self_contained_with_tables_figures_and_provenance(report):
    page = report.read_text(encoding="utf-8")
    assert "<h3>Table 5 — ImageNet-1k top-1 (%)" in page
    assert "<td>deit_s · Acc †</td>" in page  # the random-weight row is marked
    assert "<th>Ours · paper</th>" in page and "<th>Base · Δ</th>" in page
    assert page.count('src="data:image/png;base64,') == 1
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # nothing loaded from elsewhere
    details = re.search(r"<details><summary>Provenance: 2 run\(s\)</summary>(.*?)</details>", page, re.S).group(1)
    for fact in ("0123456789ab (dirty)", "NVIDIA H200", "flash", "fp16", "random: random-init",
                 "real: timm:facebook/deit_small"):
        assert fact in details


def test_empty_results_say_what_to_run(tmp_path):
    assert report_main(["html", f"results={tmp_path}", f"out={tmp_path / 'r'}"]) == 0
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
