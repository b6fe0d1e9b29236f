"""vid-TLDR's merging as pure tensor functions (repshift.merge) and the proportional-attention kernels."""
from __future__ import annotations

import math

import pytest
import torch

from repshift import merge
from repshift.attention import attend, attend_with_map, record_kernels
from repshift.select import gather_tokens

# Six 2-D tokens: A = positions 0, 2, 4; B = positions 1, 3, 5.
#   x0 = (2, 0) and x2 = (0, 3) point exactly along B tokens x1 = (1, 0) and x3 = (0, 1) (cosine 1);
#   x4 = (1, -1) is closest to x1 (cosine 0.707), so with r = 2 it is the A token left unmerged.
TOKENS = torch.tensor([[[2.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.0, 1.0], [1.0, -1.0], [-1.0, 0.0]]])


def test_bipartite_match_by_hand():
    match = merge.bipartite_match(TOKENS, 2)
    assert match.sources.tolist() == [[0, 1]]  # x0 and x2 (A positions 0, 1), tied at cosine 1: lower first
    assert match.destinations.tolist() == [[0, 1]]  # into x1 and x3 (B positions 0, 1)
    assert match.unmerged.tolist() == [[2]]  # x4
    assert merge.surviving_positions(match, 6).tolist() == [[4, 1, 3, 5]]


def test_size_weighted_merge_by_hand():
    match = merge.bipartite_match(TOKENS, 2)
    out, size = merge.merge_tokens(TOKENS, match)
    # ŝ = 1, sizes 1: x1' = (x1 + x0) / 2, x3' = (x3 + x2) / 2; order [x4] + [x1', x3', x5]
    expected = torch.tensor([[[1.0, -1.0], [1.5, 0.0], [0.0, 2.0], [-1.0, 0.0]]])
    torch.testing.assert_close(out, expected)
    assert size.tolist() == [[1.0, 2.0, 2.0, 1.0]] and size.sum() == 6


def test_saliency_scaled_merge_by_hand():
    match = merge.bipartite_match(TOKENS, 2)
    size = torch.tensor([[3.0, 1.0, 1.0, 2.0, 1.0, 1.0]])
    saliency = torch.tensor([[0.5, 1.0, 0.0, 1.0, 1.0, 1.0]])
    out, new_size = merge.merge_tokens(TOKENS, match, size, saliency)
    # x1' = (1·x1 + 0.5·3·x0) / (1 + 1.5) = (1.6, 0); x2 is background (ŝ = 0): x3 stays (0, 1), size 2
    torch.testing.assert_close(out, torch.tensor([[[1.0, -1.0], [1.6, 0.0], [0.0, 1.0], [-1.0, 0.0]]]))
    assert new_size.tolist() == [[1.0, 2.5, 2.0, 1.0]]
    # with ŝ < 1 the total falls by Σ (1 - ŝ_s) size_s over the sources: 9 - (0.5·3 + 1·1) = 6.5
    assert new_size.sum().item() == pytest.approx(size.sum().item() - 2.5)


def test_sizes_sum_to_the_patch_count_over_steps_and_records_follow_destinations():
    torch.manual_seed(0)
    x = torch.randn(2, 20, 8)
    frame = torch.arange(20).div(5, rounding_mode="floor").expand(2, -1)  # 4 frames of 5 tokens
    position = torch.arange(20).expand(2, -1)
    size = None
    for count in (5, 4, 3):
        match = merge.bipartite_match(x, count)
        survivors = merge.surviving_positions(match, x.shape[1])
        before = x
        x, size = merge.merge_tokens(x, match, size)
        frame, position = gather_tokens(frame, survivors), gather_tokens(position, survivors)
        # an unmerged token is itself; a destination keeps its own record and its own position
        unmerged = match.unmerged.shape[1]
        torch.testing.assert_close(x[:, :unmerged], gather_tokens(before, 2 * match.unmerged))
        assert torch.equal(size.sum(dim=1), torch.full((2,), 20.0))  # ŝ = 1: no mass lost
    assert x.shape == (2, 8, 8)
    assert torch.equal(frame, position.div(5, rounding_mode="floor"))  # provenance = the survivor's own frame


