"""The prefill cost of a vision-language model, with or without pruning in its vision tower.

Counted as :func:`repshift.bench.count_gmacs` counts a vision model (multiply-accumulates seen by
``torch.utils.flop_counter``, attention through SDPA's math path), but on a whole call with keyword inputs:
``pixel_values`` and the prompt's ``input_ids``, so the language model's share over every prompt token (image
tokens included) is in the figure. Attention run by the flash-attn package is invisible to the counter: count on
a model loaded with ``attn_implementation="sdpa"`` or ``"eager"`` (the count does not depend on which).
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from repshift.bench import _countable_attention


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
