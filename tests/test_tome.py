"""ToMe-style merging on timm ViTs (``repshift.patch(vit, mode="merge")``), checked by hand.

The reference forward below is written with timm's own submodules, an explicit softmax with ``log(size)``
added per key, and ToMe's bipartite soft matching as loops over tokens; the patched model must agree with it.
"""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import repshift
from repshift import merge
from repshift.bench import count_gmacs
from support import tiny_vit

# One class token, then six 2-D patch tokens (A = patches 0, 2, 4; B = patches 1, 3, 5). The keys (what ToMe
# matches on) differ from the tokens: patch 0's key points along patch 3's, patch 2's along patch 1's, and
# patch 4's is orthogonal to every B key, so with r = 2 patches 0 -> 3 and 2 -> 1 merge and patch 4 stays.
CLS = [[9.0, 9.0]]
PATCHES = [[2.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.0, 1.0], [5.0, 5.0], [-1.0, 0.0]]
KEYS = [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, -1.0], [1.0, 1.0]]


def test_keys_decide_the_matching_and_the_class_token_is_untouched():
    x = torch.tensor([CLS + PATCHES])
    keys = torch.tensor([[[0.0, 0.0]] + KEYS])
    # patch 0's key (0, 1) is patch 3's key exactly; patch 2's (0, 1) also; patch 4's (1, -1) is orthogonal to
    # B keys (1, 0), (0, 1) at cosine 0.707 and to (1, 1) at 0: its best is patch 1 at 0.707 < 1, it stays.
    out, size, positions = merge.merge_after_prefix(x, keys, count=2, prefix=1)
    # sources 0 and 2 both go to B position 1 (patch 3): patch 3' = (x0 + x2 + x3) / 3 = (2/3, 4/3), size 3
    expected = torch.tensor([[[9.0, 9.0], [5.0, 5.0], [1.0, 0.0], [2 / 3, 4 / 3], [-1.0, 0.0]]])
    torch.testing.assert_close(out, expected)
    assert size.tolist() == [[1.0, 1.0, 1.0, 3.0, 1.0]]
    assert size[:, 1:].sum() == len(PATCHES)  # ŝ = 1: the patch tokens' sizes still sum to the patch count
    assert positions.tolist() == [[0, 5, 2, 4, 6]]  # cls, patch 4, then the B tokens, as input positions
    assert torch.equal(out[:, 0], x[:, 0])  # the class token is never matched, merged or moved


def test_weighted_average_with_sizes_and_saliency_by_hand():
    x = torch.tensor([CLS + PATCHES])
    keys = torch.tensor([[[0.0, 0.0]] + KEYS])
    size = torch.tensor([[1.0, 3.0, 1.0, 1.0, 2.0, 1.0, 1.0]])
    saliency = torch.tensor([[0.5, 1.0, 0.0, 1.0, 1.0, 1.0]])  # ŝ of the six patches
    out, new_size, _ = merge.merge_after_prefix(x, keys, 2, 1, size, saliency)
    # patch 3' = (2·x3 + 0.5·3·x0 + 0·1·x2) / (2 + 1.5) = ((0 + 3) / 3.5, 2 / 3.5); patch 2 is dropped (ŝ = 0)
    torch.testing.assert_close(out[0, 3], torch.tensor([3 / 3.5, 2 / 3.5]))
    assert new_size.tolist() == [[1.0, 1.0, 1.0, 3.5, 1.0]]


def test_schedule_counts_and_refusal_above_half():
    assert merge.merge_schedule(196, {b: (None, 13) for b in range(12)}) == {b: 13 for b in range(12)}
    assert merge.merge_schedule(196, {0: (0.25, None), 3: (0.5, None)}) == {0: 49, 3: 73}
    with pytest.raises(ValueError, match="block 11 asks to merge 16 of the 20 .* at most half of them \\(10\\)"):
        merge.merge_schedule(196, {b: (None, 16) for b in range(12)})


# --------------------------------------------------------------------------- the patched ViT against a reference


