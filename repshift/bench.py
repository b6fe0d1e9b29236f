"""Throughput and GMACs of a (patched) model.

Throughput follows the paper's protocol: random input already on the device (no data loading),
``eval()`` + inference mode, AMP fp16 on CUDA, warm-up, then timed iterations with device
synchronisation; the figure reported is the median samples/s over repeats, in the model's own
unit (``img/s`` for images, ``vid/s`` for videos).

``compile=True`` (Hydra: ``bench.compile=true``) times :func:`compiled` models instead:
``torch.compile(model, fullgraph=True)`` with inductor, so a patched model runs as one graph; the first
warm-up call compiles (its seconds are recorded as ``first_call_s``) and the record says ``compiled``.

GMACs follow the paper's "GFLOPs": multiply-accumulates (FLOPs / 2) of one sample, attention
matmuls included, counted by ``torch.utils.flop_counter`` on the model as it actually runs, so
pruned token counts are what is counted. The counted forward runs attention through SDPA's math
path, whose two matmuls the counter sees in every torch release: fused kernels are counted (or
not) depending on the release and the device (torch 2.14 has no formula for the CPU flash
kernel), so counting them would make the figure depend on which kernel ran.

Operators the counter cannot see are counted explicitly: the selective scans of a Mamba host
(element-wise work on the PyTorch path, an opaque kernel on CUDA) add
:func:`repshift.ops.scan_macs` = ``batch · length · d_inner · (6·d_state + 5) / 2`` per scan and
direction (derived from the scan's operations: docs/vim.md), as tallied by
:func:`repshift.ops.tally_macs` during the counted forward. A model with a ``scan_backend``
attribute is counted on its PyTorch path (``"torch"``), whose causal convolutions the counter sees
as ``conv1d`` (a CUDA kernel's would be invisible to it), so the figure is the same on every device.
For models without scans the tally is 0 and nothing changes.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from typing import Optional

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from repshift.attention import record_kernels
from repshift.ops import tally_macs
from repshift.patch import is_patched
from repshift.provenance import device_name

AMP_DTYPES = {None: None, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: How :func:`compare` times: the wall clock, or (CPU only) the process's CPU time on one thread.
CLOCKS = {"wall": "wall clock", "cpu": "process CPU time, 1 thread"}


def compiled(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(model, fullgraph=True)``: the whole forward as one inductor graph (a graph break raises).

    The compiled module shares the model's parameters and, for a patched model, its ``PruneState``.
    """
    return torch.compile(model, fullgraph=True)


def eager_module(model: torch.nn.Module) -> torch.nn.Module:
    """The module a :func:`compiled` model wraps (the model itself when it is not compiled)."""
    return getattr(model, "_orig_mod", model)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _countable_attention(model):
    """Attention through matmuls the FLOP counter sees: SDPA's math path, also for flash-attn runs."""
    state = getattr(model, "repshift", None) if is_patched(model) else None
    swapped = state is not None and state.attention == "flash_attn"
    if swapped:
        state.attention = "sdpa"
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        if swapped:
            state.attention = "flash_attn"


@contextlib.contextmanager
def _countable_scans(model):
    """Scans and causal convolutions on the PyTorch path, whose convolutions the FLOP counter sees."""
    backend = getattr(model, "scan_backend", None)
    if backend is not None:
        model.scan_backend = "torch"
    try:
        yield
    finally:
        if backend is not None:
            model.scan_backend = backend


@torch.no_grad()
def count_gmacs(model, input_size=(3, 224, 224), device=None) -> float:
    """Multiply-accumulates (in G) of one forward of a single sample of shape ``input_size``.

    What the FLOP counter sees (halved), plus the selective scans' MACs tallied explicitly.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    sample = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        with (_countable_attention(model), _countable_scans(model), tally_macs() as explicit,
              FlopCounterMode(display=False) as counter):
            model(sample)
    finally:
        model.train(was_training)
    return (counter.get_total_flops() / 2 + explicit.scan) / 1e9


@contextlib.contextmanager
def _threads(count: int):
    """torch's CPU threads set to ``count`` inside the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.inference_mode()
