"""The VLM step: pruning inside the vision tower of a tiny random LLaVA (CLIP or SigLIP tower, Llama text model),
built offline. Random weights: these tests check token counts, placeholders, generation and MACs, not accuracy.
"""
import os
import subprocess
import sys

import pytest
import torch
import transformers

import repshift
from repshift.patch.hf_llava import fit_image_placeholders, image_token_count
from support import ROOT
from repshift.vlm import TINY_IMAGE_TOKEN, TINY_TEXT, TINY_VISION, prefill_gmacs, tiny_llava

IMAGE = TINY_IMAGE_TOKEN
PATCHES = 16
PRUNE = dict(metric="l2", layers=(0, 1), num=(6, 4))  # 16 patches -> 10 -> 6, before hidden state 3 (layer -2)


def prompt(image_tokens: int) -> torch.Tensor:
    """``<bos> 5 6 <image> * n 7 8``: one image, as a processor writes it (one placeholder per image token)."""
    return torch.tensor([[1, 5, 6] + [IMAGE] * image_tokens + [7, 8]])


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def language_model_inputs(model, **inputs):
    """The embeddings the language model receives, captured on the way in."""
    captured = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.__setitem__("embeds", kwargs["inputs_embeds"]), with_kwargs=True)
    try:
        with torch.no_grad():
            out = model(**inputs)
    finally:
        hook.remove()
    return captured["embeds"], out


@torch.no_grad()
def test_from_a_local_folder_offline_with_nothing_to_drop_equals_the_unpatched_model(pixels, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny_llava().save_pretrained(tmp_path)
    model = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = prompt(PATCHES)  # "default": the class token is dropped, 16 patches reach the language model
    reference = model(input_ids=ids, pixel_values=pixels).logits
    repshift.patch(model, metric="l2", layers=(0, 1, 2, 3), ratio=0.0)
    assert model.repshift.attention == "eager"
    assert image_token_count(model) == PATCHES
    assert torch.allclose(model(input_ids=ids, pixel_values=pixels).logits, reference, atol=1e-5)
    repshift.unpatch(model)
    assert type(model.model) is transformers.LlavaModel
    assert torch.equal(model(input_ids=ids, pixel_values=pixels).logits, reference)


@torch.no_grad()
def test_pruning_hands_the_language_model_fewer_image_tokens(pixels):
    model = tiny_llava()
    full_ids = prompt(image_token_count(model))
    before, _ = language_model_inputs(model, input_ids=full_ids, pixel_values=pixels)
    repshift.patch(model, **PRUNE)
    ids, mask = fit_image_placeholders(model, full_ids, torch.ones_like(full_ids))
    assert image_token_count(model) == 1 + 6 - 1  # class token + 6 patches, the class token dropped by "default"
    assert ids.tolist() == prompt(6).tolist() and mask.tolist() == [[1] * 11]
    after, out = language_model_inputs(model, input_ids=ids, attention_mask=mask, pixel_values=pixels)
    assert model.repshift.tokens == [17, 11, 7, 7]
    assert (before.shape[1], after.shape[1]) == (21, 11)
    # The image features are the projector on hidden state 3 of the pruned tower, its class token dropped
    tower = model.model.vision_tower(pixel_values=pixels, output_hidden_states=True)
    features = model.model.multi_modal_projector(tower.hidden_states[-2][:, 1:])
    assert features.shape == (1, 6, 32)
    assert torch.allclose(after[0, 3:9], features[0], atol=1e-5)
    assert torch.allclose(out.image_outputs.pooler_output[0], features[0], atol=1e-5)
    # Which patches survived: the ones the tower kept, in order
    assert model.repshift.book["position"][0, 0] == 0 and model.repshift.book["position"].shape == (1, 7)


@torch.no_grad()
def test_a_prompt_with_the_unpruned_placeholders_is_refused_by_llava(pixels):
    model = repshift.patch(tiny_llava(), **PRUNE)
    with pytest.raises(ValueError, match="Image features and image tokens do not match, tokens: 16"):
        model(input_ids=prompt(PATCHES), pixel_values=pixels)


@torch.no_grad()
def test_generation_runs_and_starts_from_the_prefill(pixels):
    model = tiny_llava()
    repshift.patch(model, **PRUNE)
    ids, mask = fit_image_placeholders(model, prompt(PATCHES), torch.ones(1, 21, dtype=torch.long))
    generated = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=4,
                               min_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 11 + 4) and torch.equal(generated[:, :11], ids)
    assert generated[0, 11] == model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits[0, -1].argmax()
    assert model.repshift.tokens == [17, 11, 7, 7]  # the tower ran in the prefill only