def _bipartite_by_hand(x, keys, size, count, saliency=None):
    """ToMe's step on one sample's patch tokens ``x [N, C]``, written with loops (sizes ``[N]``)."""
    unit = F.normalize(keys, dim=-1)
    a_side, b_side = list(range(0, len(x), 2)), list(range(1, len(x), 2))
    best = {a: max(b_side, key=lambda b: float(unit[a] @ unit[b])) for a in a_side}
    ranked = sorted(a_side, key=lambda a: -float(unit[a] @ unit[best[a]]))
    sources, kept = ranked[:count], sorted(ranked[count:])
    weight = size.clone() if saliency is None else size * saliency
    total = {b: size[b] * x[b] for b in b_side}
    mass = {b: size[b].clone() for b in b_side}
    for s in sources:
        total[best[s]] = total[best[s]] + weight[s] * x[s]
        mass[best[s]] = mass[best[s]] + weight[s]
    new_x = [x[a] for a in kept] + [total[b] / mass[b] for b in b_side]
    new_size = [size[a] for a in kept] + [mass[b] for b in b_side]
    return torch.stack(new_x), torch.stack(new_size)


def tome_by_hand(model, images, r, shift_saliency=False):
    """ToMe at the attention residual of every block (site="attn"), proportional attention, from timm's modules."""
    x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
    prefix = model.num_prefix_tokens
    size = torch.ones(x.shape[:2])
    for block in model.blocks:
        attn = block.attn
        batch, tokens, width = x.shape
        qkv = attn.qkv(block.norm1(x)).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        logits = (q @ k.transpose(-2, -1)) * attn.scale + size.log()[:, None, None, :]  # + log(size) per key
        a = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(batch, tokens, width))
        x_mid = x + a
        merged, sizes = [], []
        for i in range(batch):
            saliency = None
            if shift_saliency:  # shift of the attention branch, D(A(x), x) = |A(x) - x| (literal reading)
                saliency = merge.normalize_saliency((a - x)[i, prefix:].norm(dim=-1)[None])[0]
            keys = k[i].mean(0)[prefix:]
            body, body_size = _bipartite_by_hand(x_mid[i, prefix:], keys, size[i, prefix:], r, saliency)
            merged.append(torch.cat((x_mid[i, :prefix], body)))
            sizes.append(torch.cat((size[i, :prefix], body_size)))
        x, size = torch.stack(merged), torch.stack(sizes)
        x = x + block.mlp(block.norm2(x))
    return model.forward_head(model.norm(x)), size


def _vit(**kwargs):
    return tiny_vit(img_size=64, depth=3, **kwargs)  # 16 patches: 16 -> 14 -> 12 -> 10 with r = 2


@pytest.fixture
def images():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@torch.no_grad()
def test_tome_equals_the_reference_forward_with_proportional_attention(images, attention):
    model = _vit()
    expected, expected_size = tome_by_hand(model, images, r=2)
    repshift.patch(model, metric="none", site="attn", mode="merge", r=2, attention=attention)
    out = model(images)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    state = model.repshift
    assert state.tokens == [17, 15, 13]  # tokens entering each block; 1 + 10 leave the last one
    torch.testing.assert_close(state.size, expected_size)
    assert state.size[:, 1:].sum(1).tolist() == [16.0, 16.0]  # the sizes of the patch tokens sum to the patch count
    assert (state.book["position"][:, 0] == 0).all() and (state.size[:, 0] == 1).all()  # class token untouched


@torch.no_grad()
def test_tome_with_representation_shift_weights_the_merges_as_vid_tldr(images):
    model = _vit()
    expected, expected_size = tome_by_hand(model, images, r=2, shift_saliency=True)
    repshift.patch(model, metric="l2", site="attn", mode="merge", r=2)
    torch.testing.assert_close(model(images), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.repshift.size, expected_size)
    assert (model.repshift.size[:, 1:].sum(1) < 16).all()  # background sources (ŝ = 0) leave no mass


@torch.no_grad()
def test_r_zero_and_unpatch_give_the_plain_model_back(images):
    model = _vit()
    reference = model(images)
    repshift.patch(model, metric="none", mode="merge", r=0)
    torch.testing.assert_close(model(images), reference, rtol=1e-5, atol=1e-6)
    repshift.unpatch(model)
    assert type(model.blocks[0]) is timm.models.vision_transformer.Block
    assert torch.equal(model(images), reference)


