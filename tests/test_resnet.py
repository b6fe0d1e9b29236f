"""ResNet line-wise / token-wise pruning (Table 6), its fine-tuning recipe, and Fig. 7.

Most tests use tiny timm ResNets (``ResNet(BasicBlock | Bottleneck, [1, 1, 1, 1])`` with narrow
channels) at small inputs; the GMACs of the real ResNet-34/50 use random weights (counting needs none).
"""
import json
import math
import signal

import pytest
import timm
import torch
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

import repshift
from repshift.bench import count_gmacs
from repshift.patch.timm_resnet import grid_sizes
from repshift import maps as fig7  # Fig. 7: computed on the runner side (repshift.maps)
from repshift.train import train
from support import compose_run, make_smoke


def tiny_resnet(block=BasicBlock, layers=(1, 1, 1, 1), num_classes=10, seed=0) -> ResNet:
    torch.manual_seed(seed)
    model = ResNet(block, list(layers), num_classes=num_classes, stem_width=8, channels=(8, 16, 16, 16))
    for module in model.modules():  # timm zero-inits the last BN of each block: make branches non-trivial
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.normal_(module.bias, 0.0, 0.1)
    return model.eval()


def images(batch=2, side=64, seed=1):
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


def capture(model, name):
    """The input of ``model.<name>`` during the next forward (what the previous stage handed over)."""
    seen = {}
    handle = getattr(model, name).register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0]))
    return seen, handle


# --------------------------------------------------------------------------- grids and GMACs


def test_grid_sizes_at_224_are_the_papers():
    model = tiny_resnet()
    sizes = grid_sizes(model, (224, 224), layers=(0, 1), num=(8, 4))
    assert [(s["output"], s["pruned"]) for s in sizes] == [
        ((56, 56), (48, 48)), ((24, 24), (20, 20)), ((10, 10), None), ((5, 5), None)]
    assert [s["output"] for s in grid_sizes(model, (224, 224))] == [(56, 56), (28, 28), (14, 14), (7, 7)]


@pytest.mark.parametrize("side, expected_tokens", [(64, [256, 144, 9, 4]), (72, [324, 196, 16, 4])])
@torch.no_grad()
def test_real_forward_has_the_predicted_grids(side, expected_tokens):
    # By hand, num=(4, 3): 64 -> stem 16 -> layer1 16, pruned 12 -> layer2 6, pruned 3 -> layer3 2 -> layer4 1;
    # 72 -> stem 18 -> 18, pruned 14 -> 7, pruned 4 -> 2 -> 1 (a stride-2 layer maps s to ceil(s / 2)).
    model = tiny_resnet()
    repshift.patch(model, metric="l2", layers=(0, 1), num=(4, 3), mode="line")
    features = model.forward_features(images(side=side))
    assert model.repshift.tokens == expected_tokens
    predicted = grid_sizes(model, (side, side), (0, 1), (4, 3))
    handed_on = [s["pruned"] or s["output"] for s in predicted]
    assert [h * w for h, w in handed_on[:3]] == expected_tokens[1:]
    assert tuple(features.shape[2:]) == predicted[3]["output"] == (1, 1)


@pytest.mark.parametrize("name, base, pruned", [("resnet34", 3.66, 2.46), ("resnet50", 4.09, 2.70)])
def test_gmacs_match_the_issue(name, base, pruned):
    model = timm.create_model(name).eval()
    assert count_gmacs(model) == pytest.approx(base, abs=0.01)
    for mode in ("line", "token"):
        repshift.patch(model, metric="l2", layers=(0, 1), num=(8, 4), mode=mode)
        assert count_gmacs(model) == pytest.approx(pruned, abs=0.01)
        assert model.repshift.tokens == [56 * 56, 48 * 48, 20 * 20, 10 * 10]
        repshift.unpatch(model)


# --------------------------------------------------------------------------- equivalence and selection


@pytest.mark.parametrize("block, site, mode", [(BasicBlock, "mlp", "line"), (BasicBlock, "stage", "token"),
                                               (Bottleneck, "mlp", "token"), (Bottleneck, "stage", "line")])
@torch.no_grad()
def test_nothing_dropped_is_the_plain_forward(block, site, mode):
    # every stage scores (its blocks run through the adapter's own block code), none drops anything
    model = tiny_resnet(block, layers=(2, 1, 3, 1))
    x = images()
    reference = model(x)
    repshift.patch(model, metric="l2", site=site, layers=(0, 1, 2, 3), num=0, mode=mode)
    assert torch.equal(model(x), reference)
    repshift.unpatch(model)
    assert type(model) is ResNet and all(type(s) is nn.Sequential for s in (model.layer1, model.layer4))
    assert torch.equal(model(x), reference)


