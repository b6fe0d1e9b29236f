"""Adapters that put token scoring and selection into host models."""
from repshift.patch.timm_vit import PruneState, check_supported, is_patched, patch, record_scores, unpatch

__all__ = ["PruneState", "check_supported", "is_patched", "patch", "record_scores", "unpatch"]
