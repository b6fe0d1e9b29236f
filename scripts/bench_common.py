"""What the model benchmark scripts in this folder share (bench_patch, bench_resnet, bench_vim, bench_vidtldr).

Each script builds its own variants of one model and times them in turns with :func:`repshift.bench.compare`;
this module gives them one command line for the common knobs, one check of the device, one way to add every
variant's GMACs and token counts, one printout of throughput ratios against the CPU targets, and one JSON
record written atomically.

``--compile`` adds a compiled copy of every variant (``<name>+c``: :func:`repshift.bench.compiled`, inductor,
``fullgraph=True``) to the same interleaved run, so compiled/eager and compiled-pruned/compiled-static ratios
come from one run (:func:`with_compiled`, :func:`compiled_pairs`).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Iterable, Mapping, Optional

import torch

import repshift
from repshift.bench import compiled, count_gmacs, eager_module
from repshift.io import atomic_open

#: Suffix of a variant's compiled copy.
COMPILED = "+c"


def parser_with_common_options(doc: str, *, models: Iterable[str], repeats: int, batch_help: str) -> argparse.ArgumentParser:
    """A parser holding the options every benchmark takes; the script adds its own (``--model`` etc.)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None, help=batch_help)
    parser.add_argument("--models", default=",".join(models), help="comma-separated variants to time (default: all)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default="outputs/bench", help="folder for the JSON record")
    parser.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                        help="cpu: one thread, timed by this process's CPU time (for busy shared machines)")
    parser.add_argument("--compile", action="store_true",
                        help=f"also time every variant compiled (torch.compile fullgraph, inductor) as "
                             f"<name>{COMPILED}, in the same interleaved run (the first call of each compiles: "
                             "minutes on a CPU)")
    return parser


def parse(parser: argparse.ArgumentParser, known_models: Iterable[str]) -> tuple[argparse.Namespace, bool, list[str]]:
    """``(args, cuda, models)``: CUDA asked for but absent, or an unknown ``--models`` entry, is a usage error."""
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device")
    if cuda and args.clock == "cpu":
        parser.error("--clock cpu times the CPU: drop --device cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    known = list(known_models)
    which = args.models.split(",")
    unknown = set(which) - set(known)
    if unknown:
        parser.error(f"unknown --models entries {sorted(unknown)}; choose from {', '.join(known)}")
    return args, cuda, which


def with_compiled(models: Mapping[str, torch.nn.Module], compile: bool) -> dict:
    """``models``, and with ``compile`` a compiled copy of each (``<name>+c``, sharing its parameters and state)."""
    models = dict(models)
    if compile:
        models.update({name + COMPILED: compiled(model) for name, model in list(models.items())})
    return models


def compiled_pairs(pairs: Iterable[tuple[str, str]], names: Iterable[str]) -> list[tuple[str, str]]:
    """The same ratios between compiled copies, then every compiled copy against its eager variant."""
    names = list(names)
    return ([(a + COMPILED, b + COMPILED) for a, b in pairs]
            + [(name, name[: -len(COMPILED)]) for name in names if name.endswith(COMPILED)])


def count(results: dict, models: Mapping[str, torch.nn.Module], input_size: Optional[tuple] = None,
          gmacs: bool = True) -> None:
    """Add each variant's GMACs of one sample (None when not counted) and the tokens entering each unit
    (a compiled copy has its eager variant's: counted once)."""
    for name, model in models.items():
        eager_name = name.removesuffix(COMPILED)
        if name != eager_name and eager_name in results and "gmacs" in results[eager_name]:
            results[name]["gmacs"], results[name]["tokens"] = results[eager_name]["gmacs"], results[eager_name]["tokens"]
            continue
        model = eager_module(model)
        results[name]["gmacs"] = count_gmacs(model, *([input_size] if input_size else [])) if gmacs else None
        results[name]["tokens"] = list(model.repshift.tokens) if repshift.is_patched(model) else None


def paired_ratios(results: dict, pairs: Iterable[tuple[str, str]]) -> dict:
    """``a/b`` as the median over repeats of the ratio within each repeat: the two models ran minutes apart at
    most, so load that drifts between repeats moves it less than it moves the ratio of the medians."""
    return {f"{a}/{b}": statistics.median(x / y for x, y in zip(results[a]["repeats"], results[b]["repeats"]))
            for a, b in pairs if a in results and b in results}


def print_ratios(results: dict, pairs: Iterable[tuple[str, str]], targets: Optional[Mapping[str, float]] = None,
                 width: int = 12) -> dict:
    """Print ``a/b`` throughput ratios of the pairs both timed (ratio of the medians, then the same-repeat median
    of :func:`paired_ratios`), each against its target if one is given; returns the ratios of the medians."""
    pairs = list(pairs)
    ratios = {f"{a}/{b}": results[a]["throughput"] / results[b]["throughput"]
              for a, b in pairs if a in results and b in results}
    paired = paired_ratios(results, pairs)
    for key, value in ratios.items():
        target = (targets or {}).get(key)
        verdict = "" if target is None else f"  (target >= {target}: {'met' if value >= target else 'NOT met'})"
        print(f"{key:{width}} {value:.3f}  same-repeat {paired[key]:.3f}{verdict}")
    return ratios


def write_record(out: str, name: str, record: dict) -> Path:
    """``<out>/<name>.json``, written whole or not at all."""
    path = Path(out) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        json.dump(record, f, indent=2)
    print(f"wrote {path}")
    return path
