"""Throughput of base vs Representation-Shift-pruned DeiT or UMT, against a score-free "static" model.

    python scripts/bench_patch.py                      # DeiT-S, CPU, batch 16, fp32
    python scripts/bench_patch.py --device cuda        # GPU, batch 512, AMP fp16 (the paper's protocol)
    python scripts/bench_patch.py --model umt_b        # UMT-B vision encoder, 12 frames, CPU batch 1, fp32
    python scripts/bench_patch.py --model umt_b --device cuda   # batch 20, AMP fp16 (the paper's video protocol)
    python scripts/bench_patch.py --compile            # + each model compiled (inductor), in the same run
    python scripts/bench_patch.py --img-size 384       # DeiT-S at 384 px (577 tokens; random weights)

Models (DeiT schedule: layers 0,3,6, UMT schedule: layers 0,1,2, 20 % each):
  base     the model's own forward (fused SDPA attention: FlashAttention on CUDA, the "FA" of Table 1)
  ours     repshift.patch(metric=l2, site=mlp): scores every token, then prunes
  static   the same token counts by slicing, with no scoring: the ceiling for pruning's speed-up
  attn     the paper's "Attn" baseline: eager attention in every block, class-attention scores (Eq. 2) for
           DeiT, mean attention (Eq. 3) for UMT, which has no class token
  eager    no pruning, eager self-attention in every block (Table 1's Base; not in the default --models)
The ratios ours/base and ours/static say what pruning buys and what scoring costs. With --compile every
model also runs as <name>+c (torch.compile fullgraph, inductor), interleaved with the eager ones.
UMT is timed on its vision encoder (the part pruning changes), in clips/s; --frames sets the clip length.
Random weights: throughput does not depend on them.
"""
from __future__ import annotations

import torch

import bench_common
import repshift
from repshift.bench import compare
from repshift.models import build_model

SCHEDULE = dict(layers=(0, 3, 6), ratio=0.2)
UMT_SCHEDULE = dict(layers=(0, 1, 2), ratio=0.2)
#: UMT model names -> size; built as the vision encoder alone.
UMT_SIZES = {"umt_b": "b", "umt_l": "l"}
VARIANTS = ("base", "ours", "static", "attn", "eager")
DEFAULT = VARIANTS[:4]
# Targets for the CPU runs: what pruning must buy (the core-library issue, DeiT), what scoring may cost
# (the core-library issue and the video issue; compiled, the compile issue).
CPU_TARGETS = {"ours/base": 1.57, "ours/static": 0.97, "ours+c/static+c": 0.97}
UMT_CPU_TARGETS = {"ours/static": 0.97, "ours+c/static+c": 0.97}


def build(model_name: str, device: str, which: list[str], frames: int = 12, img_size: int | None = None) -> dict:
    """The variants ``which`` of ``model_name`` (a timm name at ``img_size``, or a UMT encoder of ``frames``)."""
    umt = model_name in UMT_SIZES
    variants = {
        "base": None,
        "ours": dict(metric="l2", site="mlp", attention="sdpa"),
        "static": dict(metric="none", attention="sdpa"),
        "attn": dict(metric="attn" if umt else "attn_cls", attention="eager"),
        "eager": dict(metric="none", attention="eager", layers=(), ratio=0.0),
    }
    if umt:
        spec = dict(_target_="repshift.models.umt.build", size=UMT_SIZES[model_name], num_frames=frames, part="vision")
    else:
        spec = dict(name=model_name, kwargs=dict(img_size=img_size) if img_size else {})
    models = {}
    for name in which:
        torch.manual_seed(0)
        model = (build_model(spec) if umt else build_model(**spec))[0].to(device).eval()
        if variants[name] is not None:
            repshift.patch(model, **{**(UMT_SCHEDULE if umt else SCHEDULE), **variants[name]})
        models[name] = model
    return models


def main() -> None:
    parser = bench_common.parser_with_common_options(
        __doc__, models=DEFAULT, repeats=7,
        batch_help="default: 16 on CPU, 512 on CUDA; UMT: 1 on CPU, 20 on CUDA")
    parser.add_argument("--model", default="deit_small_patch16_224",
                        help=f"a timm name, or {' / '.join(UMT_SIZES)} (the UMT vision encoder)")
    parser.add_argument("--frames", type=int, default=12, help="UMT clip length (default 12, the paper's)")
    parser.add_argument("--img-size", type=int, default=None, help="timm models: input side (default: the model's)")
    parser.add_argument("--amp", default=None, choices=["float16", "bfloat16"], help="default: float16 on CUDA")
    args, cuda, which = bench_common.parse(parser, VARIANTS)
    umt = args.model in UMT_SIZES
    if umt and args.img_size:
        parser.error("--img-size is for timm models; UMT takes 224 px frames (--frames sets the token count)")
    batch = args.batch or ((20 if cuda else 1) if umt else (512 if cuda else 16))
    side = args.img_size or 224
    input_size = (args.frames, 3, 224, 224) if umt else (3, side, side)
    unit = "vid/s" if umt else "img/s"

    models = bench_common.with_compiled(build(args.model, args.device, which, args.frames, args.img_size),
                                        args.compile)
    results = compare(
        models,
        batch_size=batch,
        input_size=input_size,
        unit=unit,
        device=args.device,
        amp_dtype=args.amp or ("float16" if cuda else None),
        warmup=args.warmup if args.warmup is not None else (10 if cuda else 2),
        iters=args.iters if args.iters is not None else (20 if cuda else 5),
        repeats=args.repeats,
        clock=args.clock,
    )
    bench_common.count(results, models, input_size)

    first = next(iter(results.values()))
    what = f"{args.model} vision encoder, {args.frames} frames" if umt else f"{args.model} at {side} px"
    print(f"{what} | {first['device']} | batch {batch} | {first['precision']} | {first['clock']} | "
          f"median of {args.repeats}")
    print(f"{'model':9} {unit:>9} {'GMACs':>7} {'1st call s':>10}  kernels")
    for name, r in results.items():
        print(f"{name:9} {r['throughput']:9.{3 if umt else 1}f} {r['gmacs']:7.2f} {r['first_call_s'] or 0:10.1f}  "
              f"{','.join(r['kernel'])}")
    pairs = [("ours", "base"), ("ours", "static"), ("static", "base"), ("attn", "base"), ("ours", "attn"),
             ("base", "eager")]
    pairs += bench_common.compiled_pairs(pairs, results)
    ratios = bench_common.print_ratios(results, pairs, None if cuda else (UMT_CPU_TARGETS if umt else CPU_TARGETS),
                                       width=16)
    shape = f"-f{args.frames}" if umt else f"-{side}px" if args.img_size else ""
    compiled = "-compile" if args.compile else ""
    clock = "-cpuclock" if args.clock == "cpu" else ""
    bench_common.write_record(
        args.out, f"bench_patch-{args.model}{shape}-{'cuda' if cuda else 'cpu'}-b{batch}{compiled}{clock}",
        {"model": args.model, "input_size": list(input_size), "results": results, "ratios": ratios,
         "paired_ratios": bench_common.paired_ratios(results, pairs)})


if __name__ == "__main__":
    main()