@torch.no_grad()
def test_scores_are_the_shift_of_the_last_block():
    # With the block's final ReLU removed, out = s + F(x) and s = x (no downsample in layer1.1), so the
    # readings are hand-computable from the block's own input and output.
    model = tiny_resnet(layers=(2, 1, 1, 1))
    model.layer1[1].act2 = nn.Identity()
    seen = {}
    model.layer1[1].register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out))
    x = images()
    model(x)
    branch = seen["out"] - seen["x"]
    expected = {
        "literal": (branch - seen["x"]).norm(dim=1),
        "update": (seen["out"] - seen["x"]).norm(dim=1),
        "normed": (branch - seen["x"]).norm(dim=1),
    }
    for reading, want in expected.items():
        repshift.patch(model, metric="l2", reading=reading, layers=(), num=(), mode="line")
        model.repshift.record = True
        model(x)
        assert torch.allclose(model.repshift.recorded[0], want, atol=1e-5), reading
        assert [m.shape[1:] for m in model.repshift.recorded] == [(16, 16), (8, 8), (4, 4), (2, 2)]
        repshift.unpatch(model)


@torch.no_grad()
def test_stage_site_scores_the_stage_output_against_its_projected_input():
    # layer2 downsamples: its first block's projection P maps the stage input onto the output's shape.
    model = tiny_resnet(layers=(1, 2, 1, 1))
    seen = {}
    model.layer2.register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out))
    x = images()
    model(x)
    expected = (seen["out"] - model.layer2[0].downsample(seen["x"])).norm(dim=1)
    repshift.patch(model, metric="l2", site="stage", layers=(), num=(), mode="line")
    model.repshift.record = True
    model(x)
    assert torch.allclose(model.repshift.recorded[1], expected, atol=1e-5)


@torch.no_grad()
def test_line_wise_keeps_the_best_rows_and_columns_in_order():
    model = tiny_resnet()
    x = images()
    reference, handle = capture(model, "layer2")
    model(x)
    handle.remove()
    repshift.patch(model, metric="l2", layers=(0,), num=(5,), mode="line")
    model.repshift.record = True
    pruned, handle = capture(model, "layer2")
    model(x)
    score = model.repshift.recorded[0]
    for b in range(x.shape[0]):
        rows = sorted(score[b].mean(1).argsort(descending=True)[:11].tolist())
        cols = sorted(score[b].mean(0).argsort(descending=True)[:11].tolist())
        assert torch.equal(pruned["x"][b], reference["x"][b][:, rows][:, :, cols])


@torch.no_grad()
def test_token_wise_drops_the_weakest_of_every_row_then_every_column():
    model = tiny_resnet()
    x = images()
    reference, handle = capture(model, "layer2")
    model(x)
    handle.remove()
    repshift.patch(model, metric="l2", layers=(0,), num=(3,), mode="token")
    model.repshift.record = True
    pruned, _ = capture(model, "layer2")
    model(x)
    score = model.repshift.recorded[0]
    for b in range(x.shape[0]):
        fmap, smap = reference["x"][b], score[b]  # [C, 16, 16], [16, 16]
        # rows: keep the 13 best of each row, in order
        rows_f, rows_s = [], []
        for r in range(16):
            keep = sorted(smap[r].argsort(descending=True)[:13].tolist())
            rows_f.append(fmap[:, r, keep])
            rows_s.append(smap[r, keep])
        fmap, smap = torch.stack(rows_f, dim=1), torch.stack(rows_s)  # [C, 16, 13], [16, 13]
        cols_f = []
        for c in range(13):
            keep = sorted(smap[:, c].argsort(descending=True)[:13].tolist())
            cols_f.append(fmap[:, keep, c])
        assert torch.equal(pruned["x"][b], torch.stack(cols_f, dim=2))


@torch.no_grad()
def test_static_control_crops_the_first_rows_and_columns():
    model = tiny_resnet()
    x = images()
    reference, handle = capture(model, "layer2")
    model(x)
    handle.remove()
    repshift.patch(model, metric="none", layers=(0,), num=(4,), mode="line")
    pruned, _ = capture(model, "layer2")
    model(x)
    assert torch.equal(pruned["x"], reference["x"][:, :, :12, :12])


