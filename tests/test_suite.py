"""The Hydra suite end to end on synthetic data: configs, runner, skipping, launchers, errors."""
import json
from pathlib import Path

import pytest
from support import CONFIGS, QUICK, compose_run, make_smoke
from support import run_module as run

from repshift.configs import experiment_folder, names
from repshift.record import RunRecord
from repshift.run import recorded_method, run_name  # also registers the config resolvers

EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A launch folder with its own data/ and outputs/, shared by this module's runs."""
    return tmp_path_factory.mktemp("suite")


def results_under(folder):
    return sorted(Path(folder).rglob("result.json"))


# --- configs --------------------------------------------------------------------------------


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment):
    cfg = compose_run([f"experiment={experiment}"])
    # the folder is declared once, in the experiment's config (or one it builds on: fig1 -> table2_bench -> table2),
    # and it is itself an experiment's name (readings_table8 -> readings): never run.yaml's "custom"
    assert cfg.experiment_name == experiment_folder(experiment)
    assert cfg.experiment_name in names("experiment")
    assert set(cfg.task) <= {"train", "evaluate", "bench"}


@pytest.mark.parametrize("group", ["model", "dataset", "compress", "bench", "logger", "method", "smoke"])
def test_every_group_option_composes(group):
    options = sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))
    assert options, f"no configs in {CONFIGS / group}"
    for option in options:
        cfg = compose_run([f"{group}={option}"], return_hydra_config=True)
        assert cfg.hydra.runtime.choices[group] == option


@pytest.mark.parametrize("key,value", [("metric", "cos"), ("site", "block"), ("attention", "eager")])
def test_score_site_and_kernel_are_plain_keys(key, value):
    assert compose_run([])[key] == {"metric": "l2", "site": "mlp", "attention": "sdpa"}[key]
    assert compose_run([f"{key}={value}"])[key] == value


@pytest.mark.parametrize(
    "overrides,label",
    [
        ([], "ours"),
        (["method=base"], "base"),
        (["method=attn"], "attn"),
        (["metric=attn", "attention=sdpa"], "attn_sdpa"),
        (["metric=cos", "site=block"], "cos-block"),
        (["metric=attn_cls", "site=attn"], "attn_cls"),
        (["metric=none"], "static"),
        (["method=static"], "static"),
        (["method=attn_sdpa"], "attn_sdpa"),
        (["experiment=table8", "compress.layers=[2]", "compress.keep=bottom"], "ours"),
        (["experiment=table5", "model=deit_b", "metric=attn", "attention=eager"], "attn"),
        (["experiment=table6", "method=line_wise"], "line_wise"),
        (["experiment=table7", "method=ours"], "ours"),  # ViM: L2 across the mixer is Ours
        (["method=ours", "reading=update"], "ours@update"),
    ],
)
def test_method_names(overrides, label):
    cfg = compose_run(overrides)
    assert recorded_method(cfg)["name"] == label


def test_method_labels_are_declared_once_in_the_method_configs():
    labels = {option: compose_run([f"method={option}"]).method for option in ("base", "attn", "ours", "static")}
    assert {o: (m.name, m.label) for o, m in labels.items()} == {
        "base": ("base", "Base"), "attn": ("attn", "Attn"), "ours": ("ours", "Ours"), "static": ("static", "Static (control)")}