def llama_macs(tokens: int) -> int:
    """The language model's MACs on a prompt of ``tokens``: per layer q, k, v, o projections, q·kᵀ and attn·v, the
    SwiGLU MLP; the LM head on every position."""
    width, mlp, layers, vocab = 32, 48, 2, 100
    per_layer = 4 * tokens * width**2 + 2 * tokens**2 * width + 3 * tokens * width * mlp
    return layers * per_layer + tokens * width * vocab


def tower_layer_macs(tokens: int) -> int:
    return 4 * tokens * 32**2 + 2 * tokens**2 * 32 + 2 * tokens * 32 * 64


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_prefill_gmacs_before_and_after(pixels, attention):
    """The MACs saved: the tower's pruned layers, the projector's and the language model's share of the image tokens."""
    model = tiny_llava(attention=attention)
    before = round(prefill_gmacs(model, input_ids=prompt(16), pixel_values=pixels) * 1e9)
    repshift.patch(model, **PRUNE)
    after = round(prefill_gmacs(model, input_ids=prompt(6), pixel_values=pixels) * 1e9)
    tower = sum(tower_layer_macs(17) - tower_layer_macs(n) for n in (11, 7, 7))
    projector = (16 - 6) * (32 * 32 + 32 * 32)
    assert before - after == tower + projector + llama_macs(21) - llama_macs(11)


@pytest.mark.parametrize("strategy,tokens", [("default", 6), ("full", 7)])
@torch.no_grad()
def test_both_strategies_are_served_with_a_class_token(pixels, strategy, tokens):
    model = repshift.patch(tiny_llava(vision_feature_select_strategy=strategy), **PRUNE)
    assert image_token_count(model) == tokens
    embeds, out = language_model_inputs(model, input_ids=prompt(tokens), pixel_values=pixels)
    assert out.image_outputs.pooler_output[0].shape == (tokens, 32) and embeds.shape[1] == 5 + tokens


@torch.no_grad()
def test_siglip_tower_serves_full(pixels):
    model = repshift.patch(tiny_llava("siglip", vision_feature_select_strategy="full"), **PRUNE)
    assert image_token_count(model) == 6  # no class token
    _, out = language_model_inputs(model, input_ids=prompt(6), pixel_values=pixels)
    assert out.image_outputs.pooler_output[0].shape == (6, 32)


@torch.no_grad()
def test_several_feature_layers_are_served_when_pruning_comes_before_all_of_them(pixels):
    model = repshift.patch(tiny_llava(vision_feature_layer=[-3, -1]), **PRUNE)  # hidden states 2 and 4
    _, out = language_model_inputs(model, input_ids=prompt(6), pixel_values=pixels)
    tower = model.model.vision_tower(pixel_values=pixels, output_hidden_states=True)
    both = torch.cat([tower.hidden_states[2][:, 1:], tower.hidden_states[4][:, 1:]], dim=-1)
    assert torch.allclose(out.image_outputs.pooler_output[0], model.model.multi_modal_projector(both)[0], atol=1e-5)


# --- merging (ToMe) inside the tower -------------------------------------------------------------------


MERGE = dict(metric="none", site="attn", mode="merge", layers=(0, 1), num=(6, 4))  # 16 patches -> 10 -> 6


@torch.no_grad()
def test_merging_hands_the_language_model_the_merged_tokens(pixels):
    model = tiny_llava()
    full_ids = prompt(image_token_count(model))
    repshift.patch(model, **MERGE)
    assert image_token_count(model) == 1 + 6 - 1  # class token + 6 merged patches, the class token dropped
    ids, mask = fit_image_placeholders(model, full_ids, torch.ones_like(full_ids))
    after, out = language_model_inputs(model, input_ids=ids, attention_mask=mask, pixel_values=pixels)
    assert model.repshift.tokens == [17, 11, 7, 7] and after.shape[1] == 11
    assert model.repshift.size[0, 1:].sum() == PATCHES  # the 6 tokens stand for all 16 patches
    tower = model.model.vision_tower(pixel_values=pixels, output_hidden_states=True)
    features = model.model.multi_modal_projector(tower.hidden_states[-2][:, 1:])
    assert torch.allclose(after[0, 3:9], features[0], atol=1e-5)
    generated = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=3,
                               min_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 11 + 3) and torch.equal(generated[:, :11], ids)