def test_pruned_model_trains_through_the_gathers():
    model = tiny_resnet().train()
    repshift.patch(model, metric="l2", layers=(0, 1), num=(4, 2), mode="token")
    model(images()).sum().backward()
    assert model.conv1.weight.grad is not None and model.layer1[0].conv1.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, message", [
    (dict(layers=(4,), num=(1,)), r"layer index 4 is out of range: the model has blocks 0..3"),
    (dict(layers=(0,), num=(60,)), r"num=60 at stage index 0 \(layer1\) .* 56x56 output map"),
    (dict(layers=(0, 1), num=(8, 24)), r"num=24 at stage index 1 \(layer2\) .* 24x24"),
    (dict(metric="attn"), r"metric='attn' scores tokens with an attention map, and a ResNet has none"),
    (dict(metric="attn_cls"), r"metric='attn_cls'"),
    (dict(mode="diagonal"), r"unknown mode 'diagonal'"),
    (dict(mode="sequence"), r"mode='sequence' does not apply to timm-resnet"),
    (dict(site="attn"), r"unknown site 'attn' for timm-resnet"),
    (dict(ratio=0.2, num=None), r"ratio=\(0.2, 0.2\): on a ResNet give num="),
])
def test_bad_options_are_clear_errors(kwargs, message):
    options = dict(metric="l2", layers=(0, 1), num=(8, 4), mode="line") | kwargs
    model = tiny_resnet()
    with pytest.raises(ValueError, match=message):
        repshift.patch(model, **{k: v for k, v in options.items() if v is not None})
    assert not repshift.is_patched(model) and type(model) is ResNet


def test_a_grid_too_small_for_the_input_fails_at_the_forward():
    model = tiny_resnet()
    repshift.patch(model, metric="l2", layers=(0,), num=(8,), mode="line")  # fine at 224 (56 x 56)
    with pytest.raises(ValueError, match=r"num=8 at stage index 0 \(layer1\) .* 8x8 output map"):
        model(images(side=32))


def test_a_vit_refuses_the_2d_modes():
    vit = timm.create_model("vit_tiny_patch16_224", depth=2, embed_dim=32, num_heads=2, img_size=32, patch_size=16)
    with pytest.raises(ValueError, match=r"mode='line' does not apply to timm-vit models"):
        repshift.patch(vit, metric="l2", layers=(0,), ratio=0.2, mode="line")


# --------------------------------------------------------------------------- configs


def test_table6_configs_compose():
    for method, mode, label, task in (("line_wise", "line", "L-W", ["train", "evaluate", "bench"]),
                                      ("token_wise", "token", "T-W", ["train", "evaluate", "bench"])):
        cfg = compose_run(["experiment=table6", f"method={method}", "model=resnet50"])
        assert (cfg.compress.mode, cfg.method.label, list(cfg.task)) == (mode, label, task)
        assert (list(cfg.compress.layers), list(cfg.compress.num)) == ([0, 1], [8, 4])
        assert (cfg.train.epochs, cfg.train.cooldown_epochs, cfg.train.sched) == (100, 10, "cosine")
    base = compose_run(["experiment=table6", "method=base", "model=resnet34"])
    assert list(base.task) == ["evaluate", "bench"] and base.model.name == "resnet34.tv_in1k"


def test_the_runner_passes_the_mode():
    from repshift.run import compress_model

    cfg = compose_run(["experiment=table6", "method=token_wise", "model=resnet34"])
    model = compress_model(tiny_resnet(), cfg)
    assert model.repshift.mode == "token" and model.repshift.num == (8, 4)


# --------------------------------------------------------------------------- fine-tuning


class Quadrants(torch.utils.data.Dataset):
    """A bright square in one of four quadrants of a noisy 32x32 image; the label is the quadrant."""

    def __init__(self, n, seed, kill_at_read=None):
        g = torch.Generator().manual_seed(seed)
        self.x = 0.3 * torch.randn(n, 3, 32, 32, generator=g)
        self.y = torch.arange(n) % 4
        for i, q in enumerate(self.y.tolist()):
            r, c = divmod(q, 2)
            self.x[i, :, 16 * r + 4:16 * r + 12, 16 * c + 4:16 * c + 12] += 2.0
        self.kill_at_read, self.reads = kill_at_read, 0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        self.reads += 1
        if self.reads == self.kill_at_read:  # the cluster's warning arrives while this sample is being read
            signal.raise_signal(signal.SIGUSR1)
        # a random augmentation from the global RNG, as real training transforms draw: a resumed run
        # must restore that stream exactly where the interrupted one left it
        return self.x[i] + 0.05 * torch.randn(self.x[i].shape), int(self.y[i])


class Preempted(Exception):
    pass


RECIPE = dict(epochs=3, cooldown_epochs=1, sched="cosine", opt="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4,
              filter_bias_and_bn=True, warmup_epochs=0, min_lr=1e-4, batch_size=8, progress=False)


def pruned_tiny(seed=0):
    model = tiny_resnet(num_classes=4, seed=seed)
    return repshift.patch(model, metric="l2", layers=(0, 1), num=(2, 1), mode="line")


