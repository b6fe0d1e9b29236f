"""Mixed precision without a GPU: every family's patched forward under ``torch.autocast("cpu", bfloat16)``,
scores computed in float32, and the tokens kept under bf16 against fp32 on fixed inputs.

Agreement reached (kept tokens shared with the fp32 run, DeiT schedule: 20 % after blocks 0, 3, 6, so
102 of 197 kept): the trained ShapeBench ViT on 8 rendered val images (one per class) keeps the same
tokens for 99.26 % (l2, mlp), 98.90 % (l1, attn), 98.41 % (cos, block) and 99.26 % (attn_cls) of them,
and predicts the same class for all 8; the tiny random-weight models of every family agree on 90-100 %
(their scores have near-ties that bf16 rounding reorders).
"""
import pytest
import torch

import repshift
from families import CASES, kept_agreement, kept_tokens, low_precision_run, outputs, shapebench_vit

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("name", CASES)
def test_every_family_runs_under_bf16_and_mostly_keeps_the_fp32_tokens(name):
    case = CASES[name]
    model = repshift.patch(case.build(), **case.patch)
    inputs = case.inputs(batch=4, seed=3)
    with torch.no_grad():
        model(inputs)
    tokens = list(model.repshift.tokens)
    with torch.no_grad(), torch.autocast(**BF16):
        result = outputs(model(inputs))
    assert all(torch.isfinite(r.float()).all() for r in result)
    assert any(r.dtype == torch.bfloat16 for r in result)  # autocast reached the model's matmuls
    assert model.repshift.tokens == tokens
    if model.repshift.metric != "none":  # the static control keeps fixed tokens whatever the precision
        fp32 = kept_tokens(model, inputs, None)
        assert kept_agreement(fp32, kept_tokens(model, inputs, torch.bfloat16)) >= 0.85


@pytest.mark.parametrize("name", ["vit-l2-mlp", "vit-attn_cls-eager", "umt-l2-mlp", "umt-attn", "resnet-line-mlp",
                                  "resnet-token-stage", "vim-l2", "vim-top_vim"])
@torch.no_grad()
def test_scores_are_float32_under_autocast(name):
    case = CASES[name]
    model = repshift.patch(case.build(), **case.patch)
    model.repshift.record = True
    with torch.autocast(**BF16):
        model(case.inputs())
    assert model.repshift.recorded and all(s.dtype == torch.float32 for s in model.repshift.recorded)


@pytest.fixture(scope="module")
def trained_vit():
    return shapebench_vit()


@pytest.mark.parametrize("metric,site,least", [("l2", "mlp", 0.99), ("l1", "attn", 0.985), ("cos", "block", 0.98),
                                                ("attn_cls", "mlp", 0.99)])
def test_trained_vit_keeps_the_same_tokens_under_bf16(trained_vit, metric, site, least):
    model, images = trained_vit
    repshift.patch(model, metric=metric, site=site, layers=(0, 3, 6), ratio=0.2)
    try:
        fp32, bf16, same_predictions = low_precision_run(model, images, torch.bfloat16)
    finally:
        repshift.unpatch(model)
    assert same_predictions
    assert all(len(kept) == 102 for kept in fp32 + bf16)
    assert kept_agreement(fp32, bf16) >= least
