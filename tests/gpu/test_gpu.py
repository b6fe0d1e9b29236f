"""The GPU tier (``make test-gpu``; marker ``gpu``, kept out of the default tier): what only a CUDA device can
show. Without CUDA every test here is skipped. scripts/gpu_tier.py runs this tier and the headline ratios.

- the attention kernel that ran: ``sdpa:flash`` for Ours, ``eager`` for Attn, ``sdpa:efficient+bias`` once
  exact proportional attention has a size bias (vid-TLDR merging with ``proportional=True``);
- fp16 autocast against fp32: the tokens kept and the predictions (the trained ShapeBench ViT);
- the flash-attn package against SDPA, where it is installed;
- a CUDA-graph capture of a compiled pruned model (no host sync anywhere in the forward), replayed on new inputs;
- the pure-PyTorch selective scan and causal convolution against mamba_ssm / causal_conv1d, where installed.
"""
import importlib.util

import pytest
import timm
import torch

import repshift
from families import kept_agreement, low_precision_run, shapebench_vit
from repshift.attention import record_kernels
from repshift.models import umt
from repshift.ops import causal_conv1d, selective_scan, selective_scan_reference

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU tier did not run")]

CUDA = torch.device("cuda")
DEIT_S = dict(layers=(0, 3, 6), ratio=0.2)
FP16 = dict(device_type="cuda", dtype=torch.float16)


def deit_s(**patch) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("deit_small_patch16_224", pretrained=False).to(CUDA).eval()
    return repshift.patch(model, **patch) if patch else model


def images(batch=4, seed=0, side=224):
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed)).to(CUDA)


def kernels_under_fp16(model, inputs) -> list[str]:
    with torch.autocast(**FP16):
        return record_kernels(model, inputs)[0]


@pytest.mark.parametrize("patch,expected", [
    (dict(metric="l2", site="mlp", attention="sdpa", **DEIT_S), ["sdpa:flash"]),  # Ours
    (dict(metric="none", attention="sdpa", **DEIT_S), ["sdpa:flash"]),  # static
    (dict(metric="attn_cls", attention="eager", **DEIT_S), ["eager"]),  # Attn
])
def test_the_kernel_that_ran_on_deit_s(patch, expected):
    assert kernels_under_fp16(deit_s(**patch), images()) == expected


@pytest.mark.parametrize("proportional,expected", [(True, {"sdpa:flash", "sdpa:efficient+bias"}),
                                                    (False, {"sdpa:flash"})])
def test_proportional_attention_runs_the_efficient_kernel_with_its_bias(proportional, expected):
    torch.manual_seed(0)
    model = umt.vision_encoder("b", 2, depth=4).to(CUDA).eval()
    repshift.patch(model, metric="l2", site="attn", mode="merge", layers=(0, 1), num=40, attention="sdpa",
                   proportional=proportional)
    video = torch.randn(2, 2, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(CUDA)
    assert set(kernels_under_fp16(model, video)) == expected


def test_fp16_keeps_the_fp32_tokens_and_predictions():
    model, inputs = shapebench_vit()
    model, inputs = model.to(CUDA), inputs.to(CUDA)
    repshift.patch(model, metric="l2", site="mlp", **DEIT_S)
    fp32, fp16, same_predictions = low_precision_run(model, inputs, torch.float16)
    assert same_predictions
    assert kept_agreement(fp32, fp16) >= 0.98


@torch.no_grad()
def test_fp16_deit_s_logits_follow_fp32():
    model = deit_s(metric="l2", site="mlp", **DEIT_S)
    inputs = images()
    reference = model(inputs)
    with torch.autocast(**FP16):
        half = model(inputs).float()
    assert model.repshift.tokens == [197] + [158] * 3 + [127] * 3 + [102] * 5
    assert (half - reference).abs().max() <= 0.05 * reference.abs().max()


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="flash-attn is not installed")
@torch.no_grad()
def test_flash_attn_package_matches_sdpa():
    inputs = images()
    with torch.autocast(**FP16):
        sdpa = deit_s(metric="l2", site="mlp", attention="sdpa", **DEIT_S)(inputs).float()
        model = deit_s(metric="l2", site="mlp", attention="flash_attn", **DEIT_S)
        kernels, package = record_kernels(model, inputs)
    assert kernels == ["flash_attn"]
    torch.testing.assert_close(package.float(), sdpa, rtol=2e-2, atol=2e-2)


@torch.no_grad()
def test_cuda_graph_capture_of_a_compiled_pruned_model():
    """A capture fails on any host sync (``.item()``, a data-dependent shape): the pruned forward has none."""
    model = deit_s(metric="l2", site="mlp", **DEIT_S)
    compiled = torch.compile(model, fullgraph=True)
    static = images(seed=0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.autocast(**FP16):
        for _ in range(3):  # compile and warm up outside the capture
            compiled(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.autocast(**FP16):
        captured = compiled(static)
    for seed in (1, 2):
        fresh = images(seed=seed)
        static.copy_(fresh)
        graph.replay()
        with torch.autocast(**FP16):
            expected = model(fresh)
        torch.testing.assert_close(captured.float(), expected.float(), rtol=1e-2, atol=1e-2)


def scan_inputs(batch=2, dim=384, length=197, state=16, seed=0):
    """Selective-scan arguments of ViM-T's size (mamba_ssm's layouts), on the GPU."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    args = dict(u=r(batch, dim, length), delta=r(batch, dim, length) * 0.5,
                A=-torch.rand(dim, state, generator=g) - 0.5, B=r(batch, state, length), C=r(batch, state, length), D=r(dim), z=r(batch, dim, length),
                delta_bias=r(dim) * 0.1)
    return {k: v.to(CUDA) for k, v in args.items()}


@torch.no_grad()
def test_pytorch_scan_on_cuda_matches_the_step_by_step_reference():
    x = scan_inputs()
    torch.testing.assert_close(selective_scan(**x, delta_softplus=True, method="parallel"),
                               selective_scan_reference(**x, delta_softplus=True), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("mamba_ssm") is None, reason="mamba_ssm is not installed")
@torch.no_grad()
def test_pytorch_scan_matches_mamba_ssm():
    x = scan_inputs()
    kernel = selective_scan(**x, delta_softplus=True, backend="cuda")
    torch.testing.assert_close(selective_scan(**x, delta_softplus=True, backend="torch"), kernel, rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(importlib.util.find_spec("causal_conv1d") is None, reason="causal_conv1d is not installed")
@torch.no_grad()
def test_pytorch_causal_conv_matches_the_kernel():
    g = torch.Generator().manual_seed(0)
    x, weight, bias = (torch.randn(*shape, generator=g).to(CUDA) for shape in ((2, 384, 197), (384, 4), (384,)))
    torch.testing.assert_close(causal_conv1d(x, weight, bias, activation="silu", backend="torch"),
                               causal_conv1d(x, weight, bias, activation="silu", backend="cuda"), rtol=1e-4, atol=1e-4)
