"""CPU time of the pure-PyTorch selective scan against the step-by-step reference.

Inputs have ViM-T's size and memory layout (one direction of one mixer): length 197, 384
channels, 16 states, with Δ from softplus as in the model. Prints the median of ``--repeats`` interleaved rounds per setting:
the default (the blocked method on CPU), the blocked method with other buffer sizes
(``--budgets``, elements per buffer; a budget of length·batch·dim·state makes it one plain loop
over positions), the parallel (chunked) method, and ``selective_scan_reference``.

    .venv/bin/python scripts/bench_scan.py [--batch 1 8] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from repshift.provenance import cpu_name
from repshift.ops import BLOCK_ELEMENTS, selective_scan, selective_scan_reference


def inputs(batch: int, length: int, dim: int, state: int) -> dict:
    """Scan arguments laid out in memory as the ViM mixer hands them over: ``u`` contiguous (the
    conv output), ``delta, B, C, z`` transposed views of token-major ``(batch, length, ...)``
    projections (so one position's values are contiguous, which favours the reference's loop)."""
    generator = torch.Generator().manual_seed(0)

    def token_major(channels):
        return torch.randn(batch, length, channels, generator=generator).transpose(1, 2)

    return dict(
        u=torch.randn(batch, dim, length, generator=generator), delta=token_major(dim) - 2.0,
        A=-torch.arange(1, state + 1, dtype=torch.float32).repeat(dim, 1),
        B=token_major(state), C=token_major(state), D=torch.ones(dim),
        z=token_major(dim), delta_bias=torch.randn(dim, generator=generator) * 0.1, delta_softplus=True,
    )


def interleaved_medians(functions: dict, repeats: int) -> dict:
    """Median ms per function over ``repeats`` rounds that each call every function once, so
    that load from other processes on a shared machine falls on all settings alike."""
    for fn in functions.values():
        fn()  # warm-up
    times = {label: [] for label in functions}
    for _ in range(repeats):
        for label, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[label].append((time.perf_counter() - start) * 1e3)
    return {label: statistics.median(ms) for label, ms in times.items()}


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--length", type=int, default=197)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--budgets", type=int, nargs="*", default=[2**16, 2**17, 2**19, 2**20],
                        help="other elements-per-buffer budgets of the blocked method to time")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, length {args.length}, "
          f"dim {args.dim}, state {args.state}; median of {args.repeats} (ms)")
    for batch in args.batch:
        x = inputs(batch, args.length, args.dim, args.state)
        per_position = batch * args.dim * args.state
        settings = {f"default (blocked, {max(1, BLOCK_ELEMENTS // per_position)} positions per block)": {}}
        for budget in args.budgets:
            block = max(1, budget // per_position)
            label = f"blocked, budget 2**{budget.bit_length() - 1}: {block} per block"
            settings[label] = dict(method="blocked", block=block)
        settings["blocked, one block (plain loop)"] = dict(method="blocked", block=args.length)
        settings["parallel (chunked)"] = dict(method="parallel")
        functions = {label: (lambda options=options: selective_scan(**x, **options))
                     for label, options in settings.items()}
        reference = "selective_scan_reference (step by step)"
        functions[reference] = lambda: selective_scan_reference(**x)
        difference = (selective_scan(**x) - selective_scan_reference(**x)).abs().max().item()
        print(f"batch {batch:2d}  default vs reference: max |difference| {difference:.1e}")
        medians = interleaved_medians(functions, args.repeats)
        for label, ms in medians.items():
            speed = "" if label == reference else f"  ({medians[reference] / ms:4.1f}x the reference's speed)"
            print(f"batch {batch:2d}  {label:44s} {ms:8.2f} ms{speed}")

if __name__ == "__main__":
    main()