def test_slurm_launcher_defaults():
    cfg = compose_run(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1
    assert launcher.timeout_min > 0 and launcher.array_parallelism > 0
    assert launcher._target_ == "hydra_plugins.repshift_launcher.SlurmLauncher"  # ours, not submitit's own


def test_run_names_are_safe_readable_and_distinct():
    assert run_name("") == "defaults"
    assert run_name("metric=l2,model=deit_s,site=mlp") == "metric=l2,model=deit_s,site=mlp"  # safe: kept as written
    # unsafe characters are replaced, and the overrides' hash appended, so names that sanitise alike stay apart
    slashed, underscored = run_name("model.checkpoint=ck/good.pth"), run_name("model.checkpoint=ck_good.pth")
    assert slashed.startswith("model.checkpoint=ck_good.pth-") and "/" not in slashed
    assert underscored == "model.checkpoint=ck_good.pth" and slashed != underscored
    assert run_name("+label=é") != run_name("+label=ü")
    # long names are cut to one short path component, still distinct when only their ends differ
    long_a, long_b = run_name("x=" + "y" * 400 + "a"), run_name("x=" + "y" * 400 + "b")
    assert len(long_a) < 200 and long_a != long_b


# --- the runner -----------------------------------------------------------------------------


def test_single_run_writes_a_complete_result_then_skips(workdir):
    proc = run(workdir, *QUICK, "task=[evaluate,bench]")
    (path,) = results_under(workdir / "outputs/smoke/custom")
    result = json.loads(path.read_text())
    record = RunRecord.read(path)  # the runner writes what every reader accepts
    assert result["schema"] == "repshift.result/3" and result["experiment"] == "custom"
    assert (record.method.name, record.method.label, record.method.requested) == ("ours", "Ours", None)
    assert record.identity.device == "cpu" and record.identity.code.startswith("repshift ")
    assert (record.weights.real, record.weights.source, record.weights.initial) == (False, "random-init", None)
    assert result["model"] == {"name": "tiny", "arch": "vit_tiny_patch16_224", "family": "timm-vit"}
    assert result["dataset"]["synthetic"] is True and result["metrics"]["n"] == 16
    assert result["tokens"] == [197, 158, 158, 158, 127, 127, 127, 102]
    assert result["bench"]["precision"] == "fp32" and result["bench"]["kernel"] == ["sdpa:flash(cpu)"]
    assert result["bench"]["unit"] == "img/s" and result["bench"]["throughput"] > 0
    assert result["gmacs"] > 0 and result["env"]["torch"] and "git_commit" in result["env"]
    assert result["config"]["model"]["name"] == "vit_tiny_patch16_224"
    assert (path.parent / "run.log").exists() and "top-1" in (path.parent / "run.log").read_text()
    stamp = path.stat().st_mtime_ns

    again = run(workdir, *QUICK, "task=[evaluate,bench]")
    assert "skipping" in again.stdout + again.stderr and path.stat().st_mtime_ns == stamp
    run(workdir, *QUICK, "task=[evaluate,bench]", "force=true")
    assert path.stat().st_mtime_ns != stamp
    assert "top-1" in proc.stdout + proc.stderr


@pytest.mark.e2e
def test_sweep_through_submitit_local_and_an_interrupted_relaunch(workdir):
    sweep = ["-m", *QUICK, "task=[evaluate]", "metric=l1,l2", "hydra/launcher=submitit_local", "experiment_name=sweep"]
    run(workdir, *sweep)
    found = results_under(workdir / "outputs/smoke/sweep")
    assert [("metric=l1" in p.parent.name, "metric=l2" in p.parent.name) for p in found] == [(True, False), (False, True)]
    # a relaunch after a crash: one job had finished, the other had not
    kept, lost = found
    stamp = kept.stat().st_mtime_ns
    lost.unlink()
    run(workdir, *sweep)
    assert results_under(workdir / "outputs/smoke/sweep") == found
    assert kept.stat().st_mtime_ns == stamp


@pytest.mark.e2e
def test_torchrun_two_processes_match_one(workdir):
    args = [*QUICK, "task=[evaluate]", "dataset.limit=null", "experiment_name=ddp"]
    run(workdir, *args, "+tag=single")
    run(workdir, *args, "+tag=ddp", module=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "repshift.run"))
    by_tag = {p.parent.name: json.loads(p.read_text()) for p in results_under(workdir / "outputs/smoke/ddp")}
    (single,) = [r for name, r in by_tag.items() if "tag=single" in name]
    (ddp,) = [r for name, r in by_tag.items() if "tag=ddp" in name]
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert ddp["metrics"] == single["metrics"] and single["metrics"]["n"] == 16