@torch.no_grad()
def test_prefix_tokens_with_registers_are_never_merged(images):
    model = _vit(reg_tokens=2)  # class token + 2 registers = 3 prefix tokens
    repshift.patch(model, metric="random", site="mlp", mode="merge", layers=(0, 2), r=(7, 4))
    model(images)
    state = model.repshift
    assert state.tokens == [19, 12, 12] and state.book["position"].shape == (2, 8)
    assert state.book["position"][:, :3].tolist() == [[0, 1, 2]] * 2 and (state.size[:, :3] == 1).all()


@pytest.mark.parametrize("metric,attention", [("l1", "sdpa"), ("cos", "sdpa"), ("attn", "eager"),
                                              ("attn_mean", "sdpa"), ("attn_entropy", "eager"), ("random", "sdpa")])
@torch.no_grad()
def test_every_score_merges_to_the_same_token_counts(images, metric, attention):
    model = _vit(global_pool="avg", class_token=False) if metric == "attn_mean" else _vit()
    repshift.patch(model, metric=metric, site="attn", mode="merge", r=[3, 2, 0], attention=attention)
    assert torch.isfinite(model(images)).all()
    prefix = model.num_prefix_tokens
    assert model.repshift.tokens == [16 + prefix, 13 + prefix, 11 + prefix]


def test_token_counts_and_gmacs_by_hand():
    """GMACs counted on the merged model equal the multiply-adds written out per block."""
    model = tiny_vit(img_size=64, depth=2)  # 16 patches, width 16, 2 heads of 8, MLP 64, 5 classes
    base = count_gmacs(model, (3, 64, 64))
    repshift.patch(model, metric="none", site="attn", mode="merge", r=4)
    merged = count_gmacs(model, (3, 64, 64))
    width, hidden, head_dim = 16, 64, 8
    macs = 16 * width * 3 * 16 * 16 + width * 5  # patch embedding (16 patches) + classifier head
    for tokens, half in ((17, 8), (13, 6)):  # tokens entering the block; patch tokens in each half of the matching
        after = tokens - 4  # merged after the attention residual: the MLP runs on fewer tokens
        macs += tokens * width * 3 * width + 2 * tokens * tokens * width + tokens * width * width  # qkv, q·k, ·v, proj
        macs += half * half * head_dim  # ToMe's A x B similarity of the head-averaged keys
        macs += after * 2 * width * hidden  # MLP
    assert model.repshift.tokens == [17, 13]
    assert merged == pytest.approx(macs / 1e9, rel=1e-9)
    assert merged < base


# --------------------------------------------------------------------------- bad input


def test_r_larger_than_half_the_tokens_is_refused():
    model = _vit()
    with pytest.raises(ValueError, match="block 0 asks to merge 9 of the 16 .* at most half of them \\(8\\)"):
        repshift.patch(model, metric="none", mode="merge", r=9)
    with pytest.raises(ValueError, match="block 2 asks to merge 6 of the 10"):  # 16 -> 13 -> 10, then 6 > 5
        repshift.patch(model, metric="none", mode="merge", r=[3, 3, 6])
    with pytest.raises(ValueError, match="r has 2 entries but layers has 3"):
        repshift.patch(model, metric="none", mode="merge", r=[3, 3])
    assert not repshift.is_patched(model)


def test_merging_with_a_score_the_host_cannot_give_is_refused():
    model = _vit()
    with pytest.raises(ValueError, match="metric=top_vim is a score this host cannot give"):
        repshift.patch(model, metric="top_vim", mode="merge", r=2)
    without_cls = _vit(global_pool="avg", class_token=False)
    with pytest.raises(ValueError, match="no class token"):
        repshift.patch(without_cls, metric="attn_cls", mode="merge", r=2)
    with pytest.raises(ValueError, match="flash_attn"):  # proportional attention needs a per-key bias
        repshift.patch(model, metric="none", mode="merge", r=2, attention="flash_attn")
    with pytest.raises(ValueError, match="r is ToMe's .* mode='merge'"):
        repshift.patch(model, metric="l2", r=2)
    with pytest.raises(ValueError, match="give r or num/ratio, not both"):
        repshift.patch(model, metric="none", mode="merge", r=2, num=2, layers=(0,))
    with pytest.raises(ValueError, match="keep='bottom'"):
        repshift.patch(model, metric="l2", mode="merge", r=2, keep="bottom")
    assert not repshift.is_patched(model) and not repshift.is_patched(without_cls)
