"""``torch.compile`` of patched models: one graph per family and mode (``fullgraph=True``), at most one
compilation per (schedule, input shape), and outputs, token counts and kept tokens equal to eager.

The graph tests trace with a counting backend that runs the captured graph as it is (``CompileCounter``),
so they check what dynamo captures in seconds; ``aot_eager`` adds functionalization (the in-place ops of
the ResNet blocks and the selective scan), and the slow tier runs inductor itself.
"""
import pytest
import torch
from torch._dynamo.testing import CompileCounter

import repshift
from families import CASES, outputs
from repshift.patch import PruneState


#: One setting per family and mode in the default tier (dynamo traces each in 2-6 s here); the rest is slow.
QUICK = ("vit-l2-mlp", "vit-attn_cls-eager", "umt-l2-mlp", "umt-merge-entropy", "resnet-line-mlp", "vim-l2",
         "hf-vit-tome-l2")


def tiered(names):
    return [pytest.param(name, marks=() if name in QUICK else pytest.mark.slow) for name in names]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def assert_same_forward(model, compiled, inputs, exact=True):
    """The compiled forward equals eager: outputs, tokens per unit and the kept tokens' positions."""
    got = outputs(compiled(inputs))
    tokens, book = list(model.repshift.tokens), dict(model.repshift.book)
    want = outputs(model(inputs))
    for g, w in zip(got, want, strict=True):
        if exact:
            assert torch.equal(g, w)
        else:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)  # fused kernels sum in another order
    assert tokens == model.repshift.tokens
    assert book.keys() == model.repshift.book.keys()
    for name, record in book.items():
        assert torch.equal(record, model.repshift.book[name]), name


@pytest.mark.parametrize("name", tiered(CASES))
@torch.no_grad()
def test_one_graph_and_one_compilation_equal_to_eager(name):
    case = CASES[name]
    model = repshift.patch(case.build(), **case.patch)
    counter = CompileCounter()
    compiled = torch.compile(model, fullgraph=True, backend=counter)  # fullgraph: any graph break raises
    for seed in (0, 1):  # new values, same shape: the kept tokens change, the graph does not
        assert_same_forward(model, compiled, case.inputs(seed=seed))
    assert counter.frame_count == 1
    assert len(set(model.repshift.tokens)) > 1  # it did prune


@pytest.mark.slow
@pytest.mark.parametrize("name,shapes", [
    ("vit-l2-mlp", [(2, 3, 64, 64), (3, 3, 64, 64), (5, 3, 64, 64), (2, 3, 64, 64)]),
    ("umt-merge-entropy", [(2, 2, 3, 64, 64), (2, 3, 3, 64, 64), (2, 4, 3, 64, 64)]),
    ("resnet-token-stage", [(2, 3, 64, 64), (2, 3, 96, 96), (3, 3, 128, 128)]),
])
@torch.no_grad()
def test_new_input_shapes_cost_at_most_one_compilation_each(name, shapes):
    """A new batch size or token count compiles once more at most (then dynamically); the counts stay right."""
    case = CASES[name]
    model = repshift.patch(case.build(), **case.patch)
    counter = CompileCounter()
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    seen = []
    for shape in shapes:
        inputs = torch.randn(*shape, generator=torch.Generator().manual_seed(len(seen)))
        assert_same_forward(model, compiled, inputs)
        seen.append(tuple(model.repshift.tokens))
    assert counter.frame_count <= len(set(shapes))
    assert len(set(seen)) > 1 or name.startswith("vit")  # token counts followed the input size


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit-l2-mlp", "umt-merge-entropy", "resnet-line-mlp", "vim-l2"])
@torch.no_grad()
def test_aot_eager_functionalized_graph_equals_eager(name):
    case = CASES[name]
    model = repshift.patch(case.build(), **case.patch)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    assert_same_forward(model, compiled, case.inputs(), exact=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit-l2-mlp", "vit-attn_cls-eager", "umt-merge-entropy", "resnet-token-stage",
                                  "vim-l2"])
@torch.no_grad()
def test_inductor_equals_eager(name):
    case = CASES[name]
    model = repshift.patch(case.build(), **case.patch)
    compiled = torch.compile(model, fullgraph=True)
    for seed in (0, 1):
        assert_same_forward(model, compiled, case.inputs(seed=seed), exact=False)


@pytest.mark.slow
@torch.no_grad()
def test_deit_s_is_one_graph():
    """The issue's example (DeiT-S, l2 across the MLP, 20 % after blocks 0, 3, 6) was 17 graphs; now one."""
    import timm

    model = repshift.patch(timm.create_model("deit_small_patch16_224", pretrained=False).eval(),
                           metric="l2", site="mlp", layers=(0, 3, 6), ratio=0.2)
    explanation = torch._dynamo.explain(model)(torch.randn(1, 3, 224, 224))
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0)
    assert model.repshift.tokens == [197] * 1 + [158] * 3 + [127] * 3 + [102] * 5


def test_begin_takes_protected_positions():
    state = PruneState(family="x", metric="l2", site="mlp", reading="literal", layers=(0,), ratio=(0.5,), num=None,
                       attention="sdpa", seed=0, keep="top")
    tokens = torch.zeros(3, 6, 4)
    state.begin(tokens, protected=[0, 4])
    assert state.num_protected == 2
    assert state.book["protected"].tolist() == [[True, False, False, False, True, False]] * 3
    (kept,) = state.prune(0, torch.arange(6.0).expand(3, 6), tokens)
    assert kept.shape == (3, 4, 4)
    assert state.book["position"].tolist() == [[0, 3, 4, 5]] * 3  # floor(0.5 * 4) = 2 dropped, 0 and 4 kept


@pytest.mark.slow
@torch.no_grad()
def test_bench_compile_option_times_the_compiled_model():
    """``bench.compile=true``: run_bench compiles (inductor, fullgraph) before timing and says so in the record."""
    from repshift.models import build_model
    from repshift.tasks import run_bench
    from support import compose_run

    cfg = compose_run(["smoke=on", "model=tiny", "bench.compile=true"])
    model = repshift.patch(build_model(cfg.model.name, kwargs=dict(cfg.model.kwargs))[0].eval(),
                           metric="l2", site="mlp", layers=(0, 3, 6), ratio=0.2)
    record, gmacs = run_bench(model, cfg, torch.device("cpu"))
    assert record["compiled"] is True and record["first_call_s"] > 0 and record["throughput"] > 0
    assert record["kernel"] == ["sdpa:flash(cpu)"] and gmacs > 0
    assert model.repshift.tokens == [197] + [158] * 3 + [127] * 3 + [102]
