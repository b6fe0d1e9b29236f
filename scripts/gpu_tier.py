"""The GPU tier in one short run (under 10 minutes on one GPU): `make test-gpu`, then the headline ratios.

    python scripts/gpu_tier.py                    # tests, then DeiT-S batch 512 and UMT-B batch 20, AMP fp16
    python scripts/gpu_tier.py --no-tests         # the ratios only
    python scripts/gpu_tier.py --no-compile       # without the compiled ours / static copies

1. ``pytest -m gpu tests/gpu``: the attention kernel that ran (``sdpa:flash`` for Ours, ``eager`` for Attn,
   ``sdpa:efficient+bias`` for exact proportional attention), fp16 against fp32, flash-attn against SDPA,
   a CUDA-graph capture of a compiled pruned model, the PyTorch selective scan against mamba_ssm.
2. Throughput, the paper's protocol (random input on the device, AMP fp16, warm-up, synchronised timing,
   median over repeats, models in turns): DeiT-S (batch 512; 20 % after blocks 0, 3, 6) and the UMT-B vision
   encoder (12 frames, batch 20; 20 % after blocks 0, 1, 2), each as
       Base (eager self-attention), FA (the model's own SDPA forward: FlashAttention), Attn (attention scores,
       eager attention), Ours (L2 shift across the MLP, SDPA), static (the same token counts, no scores),
   plus Ours and static compiled (torch.compile fullgraph, inductor) unless --no-compile.
Every figure is recorded with its device, kernel, batch and precision in outputs/gpu_tier/<time>.json
(--out). Without a CUDA device the script says so and measures nothing.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

import bench_common
from bench_patch import build
from repshift.bench import compare, compiled

ROOT = Path(__file__).resolve().parents[1]
#: Table 1's names for bench_patch's variants.
LABELS = {"eager": "Base", "base": "FA", "attn": "Attn", "ours": "Ours", "static": "static",
          "ours+c": "Ours (compiled)", "static+c": "static (compiled)"}
HEADLINES = {
    "deit_s": dict(model="deit_small_patch16_224", frames=12, batch=512, input_size=(3, 224, 224), unit="img/s",
                   warmup=10, iters=20, repeats=5),
    "umt_b": dict(model="umt_b", frames=12, batch=20, input_size=(12, 3, 224, 224), unit="vid/s",
                  warmup=5, iters=10, repeats=5),
}
PAIRS = [("ours", "base"), ("ours", "eager"), ("ours", "static"), ("attn", "eager"), ("base", "eager"),
         ("ours", "attn"), ("ours+c", "static+c"), ("ours+c", "ours"), ("static+c", "static")]


def run_tests(timeout: int) -> dict:
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-q", "-rs", "-p", "no:cacheprovider"]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n")
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    return {"command": " ".join(command[1:]), "returncode": proc.returncode, "summary": summary,
            "seconds": time.perf_counter() - start}


def headline(name: str, compile: bool) -> dict:
    spec = HEADLINES[name]
    start = time.perf_counter()
    torch._dynamo.reset()  # the previous model's compilations count against dynamo's limit per code object
    models = build(spec["model"], "cuda", ["eager", "base", "attn", "ours", "static"], spec["frames"])
    if compile:
        models.update({variant + bench_common.COMPILED: compiled(models[variant]) for variant in ("ours", "static")})
    results = compare(models, batch_size=spec["batch"], input_size=spec["input_size"], unit=spec["unit"],
                      device="cuda", amp_dtype="float16", warmup=spec["warmup"], iters=spec["iters"],
                      repeats=spec["repeats"], desc=name)
    first = next(iter(results.values()))
    print(f"\n{name}: {first['device']} | batch {spec['batch']} | {first['precision']} | median of {spec['repeats']}")
    print(f"{'model':18} {spec['unit']:>10}  kernels")
    for variant, r in results.items():
        r["label"] = LABELS[variant]
        print(f"{LABELS[variant]:18} {r['throughput']:10.1f}  {','.join(r['kernel'])}")
    ratios = bench_common.print_ratios(results, PAIRS, width=18)
    return {**spec, "input_size": list(spec["input_size"]), "results": results, "ratios": ratios,
            "paired_ratios": bench_common.paired_ratios(results, PAIRS),
            "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-tests", action="store_true", help="skip the pytest GPU tier")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled ours / static copies")
    parser.add_argument("--models", default=",".join(HEADLINES), help=f"headline models, from {', '.join(HEADLINES)}")
    parser.add_argument("--out", default="outputs/gpu_tier", help="folder for the JSON record")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_tier: SKIPPED, torch sees no CUDA device; nothing was run or measured")
        return
    record = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda}
    if not args.no_tests:
        record["tests"] = run_tests(timeout=360)
    record["headlines"] = {name: headline(name, not args.no_compile) for name in args.models.split(",")}
    bench_common.write_record(args.out, time.strftime("gpu_tier-%Y%m%d-%H%M%S"), record)
    if record.get("tests", {}).get("returncode", 0) != 0:
        sys.exit(f"gpu_tier: the GPU tests failed ({record['tests']['summary']})")


if __name__ == "__main__":
    main()
