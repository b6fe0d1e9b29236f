"""The adapter protocol, proved on a host that is not a ViT, and the 2-D selection mode.

``TwoStreamToy`` is a tiny sequence model shaped like Vision Mamba: a class token in the middle of
the sequence, and two streams (``hidden``, ``residual``) that must be pruned with the same indices.
Its adapter (``ToyAdapter``, registered by the ``toy_adapter`` fixture in conftest.py) is what a new
family would add under ``repshift/patch/``; see docs/architecture.md.
"""
import pytest
import torch

import repshift
from repshift import scores
from repshift.patch import find_adapter
from repshift.select import gather_grid_lines, keep_grid_lines, keep_grid_tokens, keep_indices, protected_mask
from support import TwoStreamToy


@pytest.fixture
def toy(toy_adapter):
    torch.manual_seed(0)
    return TwoStreamToy(tokens=8, channels=6, depth=3).eval()


@pytest.fixture
def inputs():
    return torch.randn(3, 8, 4, generator=torch.Generator().manual_seed(2))


@torch.no_grad()
def test_nothing_to_drop_equals_the_plain_forward(toy, inputs):
    reference = toy(inputs)
    repshift.patch(toy, metric="l2", layers=(0, 1), ratio=0.0)
    assert torch.allclose(toy(inputs), reference, atol=1e-6)
    assert toy.repshift.tokens == [9, 9, 9]
    repshift.unpatch(toy)
    assert type(toy) is TwoStreamToy and torch.equal(toy(inputs), reference)


@torch.no_grad()
def test_both_streams_are_pruned_with_the_same_indices_and_the_middle_token_survives(toy, inputs):
    """The patched forward equals the forward written out by hand with the selection functions."""
    repshift.patch(toy, metric="l2", site="mlp", layers=(0, 1), num=(3, 2))
    out = toy(inputs)
    assert toy.repshift.tokens == [9, 6, 4]

    hidden, residual, middle = toy.embed_tokens(inputs)
    position = torch.arange(9).expand(3, 9)
    protected = protected_mask(3, 9, [middle])
    for layer, num_drop in zip(toy.layers, (3, 2, 0)):
        hidden, residual = layer(hidden, residual)
        token_scores = scores.shift(hidden, residual, "l2")  # D(F(LN(r)), r): the mixer's shift
        index = keep_indices(token_scores, num_drop, protected)
        hidden, residual, protected, position = (s.gather(1, index if s.dim() == 2 else index[..., None].expand(-1, -1, s.shape[-1]))
                                                 for s in (hidden, residual, protected, position))
    assert protected.sum(1).tolist() == [1, 1, 1]
    assert (position[protected] == middle).all()  # the class token kept its identity
    assert torch.equal(toy.repshift.book["position"], position)
    assert torch.allclose(out, toy.head_from(hidden, residual, protected), atol=1e-6)


@torch.no_grad()
def test_static_control_keeps_the_first_tokens_around_the_protected_one(toy, inputs):
    repshift.patch(toy, metric="none", layers=(0,), num=4)
    toy(inputs)
    assert toy.repshift.book["position"].tolist() == [[0, 1, 2, 3, 4]] * 3  # 4 = the middle class token


def test_registry_lists_supported_families_and_refuses_attention_scores(toy_adapter, toy):
    assert find_adapter(toy) is toy_adapter
    with pytest.raises(TypeError, match="no repshift adapter supports Linear; repshift.patch supports .*timm-vit: .*; toy-two-stream"):
        repshift.patch(torch.nn.Linear(2, 2), metric="l2", layers=(0,), ratio=0.1)
    with pytest.raises(ValueError, match="needs attention maps"):
        repshift.patch(toy, metric="attn", layers=(0,), ratio=0.1)
    with pytest.raises(ValueError, match="unknown site 'attn' for toy-two-stream"):
        repshift.patch(toy, metric="l2", site="attn", layers=(0,), ratio=0.1)
    with pytest.raises(ValueError, match="only 2 non-prefix tokens"):
        repshift.patch(toy, metric="l2", layers=(0, 1), num=(6, 3))


def test_protected_position_out_of_range():
    with pytest.raises(ValueError, match="protected position 9 is out of range for a sequence of 9 tokens"):
        protected_mask(2, 9, [0, 9])


# --- 2-D selection for convolutional hosts -------------------------------------------------------


def test_line_wise_selection_by_hand():
    score_map = torch.tensor([[[1.0, 9.0, 1.0], [0.0, 0.0, 0.0], [5.0, 5.0, 5.0], [1.0, 9.0, 2.0]]])
    # row means 11/3, 0, 5, 4 -> drop row 1; column means 7/4, 23/4, 2 -> drop column 0
    rows, cols = keep_grid_lines(score_map, num_rows=1, num_cols=1)
    assert rows.tolist() == [[0, 2, 3]] and cols.tolist() == [[1, 2]]
    x = torch.arange(12.0).view(1, 1, 4, 3).repeat(1, 2, 1, 1)
    assert gather_grid_lines(x, rows, cols)[0, 1].tolist() == [[1.0, 2.0], [7.0, 8.0], [10.0, 11.0]]


def test_token_wise_selection_by_hand():
    score_map = torch.tensor([[[3.0, 1.0, 2.0], [1.0, 2.0, 3.0], [9.0, 8.0, 0.0]]])
    x = torch.arange(9.0).view(1, 1, 3, 3)
    # rows drop their lowest token: [[0, 2], [4, 5], [6, 7]] with scores [[3, 2], [2, 3], [9, 8]];
    # then every column of that 3x2 grid drops its lowest: column 0 drops 4 (2), column 1 drops 2 (2)
    assert keep_grid_tokens(x, score_map, num=1)[0, 0].tolist() == [[0.0, 5.0], [6.0, 7.0]]


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_rows=4, num_cols=0), "cannot drop 4 rows of a grid with 4"),
    (dict(num_rows=0, num_cols=3), "cannot drop 3 columns of a grid with 3"),
])
def test_grid_schedule_larger_than_the_grid(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keep_grid_lines(torch.rand(1, 4, 3), **kwargs)
    with pytest.raises(ValueError, match="cannot drop 3 tokens per row"):
        keep_grid_tokens(torch.rand(1, 2, 4, 3), torch.rand(1, 4, 3), num=3)
