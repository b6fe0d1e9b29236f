"""The VLM step: a LLaVA with pruning in its vision tower, what it costs, and a tiny random one to try it on.

:func:`prefill_gmacs` counts as :func:`repshift.bench.count_gmacs` counts a vision model (multiply-accumulates
seen by ``torch.utils.flop_counter``, attention through SDPA's math path), but on a whole call with keyword
inputs: ``pixel_values`` and the prompt's ``input_ids``, so the language model's share over every prompt token
(image tokens included) is in the figure. Attention run by the flash-attn package is invisible to the counter:
count on a model loaded with ``attn_implementation="sdpa"`` or ``"eager"`` (the count does not depend on which).

:func:`tiny_llava` builds a random LLaVA offline (CLIP or SigLIP tower, Llama text model): token counts,
placeholders, generation and MACs can be checked on it; accuracy cannot.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from repshift.bench import _countable_attention

#: The tiny LLaVA's shapes: 32x32 images in 8x8 patches (16 patches), 4 tower layers, a 2-layer Llama.
TINY_VISION = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=32,
                   patch_size=8)
TINY_TEXT = dict(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
TINY_IMAGE_TOKEN = 99  # the image placeholder's token id


@torch.no_grad()
def prefill_gmacs(model, **inputs) -> float:
    """Multiply-accumulates (in G) of one forward of ``model(**inputs)``: the prefill of every prompt in the batch."""
    was_training = model.training
    model.eval()
    try:
        with _countable_attention(model), FlopCounterMode(display=False) as counter:
            model(**inputs)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9


def tiny_llava(tower: str = "clip", attention: str = "sdpa", seed: int = 0, **llava):
    """A random ``LlavaForConditionalGeneration`` (``tower``: ``clip`` or ``siglip``) with ``LlavaConfig`` fields
    ``llava`` (e.g. ``vision_feature_layer``, ``vision_feature_select_strategy``), in eval mode."""
    import transformers

    vision = {"clip": transformers.CLIPVisionConfig, "siglip": transformers.SiglipVisionConfig}[tower](**TINY_VISION)
    config = transformers.LlavaConfig(vision_config=vision, text_config=transformers.LlamaConfig(**TINY_TEXT),
                                      image_token_id=TINY_IMAGE_TOKEN, **llava)
    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # transformers' init (std 0.02) leaves attention almost uniform
            parameter.normal_(0.0, 0.3)
    model.set_attn_implementation(attention)
    return model
