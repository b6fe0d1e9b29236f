"""Sequence operators that models here need without their CUDA-only packages."""
from repshift.ops.selective_scan import (
    BACKENDS,
    BLOCK_ELEMENTS,
    SCAN_METHODS,
    KernelsUnavailableError,
    MacTally,
    causal_conv1d,
    causal_conv_macs,
    scan_macs,
    selective_scan,
    selective_scan_reference,
    tally_macs,
)

__all__ = [
    "BACKENDS",
    "BLOCK_ELEMENTS",
    "SCAN_METHODS",
    "KernelsUnavailableError",
    "MacTally",
    "causal_conv1d",
    "causal_conv_macs",
    "scan_macs",
    "selective_scan",
    "selective_scan_reference",
    "tally_macs",
]
