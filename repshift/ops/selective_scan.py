"""Mamba's selective scan and causal depthwise convolution: pure PyTorch, or the CUDA kernels.

The maths, for batch ``b``, channel ``d``, state ``n`` and position ``t`` (Gu & Dao, 2023)::

    Δ[t]    = softplus(delta[t] + delta_bias)                      (each step optional)
    h[t, n] = exp(Δ[t] A[n]) · h[t-1, n]  +  Δ[t] u[t] B[t, n]       with h[-1] = 0
    y[t]    = Σ_n C[t, n] h[t, n]  +  D u[t],       then  y[t] · silu(z[t])

Tensor layouts follow the ``mamba_ssm`` kernel so that both backends take the same arguments:
``u, delta, z: (batch, dim, length)``, ``A: (dim, state)``, ``B, C: (batch, state, length)``,
``D, delta_bias: (dim,)``.

Backends (``backend=``): ``"torch"`` runs everywhere; ``"cuda"`` calls
``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` and ``causal_conv1d.causal_conv1d_fn``
(optional extras, CUDA tensors only) and fails with :class:`KernelsUnavailableError` when they
cannot be imported; ``"auto"`` takes the kernels when they are importable and the input is on a
CUDA device, PyTorch otherwise.

MACs: ``torch.utils.flop_counter`` counts matmuls and convolutions only, so it sees the causal
convolution of the PyTorch path but neither the scan (element-wise ops here, an opaque kernel on
CUDA) nor anything inside the CUDA kernels. :func:`scan_macs` and :func:`causal_conv_macs` give
those counts explicitly, and :func:`tally_macs` adds them up over the calls of a forward pass.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("torch", "cuda", "auto")
SCAN_METHODS = ("blocked", "parallel")

#: Floor of Δ·A before the exp. PyTorch's CPU exp is 3-40x slower where its result is under
#: float32's smallest normal number (Δ·A below about -87); exp(-80) ≈ 1.8e-35 instead of a smaller
#: decay changes a state by at most 1.8e-35 times its previous value, far below rounding.
LOG_DECAY_FLOOR = -80.0
#: exp(x) = 2**(x·log2 e): PyTorch's CPU exp2 takes half the time of exp (the cost that dominates
#: the PyTorch scans); folding log2 e into A costs one small (dim, state) multiply.
LOG2_E = math.log2(math.e)

#: Elements per buffer of the blocked scan (1 MiB in float32, so both buffers stay in cache): among
#: the fastest budgets timed by scripts/bench_scan.py for ViM-T's sizes at batch 1 and 8 on CPU.
BLOCK_ELEMENTS = 2**18

_INSTALL_HINT = (
    "install the CUDA kernels on a machine with a CUDA toolkit (pip install causal-conv1d mamba-ssm "
    "--no-build-isolation) or use the pure-PyTorch path (backend='torch', Hydra: model.kwargs.scan_backend=torch)"
)


class KernelsUnavailableError(RuntimeError):
    """The CUDA backend was asked for but its kernels cannot be used here."""


# --------------------------------------------------------------------------------------- MACs
def scan_macs(batch: int, length: int, dim: int, state: int, *, skip: bool = True, gate: bool = True,
              bias: bool = True) -> int:
    """Multiply-accumulates of one selective scan, derived from its operations as FLOPs / 2.

    FLOPs / 2 is the convention every other count here follows (a matmul's multiply and add make one MAC; a
    lone multiply or add is half of one). The operations of the maths above:

    - per element ``(b, t, d, n)``: ``Δ·A`` (1 multiply), ``(Δu)·B`` (1 multiply), the recurrence
      ``exp(ΔA)·h + ΔuB`` (1 multiply, 1 add), the read-out ``Σ_n C·h`` (1 multiply, 1 add): **6 FLOPs**;
    - per ``(b, t, d)``: ``delta + delta_bias`` (1 add, when ``bias``), ``Δ·u`` (1 multiply), the skip
      ``y + D·u`` (1 multiply, 1 add, when ``skip``), the gate ``y·silu(z)`` (1 multiply, when ``gate``):
      up to **5 FLOPs**;
    - not counted: the exp, softplus and SiLU (no FLOP counter counts activations).

        MACs = batch · length · dim · (6·state + 1 + bias + 2·skip + gate) / 2      (rounded down)

    ViM-T (dim 384, state 16): 384 · 101 / 2 = 19,392 MACs per token and direction. fvcore, reading the
    reference scan of Vim's code, sees its einsums only: ``Δ·A`` (0.5 per element), ``Δ·u·B`` (1: both
    multiplies per element) and the read-out (1), i.e. 2.5·state per ``(t, d)`` = 15,360 for ViM-T, and not
    the recurrence or the per-channel work (docs/vim.md).
    """
    flops = batch * length * dim * (6 * state + 1 + int(bias) + 2 * int(skip) + int(gate))
    return flops // 2


def causal_conv_macs(batch: int, length: int, dim: int, width: int) -> int:
    """Multiply-accumulates of a depthwise causal convolution: ``batch · length · dim · width``.

    This equals what ``torch.utils.flop_counter`` counts (divided by 2) for the PyTorch path's
    ``conv1d``; the bias and the activation are not counted.
    """
    return batch * length * dim * width


@dataclass
class MacTally:
    """Explicit MACs of the scans and causal convolutions run while the tally was active."""

    scan: int = 0
    conv: int = 0


_ACTIVE_TALLIES: list[MacTally] = []


@contextlib.contextmanager
def tally_macs() -> Iterator[MacTally]:
    """Count the MACs of every :func:`selective_scan` and :func:`causal_conv1d` call in the block."""
    tally = MacTally()
    _ACTIVE_TALLIES.append(tally)
    try:
        yield tally
    finally:
        _ACTIVE_TALLIES.remove(tally)


def _record(scan: int = 0, conv: int = 0) -> None:
    for tally in _ACTIVE_TALLIES:
        tally.scan += scan
        tally.conv += conv


# ----------------------------------------------------------------------------------- dispatch
def _use_kernels(backend: str, tensor: Tensor, package: str) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"scan backend {backend!r} is not one of {BACKENDS}")
    if backend == "torch":
        return False
    try:
        __import__(package)
        found, reason = True, ""
    except ImportError as error:  # also raised when the package is there but its extension is not built
        found, reason = False, f"{type(error).__name__}: {error}"
    if backend == "auto":
        return found and tensor.is_cuda
    if not found:
        raise KernelsUnavailableError(f"scan backend 'cuda' needs the {package} package, which cannot be imported "
                                      f"({reason}); {_INSTALL_HINT}")
    if not tensor.is_cuda:
        raise KernelsUnavailableError(f"scan backend 'cuda' runs on CUDA tensors only, got a tensor on "
                                      f"{tensor.device}; move the model to a GPU or use backend='torch'")
    return True


# ------------------------------------------------------------------------------ causal conv1d
def causal_conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, activation: Optional[str] = None,
                  backend: str = "torch") -> Tensor:
    """Depthwise convolution where output ``t`` sees inputs ``t-width+1 .. t`` only.

    ``x: (batch, dim, length)``, ``weight: (dim, width)`` or ``(dim, 1, width)`` as stored by
    ``nn.Conv1d``; ``activation`` is None or ``"silu"``.
    """
    if activation not in (None, "silu"):
        raise ValueError(f"causal_conv1d activation must be None or 'silu', got {activation!r}")
    weight = weight.reshape(weight.shape[0], weight.shape[-1])
    batch, dim, length = x.shape
    width = weight.shape[-1]
    _record(conv=causal_conv_macs(batch, length, dim, width))
    if _use_kernels(backend, x, "causal_conv1d"):
        from causal_conv1d import causal_conv1d_fn

        return causal_conv1d_fn(x.contiguous(), weight.contiguous(), bias, activation=activation)
    # Left padding by width-1 makes the plain convolution causal and returns exactly ``length`` outputs.
    out = F.conv1d(F.pad(x, (width - 1, 0)), weight.unsqueeze(1), bias, groups=dim)
    return F.silu(out) if activation == "silu" else out


# ------------------------------------------------------------------------------ selective scan
def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                   z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                   *, backend: str = "torch", method: Optional[str] = None, block: Optional[int] = None) -> Tensor:
    """The selective scan of the module docstring; returns ``(batch, dim, length)`` in ``u``'s dtype.

    The PyTorch path computes in float32 (float64 inputs stay float64), like the kernel, by one
    of two equivalent methods: ``"blocked"`` (:func:`_blocked_scan`, one loop over positions,
    cache-sized buffers: the faster on CPU) or ``"parallel"`` (:func:`_chunked_scan`, about
    2·√length Python steps on sequence-sized tensors: fewer kernel launches on a GPU). ``method``
    None picks ``"parallel"`` for CUDA tensors, ``"blocked"`` otherwise; ``block`` overrides the
    positions per block (blocked) or per chunk (parallel). When gradients are needed, the
    step-by-step :func:`selective_scan_reference` runs instead.
    """
    batch, dim, length = u.shape
    _record(scan=scan_macs(batch, length, dim, A.shape[-1], skip=D is not None, gate=z is not None,
                           bias=delta_bias is not None))
    if _use_kernels(backend, u, "mamba_ssm"):
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        return selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    method = method or ("parallel" if u.is_cuda else "blocked")
    if method not in SCAN_METHODS:
        raise ValueError(f"selective_scan method {method!r} is not one of {SCAN_METHODS}")
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        # Both methods write into buffers in place, which autograd cannot differentiate; the
        # step-by-step loop can (slowly): the path for training.
        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus)

    in_dtype = u.dtype
    dtype = torch.promote_types(in_dtype, torch.float32)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    if method == "blocked":
        y = _blocked_scan(u, delta, A, B, C, block or max(1, BLOCK_ELEMENTS // (batch * dim * A.shape[-1])))
    else:
        y = _chunked_scan(u, delta, A, B, C, block or math.isqrt(max(length - 1, 0)) + 1)
    return _skip_and_gate(y, u, D, z).to(in_dtype)


def _blocked_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, block: int) -> Tensor:
    """``Σ_n C·h`` of the recurrence, with ``Δ`` already final; ``(batch, dim, length)``.

    One loop over positions, each step a single fused multiply-add over the whole
    ``(batch, dim, state)`` slice. The per-element inputs ``exp(ΔA)`` (as ``exp2``, see
    :data:`LOG2_E`) and ``Δ·u·B`` are built
    ``block`` positions at a time in two buffers that are reused, so the working set stays in
    cache and no sequence-sized ``(length, batch, dim, state)`` tensor is allocated: on CPU,
    fresh allocations of that size cost more than the arithmetic.
    """
    batch, dim, length = u.shape
    state = A.shape[-1]
    # Positions first, so that every step's slice is contiguous.
    delta_steps = delta.permute(2, 0, 1).contiguous()  # (length, batch, dim)
    inputs_steps = (delta * u).permute(2, 0, 1).contiguous()
    B_steps = B.permute(2, 0, 1).contiguous()  # (length, batch, state)
    C_steps = C.permute(2, 0, 1).contiguous()
    block = min(block, length)
    A_log2 = A * LOG2_E
    decay_buffer = u.new_empty(block, batch, dim, state)
    state_buffer = u.new_empty(block, batch, dim, state)
    carried = u.new_zeros(batch, dim, state)
    y = u.new_empty(length, batch, dim)
    for start in range(0, length, block):
        steps = min(block, length - start)
        window = slice(start, start + steps)
        decay = torch.mul(delta_steps[window, :, :, None], A_log2, out=decay_buffer[:steps])
        decay.clamp_(min=LOG_DECAY_FLOOR * LOG2_E).exp2_()
        states = torch.mul(inputs_steps[window, :, :, None], B_steps[window, :, None, :], out=state_buffer[:steps])
        decay_at, state_at = decay.unbind(0), states.unbind(0)  # views, indexed once per block
        state_at[0].addcmul_(decay_at[0], carried)
        for t in range(1, steps):
            state_at[t].addcmul_(decay_at[t], state_at[t - 1])
        carried.copy_(state_at[-1])
        # Element-wise read-out (not a matmul): see _chunked_scan.
        torch.sum(states.mul_(C_steps[window, :, None, :]), dim=-1, out=y[window])
    return y.permute(1, 2, 0)


def _chunked_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int) -> Tensor:
    """``Σ_n C·h`` of the recurrence, with ``Δ`` already final; ``(batch, dim, length)``.

    The sequence is cut into ``K`` chunks of ``T`` steps, and every step works on whole
    ``(batch, dim, state)`` slices, so Python runs ``T + K`` small loop bodies instead of ``length``:

    1. one loop over the ``T`` positions runs the recurrence inside all chunks at once, each
       chunk starting from a zero state;
    2. one loop over the ``K`` chunks carries the true state across chunk ends, using the
       cumulative decay ``Π exp(ΔA)`` from the start of each chunk (a ``cumprod``);
    3. one broadcast multiply-add passes each chunk's incoming state to its inner positions.

    Only products of decays in (0, 1] and sums appear (no division by a cumulative decay, which
    underflows over long sequences), so the result agrees with the step-by-step recurrence to
    float rounding.
    """
    batch, dim, length = u.shape
    chunks = -(-length // chunk)
    pad = chunks * chunk - length

    def steps_first(x: Tensor) -> Tensor:  # (batch, ch, length) -> (T, K, batch, ch)
        return F.pad(x, (0, pad)).view(batch, x.shape[1], chunks, chunk).permute(3, 2, 0, 1).contiguous()

    # Padded steps have Δ = 0: decay 1 and no input, so they change nothing before the cut.
    decay = (steps_first(delta).unsqueeze(-1) * (A * LOG2_E)).clamp_(min=LOG_DECAY_FLOOR * LOG2_E).exp2_()
    states = steps_first(delta * u).unsqueeze(-1) * steps_first(B).unsqueeze(-2)  # (T, K, batch, dim, state)
    decay_at, state_at = decay.unbind(0), states.unbind(0)
    for t in range(1, chunk):
        state_at[t].addcmul_(decay_at[t], state_at[t - 1])
    if chunks > 1:
        decay_in_chunk = decay.cumprod(dim=0)
        chunk_ends = states[chunk - 1]  # (K, batch, dim, state), made exact in place below
        for k in range(1, chunks):
            chunk_ends[k].addcmul_(decay_in_chunk[chunk - 1, k], chunk_ends[k - 1])
        states[: chunk - 1, 1:].addcmul_(decay_in_chunk[: chunk - 1, 1:], chunk_ends[:-1].unsqueeze(0))
    # An element-wise read-out (not a matmul) keeps the scan invisible to the FLOP counter; its
    # MACs are counted by scan_macs instead, the same way for both backends.
    y = states.mul_(steps_first(C).unsqueeze(-2)).sum(-1)  # (T, K, batch, dim)
    return y.permute(2, 3, 1, 0).reshape(batch, dim, chunks * chunk)[..., :length]


def selective_scan_reference(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                             z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
                             delta_softplus: bool = False) -> Tensor:
    """The recurrence written step by step, one position at a time.

    The slow reference for tests, and the differentiable path of :func:`selective_scan`.
    """
    in_dtype = u.dtype
    dtype = torch.promote_types(in_dtype, torch.float32)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    h = u.new_zeros(batch, dim, A.shape[-1])
    outputs = []
    for t in range(length):
        step = delta[:, :, t, None]  # (batch, dim, 1)
        h = torch.exp(step * A) * h + step * u[:, :, t, None] * B[:, None, :, t]
        outputs.append((h * C[:, None, :, t]).sum(-1))
    return _skip_and_gate(torch.stack(outputs, dim=-1), u, D, z).to(in_dtype)


def _skip_and_gate(y: Tensor, u: Tensor, D: Optional[Tensor], z: Optional[Tensor]) -> Tensor:
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y
