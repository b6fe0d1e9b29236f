"""The runner's configuration: settings checked before anything is built, one method vocabulary, configs in the
style of lightning-hydra-template (builders by ``_target_``, base configs, experiment folders declared once)."""
import logging
import pickle
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError
from support import QUICK, compose_run
from support import run_module as run

from repshift import configs, settings
from repshift.configs import experiment_folder, experiments_in, method_spec, methods, names
from repshift.run import recorded_method  # also registers the config resolvers


def resolved(overrides):
    """The resolved run config as the runner checks it."""
    cfg = compose_run(overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return OmegaConf.to_container(cfg, resolve=True) | {"hydra": None}


def problems(overrides) -> str:
    with pytest.raises(settings.ConfigError) as caught:
        settings.validate(resolved(overrides))
    return str(caught.value)


# --- typed settings ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["no", "off", "'false'", "0", "yes"])
def test_the_unsafe_switch_opens_only_on_a_real_boolean(value):
    message = problems(["model=umt_b", f"model.unsafe_full_unpickle={value}"])
    assert "model.unsafe_full_unpickle=" in message and "expected true or false" in message
    settings.validate(resolved(["model=umt_b", "model.unsafe_full_unpickle=true"]))  # a real true passes


@pytest.mark.parametrize(
    "override,expected",
    [
        ("seed=abc", "seed='abc': expected a whole number"),
        ("bench.cpu.repeats=0", "bench.cpu.repeats=0: expected a whole number >= 1"),
        ("bench.cpu.batch_size=0", "bench.cpu.batch_size=0: expected a whole number >= 1"),
        ("bench.cpu.iters=0", "bench.cpu.iters=0: expected a whole number >= 1"),
        ("dataset.limit=-3", "dataset.limit=-3: expected a whole number >= 1"),
        ("dataset.num_workers=-1", "dataset.num_workers=-1: expected a number >= 0"),
        ("metric=l3", "metric='l3': expected one of 'l2', 'l1', 'cos'"),
        ("site=mlps", "site='mlps': expected one of 'attn', 'block', 'mixer', 'mlp' or 'stage'"),
        ("attention=flash", "attention='flash': expected one of 'sdpa', 'flash_attn' or 'eager'"),
        ("reading=loose", "reading='loose': expected one of 'literal', 'update' or 'normed'"),
        ("compress.keep=middle", "compress.keep='middle': expected one of 'top' or 'bottom'"),
        ("+compress.mode=fold", "compress.mode='fold': expected one of 'sequence', 'line', 'token' or 'merge'"),
        ("compress.ratio=1.5", "compress.ratio=1.5: expected a number < 1"),
        ("device=gpu", "device='gpu': expected auto, cpu, cuda, cuda:<index> or mps"),
        ("force=yes", "force='yes': expected true or false"),
        ("task=[predict]", "task[0]='predict': expected one of 'train', 'evaluate' or 'bench'"),
        ("dataset.skip_corrupt=on", "dataset.skip_corrupt='on': expected true or false"),
    ],
)
def test_counts_choices_and_booleans_are_checked_with_key_value_and_accepted(override, expected):
    assert expected in problems(QUICK + [override])


def test_every_wrong_key_is_listed_at_once():
    message = problems(QUICK + ["seed=abc", "bench.cpu.iters=0", "metric=l3"])
    assert message.startswith("invalid run configuration (3 keys):")
    assert all(key in message for key in ("seed='abc'", "bench.cpu.iters=0", "metric='l3'"))


def test_the_default_configs_and_every_experiment_pass_the_check():
    for experiment in names("experiment"):
        host = {"table3": ["method=vid_tldr"], "table3_bench": ["method=vid_tldr"], "table4": ["method=ours"],
                "table4_bench": ["method=ours"]}.get(experiment, [])
        settings.validate(resolved([f"experiment={experiment}", *host]))


def test_experiment_name_cannot_leave_the_outputs_folder(tmp_path):
    cfg = compose_run([f"paths.root_dir={tmp_path}", "experiment_name=../x"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with pytest.raises(InterpolationResolutionError, match=r"experiment_name='\.\./x': expected one folder name"):
        OmegaConf.select(cfg, "hydra.run.dir")  # Hydra resolves this to create the run folder: it cannot
    assert settings.check_folder_name("table5") == "table5"


def test_a_payload_checkpoint_with_the_switch_set_to_no_runs_nothing(tmp_path):
    """The unsafe switch written as ``no``: refused before the file is opened, so its pickled code never runs."""
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    checkpoint = tmp_path / "payload.pth"
    checkpoint.write_bytes(pickle.dumps({"model": Payload()}))
    proc = run(tmp_path, *QUICK, "task=[bench]", f"model.checkpoint={checkpoint}", "model.unsafe_full_unpickle=no",
               check=False)
    assert proc.returncode != 0
    assert "model.unsafe_full_unpickle='no': expected true or false" in proc.stdout + proc.stderr
    assert not marker.exists() and not list(tmp_path.rglob("result.json"))


# --- one method vocabulary --------------------------------------------------------------------

#: A host each method runs on (a method of another family needs its model and data).
HOSTS = {"line_wise": ["model=resnet34"], "token_wise": ["model=resnet34"], "top_vim": ["model=vim_t"],
         "vid_tldr": ["model=umt_b", "dataset=msrvtt"], "vid_tldr_ours": ["model=umt_b", "dataset=msrvtt"],
         "vid_tldr_ours_flash": ["model=umt_b", "dataset=msrvtt"],
         **{name: ["compress.num=4"] for name in ("tome", "tome_ours", "tome_attn", "tome_random")}}


@pytest.mark.parametrize("name", names("method"))
def test_every_method_config_is_recorded_under_its_own_name_and_label(name):
    method = recorded_method(compose_run([f"method={name}", *HOSTS.get(name, [])]))
    spec = method_spec(name)
    assert (method["name"], method["label"], method["requested"]) == (name, spec.label, None)
    assert method["declares"] == {key: list(values) for key, values in spec.declares.items()}


def test_one_spelling_per_method():
    assert list(methods()) == names("method")  # the name is the file's stem (methods() refuses anything else)
    assert method_spec("attn_sdpa").label == "Attn+SDPA" and method_spec("line_wise").label == "L-W"
    assert method_spec("top_vim").declares["metric"] == ("top_vim",)
    with pytest.raises(KeyError, match="no method 'attn\\+sdpa'; known: attn, attn_sdpa"):
        method_spec("attn+sdpa")
    for experiment in names("experiment"):  # sweeps name methods by that spelling
        swept = OmegaConf.select(configs.load("experiment", experiment), "hydra.sweeper.params.method")
        assert swept is None or set(str(swept).split(",")) <= set(methods()), experiment


def test_no_run_matches_two_methods():
    grid = [dict(prunes=p, metric=m, site=s, attention=a, mode=mode, proportional=prop, blocks=blocks)
            for p in (True, False) for m in ("l2", "attn", "attn_entropy", "random", "none", "top_vim", "cos")
            for s in ("mlp", "attn", "mixer") for a in ("sdpa", "eager") for mode in ("sequence", "line", "merge")
            for prop in (None, True, False) for blocks in ("every", "listed")]
    for run_settings in grid:
        matching = [spec.name for spec in methods().values() if spec.matches(run_settings)]
        assert len(matching) <= 1, (run_settings, matching)


@pytest.mark.parametrize(
    "overrides,recorded,conflict",
    [
        (["method=ours", "metric=attn", "attention=eager"], "attn", "metric=attn"),
        (["method=base", "compress.ratio=0.3", "compress.layers=[0,3,6]"], "ours", "prunes=True"),
        (["method=attn", "attention=sdpa"], "attn_sdpa", "attention=sdpa"),
        (["method=ours", "site=attn"], "l2-attn", "site=attn"),
    ],
)
def test_a_run_is_recorded_under_what_it_ran_not_what_it_asked(overrides, recorded, conflict, caplog):
    with caplog.at_level(logging.WARNING, logger="repshift.run"):
        method = recorded_method(compose_run(overrides))
    requested = overrides[0].split("=")[1]
    assert (method["name"], method["requested"]) == (recorded, requested)
    assert f"method={requested} (" in caplog.text and conflict in caplog.text  # the warning names both


def test_a_name_of_your_own_is_kept_and_a_kernel_is_not_a_method():
    # Base keeps no layer to prune (compress.layers=[]): a ratio alone prunes nothing, and the run is Base
    assert recorded_method(compose_run(["method=base", "compress.ratio=0.3"]))["name"] == "base"
    assert recorded_method(compose_run(["method=ours", "method.name=top50"]))["name"] == "top50"
    # Base and Ours declare no kernel: Table 1's self-attention Base is Base, with attention=eager on record
    assert recorded_method(compose_run(["method=base", "attention=eager"]))["name"] == "base"
    assert recorded_method(compose_run(["method=ours", "attention=eager"]))["name"] == "ours"


# --- configs: builders, bases, experiment folders ---------------------------------------------

DATASET_BUILDERS = {"repshift.data.folder.build", "repshift.data.shapebench.build",
                    "repshift.data.video_text.build", "repshift.data.video_qa.build"}
MODEL_BUILDERS = {"repshift.models.build_timm", "repshift.models.umt.build", "repshift.models.umt_qa.build",
                  "repshift.models.efficientnet.build"}


@pytest.mark.parametrize("group,builders", [("dataset", DATASET_BUILDERS), ("model", MODEL_BUILDERS)])
def test_datasets_and_models_name_their_builder(group, builders):
    targets = {name: compose_run([f"{group}={name}"])[group].get("_target_") for name in names(group)}
    assert set(targets.values()) == builders, targets
    assert targets["imagenet" if group == "dataset" else "umt_b_qa"] in (
        "repshift.data.folder.build", "repshift.models.umt_qa.build")


def test_video_datasets_share_one_base():
    retrieval = [n for n in names("dataset") if configs.load("dataset", n).get("defaults") == ["base/retrieval@_here_", "_self_"]]
    assert sorted(retrieval) == ["anet", "didemo", "lsmdc", "msrvtt", "msvd", "ssv2_label", "ssv2_template",
                                 "synthetic_video"]
    for name in retrieval:
        dataset = compose_run([f"dataset={name}"]).dataset
        assert (dataset.evaluator, dataset.sampling, dataset.k_test, dataset.itm) == ("retrieval", "middle", 128, True)
        text = Path(configs.CONFIG_DIR / "dataset" / f"{name}.yaml").read_text()
        assert len([line for line in text.splitlines() if not line.startswith("#")]) <= 14  # its own keys only
    assert "base" not in names("dataset") and "base" not in names("experiment")


def test_which_folder_an_experiment_writes_is_declared_once():
    assert experiment_folder("fig1") == "table2"  # through its defaults: fig1 -> table2_bench -> table2
    assert experiment_folder("readings_table8") == "readings" and experiment_folder("table1_umt") == "table1"
    assert experiments_in("table3") == ["table3", "table3_bench", "table3_bench_base"]
    assert experiments_in("table2") == ["fig1", "table2", "table2_bench"]
    bench = [n for n in names("experiment") if "base/umt_bench" in (configs.load("experiment", n).get("defaults") or [])]
    assert bench == ["table2_bench", "table3_bench", "table3_bench_base", "table4_bench"]