@torch.no_grad()
def test_tomes_r_schedule_counts_the_image_tokens(pixels):
    """``r`` per layer, the last layer (after hidden state 3, LLaVA's -2) merging nothing; SigLIP under "full"."""
    model = repshift.patch(tiny_llava("siglip", vision_feature_select_strategy="full"), metric="l2", mode="merge",
                           r=[4, 3, 2, 0])
    assert image_token_count(model) == PATCHES - 9
    _, out = language_model_inputs(model, input_ids=prompt(7), pixel_values=pixels)
    assert out.image_outputs.pooler_output[0].shape == (7, 32) and model.repshift.tokens == [16, 12, 9, 7]


def test_merging_what_llava_cannot_serve_is_refused():
    model = tiny_llava()
    with pytest.raises(ValueError, match=r"layers \[3\] merge at or after the features LLaVA hands to the language "
                                         r"model .*merging can serve it only in layers < 3"):
        repshift.patch(model, metric="none", mode="merge", r=2)  # r in every layer, the last one included
    with pytest.raises(ValueError, match="block 1 asks to merge 7 of the 12"):
        repshift.patch(model, metric="none", mode="merge", layers=(0, 1), num=(4, 7))
    with pytest.raises(ValueError, match="after merging that is whichever patch survived first.*Merging serves 'full'"):
        repshift.patch(tiny_llava("siglip"), **MERGE)
    assert not repshift.is_patched(model) and type(model.model) is transformers.LlavaModel


# --- what the pruning cannot serve --------------------------------------------------------------------


@pytest.mark.parametrize("llava,layers,match", [
    (dict(), (0, 3), r"layers \[3\] prune at or after the features LLaVA hands to the language model "
                     r"\(vision_feature_layer=-2: the language model receives hidden state 3, the output of layer 2\); "
                     r"pruning can serve it only in layers < 3"),
    (dict(vision_feature_layer=[-3, -1]), (0, 2), r"layers \[2\] .*vision_feature_layer=\[-3, -1\]: the hidden states "
                                                  r"\[2, 4\] are concatenated, so they must hold the same tokens"),
    (dict(vision_feature_layer=0), (0,), r"the language model receives the embeddings\); pruning can serve it only in layers < 0"),
])
def test_pruning_after_the_feature_layer_is_refused(llava, layers, match):
    model = tiny_llava(**llava)
    with pytest.raises(ValueError, match=match):
        repshift.patch(model, metric="l2", layers=layers, num=2)
    assert not repshift.is_patched(model) and type(model.model) is transformers.LlavaModel
    assert not any(hasattr(m, "repshift_state") for m in model.modules())


def test_default_strategy_on_a_tower_without_class_token_is_refused():
    model = tiny_llava("siglip")  # "default"
    with pytest.raises(ValueError, match="'default' drops the first token, and SiglipVisionModel has no class token.*"
                                         "Pruning serves 'full' here"):
        repshift.patch(model, **PRUNE)
    assert image_token_count(repshift.patch(model, metric="l2", layers=(0,), num=0)) == PATCHES - 1  # nothing pruned


def test_a_feature_layer_out_of_range_is_refused():
    model = tiny_llava(vision_feature_layer=7)
    with pytest.raises(ValueError, match="vision_feature_layer=7 is not an index into the tower's 5 hidden states"):
        repshift.patch(model, **PRUNE)


@torch.no_grad()
def test_a_call_asking_for_features_the_pruning_cannot_serve_is_refused(pixels):
    model = repshift.patch(tiny_llava(), **PRUNE)
    with pytest.raises(ValueError, match=r"layers \[1\] prune at or after .*vision_feature_layer=1"):
        model(input_ids=prompt(6), pixel_values=pixels, vision_feature_layer=1)
    with pytest.raises(ValueError, match="is not one LLaVA knows"):
        model(input_ids=prompt(6), pixel_values=pixels, vision_feature_select_strategy="cls_only")
    model(input_ids=prompt(7), pixel_values=pixels, vision_feature_select_strategy="full")  # served


