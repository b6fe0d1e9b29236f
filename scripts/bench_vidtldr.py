"""Throughput and GMACs of UMT's vision encoder: no compression vs vid-TLDR merging vs Table 2's pruning.

    python scripts/bench_vidtldr.py                            # UMT-B, 12 frames, MSRVTT schedule, CPU batch 1, fp32
    python scripts/bench_vidtldr.py --device cuda              # batch 20, AMP fp16 (the paper's video protocol)
    python scripts/bench_vidtldr.py --size l --dataset didemo --width 64   # UMT-L's DiDeMo schedule, a narrow encoder

Models, timed in turns within every repeat (repshift.bench.compare), on the same random clips:
  base         no compression, self-attention (eager): Table 3's Base
  base-fa      no compression, fused attention (sdpa)
  vid_tldr     vid-TLDR as published: attention-entropy saliency, eager attention, proportional attention
  vid_tldr_ours   representation shift (L2, attention branch) as the saliency, sdpa, proportional attention kept
               (its log(size) bias makes SDPA leave FlashAttention for the memory-efficient kernel on CUDA)
  vid_tldr_ours_flash   as vid_tldr_ours without the size bias: FlashAttention kept
  ours   Table 2's pruning: L2 shift across the MLP, 20 % after blocks 0, 1, 2, sdpa
Merging schedules: vid-TLDR's published ones (repshift/configs/compress/vid_tldr.yaml), global mean pooling.
Random weights (throughput does not depend on them). --compile adds each compiled (<name>+c) to the same run. --width shrinks the encoder's width (and heads) for a
quick run at the real token counts; the printed GMACs are then of that narrow encoder.
"""
from __future__ import annotations


import torch

import bench_common
import repshift
from repshift import configs
from repshift.bench import compare
from repshift.models import umt

VARIANTS = {
    "base": (dict(metric="none", layers=(), ratio=0.0, attention="eager"), True),
    "base-fa": (None, True),
    "vid_tldr": (dict(metric="attn_entropy", site="attn", attention="eager", mode="merge"), False),
    "vid_tldr_ours": (dict(metric="l2", site="attn", attention="sdpa", mode="merge"), False),
    "vid_tldr_ours_flash": (dict(metric="l2", site="attn", attention="sdpa", mode="merge", proportional=False), False),
    "ours": (dict(metric="l2", site="mlp", attention="sdpa", layers=(0, 1, 2), ratio=0.2), True),
}


def schedule(dataset: str, size: str) -> dict:
    """vid-TLDR's published schedule for ``dataset`` and ``size``, as the compress config holds it."""
    config = configs.load("compress", "vid_tldr")
    return dict(layers=tuple(config.compress.layers), num=list(config.vid_tldr.schedules.published[dataset][size]))


def build(size: str, frames: int, width: int | None, which: list[str], dataset: str, device: str) -> dict:
    overrides = dict(embed_dim=width, num_heads=max(1, width // 64)) if width else {}
    models = {}
    for name in which:
        options, per_frame = VARIANTS[name]
        torch.manual_seed(0)
        model = umt.vision_encoder(size, frames, keep_temporal=per_frame, **overrides).to(device).eval()
        if options is not None:
            extra = schedule(dataset, size) if options.get("mode") == "merge" else {}
            repshift.patch(model, **options, **extra)
        models[name] = model
    return models


def main() -> None:
    parser = bench_common.parser_with_common_options(__doc__, models=VARIANTS, repeats=5,
                                                     batch_help="default: 1 on CPU, 20 on CUDA")
    parser.add_argument("--size", default="b", choices=["b", "l"])
    parser.add_argument("--dataset", default="msrvtt", help="whose vid-TLDR schedule (config dataset name)")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--width", type=int, default=None, help="encoder width (default: the real 768 / 1024)")
    parser.add_argument("--no-gmacs", action="store_true", help="skip the GMACs count (one more forward per model)")
    args, cuda, which = bench_common.parse(parser, VARIANTS)
    batch = args.batch or (20 if cuda else 1)
    input_size = (args.frames, 3, 224, 224)
    models = bench_common.with_compiled(build(args.size, args.frames, args.width, which, args.dataset, args.device),
                                        args.compile)
    results = compare(
        models, batch_size=batch, input_size=input_size, unit="vid/s", device=args.device,
        amp_dtype="float16" if cuda else None, warmup=args.warmup if args.warmup is not None else (10 if cuda else 1),
        iters=args.iters if args.iters is not None else (20 if cuda else 1), repeats=args.repeats, clock=args.clock,
    )
    bench_common.count(results, models, input_size, gmacs=not args.no_gmacs)

    first = next(iter(results.values()))
    width = args.width or umt.VISION_SIZES[args.size]["embed_dim"]
    print(f"UMT-{args.size.upper()} vision encoder (width {width}), {args.frames} frames, {args.dataset} schedule "
          f"{schedule(args.dataset, args.size)['num']} | {first['device']} | batch {batch} | {first['precision']} | "
          f"median of {args.repeats}")
    print(f"{'model':11} {'vid/s':>8} {'×base':>6} {'GMACs':>8}  tokens (last block)  kernels")
    base = results.get("base", first)["throughput"]
    for name, r in results.items():
        gmacs = "" if r["gmacs"] is None else f"{r['gmacs']:8.2f}"
        tokens = r["tokens"][-1] if r["tokens"] else args.frames * 196
        print(f"{name:11} {r['throughput']:8.3f} {r['throughput'] / base:6.2f} {gmacs:>8}  {tokens:>19}  "
              f"{','.join(r['kernel'])}")
    pairs = [("vid_tldr_ours", "vid_tldr"), ("vid_tldr_ours_flash", "vid_tldr"), ("vid_tldr_ours_flash", "vid_tldr_ours"),
             ("vid_tldr", "ours")]
    pairs += bench_common.compiled_pairs(pairs, results)
    ratios = bench_common.print_ratios(results, pairs, width=22)
    device = "cuda" if cuda else "cpu"
    bench_common.write_record(
        args.out, f"bench_vidtldr-umt_{args.size}-{args.dataset}-f{args.frames}-w{width}-{device}-b{batch}",
        {"size": args.size, "dataset": args.dataset, "input_size": list(input_size), "width": width,
         "results": results, "ratios": ratios})


if __name__ == "__main__":
    main()
