"""Figures of `make figures`: per-layer accuracy plots (Figs. 3 / 5, readings), score maps (Figs. 4 / 6).

The plots are drawn from run records this test writes (tests.support.make_record); the maps run the SMOKE
code path of repshift.maps (the tiny random ViT of repshift/configs/model/tiny.yaml with 12 blocks, on the
SMOKE ShapeBench images) and their values are checked against direct calls of repshift.representation_shift /
repshift.attention_scores.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import repshift
from repshift import maps
from repshift.record import Identity, scan
from repshift.report import figures
from repshift.report.__main__ import main as report_main
from repshift.report.core import as_runs, paper_value, sources
from repshift.report.maps import normalise_map, upsample
from support import make_record

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


CONTROL_LABELS = {"random": "Random (control)", "none": "Static (control)"}


def result(experiment, metric, site, top1, layers, *, real=True, keep="top", reading="literal", method=None,
           model="deit_s", metrics=None):
    name = method or f"{metric}-{site}"
    return make_record(
        identity=Identity.of({"e": experiment, "m": metric, "s": site, "l": list(layers), "k": keep, "r": reading,
                              "model": model, "real": real}, [], "cuda:NVIDIA H200", "test"),
        experiment=experiment, run_name=name, reading=reading, metric=metric, site=site,
        method={"name": name, "label": CONTROL_LABELS.get(metric, name)},
        model={"name": model, "arch": "deit_small_patch16_224", "family": "timm-vit"},
        compress={"layers": list(layers), "num": 40, "keep": keep} if layers else None,
        weights={"real": real, "source": "hub" if real else "random-init"}, bench=None, gmacs=None,
        metrics=metrics or {"top1": top1, "top5": 90.0, "n": 50000, "skipped": 0})


def load_results(folder):
    return as_runs(scan(folder).records)


@pytest.fixture
def results_root(tmp_path):
    """fig3 (block 4 of l2-attn from random weights), fig5 (every metric x site + a control), readings."""
    root = tmp_path / "outputs"
    n = 0

    def put(r):
        nonlocal n
        n += 1
        r.write(root / r.experiment / f"run{n}")

    for block in (0, 2, 4):
        put(result("fig3", "attn_cls", "attn", 70.0 + block, [block]))
        put(result("fig3", "l2", "attn", 60.0 + block, [block], real=block != 4))
    put(result("fig3", "l2", "mlp", 79.8, [], method="base"))
    for metric in ("l1", "l2", "cos"):
        for site in ("attn", "mlp", "block"):
            for block in (0, 2):
                put(result("fig5", metric, site, 50.0 + block + len(metric) + len(site), [block]))
    put(result("fig5", "random", "mlp", 40.0, [0], method="random"))
    for reading in ("literal", "update"):
        for keep in ("top", "bottom"):
            for block in (0, 2):
                put(result("readings", "l2", "mlp", (75.0 if keep == "top" else 50.0) + block, [block],
                           keep=keep, reading=reading))
        put(result("readings", "l2", "mlp", 77.0, [0, 3, 6], reading=reading))  # schedule run: not a point
    return root


def lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_layer_figures_written_as_png_and_pdf(results_root, tmp_path, capsys):
    out = tmp_path / "figures"
    assert report_main(["figures", f"results={results_root}", f"out={out}", "logger=none"]) == 0
    printed = capsys.readouterr()
    for name in ("fig3", "fig5", "readings"):
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
        assert (out / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
        assert f"{name}: wrote" in printed.out
    assert "fig1: nothing under" in printed.err and "fig7: nothing under" in printed.err


def test_fig3_panels_values_and_marks(results_root):
    fig = figures.layer_figure("fig3", load_results(results_root / "fig3"))
    (ax,) = [ax for ax in fig.axes if ax.get_visible()]
    assert ax.get_title() == "deit_s"
    lines = lines_by_label(ax)
    assert set(lines) == {"attn_cls", "l2-attn †", "no pruning"}
    assert list(lines["attn_cls"].get_xdata()) == [0, 2, 4]
    assert list(lines["attn_cls"].get_ydata()) == [70.0, 72.0, 74.0]
    assert list(lines["no pruning"].get_ydata()) == [79.8, 79.8]
    # the random-weight point (l2-attn at block 4) is hollow, the others filled
    colour = lines["l2-attn †"].get_color()
    markers = [line for line in ax.get_lines() if line.get_marker() == "o" and line.get_color() == colour]
    hollow = {float(m.get_xdata()[0]) for m in markers if m.get_markerfacecolor() == "none"}
    assert hollow == {4.0} and len(markers) == 3
    notes = " ".join(t.get_text() for t in fig.texts)
    assert "no paper series" in notes and "random weights or synthetic data" in notes


def test_each_models_panel_names_its_own_quantity(results_root):
    umt = result("fig3", "l2", "attn", 0.0, [2], model="umt_b", metrics={"hm_r1": 41.5})
    umt.write(results_root / "fig3" / "umt_run")
    fig = figures.layer_figure("fig3", load_results(results_root / "fig3"))
    labels = {ax.get_title(): ax.get_ylabel() for ax in fig.axes if ax.get_visible()}
    assert labels == {"deit_s": "top-1 (%)", "umt_b": "R@1 (%), harmonic mean of T2V / V2T"}


def test_fig5_has_an_operation_and_a_distance_panel(results_root):
    fig = figures.layer_figure("fig5", load_results(results_root / "fig5"))
    panels = {ax.get_title(): set(lines_by_label(ax)) for ax in fig.axes if ax.get_visible()}
    control = "Random (control)"
    assert panels == {"deit_s · (a) operation, L2": {"l2-attn", "l2-mlp", "l2-block", control},
                      "deit_s · (b) distance, MLP": {"l1-mlp", "l2-mlp", "cos-mlp", control}}


def test_readings_figure_draws_the_papers_table8_dashed(results_root):
    fig = figures.layer_figure("readings", load_results(results_root / "readings"))
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert set(axes) == {f"deit_s · {figures.SCHEDULE_PANEL}", "deit_s · Table 8 check, l2-mlp"}
    # the runs at the DeiT schedule: one point per reading, the paper's Table 5 Ours beside l2-mlp
    schedule = lines_by_label(axes[f"deit_s · {figures.SCHEDULE_PANEL}"])
    assert {"literal", "update"} <= set(schedule)
    assert schedule["paper (Table 5, Ours)"].get_ydata()[0] == paper_value("table5", "deit_s", "ours", "acc1",
                                                                            dataset="imagenet")
    lines = lines_by_label(axes["deit_s · Table 8 check, l2-mlp"])
    assert {"literal · keep top 50 %", "update · keep bottom 50 %"} <= set(lines)
    assert list(lines["literal · keep top 50 %"].get_xdata()) == [0, 2]  # the [0, 3, 6] schedule run is not a point
    paper = lines["paper (Table 8) · keep top 50 %"]
    assert paper.get_linestyle() == "--"
    assert list(paper.get_xdata()) == [0, 2, 4, 6, 8, 10]  # the paper's L1, L3, ..., L11
    assert paper.get_ydata()[0] == paper_value("table8", "deit_s", "top50", "acc1", column="L1")


def test_external_figures_are_copied_with_their_pdf(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1.5))
    fig.add_subplot().plot([0, 1], [1, 0])
    figures.save_figure(fig, tmp_path / "results" / "fig7", "fig7")  # as `python -m repshift.maps fig7` writes it
    written = figures.collect_external_figures(tmp_path / "results", tmp_path / "out")
    assert list(written) == ["fig7"]
    for suffix in (".png", ".pdf"):
        copy = (tmp_path / "out" / "fig7").with_suffix(suffix)
        assert copy.read_bytes() == (tmp_path / "results" / "fig7" / "fig7").with_suffix(suffix).read_bytes()
    assert (tmp_path / "out" / "fig7.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "out" / "fig7.pdf").read_bytes()[:5] == b"%PDF-"


def test_figures_without_results_fail_clearly(tmp_path, capsys):
    assert report_main(["figures", f"results={tmp_path}", "logger=none"]) == 1
    assert "fig3: nothing under" in capsys.readouterr().err
    assert report_main(["figures", "--bogus", "1"]) == 2


# --------------------------------------------------------------------------- maps (Figs. 4 / 6)

@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    """REPSHIFT_DATA for the SMOKE ShapeBench images, generated once for the module."""
    data = tmp_path_factory.mktemp("data")
    old = os.environ.get("REPSHIFT_DATA")
    os.environ["REPSHIFT_DATA"] = str(data)
    yield data
    if old is None:
        del os.environ["REPSHIFT_DATA"]
    else:
        os.environ["REPSHIFT_DATA"] = old


def test_map_values_come_from_repshift(smoke_data, tmp_path):
    # exactly what `python -m repshift.report maps --smoke` builds
    model, weights = maps.build_map_model(maps.SMOKE_MODEL, maps.SMOKE_MODEL_OVERRIDES)
    assert weights["real"] is False and len(model.blocks) == 12
    samples = maps.smoke_samples(2)
    assert samples.masks is not None and samples.masks.shape == (2, 224, 224)
    drawn = maps.make_map_figures(model, samples, tmp_path, "tiny (random weights) on ShapeBench †")
    assert [d.name for d in drawn] == ["fig6", "fig4"]
    with torch.no_grad():
        shift = repshift.representation_shift(model, samples.images, metric="l2", site="mlp")
        attn = repshift.attention_scores(model, samples.images, metric="attn_cls")
        shift_attn = repshift.representation_shift(model, samples.images, metric="l2", site="attn")
    blocks = list(maps.PAPER_BLOCKS)
    shift_grid = shift[:, blocks, 1:].reshape(2, 3, 14, 14).numpy()  # class token left out, 14 x 14 patches
    np.testing.assert_allclose(drawn[0].maps["l2-mlp"], shift_grid, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(drawn[0].maps["attn_cls"], attn[:, blocks, 1:].reshape(2, 3, 14, 14).numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(drawn[1].maps["l2-attn"], shift_attn[:, blocks, 1:].reshape(2, 3, 14, 14).numpy(),
                               rtol=1e-5, atol=1e-6)

    fig6 = drawn[0].figure
    panels = [ax for ax in fig6.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 2 * (1 + 2 * 3) and len(fig6.axes) == len(panels) + 1  # one colour bar
    titles = [ax.get_title() for ax in panels[:7]]
    assert titles[0] == "image (mask outlined)"
    assert titles[1] == "Attn (class attention)\nL1 (block 0)" and titles[6] == "Ours (L2, MLP)\nL9 (block 8)"
    # the overlay drawn on row 1, "Ours L5" is the normalised, upsampled representation shift of image 1, block 4
    overlay = panels[7 + 5].get_images()[1].get_array()
    np.testing.assert_allclose(overlay, upsample(normalise_map(shift_grid[1, 1]), 224, 224), atol=1e-6)
    assert all(ax.collections for ax in panels)  # the ground-truth mask is outlined on every panel
    for d in drawn:
        assert [p.name for p in d.paths] == [f"{d.name}.png", f"{d.name}.pdf"]
        assert d.paths[0].read_bytes()[:8] == PNG_MAGIC and d.paths[1].read_bytes()[:5] == b"%PDF-"


def test_maps_cli_smoke(smoke_data, tmp_path, capsys):
    out = tmp_path / "figures"
    assert maps.main(["maps", "--smoke", "--images", "1", "--out", str(out), "--figures", "fig6"]) == 0
    with Image.open(out / "fig6.png") as png:  # one row: the image and 2 scores x 3 blocks, at 100 dpi
        assert png.size[0] > 7 * 1.9 * 100 and png.size[1] < 2 * 1.9 * 100 + 100
    assert (out / "fig6.pdf").read_bytes()[:5] == b"%PDF-" and not (out / "fig4.png").exists()
    assert maps.main(["maps", "--smoke", "--figures", "fig9"]) == 2
    assert "known map figures are fig6, fig4" in capsys.readouterr().err
    assert maps.main(["maps", "--data", str(tmp_path / "nowhere")]) == 1
    assert "has no val/ folder" in capsys.readouterr().err


@pytest.mark.e2e
def test_report_maps_runs_the_runner_side_in_its_own_process(smoke_data, tmp_path):
    """`python -m repshift.report maps` (the README's command, old spelling included) reaches repshift.maps
    without the report importing any model code."""
    out = tmp_path / "figures"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REPSHIFT_DATA": str(smoke_data)}
    proc = subprocess.run([sys.executable, "-m", "repshift.report", "maps", "smoke=true", "images=1", f"out={out}",
                           "figures=[fig4]"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"wrote {out / 'fig4.png'}" in proc.stdout and (out / "fig4.png").read_bytes()[:8] == PNG_MAGIC


def test_imagenet_layout_samples(tmp_path):
    from PIL import Image

    for wnid, colour in (("n01440764", "red"), ("n01443537", "blue")):
        (tmp_path / "val" / wnid).mkdir(parents=True)
        Image.new("RGB", (300, 260), colour).save(tmp_path / "val" / wnid / f"ILSVRC2012_val_{wnid}.JPEG")
    samples = maps.load_samples("imagenet", tmp_path, 2)
    assert samples.images.shape == (2, 3, 224, 224) and samples.masks is None  # DeiT transform: crop 224
    assert samples.names == ["n01440764/ILSVRC2012_val_n01440764", "n01443537/ILSVRC2012_val_n01443537"]


def test_map_blocks_must_exist(smoke_data):
    model, _ = maps.build_map_model("tiny", ["pretrained=false"])  # 8 blocks
    with pytest.raises(ValueError, match=r"blocks \[8\] do not exist: the model has 8 blocks"):
        maps.score_maps(model, torch.zeros(1, 3, 224, 224), "l2-mlp", maps.PAPER_BLOCKS)


# --------------------------------------------------------------------------- W&B and make

def test_figure_logged_to_wandb_offline(wandb_env):
    tmp_path = wandb_env
    from matplotlib.figure import Figure

    fig = Figure()
    fig.subplots().plot([0, 1], [1, 0])
    logger = figures.figure_logger("wandb", tmp_path / "figs", "test")
    assert logger.mode == "offline"
    try:
        figures.save_figure(fig, tmp_path / "figs", "curve", logger=logger)
    finally:
        logger.finish()
    logged = list((tmp_path / "figs").rglob("media/images/figures/curve*.png"))
    assert len(logged) == 1 and logged[0].read_bytes()[:8] == PNG_MAGIC


FIGURE_SWEEPS = ("reproduce-fig3", "reproduce-fig5", "reproduce-readings", "reproduce-fig1", "reproduce-fig3-umt",
                 "reproduce-fig7")


@pytest.fixture(scope="module")
def installed_venv(tmp_path_factory) -> Path:
    """A VENV whose .installed is newer than pyproject.toml, so `make -n` prints no install steps in any checkout
    (a fresh clone has no .venv; VENV= on the command line reaches the sub-makes too)."""
    venv = tmp_path_factory.mktemp("venv")
    (venv / ".installed").touch()
    return venv


def dry_run(venv: Path, *args: str) -> list[str]:
    """The commands ``make -n`` prints (sub-makes' included), without make's own lines."""
    dry = subprocess.run(["make", "-n", "--no-print-directory", f"VENV={venv}", *args], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    return [line for line in dry.stdout.splitlines() if line.strip() and not line.startswith("make ")]


def test_make_figures_runs_every_figure_target(installed_venv):
    commands = dry_run(installed_venv, "figures", "SMOKE=1")
    assert not any("pip install" in c or c.endswith(".installed") for c in commands)
    for target, expected in (("figure-maps", "-m repshift.report maps --smoke --logger none --out outputs/smoke/figures"),
                             ("figure-plots", "-m repshift.report figures --results outputs/smoke --out "
                                              "outputs/smoke/figures --logger none"),
                             ("report", "-m repshift.report html --results outputs/smoke --figures outputs/smoke/figures "
                                        "--out outputs/smoke/report"),
                             ("claims", "-m repshift.report claims --results outputs/smoke")):
        dry = dry_run(installed_venv, target, "SMOKE=1")
        assert dry == [f"{installed_venv}/bin/python {expected}"], dry
        if target in ("figure-maps", "figure-plots"):
            assert any(c.endswith(expected) for c in commands)
    # without SMOKE, `make figures` runs each figure's sweep exactly as its own target does, then maps and plots
    full = dry_run(installed_venv, "figures")
    sweeps = [c for target in FIGURE_SWEEPS for c in dry_run(installed_venv, target)]
    assert full[:len(sweeps)] == sweeps
    assert [c.split(" -m ")[1].split()[:2] for c in full[len(sweeps):]] == [["repshift.report", "maps"],
                                                                           ["repshift.report", "figures"]]
    # with SMOKE, the same sweeps narrowed (4 images, two blocks, Fig. 1 on MSRVTT alone), the readings' Table 8
    # half alone at blocks 0 and 8, and every figure target still run
    assert "-m repshift.run -m experiment=fig3 smoke=on hydra/launcher=basic  dataset.limit=4 'compress.layers=[0],[8]'" \
        in " ".join(commands)
    readings = [c for c in commands if "experiment=readings" in c]
    assert readings[0].endswith("dataset.limit=4 metric=l2")
    assert readings[1].endswith("dataset.limit=4 metric=l2 'compress.layers=[0],[8]'")
    assert any("experiment=table2 smoke=video" in c and c.endswith("dataset=msrvtt") for c in commands)
    assert any(c.endswith("-m repshift.maps fig7 --out outputs/smoke/fig7 --random-weights") for c in commands)
    assert any("experiment=fig3_umt compress.num=367 smoke=video" in c for c in commands)


# --------------------------------------------------------------------------- `make figures SMOKE=1`, end to end

#: Every figure of `make figures`, each written as <name>.png and <name>.pdf.
ALL_FIGURES = ("fig1", "fig3", "fig4", "fig5", "fig6", "fig7", "readings")


def copy_of_checkout(dest: Path) -> Path:
    """This working tree as a fresh clone would have it (tracked and untracked-but-not-ignored files; no outputs/,
    data/ or .venv), copied to ``dest``. pyproject.toml is dated back so that make, pointed at the running
    interpreter's installed venv (VENV=), does not reinstall it from the copy."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is listed too
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    os.utime(dest / "pyproject.toml", (0, 0))
    return dest


def panel_lines(results: Path, name: str) -> dict[str, set[str]]:
    """{panel title: line labels} of a per-layer figure drawn from the results under ``results``."""
    runs = [r for table in figures.LAYER_FIGURES[name] for folder in sources(table) for r in load_results(results / folder)]
    fig = figures.layer_figure(name, runs)
    return {ax.get_title(): set(lines_by_label(ax)) for ax in fig.axes if ax.get_visible()}


@pytest.mark.slow
def test_make_figures_smoke_from_a_fresh_copy(tmp_path):
    """`make figures SMOKE=1` then `make report SMOKE=1` in a copy of the checkout: every figure as PNG and PDF,
    with every panel and series (~10 minutes on 2 CPU cores)."""
    venv = Path(sys.executable).parents[1]
    if not (venv / ".installed").is_file():
        pytest.skip(f"needs the venv `make install` made ({venv}/.installed), which the copy's make reuses")
    repo = copy_of_checkout(tmp_path / "repshift")
    env = {k: v for k, v in os.environ.items() if k not in ("REPSHIFT_DATA", "REPSHIFT_OUTPUTS")}
    env["WANDB_MODE"] = "disabled"
    for target in ("figures", "report"):
        proc = subprocess.run(["make", "-s", target, "SMOKE=1", f"VENV={venv}"], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=3600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "nothing under" not in proc.stderr  # every figure found its results

    results = repo / "outputs" / "smoke"
    out = results / "figures"
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.{s}" for n in ALL_FIGURES for s in ("png", "pdf"))
    for name in ALL_FIGURES:
        assert (out / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
        with Image.open(out / f"{name}.png") as png:
            pixels = np.asarray(png.convert("RGB"))
        assert min(pixels.shape[:2]) >= 300, (name, pixels.shape)
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100, name  # drawn, not a blank canvas

    controls = {"Random (control) †", "Static (control) †"}
    assert panel_lines(results, "fig3") == {"deit_s": {"attn_cls †", "l2-attn †", *controls},
                                            "umt_b": {"attn †", "l2-attn †", "no pruning †"}}
    assert panel_lines(results, "fig5") == {
        "deit_s · (a) operation, L2": {"l2-attn †", "l2-mlp †", "l2-block †", *controls},
        "deit_s · (b) distance, MLP": {"l1-mlp †", "l2-mlp †", "cos-mlp †", *controls}}
    schedule = {"literal †", "update †", "normed †", "paper (Table 5, Ours)"}
    table8 = {f"{r} · keep {k} 50 % †" for r in ("literal", "update", "normed") for k in ("top", "bottom")}
    assert panel_lines(results, "readings") == {
        **{f"{m} · {figures.SCHEDULE_PANEL}": schedule for m in ("deit_t", "deit_s", "deit_b")},
        "deit_s · Table 8 check, l2-mlp": table8 | {"paper (Table 8) · keep top 50 %", "paper (Table 8) · keep bottom 50 %"}}
    # Fig. 1: both UMT sizes x every variant; Fig. 7: the four ResNet-50 stages of four ShapeBench images
    with open(results / "tables" / "fig1.csv", newline="") as fh:
        fig1 = {row["model · variant"]: row for row in csv.DictReader(fh)}
    assert set(fig1) == {f"{size} {variant} †" for size in ("UMT-B", "UMT-L")
                         for variant in ("Base", "Base+FA", "Attn", "Ours", "Ours+FA")}
    assert {row["datasets"] for row in fig1.values()} == {"1"}  # SMOKE: MSRVTT alone
    fig7 = json.loads((results / "fig7" / "fig7.json").read_text())
    assert fig7["grids"] == [[56, 56], [28, 28], [14, 14], [7, 7]] and len(fig7["images"]) == 4

    page = (results / "report" / "index.html").read_text()
    for name in ALL_FIGURES:
        assert f'<figure id="{name}">' in page