def test_fine_tuning_lowers_the_loss_and_resumes_mid_epoch_after_a_requeue_signal(tmp_path):
    ckpt = tmp_path / "run" / "checkpoint.pth"

    def cluster_handler(signum, frame):  # what submitit does on its signal: requeue, i.e. end this process
        raise Preempted(signal.Signals(signum).name)

    data = Quadrants(32, 0, kill_at_read=32 + 8 * 1 + 3)  # epoch 2, while its second batch (of 4) is read
    previous = signal.signal(signal.SIGUSR1, cluster_handler)
    try:
        with pytest.raises(Preempted, match="SIGUSR1"):
            train(pruned_tiny(), data, Quadrants(8, 1), ckpt_path=ckpt, **RECIPE)
        assert signal.getsignal(signal.SIGUSR1) is cluster_handler  # train() handed the signal back
    finally:
        signal.signal(signal.SIGUSR1, previous)
    state = torch.load(ckpt, weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 2)  # the step in flight finished, then the checkpoint

    resumed_model = pruned_tiny(seed=5)  # its weights come from the checkpoint
    resumed = train(resumed_model, Quadrants(32, 0), Quadrants(8, 1), ckpt_path=ckpt, **RECIPE)
    straight_model = pruned_tiny()
    straight = train(straight_model, Quadrants(32, 0), Quadrants(8, 1), **RECIPE)
    print("fine-tuning smoke (tiny ResNet, L-W pruned, synthetic quadrants):")
    for entry in straight["history"]:
        print(f"  epoch {entry['epoch']}: loss {entry['train_loss']:.4f} lr {entry['lr']:.2e} "
              f"val top-1 {entry['val_top1']:.1f}")
    print(f"  stopped at epoch {state['epoch'] + 1} after step {state['step']}; resumed_from {resumed['resumed_from']:.3f}")
    losses = [e["train_loss"] for e in straight["history"]]
    assert losses[-1] < 0.7 * losses[0]
    assert straight["history"][-1]["lr"] == pytest.approx(1e-4)  # the cooldown epoch runs at min_lr
    assert resumed["resumed_from"] == pytest.approx(1 + 2 / 4)
    strip = lambda h: [{k: v for k, v in e.items() if k != "time_s"} for e in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(straight["history"])
    assert all(torch.equal(a, b) for a, b in zip(resumed_model.state_dict().values(), straight_model.state_dict().values()))


# --------------------------------------------------------------------------- Fig. 7


def test_fig7_draws_every_stage_on_shapebench(tmp_path):
    record = fig7.figure7(tmp_path, model_name="resnet18", random_weights=True, img_size=64)
    assert (tmp_path / "fig7.png").stat().st_size > 10_000
    assert record["grids"] == [[16, 16], [8, 8], [4, 4], [2, 2]]
    assert len(record["fg_bg_ratio"]) == 4 and all(len(r) == 4 for r in record["fg_bg_ratio"])
    assert all(math.isfinite(v) and v > 0 for row in record["fg_bg_ratio"][:1] for v in row[:2])
    assert json.loads((tmp_path / "fig7.json").read_text())["weights"]["real"] is False


def test_fig7_stage_maps_are_each_stage_shift_and_leave_the_model_unpatched():
    model = tiny_resnet()
    maps = fig7.stage_maps(model, images(), site="stage")
    assert [tuple(m.shape) for m in maps] == [(2, 16, 16), (2, 8, 8), (2, 4, 4), (2, 2, 2)]
    assert not repshift.is_patched(model)
    # by hand: L2 over channels between each stage's output and its input through the first shortcut
    expected = []
    with torch.no_grad():
        x = model.maxpool(model.act1(model.bn1(model.conv1(images()))))
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
            shortcut = stage[0].downsample(x) if stage[0].downsample is not None else x
            x = stage(x)
            expected.append((x - shortcut).norm(dim=1))
    for got, want in zip(maps, expected):
        torch.testing.assert_close(got.reshape(want.shape), want)
    with pytest.raises(ValueError, match="Fig. 7 maps a representation shift"):
        fig7.stage_maps(model, images(), metric="random")


# --------------------------------------------------------------------------- make targets (SMOKE)


@pytest.mark.slow
def test_make_reproduce_table6_smoke(tmp_path):
    stdout, outputs = make_smoke("reproduce-table6", tmp_path)
    assert "Table 6" in stdout and "L-W · paper" in stdout and "T-W · ours" in stdout and "†" in stdout
    runs = [json.loads(p.read_text()) for p in (outputs / "table6").rglob("result.json")]
    assert len(runs) == 6
    pruned = [r for r in runs if r["method"]["name"] != "base"]
    assert all(r["tokens"] == [3136, 2304, 400, 100] and round(r["gmacs"], 2) in (2.46, 2.70) for r in pruned)
    assert all(len(r["train"]["history"]) == 1 for r in pruned)


@pytest.mark.slow
def test_make_reproduce_fig7_smoke(tmp_path):
    stdout, outputs = make_smoke("reproduce-fig7", tmp_path)
    assert "stage grids [[56, 56], [28, 28], [14, 14], [7, 7]]" in stdout
    assert (outputs / "fig7" / "fig7.png").is_file()
