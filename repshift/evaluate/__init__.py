"""Evaluation: classification accuracy and video-text retrieval (single process or torchrun), saliency/mask agreement."""

from repshift.evaluate.classification import evaluate
from repshift.evaluate.retrieval import evaluate_retrieval, retrieval_metrics
from repshift.evaluate.saliency import auroc, mask_agreement, patch_coverage

__all__ = ["evaluate", "evaluate_retrieval", "retrieval_metrics", "auroc", "mask_agreement", "patch_coverage"]
