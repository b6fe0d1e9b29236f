"""The three readings of the paper's representation shift, against tensors computed by hand.

For a residual branch ``y = x + g(F(N(x)))`` (``N`` the pre-norm, ``F`` the module, ``g`` layer scale):
- literal: ``D(g(F(N(x))), x)``  (the paper's Eqs. 4-6 as written; the default)
- update:  ``D(x + g(F(N(x))), x)``  (the residual stream before vs after the layer)
- normed:  ``D(F(N(x)), N(x))``  (what a forward hook on the module sees)
For ``site="block"`` all three are ``D(x̂, x)``.
"""
import pytest
import torch

import repshift
from support import distance_by_hand, tiny_vit, vit_block_tensors


PAIRS = {
    ("attn", "literal"): ("a", "x"), ("attn", "update"): ("x_mid", "x"), ("attn", "normed"): ("a_raw", "n1"),
    ("mlp", "literal"): ("m", "x_mid"), ("mlp", "update"): ("x_out", "x_mid"), ("mlp", "normed"): ("m_raw", "n2"),
    ("block", "literal"): ("x_out", "x"), ("block", "update"): ("x_out", "x"), ("block", "normed"): ("x_out", "x"),
}


@pytest.mark.parametrize("metric", ["l2", "l1", "cos"])
@pytest.mark.parametrize("site,reading", list(PAIRS))
@torch.no_grad()
def test_each_reading_by_hand(metric, site, reading):
    model = tiny_vit(init_values=0.5)  # layer scale on, so ls1/ls2 matter
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    got = repshift.representation_shift(model, images, metric=metric, site=site, reading=reading)
    after, before = PAIRS[(site, reading)]
    for layer, t in enumerate(vit_block_tensors(model, images)):
        assert torch.allclose(got[:, layer], distance_by_hand(t[after], t[before], metric), atol=1e-5)


@torch.no_grad()
def test_update_reading_is_the_norm_of_the_mlp_update():
    model = tiny_vit(init_values=0.5)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    got = repshift.representation_shift(model, images, metric="l2", site="mlp", reading="update")
    for layer, (t, block) in enumerate(zip(vit_block_tensors(model, images), model.blocks)):
        assert torch.allclose(got[:, layer], block.ls2(block.mlp(block.norm2(t["x_mid"]))).norm(dim=-1), atol=1e-5)


@torch.no_grad()
def test_the_reading_changes_which_tokens_survive_and_is_recorded():
    model = tiny_vit(init_values=0.5, img_size=64)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    kept = {}
    for reading in ("literal", "update", "normed"):
        repshift.patch(model, metric="l2", site="mlp", reading=reading, layers=(0,), ratio=0.5)
        assert model.repshift.reading == reading
        model(images)
        kept[reading] = model.repshift.book["position"].tolist()
        repshift.unpatch(model)
    assert len({str(v) for v in kept.values()}) > 1
    assert repshift.patch(model, metric="l2", layers=(0,), ratio=0.5).repshift.reading == "literal"  # the default


def test_unknown_reading_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown reading 'raw'; expected one of"):
        repshift.patch(tiny_vit(), metric="l2", reading="raw", layers=(0,), ratio=0.2)
