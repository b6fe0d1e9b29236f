"""The VLM step, worked through: representation-shift pruning inside a LLaVA's vision tower.

    .venv/bin/python scripts/example_llava.py            # a tiny random LLaVA built here: counts and MACs only
    .venv/bin/python scripts/example_llava.py --model /path/to/llava-1.5-7b-hf --image photo.jpg \\
        --prompt "USER: <image>\\nWhat is in the picture? ASSISTANT:"

For the model unpruned and pruned it prints the image tokens that reach the language model, the prompt length,
the prefill GMACs (repshift.vlm.prefill_gmacs: vision tower, projector and language model over the whole prompt)
and what greedy generation produces (token ids for the tiny model, text for a real one). Nothing is downloaded:
--model is a local folder saved with save_pretrained (or a name already in the Hugging Face cache, read offline).
Accuracy on VLM benchmarks is not measured here (docs/huggingface.md).
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: nothing is downloaded

import torch

import repshift
from repshift.patch.hf_llava import fit_image_placeholders, image_token_count
from repshift.vlm import TINY_IMAGE_TOKEN, prefill_gmacs, tiny_llava

# DeiT's schedule in the paper (blocks 0, 3, 6, 20 % each) for a real LLaVA; the tiny tower has 4 layers and
# LLaVA's default feature layer (-2) is hidden state 3, so it prunes in layers 0 and 1. Neither is tuned.
SCHEDULES = {"real": dict(layers=[0, 3, 6], ratio=0.2), "tiny": dict(layers=[0, 1], ratio=0.3)}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a local LLaVA folder (LlavaForConditionalGeneration + its processor); "
                                        "default: the tiny random LLaVA")
    parser.add_argument("--image", help="an image file (with --model)")
    parser.add_argument("--prompt", default="USER: <image>\nWhat is in the picture? ASSISTANT:",
                        help="the prompt, with the processor's image placeholder (with --model)")
    parser.add_argument("--metric", default="l2")
    parser.add_argument("--site", default="mlp")
    parser.add_argument("--layers", type=int, nargs="+", help="tower layers that prune (default: see SCHEDULES)")
    parser.add_argument("--ratio", type=float, help="share of the patch tokens dropped at each layer")
    parser.add_argument("--num", type=int, nargs="+", help="patch tokens dropped at each layer (instead of --ratio)")
    parser.add_argument("--attn-implementation", default="sdpa", choices=["eager", "sdpa", "flash_attention_2"])
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if (args.model is None) != (args.image is None):
        parser.error("--model and --image go together")
    return args


def load(args):
    """``(model, inputs, decode)``: the model, the prompt's unpruned inputs, and how to show generated ids."""
    if args.model is None:
        model = tiny_llava(attention=args.attn_implementation)
        ids = torch.tensor([[1, 5, 6] + [TINY_IMAGE_TOKEN] * image_token_count(model) + [7, 8]])
        pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels)
        return model, inputs, lambda new: str(new.tolist())
    import transformers
    from PIL import Image

    processor = transformers.AutoProcessor.from_pretrained(args.model)
    model = transformers.LlavaForConditionalGeneration.from_pretrained(
        args.model, attn_implementation=args.attn_implementation).eval()
    inputs = dict(processor(images=Image.open(args.image).convert("RGB"), text=args.prompt, return_tensors="pt"))
    return model, inputs, lambda new: repr(processor.decode(new, skip_special_tokens=True))


@torch.no_grad()
def measure(model, inputs: dict, decode, max_new_tokens: int) -> dict:
    generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return {
        "image tokens to the LM": image_token_count(model),
        "prompt tokens": inputs["input_ids"].shape[1],
        "prefill GMACs": f"{prefill_gmacs(model, **inputs):.6g}",
        "generated": decode(generated[0, inputs["input_ids"].shape[1]:]),
    }


def main() -> None:
    args = parse()
    model, inputs, decode = load(args)
    model.to(args.device)
    inputs = {name: value.to(args.device) for name, value in inputs.items()}
    schedule = dict(SCHEDULES["tiny" if args.model is None else "real"])
    if args.layers is not None:
        schedule = dict(layers=args.layers, ratio=args.ratio, num=args.num)
    elif args.ratio is not None or args.num is not None:
        schedule.update(ratio=args.ratio, num=args.num)
    rows = {"unpruned": measure(model, inputs, decode, args.max_new_tokens)}
    repshift.patch(model, metric=args.metric, site=args.site, **schedule)
    inputs["input_ids"], inputs["attention_mask"] = fit_image_placeholders(model, inputs["input_ids"],
                                                                           inputs.get("attention_mask"))
    label = f"pruned {args.metric}/{args.site} layers {schedule['layers']} " + (
        f"ratio {schedule['ratio']}" if schedule.get("ratio") is not None else f"num {schedule['num']}")
    rows[label] = measure(model, inputs, decode, args.max_new_tokens)

    tower, config = model.model.vision_tower, model.config
    title = "tiny random LLaVA (random weights: counts and MACs only, no accuracy)" if args.model is None else args.model
    print(title + f"; tower {type(tower).__name__}, vision_feature_layer={config.vision_feature_layer}, "
          f"vision_feature_select_strategy={config.vision_feature_select_strategy!r}, "
          f"attention {model.repshift.attention}")
    columns = list(next(iter(rows.values())))
    width = max(map(len, rows))
    print(" " * width + "  " + "  ".join(f"{c:>22}" for c in columns[:-1]) + "  " + columns[-1])
    for name, row in rows.items():
        print(f"{name:<{width}}  " + "  ".join(f"{row[c]!s:>22}" for c in columns[:-1]) + "  " + row[columns[-1]])
    print(f"tokens entering each tower layer (pruned): {model.repshift.tokens}")


if __name__ == "__main__":
    main()
