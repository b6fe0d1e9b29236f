"""`make demo`: the paper's image pipeline, end to end on ShapeBench, on a CPU, in minutes.

    python -m repshift.demo                 # full size (see `--help` for a smaller run)

1. makes ShapeBench if missing, trains the tiny ViT once (cached, resumable) with the suite's
   own `task=train`;
2. Base / Attn (eager, class attention) / Ours (L2 across the MLP, SDPA) with the paper's DeiT
   schedule (blocks 0, 3, 6; 20 % each), plus the Static and Random controls the paper does not
   report: accuracy, CPU throughput, GMACs; and Ours under each reading of D(F(x), x);
3. the Table 8 reliability check: keep the top vs the bottom 50 % by representation shift;
4. agreement of every score map with the known foreground masks (AUROC per block);
5. a Fig. 6-style PNG: image / attention map / representation-shift map at three depths;
6. writes it all to outputs/demo/: tables, figures, and the mask agreement as run records
   (`runs/demo_masks/<score>/result.json`), which the claims ledger reads (`make claims`).

Steps 1–3 run `python -m repshift.run` exactly as a user would (the commands are printed); the tables
and the ledger read the run records they write (repshift.record).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import Subset

import repshift
from repshift.data.shapebench import ShapeBenchDataset
from repshift.data.transforms import eval_transform
import repshift.provenance as provenance
from repshift.evaluate.saliency import mask_agreement, patch_coverage
from repshift.maps import to_uint8_image
from repshift.models import build_model
from repshift.record import Identity, RunRecord, fingerprint, scan
from repshift.report import tables
from repshift.report.core import Run, as_runs, precedence
from repshift.report.figures import save_figure
from repshift.report.maps import overlay_grid

CAPTION = "ShapeBench, tiny ViT trained here (not ImageNet)"
# The tiny ViT as trained by this demo with its default settings (28 epochs, ~45 CPU minutes),
# shipped so that a fresh clone runs the demo in minutes; --retrain trains it again instead.
SHIPPED_CHECKPOINT = Path(__file__).parent / "assets" / "vit_shapebench.pth"
SHIFTS = [(metric, site) for metric in ("l2", "l1", "cos") for site in ("mlp", "attn", "block")]
ATTENTIONS = ("attn_cls", "attn_mean")
READINGS = ("literal", "update", "normed")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/demo", help="where tables, figure and runs go")
    parser.add_argument("--data", default="data/shapebench", help="ShapeBench folder (made if missing)")
    parser.add_argument("--checkpoint", default="outputs/shapebench/vit_shapebench.pth", help="trained tiny ViT (reused)")
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: experiment/demo.yaml)")
    parser.add_argument("--mask-images", type=int, default=200, help="val images for the mask-agreement study")
    parser.add_argument("--retrain", action="store_true", help="train from scratch instead of reusing the shipped checkpoint")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for every run")
    return parser.parse_args(argv)


class Demo:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out).resolve()
        self.runs = self.out / "runs"
        data = Path(args.data).resolve()
        self.checkpoint = Path(args.checkpoint).resolve()
        self.common = [
            "experiment=demo",
            f"dataset.root={data}",
            f"dataset.generate.n_train_per_class={args.train_per_class}",
            f"dataset.generate.n_val_per_class={args.val_per_class}",
            f"paths.output_dir={self.runs}",
            *([f"train.epochs={args.epochs}"] if args.epochs else []),
            *args.overrides,
        ]

    def suite(self, *overrides: str, trained: bool = True) -> None:
        """Run `python -m repshift.run` with the demo's settings (and its trained ViT), echoing the command."""
        if trained:
            overrides = (*overrides, f"model.checkpoint={self.checkpoint}")
        command = [sys.executable, "-m", "repshift.run", *overrides, *self.common]
        print("\n$ python -m repshift.run " + " ".join(overrides) + " <demo settings>", flush=True)
        subprocess.run(command, check=True)

    def train(self) -> RunRecord:
        self.seed_checkpoint()
        self.suite("task=[train,evaluate]", "method.name=trained", "experiment_name=demo_train", "compress=none",
                   "model.checkpoint=null", f"train.output={self.checkpoint}", trained=False)
        return self.newest("demo_train")[-1].record

    def newest(self, experiment: str) -> list[Run]:
        """The run records of an experiment in the tables' order of precedence, the one they would use last
        (real weights and data, then the newest file); a folder without a valid record fails naming its files."""
        found = scan(self.runs / experiment)
        if not found.records:
            problems = "; ".join(f"{p.path}: {p.reason}" for p in found.problems) or "no result.json"
            raise RuntimeError(f"{self.runs / experiment}: no valid run record ({problems})")
        return sorted(as_runs(found.records), key=precedence)

    def seed_checkpoint(self) -> None:
        """Start from the shipped checkpoint when it is the one these settings would train."""
        args, target = self.args, Path(self.args.checkpoint)
        defaults = parse_args([])
        same_settings = (args.epochs, args.train_per_class, args.val_per_class) == (
            defaults.epochs, defaults.train_per_class, defaults.val_per_class
        ) and not any(o.startswith(("model.", "train.", "dataset.generate", "seed=")) for o in args.overrides)
        if target.exists() or args.retrain or not same_settings or not SHIPPED_CHECKPOINT.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHIPPED_CHECKPOINT, target)
        print(f"Reusing the shipped tiny ViT ({SHIPPED_CHECKPOINT.name}); --retrain trains it from scratch.")

    def compare_methods(self) -> pd.DataFrame:
        self.suite("-m", "method=base,attn,ours,static,random")
        return tables.build("demo", self.newest("demo"))

    def reading_accuracy(self, literal: float) -> dict[str, float]:
        """Top-1 of Ours at the DeiT schedule under each reading (literal is Ours of the method table)."""
        self.suite("-m", "method=ours", "reading=update,normed", "task=[evaluate]", "experiment_name=demo_readings")
        return {"literal": literal,
                **{run.record.reading: run.record.metric_value("top1") for run in self.newest("demo_readings")}}

    def reliability(self, depth: int) -> pd.DataFrame:
        """Table 8 on ShapeBench: keep the top or the bottom 50 % at one block (not the last)."""
        layers = ",".join(f"[{layer}]" for layer in range(depth - 1))
        self.suite(
            "-m", "method=ours", "compress=none", "compress.ratio=0.5", f"compress.layers={layers}",
            "compress.keep=top,bottom", "method.name=${compress.keep}50", "task=[evaluate]", "experiment_name=demo_table8",
        )
        rows: dict[str, dict[str, float]] = {}
        for run in self.newest("demo_table8"):
            r = run.record
            rows.setdefault(r.method.name, {})[f"block {r.compress.layers[0]}"] = r.metric_value("top1")
        frame = pd.DataFrame(rows).T.sort_index(axis=1, key=lambda c: c.str.split().str[1].astype(int))
        frame["mean"] = frame.mean(axis=1)
        frame.loc["gap (top − bottom)"] = frame.loc["top50"] - frame.loc["bottom50"]
        frame.index.name = "kept tokens"
        frame.attrs["title"] = f"Table 8 check — {CAPTION}: top-1 (%) keeping 50 % of tokens at one block"
        return frame

    def mask_study(self) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
        """The trained tiny ViT (eval mode), ``--mask-images`` evenly spaced val images, and their patch coverage."""
        model, _ = build_model(**self.model_spec())
        model.eval()
        val = ShapeBenchDataset(self.args.data, "val", transform=eval_transform(224, crop_pct=1.0), with_masks=True)
        step = max(1, len(val) // self.args.mask_images)
        subset = Subset(val, list(range(0, len(val), step))[: self.args.mask_images])
        samples = [subset[i] for i in range(len(subset))]
        images = torch.stack([image for image, _, _ in samples])
        masks = torch.stack([mask for _, _, mask in samples])
        return model, images, patch_coverage(masks, patch_size=16)

    def masks_and_maps(self, depth: int) -> pd.DataFrame:
        """AUROC of each score map against the ground-truth masks, per block; and the figure.

        Rows ``l2-mlp@update`` / ``l2-mlp@normed`` are the default score under the other readings.
        """
        model, images, coverage = self.mask_study()
        prefix = model.num_prefix_tokens
        maps = {f"{m}-{s}": repshift.representation_shift(model, images, metric=m, site=s) for m, s in SHIFTS}
        maps.update({f"l2-mlp@{r}": repshift.representation_shift(model, images, "l2", "mlp", reading=r)
                     for r in READINGS[1:]})
        maps.update({m: repshift.attention_scores(model, images, metric=m) for m in ATTENTIONS})
        frame = pd.DataFrame(
            {name: {f"block {b}": mask_agreement(s[:, b, prefix:], coverage) for b in range(depth)} for name, s in maps.items()}
        ).T
        frame["best"] = frame.max(axis=1)
        frame.index.name = "score"
        frame.attrs["title"] = (
            f"Mask agreement — {CAPTION}: AUROC of token scores vs ground-truth foreground "
            f"(patches ≥ 50 % covered vs uncovered), {len(images)} val images; 0.5 = chance"
        )
        self.figure(images, maps, depth, prefix)
        self.write_mask_records(frame, len(images))
        return frame

    def figure(self, images, maps, depth: int, prefix: int) -> None:
        blocks = sorted({0, depth // 2 - 1, depth - 2})  # early / middle / late, as the paper's 1, 5, 9 of 12
        side = int(math.isqrt(maps["l2-mlp"].shape[-1] - prefix))
        scores = (("Attn (class attention)", "attn_cls"), ("Ours (L2, MLP)", "l2-mlp"))
        for i in range(min(3, len(images))):
            picture = to_uint8_image(images[i])
            fig = overlay_grid([picture] * len(scores),
                               [[maps[key][i, b, prefix:].reshape(side, side).numpy() for b in blocks]
                                for _, key in scores],
                               row_labels=[label for label, _ in scores], column_titles=[f"block {b}" for b in blocks],
                               title=CAPTION)
            save_figure(fig, self.out, f"score_maps_{i}", dpi=120)

    def write_mask_records(self, agreement: pd.DataFrame, n_images: int) -> None:
        """One run record per score (``runs/demo_masks/<score>/result.json``): its mask AUROC per block on the
        trained tiny ViT, as the claims ledger reads it (evaluator ``mask_agreement``, synthetic data)."""
        trained = self.newest("demo_train")[-1].record
        spec = self.model_spec()
        checkpoint = fingerprint("checkpoint", spec["checkpoint"], content_hash=True)
        env = provenance.environment()
        code = env["git_commit"] + ("+dirty" if env.get("git_dirty") else "")
        for score, row in agreement.iterrows():
            name, _, reading = str(score).partition("@")
            metric, _, site = name.partition("-")
            config = {"demo": "mask_agreement", "score": str(score), "model": trained.config["model"],
                      "images": n_images, "data": str(Path(self.args.data).resolve())}
            record = RunRecord(
                identity=Identity.of(config, [checkpoint], "cpu", code), experiment="demo_masks",
                run_name=str(score), method={"name": str(score), "label": str(score)},
                model={"name": trained.model.name, "arch": trained.model.arch, "family": None},
                metric=metric, site=site or "attn", reading=reading or "literal", attention="eager",
                weights={"real": True, "source": f"file:{spec['checkpoint']}"}, evaluator="mask_agreement",
                dataset={"name": "shapebench", "root": str(Path(self.args.data).resolve()), "split": "val",
                         "synthetic": True, "n": n_images},
                metrics={f"auroc_{column.replace(' ', '')}": float(value) for column, value in row.items()
                         if column.startswith("block")},
                config=config, env=env)
            record.write(self.runs / "demo_masks" / str(score).replace("@", "_"))

    def model_spec(self) -> dict:
        trained = self.newest("demo_train")[-1].record
        model = trained.config["model"]
        return dict(name=model["name"], checkpoint=trained.train.checkpoint, kwargs=model["kwargs"])


def readings_table(agreement: pd.DataFrame, accuracy: dict[str, float], depth: int) -> pd.DataFrame:
    """Per reading of the default score (L2, MLP): mask AUROC per block and top-1 at the DeiT schedule."""
    rows = {"literal": "l2-mlp", "update": "l2-mlp@update", "normed": "l2-mlp@normed"}
    frame = agreement.loc[list(rows.values()), [f"block {b}" for b in range(depth)]]
    frame.index = list(rows)
    frame["top-1 (DeiT schedule)"] = [accuracy[r] for r in rows]
    frame.index.name = "reading"
    frame.attrs["title"] = (f"Readings of D(F(x), x) — {CAPTION}: mask AUROC of the L2 MLP-site score per block "
                            "(0.5 = chance) and top-1 (%) with 20 % pruned after blocks 0, 3, 6")
    return frame


def save(frame: pd.DataFrame, name: str, out: Path) -> str:
    markdown = f"## {frame.attrs.get('title', name)}\n\n{frame.round(3).to_markdown()}\n"
    (out / f"{name}.md").write_text(markdown)
    frame.to_csv(out / f"{name}.csv")
    return markdown


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    demo = Demo(args)
    demo.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_MODE", "disabled")

    trained = demo.train()
    depth = trained.config["model"]["kwargs"]["depth"]
    methods = demo.compare_methods()
    accuracy = {m.split()[0]: row["Acc-1"] for m, row in methods.iterrows()}
    reading_accuracy = demo.reading_accuracy(accuracy["ours"])
    reliability = demo.reliability(depth)
    agreement = demo.masks_and_maps(depth)
    readings = readings_table(agreement, reading_accuracy, depth)

    print(f"\n# repshift demo — {CAPTION}\n")
    print(f"Tiny ViT: val top-1 {trained.metric_value('top1'):.2f} % after {len(trained.train.history)} epochs "
          f"({trained.weights.source})\n")
    md, csv = tables.render("demo", methods)
    (demo.out / "methods.md").write_text(md)
    (demo.out / "methods.csv").write_text(csv)
    print(md)
    print(save(readings, "readings", demo.out))
    print(save(reliability, "table8_check", demo.out))
    print(save(agreement, "mask_agreement", demo.out))

    best = agreement["best"]
    gap = reliability.loc["gap (top − bottom)", "mean"]
    summary = {
        "caption": CAPTION,
        "tiny_vit_val_top1": trained.metric_value("top1"),
        "methods": {m.split()[0]: row.to_dict() for m, row in methods.iterrows()},
        "readings_top1": reading_accuracy,
        "top_vs_bottom_gap_mean": gap,
        "best_auroc": best.to_dict(),
        "wall_time_s": time.perf_counter() - start,
    }
    (demo.out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    verdict = lambda holds: "holds" if holds else "does NOT hold here"  # noqa: E731
    default, attention = best["l2-mlp"], best[list(ATTENTIONS)].max()
    print("Claims of the paper, checked on ShapeBench:")
    print(f"- the default score (L2 across the MLP) finds the object: best AUROC {default:.3f} vs class/mean attention "
          f"{attention:.3f} (0.5 = chance; best of any shift variant: {best.drop(list(ATTENTIONS)).idxmax()} "
          f"{best.drop(list(ATTENTIONS)).max():.3f}): {verdict(default > 0.5 and default >= attention)}")
    print(f"- keeping the top 50 % by shift beats keeping the bottom 50 %: mean gap {gap:+.2f} points: {verdict(gap > 0)}")
    print(f"- pruning by shift keeps accuracy better than by attention: Ours {accuracy['ours']:.2f} vs Attn "
          f"{accuracy['attn']:.2f} (Base {accuracy['base']:.2f}) at the same token counts: "
          f"{verdict(accuracy['ours'] >= accuracy['attn'])}")
    best_reading = max(reading_accuracy, key=reading_accuracy.get)
    controls = f"random {accuracy['random']:.2f}, static {accuracy['static']:.2f}"
    print(f"- representation shift beats a random choice of tokens: best reading {best_reading} "
          f"{reading_accuracy[best_reading]:.2f} vs the controls the paper does not report ({controls}): "
          f"{verdict(reading_accuracy[best_reading] > accuracy['random'])}"
          + ("; the seeded random control beats every reading of the score here"
             if accuracy["random"] > max(reading_accuracy.values()) else ""))
    print(f"\nWrote tables, score maps (score_maps_*.png) and summary.json to {demo.out} "
          f"in {summary['wall_time_s']:.0f} s.")


if __name__ == "__main__":
    main()