def test_merge_keeps_the_input_dtype_and_sums_in_float32():
    x = TOKENS.to(torch.bfloat16)
    out, size = merge.merge_tokens(x, merge.bipartite_match(x, 2))
    assert out.dtype == torch.bfloat16 and size.dtype == torch.float32


def test_merge_count_clamps_to_half_as_vid_tldr():
    assert merge.merge_count(2352, num=600) == 600
    assert merge.merge_count(2352, num=2000) == 1176
    assert merge.merge_count(15, num=9) == 7
    assert merge.merge_count(10, ratio=0.25) == 2
    with pytest.raises(ValueError, match="exactly one"):
        merge.merge_count(10)
    with pytest.raises(ValueError, match="at most 3"):
        merge.bipartite_match(TOKENS, 4)


def test_normalize_saliency_by_hand():
    score = torch.tensor([[0.0, 2.0, 8.0, 10.0]])
    # min-max [0, .2, .8, 1]; mean .5: tokens 0, 1 are background; (.8 - .5) / (1 - .5) = .6
    torch.testing.assert_close(merge.normalize_saliency(score), torch.tensor([[0.0, 0.0, 0.6, 1.0]]))
    # no spread: no token is more salient than another, every one merges with full weight
    assert merge.normalize_saliency(torch.full((1, 5), 3.0)).tolist() == [[1.0] * 5]


def test_attention_entropy_saliency_by_hand():
    head0 = torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0], [.5, 0, .5, 0], [.25, .25, .25, .25]])
    head1 = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, .5, 0, .5], [.25, .25, .25, .25]])
    attn = torch.stack((head0, head1))[None]  # [1, 2, 4, 4]; head means: one-hot, two halves, uniform, uniform
    ln2 = math.log(2)
    torch.testing.assert_close(merge.attention_entropy(attn), torch.tensor([[0.0, -ln2, -2 * ln2, -2 * ln2]]))
    # min-max [1, .5, 0, 0]; mean .375: tokens 2, 3 background; (.5 - .375) / (1 - .375) = .2
    torch.testing.assert_close(merge.attention_entropy_saliency(attn), torch.tensor([[1.0, 0.2, 0.0, 0.0]]))


# --------------------------------------------------------------------------- proportional attention


def _qkv(batch=2, heads=3, tokens=5, head_dim=4):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, heads, tokens, head_dim, generator=g) for _ in range(3))


def test_proportional_attention_equals_an_explicit_softmax():
    q, k, v = _qkv()
    size = torch.tensor([[1.0, 2.0, 5.0, 1.0, 3.0], [4.0, 1.0, 1.0, 2.0, 1.0]])
    scale = 0.5
    probs = ((q @ k.transpose(-2, -1)) * scale + size.log()[:, None, None, :]).softmax(-1)
    expected = (probs @ v).transpose(1, 2).reshape(2, 5, 12)
    bias = merge.size_bias(size)
    torch.testing.assert_close(attend(q, k, v, "sdpa", scale, key_bias=bias), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attend(q, k, v, "eager", scale, key_bias=bias), expected, rtol=1e-5, atol=1e-6)
    # the map returned beside a biased output is the unbiased one (vid-TLDR's saliency reads that)
    out, unbiased = attend_with_map(q, k, v, scale, key_bias=bias)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(unbiased, ((q @ k.transpose(-2, -1)) * scale).softmax(-1))
    # all sizes 1: log 1 = 0, plain attention
    torch.testing.assert_close(attend(q, k, v, "sdpa", scale, key_bias=torch.zeros(2, 5)), attend(q, k, v, "sdpa", scale))


def test_the_biased_kernel_is_recorded_and_flash_attn_refuses_a_bias():
    q, k, v = _qkv()
    bias = torch.zeros(2, 5)
    biased, _ = record_kernels(attend, q, k, v, "sdpa", 0.5, key_bias=bias)
    plain, _ = record_kernels(attend, q, k, v, "sdpa", 0.5)
    assert len(biased) == 1 and biased[0].endswith("+bias") and plain == [biased[0].removesuffix("+bias")]
    with pytest.raises(ValueError, match="no per-key bias"):
        attend(q, k, v, "flash_attn", 0.5, key_bias=bias)
