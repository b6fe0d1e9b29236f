import itertools
import math

import pytest
import torch

from repshift.evaluate.saliency import auroc, mask_agreement, patch_coverage


def _pairwise_auroc(scores, labels):
    """Brute-force P(score_pos > score_neg) + 0.5 P(tie), for cross-checking."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return total / (len(pos) * len(neg))


# ---------------------------------------------------------------- patch_coverage
def test_patch_coverage_hand_computed_32x32():
    m = torch.zeros(32, 32)
    m[0:8, 0:16] = 1  # top-left patch: 8 of 16 rows -> 0.5
    m[0:4, 16:20] = 1  # top-right patch: 4x4 = 16 of 256 pixels -> 0.0625
    m[16:32, 16:32] = 1  # bottom-right patch: full
    cov = patch_coverage(m, patch_size=16)
    assert cov.shape == (1, 4)
    # row-major order: top-left, top-right, bottom-left, bottom-right
    assert cov[0].tolist() == [0.5, 0.0625, 0.0, 1.0]


def test_patch_coverage_batch_bool_and_patch_size():
    m = torch.zeros(2, 32, 32, dtype=torch.bool)
    m[1, 8:16, 0:8] = True  # exactly patch (row 1, col 0) of an 8-px grid
    cov = patch_coverage(m, patch_size=8)
    assert cov.shape == (2, 16)
    assert cov[0].sum() == 0
    expected = torch.zeros(16)
    expected[4] = 1.0  # row 1 * 4 columns + col 0
    assert torch.equal(cov[1], expected)
    # [B, 1, H, W] accepted and identical
    assert torch.equal(patch_coverage(m.unsqueeze(1), patch_size=8), cov)


def test_patch_coverage_rejects_bad_input():
    with pytest.raises(ValueError, match="multiple"):
        patch_coverage(torch.zeros(30, 32), patch_size=16)
    with pytest.raises(ValueError, match="0, 1"):
        patch_coverage(torch.full((16, 16), 255.0), patch_size=16)


# ---------------------------------------------------------------- auroc
def test_auroc_perfect_reversed_constant():
    labels = torch.tensor([1, 1, 0, 0, 0])
    assert auroc(torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0]), labels) == 1.0
    assert auroc(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), labels) == 0.0
    assert auroc(torch.full((5,), 7.0), labels) == 0.5


def test_auroc_ties_by_hand():
    # pairs (pos, neg): (.9,.5)=1 (.9,.1)=1 (.5,.5)=1/2 (.5,.1)=1 -> 3.5 / 4
    assert auroc(torch.tensor([0.9, 0.5, 0.5, 0.1]), torch.tensor([1, 1, 0, 0])) == pytest.approx(0.875)
    # pos {1, 0}, neg {1, 1}: ties 1/2 + 1/2, losses 0 + 0 -> 1 / 4
    assert auroc(torch.tensor([1.0, 1.0, 1.0, 0.0]), torch.tensor([1, 0, 0, 1])) == pytest.approx(0.25)


def test_auroc_matches_bruteforce_with_many_ties():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        s = torch.randint(0, 4, (40,), generator=g).float()  # heavy ties
        y = torch.randint(0, 2, (40,), generator=g)
        assert auroc(s, y) == pytest.approx(_pairwise_auroc(s.tolist(), y.tolist()), abs=1e-12)


def test_auroc_nan_when_one_class_absent():
    assert math.isnan(auroc(torch.tensor([1.0, 2.0]), torch.tensor([1, 1])))
    assert math.isnan(auroc(torch.tensor([1.0, 2.0]), torch.tensor([0, 0])))


# ---------------------------------------------------------------- mask_agreement
def test_mask_agreement_perfect_reversed_constant():
    cov = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert mask_agreement(torch.tensor([[4.0, 3.0, 2.0, 1.0]]), cov) == 1.0
    assert mask_agreement(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), cov) == 0.0
    assert mask_agreement(torch.ones(1, 4), cov) == 0.5


def test_mask_agreement_ignores_partially_covered_patches():
    cov = torch.tensor([[1.0, 0.3, 0.0]])
    # the 0.3-covered patch has the highest (or the lowest) score: it must not matter
    assert mask_agreement(torch.tensor([[0.5, 10.0, 0.1]]), cov) == 1.0
    assert mask_agreement(torch.tensor([[0.5, -10.0, 0.1]]), cov) == 1.0
    # lowering the threshold turns it into a positive that loses to the negative
    assert mask_agreement(torch.tensor([[0.5, 0.05, 0.1]]), cov, pos_threshold=0.25) == 0.5


def test_mask_agreement_mean_over_valid_images_only():
    cov = torch.tensor(
        [
            [1.0, 1.0, 0.0, 0.0],  # -> 1.0
            [1.0, 1.0, 0.0, 0.0],  # ties by hand -> 0.875
            [1.0, 1.0, 1.0, 1.0],  # no negatives: excluded
            [0.0, 0.0, 0.0, 0.2],  # no positives: excluded
        ]
    )
    scores = torch.tensor(
        [
            [4.0, 3.0, 2.0, 1.0],
            [0.9, 0.5, 0.5, 0.1],
            [0.0, 0.0, 9.0, 9.0],
            [9.0, 9.0, 0.0, 0.0],
        ]
    )
    assert mask_agreement(scores, cov) == pytest.approx((1.0 + 0.875) / 2)
    assert math.isnan(mask_agreement(scores[2:], cov[2:]))


def test_mask_agreement_end_to_end_with_patch_coverage():
    # foreground square on the top-left 2x2 patches of a 4x4 grid (64x64 image, patch 16)
    m = torch.zeros(64, 64)
    m[:32, :32] = 1
    cov = patch_coverage(m)
    scores = cov + 0.01 * torch.arange(16.0)  # foreground scores ~1, background < 0.16
    assert mask_agreement(scores, cov) == 1.0


def test_mask_agreement_shape_check():
    with pytest.raises(ValueError, match="class token"):
        mask_agreement(torch.ones(1, 5), torch.ones(1, 4))  # scores still hold the CLS token
