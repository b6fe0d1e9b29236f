"""Evaluation: classification accuracy (single process or torchrun) and saliency/mask agreement."""

from repshift.evaluate.classification import evaluate
from repshift.evaluate.saliency import auroc, mask_agreement, patch_coverage

__all__ = ["evaluate", "auroc", "mask_agreement", "patch_coverage"]