def test_wandb_offline_run_lands_in_the_run_folder(workdir):
    run(workdir, *QUICK, "task=[bench]", "logger=wandb", "experiment_name=wb", env={"WANDB_MODE": "offline"})
    (path,) = results_under(workdir / "outputs/smoke/wb")
    offline = list((path.parent / "wandb").glob("offline-run-*"))
    assert offline, "W&B wrote no offline run"


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,message",
    [
        (["dataset=imagenet", "model=tiny", "task=[evaluate]", "paths.data_dir=/nonexistent"], "dataset.root=/nonexistent/imagenet"),
        (["model=tiny", "model.checkpoint=/nope.pth", "task=[bench]"], "model.checkpoint=/nope.pth"),
        (["model=deit_x"], "deit_s"),
        ([*QUICK, "compress.ratio=1.5", "task=[bench]"], "compress.ratio=1.5: expected a number < 1"),
        (["smoke=on", "model=deit_s", "model.name=regnetx_002", "metric=attn", "task=[bench]"],
         "no repshift adapter supports RegNet"),
        ([*QUICK, "task=[predict]"], "task[0]='predict': expected one of 'train', 'evaluate' or 'bench'"),
        (["smoke=on", "model=tiny", "task=[evaluate]", "model.kwargs.num_classes=0"],
         "runs the classification evaluator, which needs class logits"),
        ([*QUICK, "task=[train]", "model.checkpoint=/tmp/x.pth", "train.output=/tmp/x.pth"], "train.output=/tmp/x.pth is also model.checkpoint"),
    ],
)
def test_bad_input_names_the_config_key(workdir, args, message):
    proc = run(workdir, *args, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_corrupt_image_fails_with_its_path_or_is_skipped(workdir):
    root = workdir / "broken"
    for name in ("a", "b"):
        (root / "val" / name).mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (64, 64), "red").save(root / "val/a/ok.JPEG")
    (root / "val/b/bad.JPEG").write_bytes(b"not a jpeg")
    args = [*QUICK, "model.kwargs.num_classes=2", "task=[evaluate]", "dataset=imagenet", f"dataset.root={root}",
            "dataset.generate=null", "dataset.limit=null", "dataset.num_workers=0", "experiment_name=broken"]
    failed = run(workdir, *args, check=False)
    assert failed.returncode != 0 and "bad.JPEG" in failed.stdout + failed.stderr
    run(workdir, *args, "dataset.skip_corrupt=true")
    (path,) = results_under(workdir / "outputs/smoke/broken")
    assert json.loads(path.read_text())["metrics"]["skipped"] == 1


# --- make targets ---------------------------------------------------------------------------


@pytest.mark.e2e
def test_make_reproduce_table5_smoke(tmp_path):
    stdout, outputs = make_smoke("reproduce-table5", tmp_path)
    assert "Table 5" in stdout and "deit_s · Acc" in stdout and "77.8" in stdout  # paper numbers beside ours
    assert "†" in stdout  # random weights / synthetic data are marked
    assert len(results_under(outputs / "table5")) == 15  # base, attn, ours + the static and random controls
    assert "Static (control) · ours" in stdout and "Random (control) · ours" in stdout
    assert (outputs / "tables/table5.md").exists() and (outputs / "tables/table5.csv").exists()


@pytest.mark.e2e
def test_make_reproduce_table1_smoke(tmp_path):
    stdout, outputs = make_smoke("reproduce-table1", tmp_path)
    assert "self-attention" in stdout and "flash-attention" in stdout and "3552" in stdout


@pytest.mark.e2e
@pytest.mark.parametrize(
    "target,text",
    [
        ("reproduce-table8", "Random (control) top50"),
        ("reproduce-fig3", "Static (control)"),
        pytest.param("reproduce-readings", "Table 8 gap", marks=pytest.mark.slow),
        pytest.param("reproduce-fig5", "l2", marks=pytest.mark.slow),  # 45 runs: `make test-slow`
    ],
)
def test_make_reproduce_figures_smoke(tmp_path, target, text):
    stdout, _ = make_smoke(target, tmp_path)
    assert text in stdout
