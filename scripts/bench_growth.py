"""Cost growth: what pruning buys as the token count grows (DeiT-S at 224 and 384 px, UMT-B at 2-16 frames).

    python scripts/bench_growth.py                             # eager, CPU, every size
    python scripts/bench_growth.py --compile                   # + each model compiled (inductor), same runs
    python scripts/bench_growth.py --sizes umt:2,umt:16        # a few sizes
    python scripts/bench_growth.py --plot docs/img/cost_growth.png --from-record outputs/bench/bench_growth-cpu.json

For every size, base / ours / static of scripts/bench_patch.py (DeiT: 20 % after blocks 0, 3, 6; UMT: 20 %
after blocks 0, 1, 2) take turns in one run (repshift.bench.compare) and their GMACs are counted. Printed and
recorded per size: the tokens, ours/base and static/base (throughput), ours/static (what scoring costs),
and base/ours in GMACs (the speed-up a device whose time followed the multiply-accumulates would give).
Throughput ratios are medians of the ratios within each repeat (bench_common.paired_ratios).
Attention grows with the square of the tokens and everything else linearly, so pruning the same share
of tokens removes a larger share of the work as clips grow longer or images larger.
Random weights: throughput does not depend on them.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import bench_common
from bench_patch import SCHEDULE, UMT_SCHEDULE, build
from repshift.bench import compare

#: ``family:size`` -> (model, frames, image side): DeiT-S at two resolutions, UMT-B at five clip lengths.
SIZES = {
    "deit:224": ("deit_small_patch16_224", 1, 224),
    "deit:384": ("deit_small_patch16_224", 1, 384),
    **{f"umt:{frames}": ("umt_b", frames, 224) for frames in (2, 4, 8, 12, 16)},
}
VARIANTS = ("base", "ours", "static")


def run_size(key: str, args, cuda: bool, which: list[str]) -> dict:
    model_name, frames, side = SIZES[key]
    # Models of one class share their forward's code, and dynamo keeps at most 8 compilations per code object:
    # the previous sizes' models are gone, so are their compilations.
    torch._dynamo.reset()
    umt = model_name == "umt_b"
    input_size = (frames, 3, side, side) if umt else (3, side, side)
    models = bench_common.with_compiled(
        build(model_name, args.device, which, frames, None if umt or side == 224 else side), args.compile)
    batch = args.batch or ((20 if cuda else 1) if umt else (512 if cuda else 8))
    results = compare(models, batch_size=batch, input_size=input_size, unit="vid/s" if umt else "img/s",
                      device=args.device, amp_dtype="float16" if cuda else None,
                      warmup=args.warmup if args.warmup is not None else (10 if cuda else 1),
                      iters=args.iters if args.iters is not None else (20 if cuda else 2), repeats=args.repeats,
                      desc=key, clock=args.clock)
    bench_common.count(results, models, input_size)
    pairs = [("ours", "base"), ("static", "base"), ("ours", "static")]
    pairs += bench_common.compiled_pairs(pairs, results)
    bench_common.print_ratios(results, pairs, width=16)
    ratios = bench_common.paired_ratios(results, pairs)  # what the table and the plot show
    if "ours" in results and "base" in results:
        ratios["gmacs base/ours"] = results["base"]["gmacs"] / results["ours"]["gmacs"]
    tokens = frames * (side // 16) ** 2 + (0 if umt else 1)
    schedule = UMT_SCHEDULE if umt else SCHEDULE
    return {"model": model_name, "frames": frames, "side": side, "tokens": tokens, "batch": batch,
            "schedule": {k: list(v) if isinstance(v, tuple) else v for k, v in schedule.items()},
            "results": results, "ratios": ratios}


def plot(record: dict, path: str) -> None:
    """Speed-ups against the token count: measured (eager, compiled) and by GMACs, one colour per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    families = {"deit_small_patch16_224": ("DeiT-S", "tab:blue"), "umt_b": ("UMT-B", "tab:orange")}
    lines = [("ours/base", "-", "o", "ours/base, eager"), ("ours+c/base+c", "--", "s", "ours/base, compiled"),
             ("gmacs base/ours", ":", "x", "base/ours in GMACs")]
    for model, (label, colour) in families.items():
        sizes = sorted((s for s in record["sizes"].values() if s["model"] == model), key=lambda s: s["tokens"])
        for key, style, marker, what in lines:
            points = [(s["tokens"], s["ratios"][key]) for s in sizes if key in s["ratios"]]
            if points:
                ax.plot(*zip(*points), linestyle=style, marker=marker, color=colour, label=f"{label}: {what}")
    ax.set_xscale("log")
    ax.set_xlabel("tokens entering the first block")
    ax.set_ylabel("pruned speed-up over base")
    ax.set_title(f"Cost growth, {record['device']}, {record.get('clock', 'wall clock')}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"wrote {path}")


def main() -> None:
    parser = bench_common.parser_with_common_options(__doc__, models=VARIANTS, repeats=5,
                                                     batch_help="default: DeiT 8, UMT 1 on CPU; 512 / 20 on CUDA")
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, from {', '.join(SIZES)}")
    parser.add_argument("--plot", default=None, help="also draw the speed-ups against the token count (PNG)")
    parser.add_argument("--from-record", default=None, help="only draw --plot from a record this script wrote")
    if "--from-record" in sys.argv:
        args = parser.parse_args()
        plot(json.loads(Path(args.from_record).read_text()), args.plot or "cost_growth.png")
        return
    args, cuda, which = bench_common.parse(parser, VARIANTS)
    sizes = args.sizes.split(",")
    unknown = set(sizes) - set(SIZES)
    if unknown:
        parser.error(f"unknown --sizes {sorted(unknown)}; choose from {', '.join(SIZES)}")
    record = {"sizes": {}, "compiled": args.compile}
    for key in sizes:
        print(f"== {key}")
        record["sizes"][key] = run_size(key, args, cuda, which)
        first = next(iter(record["sizes"][key]["results"].values()))
        record["device"], record["clock"] = first["device"], first["clock"]
    columns = ["ours/base", "static/base", "ours/static", "ours+c/base+c", "ours+c/static+c", "base+c/base",
               "ours+c/ours", "static+c/static", "gmacs base/ours"]
    print(f"{'size':9} {'tokens':>6} " + " ".join(f"{c:>15}" for c in columns))
    for key, size in record["sizes"].items():
        print(f"{key:9} {size['tokens']:6} " + " ".join(
            f"{size['ratios'][c]:15.3f}" if c in size["ratios"] else f"{'-':>15}" for c in columns))
    suffix = ("-compile" if args.compile else "") + ("-cpuclock" if args.clock == "cpu" else "")
    path = bench_common.write_record(args.out, f"bench_growth-{'cuda' if cuda else 'cpu'}{suffix}", record)
    if args.plot:
        plot(json.loads(path.read_text()), args.plot)


if __name__ == "__main__":
    main()
