"""``torch.export`` of patched models: pruned DeiT, the UMT vision encoder (pruning and merging), ResNet and
ViM export whole, with a dynamic batch, and the exported program equals eager on inputs it never saw;
a pruned ViT goes on to ONNX and runs in ONNX Runtime (when ``onnxscript`` and ``onnxruntime`` are
installed: ``pip install 'repshift[export]'``). The recipe is in docs/export.md.
"""
import importlib.util

import pytest
import torch
from torch.export import Dim

import repshift
from families import CASES, outputs

#: The issue's three (pruned DeiT, UMT's encoder, ResNet) in the default tier; the other modes in the slow one.
EXPORTED = [*("vit-l2-mlp", "umt-l2-mlp", "resnet-line-mlp"),
            *(pytest.param(name, marks=pytest.mark.slow) for name in
              ("vit-attn_cls-eager", "vit-random", "umt-merge-entropy", "resnet-token-stage", "vim-l2"))]


def export(model, inputs):
    return torch.export.export(model, (inputs,), dynamic_shapes=({0: Dim("batch", min=1, max=64)},))


@pytest.mark.parametrize("name", EXPORTED)
@torch.no_grad()
def test_exported_program_equals_eager(name):
    case = CASES[name]
    model = repshift.patch(case.build(), **case.patch)
    program = export(model, case.inputs(batch=2))
    calls = {node.target.__name__ for node in program.graph.nodes if node.op == "call_function"}
    assert not calls & {"_local_scalar_dense", "item"}  # no tensor value read back into Python
    exported = program.module()
    for batch, seed in ((2, 0), (3, 7), (2, 8)):  # other values and another batch: the selection is in the graph
        inputs = case.inputs(batch=batch, seed=seed)
        got = outputs(exported(inputs))
        want = outputs(model(inputs))
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@torch.no_grad()
def test_deit_s_exports():
    import timm

    model = repshift.patch(timm.create_model("deit_small_patch16_224", pretrained=False).eval(),
                           metric="l2", site="mlp", layers=(0, 3, 6), ratio=0.2)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    exported = export(model, images).module()
    other = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(exported(other), model(other), rtol=1e-4, atol=1e-5)
    assert model.repshift.tokens == [197] + [158] * 3 + [127] * 3 + [102] * 5


@pytest.mark.skipif(not all(importlib.util.find_spec(p) for p in ("onnx", "onnxscript", "onnxruntime")),
                    reason="needs onnx, onnxscript and onnxruntime (pip install 'repshift[export]')")
@torch.no_grad()
def test_pruned_vit_to_onnx_runs_in_onnxruntime(tmp_path):
    import onnxruntime

    case = CASES["vit-l2-mlp"]
    model = repshift.patch(case.build(), **case.patch)
    path = tmp_path / "pruned_vit.onnx"
    torch.onnx.export(model, (case.inputs(),), path, dynamo=True, input_names=["images"],
                      dynamic_shapes=({0: Dim("batch", min=1, max=64)},))
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch, seed in ((2, 3), (4, 4)):
        inputs = case.inputs(batch=batch, seed=seed)
        (logits,) = session.run(None, {"images": inputs.numpy()})
        torch.testing.assert_close(torch.from_numpy(logits), model(inputs), rtol=1e-4, atol=1e-5)
