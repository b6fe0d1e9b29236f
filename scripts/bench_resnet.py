"""Throughput of a base ResNet against its line-wise (L-W), token-wise (T-W) and static-crop versions.

    python scripts/bench_resnet.py                              # ResNet-50, CPU, batch 16, fp32
    python scripts/bench_resnet.py --model resnet34 --device cuda    # GPU, batch 512, AMP fp16

Models (Table 6 schedule: 8 rows + 8 columns after layer1, 4 + 4 after layer2), timed in turns by
:func:`repshift.bench.compare` in one run:
  base     timm's own forward
  L-W      repshift.patch(metric=l2, mode=line): scores every location, drops the lowest rows/columns
  T-W      repshift.patch(metric=l2, mode=token): drops the lowest tokens of every row, then column
  static   the same grid sizes by cropping, no scores: the ceiling for pruning's speed-up
L-W/static and T-W/static say what scoring and gathering cost. Random weights: throughput does not
depend on them.

On a machine shared with other jobs, wall-clock rates swing with their load; ``--clock cpu`` runs
one thread and counts this process's CPU time instead (same turns), which other jobs barely move.
"""
from __future__ import annotations

import statistics
import time

import torch

import bench_common
import repshift
from repshift.bench import compare, device_name
from repshift.models import build_model

SCHEDULE = dict(layers=(0, 1), num=(8, 4))
VARIANTS = {
    "base": None,
    "L-W": dict(metric="l2", mode="line"),
    "T-W": dict(metric="l2", mode="token"),
    "static": dict(metric="none", mode="line"),
}
# What the issue asks of the CPU run: scoring and gathering cost at most 3 % against the static crop.
CPU_TARGETS = {"L-W/static": 0.97, "T-W/static": 0.97}


@torch.inference_mode()
def compare_cpu_time(models: dict, *, batch_size: int, warmup: int, iters: int, repeats: int) -> dict:
    """:func:`repshift.bench.compare`'s rotating turns, timed by this process's CPU time on one thread."""
    torch.set_num_threads(1)
    inputs = torch.randn(batch_size, 3, 224, 224)
    for model in models.values():
        for _ in range(warmup):
            model(inputs)
    names, rates = list(models), {name: [] for name in models}
    for repeat in range(repeats):
        for name in names[repeat % len(names):] + names[: repeat % len(names)]:
            start = time.process_time()
            for _ in range(iters):
                models[name](inputs)
            rates[name].append(batch_size * iters / (time.process_time() - start))
    settings = {"batch": batch_size, "iters": iters, "warmup": warmup, "num_repeats": repeats, "precision": "fp32",
                "device": device_name("cpu"), "clock": "process CPU time, 1 thread"}
    return {name: {"throughput": statistics.median(rates[name]), "unit": "img/s (CPU time)", "repeats": rates[name],
                   **settings} for name in models}


def main() -> None:
    parser = bench_common.parser_with_common_options(__doc__, models=VARIANTS, repeats=7,
                                                     batch_help="default: 16 on CPU, 512 on CUDA")
    parser.add_argument("--model", default="resnet50", help="a timm ResNet name (resnet34, resnet50, ...)")
    parser.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                        help="cpu: one thread, timed by process CPU time (for busy shared machines)")
    args, cuda, which = bench_common.parse(parser, VARIANTS)
    if cuda and args.clock == "cpu":
        parser.error("--clock cpu times the CPU: drop --device cuda")
    batch = args.batch or (512 if cuda else 16)

    models = {}
    for name in which:
        torch.manual_seed(0)
        model = build_model(args.model)[0].to(args.device).eval()
        if VARIANTS[name] is not None:
            repshift.patch(model, **VARIANTS[name], **SCHEDULE)
        models[name] = model
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    iters = args.iters if args.iters is not None else (20 if cuda else 3)
    if args.clock == "cpu":
        results = compare_cpu_time(models, batch_size=batch, warmup=warmup, iters=iters, repeats=args.repeats)
    else:
        results = compare(
            models,
            batch_size=batch,
            device=args.device,
            amp_dtype="float16" if cuda else None,
            warmup=warmup,
            iters=iters,
            repeats=args.repeats,
        )
    bench_common.count(results, models)

    first = next(iter(results.values()))
    clock = "CPU time, 1 thread" if args.clock == "cpu" else "wall clock"
    print(f"{args.model} | {first['device']} | batch {batch} | {first['precision']} | {clock} | median of {args.repeats}")
    print(f"{'model':8} {'img/s':>9} {'GMACs':>7}  tokens entering each stage")
    for name, r in results.items():
        print(f"{name:8} {r['throughput']:9.2f} {r['gmacs']:7.3f}  {r['tokens'] or '-'}")
    pairs = [("L-W", "base"), ("T-W", "base"), ("static", "base"), ("L-W", "static"), ("T-W", "static")]
    ratios = bench_common.print_ratios(results, pairs, None if cuda else CPU_TARGETS)
    bench_common.write_record(args.out, f"bench_resnet-{args.model}-{'cuda' if cuda else 'cpu'}-{args.clock}-b{batch}",
                              {"model": args.model, "results": results, "ratios": ratios})


if __name__ == "__main__":
    main()