def compare(
    models: dict,
    *,
    batch_size: int,
    input_size=(3, 224, 224),
    device="cpu",
    amp_dtype: Optional[str] = None,
    unit: str = "img/s",
    warmup: int = 5,
    iters: int = 10,
    repeats: int = 5,
    progress: bool = True,
    desc: str = "benchmark",
    clock: str = "wall",
) -> dict:
    """Median samples/s (``unit``) of each model on the same random input ``[batch_size, *input_size]``.

    The models take turns within every repeat, in a rotating order, so drift in machine load and
    the cost of going first or last hit them alike. ``clock="cpu"`` (CPU only) runs one thread and
    times the process's CPU time instead of the wall clock: on a machine shared with other jobs,
    their load then barely moves the figure (the unit says ``(CPU time)``).
    Returns, per model name, the median, every repeat, the attention kernels that ran and the
    settings. A :func:`compiled` model is timed as compiled; its kernels are recorded on the eager module it
    wraps (inductor may still swap an eager softmax-attention for a fused one), and its first warm-up call,
    which compiles, is timed as ``first_call_s`` (None without warm-up).
    """
    device = torch.device(device)
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {list(CLOCKS)}, got {clock!r}")
    if clock == "cpu" and device.type != "cpu":
        raise ValueError("clock='cpu' times the CPU's work: use it with device='cpu'")
    if amp_dtype not in AMP_DTYPES:
        raise ValueError(f"amp_dtype must be one of {list(AMP_DTYPES)}, got {amp_dtype!r}")
    now = time.process_time if clock == "cpu" else time.perf_counter
    inputs = torch.randn(batch_size, *input_size, device=device)
    autocast = torch.autocast(device.type, dtype=AMP_DTYPES[amp_dtype], enabled=amp_dtype is not None)
    kernels, rates, first_call = {}, {name: [] for name in models}, {}
    with _threads(1 if clock == "cpu" else torch.get_num_threads()):
        for name, model in models.items():
            model.eval()
            with autocast:
                kernels[name], _ = record_kernels(eager_module(model), inputs)
                # A compiled model compiles on its first call, which must not be a timed one.
                calls = warmup if model is eager_module(model) else max(warmup, 1)
                start = time.perf_counter()
                for _ in range(calls):
                    model(inputs)
                    if name not in first_call:
                        _synchronize(device)
                        first_call[name] = time.perf_counter() - start
        _synchronize(device)
        names = list(models)
        for repeat in tqdm(range(repeats), desc=desc, disable=not progress, leave=False):
            # Rotate who goes first, so effects of running order (caches, clocks) hit every model alike.
            for name in names[repeat % len(names):] + names[: repeat % len(names)]:
                model = models[name]
                with autocast:
                    start = now()
                    for _ in range(iters):
                        model(inputs)
                    _synchronize(device)
                rates[name].append(batch_size * iters / (now() - start))
        settings = {
            "batch": batch_size,
            "iters": iters,
            "warmup": warmup,
            "num_repeats": repeats,
            "precision": f"amp-{amp_dtype}" if amp_dtype else "fp32",
            "device": device_name(device),
            "clock": CLOCKS[clock],
        }
    unit = f"{unit} (CPU time)" if clock == "cpu" else unit
    return {
        name: {"throughput": statistics.median(rates[name]), "unit": unit, "repeats": rates[name],
               "kernel": kernels[name], "compiled": model is not eager_module(model),
               "first_call_s": first_call.get(name), **settings}
        for name, model in models.items()
    }


def throughput(model, *, compile: bool = False, **settings) -> dict:
    """``compare`` for a single model (``compile``: timed as :func:`compiled`): its median throughput, kernels
    and settings."""
    return compare({"model": compiled(model) if compile else model}, **settings)["model"]
