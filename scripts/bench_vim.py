"""Throughput of ViM-T: Base vs Ours vs ToP-ViM vs the static control, in one interleaved run.

    .venv/bin/python scripts/bench_vim.py                 # ViM-T, CPU, batch 8, fp32, PyTorch scan
    .venv/bin/python scripts/bench_vim.py --device cuda   # GPU, batch 512, AMP fp16, scan_backend auto
    .venv/bin/python scripts/bench_vim.py --model vim_tiny --repeats 3   # the small test model

Models (ViM's Table 7 schedule, repshift/configs/compress/vim.yaml: after layers 9 and 19, 197 -> 157 -> 125 tokens):
  base     the model's own forward
  ours     repshift.patch(metric=l2, site=mixer): representation shift across the mixer, then prune
  top_vim  repshift.patch(metric=top_vim): ToP-ViM's score (channel sum of the backward-scan output)
  static   the same token counts with no score (the first tokens kept): the ceiling for pruning's speed-up
The models take turns in every repeat (repshift.bench.compare), so machine load hits them alike;
--compile adds each compiled (<name>+c) to the same run.
GMACs include the selective scans (repshift.bench.count_gmacs). Random weights: speed does not depend on them.
"""
from __future__ import annotations


import torch
from omegaconf import OmegaConf

import bench_common
import repshift
from repshift import configs
from repshift.bench import compare
from repshift.models import build_model

VARIANTS = {
    "base": None,
    "ours": dict(metric="l2", site="mixer"),
    "top_vim": dict(metric="top_vim", site="mixer"),
    "static": dict(metric="none", site="mixer"),
}


def schedule() -> dict:
    """The pruning schedule of repshift/configs/compress/vim.yaml, as repshift.patch takes it."""
    compress = OmegaConf.to_container(configs.load("compress", "vim"))
    return dict(layers=compress["layers"], ratio=compress["ratio"], num=compress["num"], keep=compress["keep"])


def build(model_config: str, device: str, which: list[str], scan_backend: str) -> dict:
    config = OmegaConf.to_container(configs.load("model", model_config))
    kwargs = dict(config["kwargs"], scan_backend=scan_backend)
    models = {}
    for name in which:
        torch.manual_seed(0)
        model = build_model(config["name"], kwargs=kwargs)[0].to(device).eval()
        if VARIANTS[name] is not None:
            repshift.patch(model, **VARIANTS[name], **schedule())
        models[name] = model
    return models


def main() -> None:
    parser = bench_common.parser_with_common_options(__doc__, models=VARIANTS, repeats=5,
                                                     batch_help="default: 8 on CPU, 512 on CUDA")
    parser.add_argument("--model", default="vim_t", help="a repshift/configs/model/ ViM config: vim_t (default) or vim_tiny")
    parser.add_argument("--scan-backend", default=None, choices=["torch", "cuda", "auto"],
                        help="default: torch on CPU, auto on CUDA (the mamba_ssm kernels when installed)")
    parser.add_argument("--amp", default=None, choices=["float16", "bfloat16"], help="default: float16 on CUDA")
    args, cuda, which = bench_common.parse(parser, VARIANTS)
    batch = args.batch or (512 if cuda else 8)
    scan_backend = args.scan_backend or ("auto" if cuda else "torch")
    input_size = (3, 224, 224)

    models = bench_common.with_compiled(build(args.model, args.device, which, scan_backend), args.compile)
    results = compare(
        models, batch_size=batch, input_size=input_size, device=args.device,
        amp_dtype=args.amp or ("float16" if cuda else None),
        warmup=args.warmup if args.warmup is not None else (10 if cuda else 1),
        iters=args.iters if args.iters is not None else (20 if cuda else 2),
        repeats=args.repeats,
        clock=args.clock,
    )
    bench_common.count(results, models, input_size)
    for name in models:
        results[name]["scan_backend"] = scan_backend

    first = next(iter(results.values()))
    print(f"{args.model} | {first['device']} | scan {scan_backend} | batch {batch} | {first['precision']} | "
          f"median of {args.repeats} repeats x {first['iters']} iterations")
    print(f"{'model':9} {'img/s':>9} {'GMACs':>7}  tokens")
    for name, r in results.items():
        tokens = "all" if r["tokens"] is None else " -> ".join(str(n) for n in dict.fromkeys(r["tokens"]))
        print(f"{name:9} {r['throughput']:9.2f} {r['gmacs']:7.3f}  {tokens}")
    pairs = [("ours", "base"), ("top_vim", "base"), ("static", "base"), ("ours", "static"), ("ours", "top_vim")]
    pairs += bench_common.compiled_pairs(pairs, results)
    ratios = bench_common.print_ratios(results, pairs, width=18)
    bench_common.write_record(
        args.out, f"bench_vim-{args.model}-{'cuda' if cuda else 'cpu'}-{scan_backend}-b{batch}",
        {"model": args.model, "schedule": schedule(), "input_size": list(input_size), "results": results,
         "ratios": ratios})


if __name__ == "__main__":
    main()
