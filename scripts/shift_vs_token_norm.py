"""Does the L2 representation shift across the MLP just track each token's norm? (ShapeBench, demo ViT)

    python scripts/shift_vs_token_norm.py        # after `make demo`: its tiny ViT, data and image subset
                                                 # (--out/--data/--mask-images as given to the demo)

The paper's default score compares the MLP branch's output with its input, ``‖MLP(LN(x')) − x'‖₂``,
so the token's own norm ``‖x'‖`` enters it. Per block, this prints the AUROC against the ShapeBench
foreground masks (as in the demo's mask-agreement table; 0.5 = chance) of

  norm      ‖x'‖, the MLP branch's input (the token after the attention residual)
  update    ‖MLP(LN(x'))‖, what the MLP adds to the token (the residual update)
  l2-mlp    the paper's score, from repshift.representation_shift(metric="l2", site="mlp")

and the Pearson correlation of ``norm`` with ``l2-mlp`` over all patch tokens.
"""
from __future__ import annotations

import argparse

import pandas as pd
import torch

import repshift
from repshift import demo
from repshift.evaluate.saliency import mask_agreement


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/demo", help="the demo's --out (where it wrote its runs)")
    parser.add_argument("--data", default="data/shapebench", help="the demo's --data (ShapeBench folder)")
    parser.add_argument("--mask-images", type=int, default=200, help="the demo's --mask-images")
    return parser.parse_args(argv)


def mlp_branch(model, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per block, from one unpruned forward: x' (the input of the MLP's LayerNorm) and MLP(LN(x'))."""
    found: dict[tuple[str, int], torch.Tensor] = {}
    hooks = []
    for b, block in enumerate(model.blocks):
        hooks.append(block.norm2.register_forward_hook(lambda m, args, out, b=b: found.update({("x", b): args[0]})))
        hooks.append(block.ls2.register_forward_hook(lambda m, args, out, b=b: found.update({("update", b): out})))
    try:
        with torch.no_grad():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return [(found["x", b], found["update", b]) for b in range(len(model.blocks))]


def main(argv=None) -> pd.DataFrame:
    args = parse_args(argv)
    study = demo.Demo(demo.parse_args(["--out", args.out, "--data", args.data, "--mask-images", str(args.mask_images)]))
    if not study.newest("demo_train"):
        raise SystemExit(f"no trained tiny ViT under {args.out}/runs/demo_train: run `make demo` first")
    model, images, coverage = study.mask_study()

    prefix = model.num_prefix_tokens
    shift = repshift.representation_shift(model, images, metric="l2", site="mlp")[:, :, prefix:]
    rows = {}
    for b, (x_mid, update) in enumerate(mlp_branch(model, images)):
        norm, update = x_mid.norm(dim=-1)[:, prefix:], update.norm(dim=-1)[:, prefix:]
        rows[f"block {b}"] = {
            "norm": mask_agreement(norm, coverage),
            "update": mask_agreement(update, coverage),
            "l2-mlp": mask_agreement(shift[:, b], coverage),
            "corr(norm, l2-mlp)": float(torch.corrcoef(torch.stack([norm.flatten(), shift[:, b].flatten()]))[0, 1]),
        }
    frame = pd.DataFrame(rows).T
    print(f"AUROC vs ShapeBench foreground ({len(images)} val images, 0.5 = chance), {study.model_spec()['checkpoint']}\n")
    print(frame.round(3).to_markdown())
    return frame


if __name__ == "__main__":
    main()