def test_unsupported_llava_variants_and_towers():
    with pytest.raises(TypeError, match=r"no repshift adapter supports LlavaNextForConditionalGeneration; .*hf-llava: "
                                        r"transformers LlavaForConditionalGeneration and LlavaModel"):
        config = transformers.LlavaNextConfig(vision_config=transformers.CLIPVisionConfig(**TINY_VISION),
                                              text_config=transformers.LlamaConfig(**TINY_TEXT), image_token_id=IMAGE)
        repshift.patch(transformers.LlavaNextForConditionalGeneration(config), **PRUNE)
    model = tiny_llava()
    model.model.vision_tower = transformers.ViTMAEModel(transformers.ViTMAEConfig(**TINY_VISION))
    with pytest.raises(TypeError, match="the LLaVA vision tower is a ViTMAEModel; repshift.patch serves LLaVA with one of "
                                        "ViTModel, DeiTModel, CLIPVisionModel"):
        repshift.patch(model, **PRUNE)


def test_fit_image_placeholders_refuses_prompts_it_cannot_read():
    model = repshift.patch(tiny_llava(), **PRUNE)
    with pytest.raises(ValueError, match="row 0 has a run of 7 image placeholders, not a whole number of images of 16"):
        fit_image_placeholders(model, prompt(7))
    two_images = torch.tensor([[1] + [IMAGE] * 32 + [5], [1, IMAGE] + [IMAGE] * 15 + [5] * 17])
    with pytest.raises(ValueError, match="different numbers of images"):
        fit_image_placeholders(model, two_images)
    ids, mask = fit_image_placeholders(model, two_images[:1])  # two images in one run: 2 x 6 placeholders
    assert ids.tolist() == [[1] + [IMAGE] * 12 + [5]] and mask is None


# --- the usual way: a processor expands the prompt, a folder holds model and processor --------------------------


def tiny_processor():
    """A LlavaProcessor built offline: a word-level tokenizer (``<image>`` is id 99), CLIP's image processor at 32x32."""
    import tokenizers

    words = ["<pad>", "<s>", "</s>", "<unk>", "USER:", "ASSISTANT:", "What", "is", "in", "the", "picture?"]
    vocab = {**{word: i for i, word in enumerate(words)}, "<image>": IMAGE}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(["<image>"])
    return transformers.LlavaProcessor(
        image_processor=transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>",
                                                       bos_token="<s>", eos_token="</s>"),
        patch_size=8, vision_feature_select_strategy="default", image_token="<image>", num_additional_image_tokens=1)


def random_image():
    from PIL import Image

    pixels = torch.randint(0, 256, (40, 48, 3), generator=torch.Generator().manual_seed(0))
    return Image.fromarray(pixels.byte().numpy())


@torch.no_grad()
def test_processor_prompts_fitted_to_the_pruned_count(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny_llava().save_pretrained(tmp_path)
    tiny_processor().save_pretrained(tmp_path)
    processor = transformers.AutoProcessor.from_pretrained(tmp_path)
    model = repshift.patch(transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path).eval(), **PRUNE)
    text = "USER: <image> What is in the picture? ASSISTANT:"
    inputs = processor(images=random_image(), text=text, return_tensors="pt")
    assert (inputs["input_ids"] == IMAGE).sum() == PATCHES  # the processor writes the unpruned count
    ids, mask = fit_image_placeholders(model, inputs["input_ids"], inputs["attention_mask"])
    assert processor.decode(ids[0]) == "USER: " + "<image> " * 6 + "What is in the picture? ASSISTANT:"
    out = model.generate(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"], max_new_tokens=2)
    assert out.shape == (1, ids.shape[1] + 2)


@pytest.mark.slow
def test_the_worked_example_runs_on_a_local_folder(tmp_path):
    """scripts/example_llava.py as docs/huggingface.md runs it, on a folder holding the tiny model and its processor."""
    tiny_llava().save_pretrained(tmp_path)
    tiny_processor().save_pretrained(tmp_path)
    random_image().save(tmp_path / "image.png")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "example_llava.py"), "--model", str(tmp_path),
                           "--image", str(tmp_path / "image.png"), "--layers", "0", "1", "--num", "6", "4"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith(("unpruned", "pruned"))]
    assert rows[0][1:3] == ["16", "23"] and rows[1][8:10] == ["6", "13"]  # image tokens to the LM, prompt tokens
    assert float(rows[1][10]) < float(rows[0][3])  # prefill GMACs
    assert "tokens entering each tower layer (pruned): [17, 11, 7, 7]" in proc.stdout
