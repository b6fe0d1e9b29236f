"""ShapeBench generation: a synthetic 8-class shape benchmark with ground-truth foreground masks.

This module draws and writes the folder; :mod:`repshift.data.shapebench` reads it (``ShapeBenchDataset``).

Every image is ``img_size`` x ``img_size`` RGB (224 by default) and shows one or two instances of its class's
shape on a cluttered background, and comes with a per-pixel mask of those instances. The point is a benchmark
where we *know* which patches hold the object, so token-importance scores (representation shift, attention)
can be checked against ground truth, and where a tiny ViT can be trained in minutes.

Design (what makes the task about the object and nothing else):

* Classes: ``circle, crescent, cross, diamond, ring, square, star, triangle`` (sorted order = label order).
  Shapes differ in outline/topology at the 16-pixel patch scale: the ring has a hole, the crescent a bite,
  the diamond is a rhombus with a 0.55 diagonal ratio (a square is never that elongated, even rotated).
* Size: an instance's *area* equals that of a disc of diameter ``d`` with ``d`` ~ U(50, 105) px for a single
  instance and U(48, 78) px for each of a pair (scaled by ``img_size / 224``). Equal-area sizing means the
  mask area does not give the class away. Rotation is uniform where it means anything.
* Colour: each instance gets a uniformly random RGB colour (redrawn until it contrasts with the background under
  it) with a gentle random linear shading. The colour distribution is the same for every class.
* Background: a smooth random colour field (bicubic upsampling of a 2x2..4x4 random colour grid) plus
  mid-frequency luminance texture, distractor strokes (random lines, partial arcs, short scribbles, small
  blobs no bigger than a patch) in random colours, and Gaussian pixel noise (sigma 4) added last.
* Anti-aliasing: everything is drawn at 2x and box-downsampled; the mask is drawn at 2x with the same
  coordinates, box-downsampled and thresholded at 50% coverage, so image edges and mask edges agree.
* Determinism: image ``i`` of class ``c`` in split ``s`` is drawn from ``numpy.random.default_rng(
  SeedSequence([seed, split_code, c, i]))``, so files are byte-identical for a seed whatever the worker count,
  and growing ``n_*_per_class`` keeps the existing images.

Layout under ``root`` (the contract in docs/architecture.md)::

    train/<class>/<class>_<i:05d>.png          val/<class>/<class>_<i:05d>.png
    masks/<split>/<class>/<stem>.png           (uint8 0/255, same stem as the image)
    classes.txt                                (one class per line, label order)
    labels.csv                                 (split,path,label,class_name,mask_path; paths relative to root)
    .complete                                  (JSON of the generation parameters, written last)

CLI (also reachable as ``python -m repshift.data.shapebench_generate``)::

    python -m repshift.data.shapebench --root data/shapebench --train-per-class 500 --val-per-class 100 --seed 0
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import json
import math
import multiprocessing as mp
import os
import shutil
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from repshift.io import atomic_open

__all__ = [
    "CLASSES",
    "SPLITS",
    "FORMAT_VERSION",
    "render",
    "generate",
    "ensure",
    "is_complete",
    "main",
]

#: Class names; their order here (sorted) is the label order.
CLASSES: tuple[str, ...] = ("circle", "crescent", "cross", "diamond", "ring", "square", "star", "triangle")
SPLITS: tuple[str, ...] = ("train", "val")
#: Bump when rendering changes, so ``ensure`` regenerates stale folders.
FORMAT_VERSION = 2

_SPLIT_CODE = {"train": 0, "val": 1}
_SS = 2  # supersampling factor for anti-aliasing
_MARGIN = 12  # px kept free at the border (at 224), so small random crops rarely cut a shape
_SINGLE_D = (80.0, 130.0)  # equal-area diameter range, one instance
_PAIR_D = (64.0, 84.0)  # equal-area diameter range, each of two instances
_P_PAIR = 0.2
_NOISE_SIGMA = 4.0
_MIN_CONTRAST = 100.0  # RGB distance between instance colour and the mean background beneath it

# shape constants (unit circumradius)
_RING_INNER = 0.6
_CRESCENT_CUT = (0.8, 0.5)  # radius of the disc cut away, and its centre offset
_STAR_INNER = 0.5
_CROSS_HALF_WIDTH = 0.3
_DIAMOND_MINOR = 0.55


# --------------------------------------------------------------------------- geometry
def _unit_polygon(kind: str) -> np.ndarray | None:
    """Vertices (K, 2) of a polygonal shape with circumradius 1 centred at 0, or None for round shapes."""
    if kind == "square":
        a = np.deg2rad(45 + 90 * np.arange(4))
        return np.stack([np.cos(a), np.sin(a)], 1)
    if kind == "diamond":
        return np.array([[1.0, 0.0], [0.0, _DIAMOND_MINOR], [-1.0, 0.0], [0.0, -_DIAMOND_MINOR]])
    if kind == "triangle":
        a = np.deg2rad(90 + 120 * np.arange(3))
        return np.stack([np.cos(a), np.sin(a)], 1)
    if kind == "star":
        a = np.deg2rad(90 + 36 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.0, _STAR_INNER)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    if kind == "cross":
        L, w = 1.0, _CROSS_HALF_WIDTH
        pts = np.array(
            [[w, L], [w, w], [L, w], [L, -w], [w, -w], [w, -L], [-w, -L], [-w, -w], [-L, -w], [-L, w], [-w, w], [-w, L]]
        )
        return pts / math.hypot(L, w)
    return None


def _lens_area(a: float, b: float, d: float) -> float:
    """Area of the intersection of discs of radii a, b whose centres are d apart (0 < |a-b| < d < a+b)."""
    t1 = a * a * math.acos((d * d + a * a - b * b) / (2 * d * a))
    t2 = b * b * math.acos((d * d + b * b - a * a) / (2 * d * b))
    t3 = 0.5 * math.sqrt((-d + a + b) * (d + a - b) * (d - a + b) * (d + a + b))
    return t1 + t2 - t3


@lru_cache(maxsize=None)
def _unit_area(kind: str) -> float:
    poly = _unit_polygon(kind)
    if poly is not None:
        x, y = poly[:, 0], poly[:, 1]
        return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    if kind == "circle":
        return math.pi
    if kind == "ring":
        return math.pi * (1 - _RING_INNER**2)
    if kind == "crescent":
        return math.pi - _lens_area(1.0, *_CRESCENT_CUT)
    raise ValueError(f"unknown ShapeBench shape {kind!r}")


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, R: float, angle: float) -> None:
    """Draw one instance (fill 255, cut-outs 0) into an L-mode mask canvas."""
    poly = _unit_polygon(kind)
    if poly is not None:
        c, s = math.cos(angle), math.sin(angle)
        pts = [(cx + R * (c * x - s * y), cy + R * (s * x + c * y)) for x, y in poly]
        draw.polygon(pts, fill=255)
        return
    draw.ellipse([cx - R, cy - R, cx + R, cy + R], fill=255)
    if kind == "ring":
        r = R * _RING_INNER
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=0)
    elif kind == "crescent":
        r, off = R * _CRESCENT_CUT[0], R * _CRESCENT_CUT[1]
        ox, oy = cx + off * math.cos(angle), cy + off * math.sin(angle)
        draw.ellipse([ox - r, oy - r, ox + r, oy + r], fill=0)


# --------------------------------------------------------------------------- rendering
def _rng(seed: int, split: str, class_idx: int, index: int) -> np.random.Generator:
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_CODE[split], int(class_idx), int(index)]))


def _field(rng: np.random.Generator, grid: int, size: int, low: float, high: float) -> np.ndarray:
    """A smooth random field (size, size): a grid x grid uniform random array upsampled bicubically."""
    small = rng.uniform(low, high, (grid, grid)).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((size, size), Image.BICUBIC))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour field + mid-frequency luminance texture, uint8 (size, size, 3)."""
    grid = int(rng.integers(2, 5))
    # Luminance only: a strongly coloured background kept a from-scratch ViT at chance for
    # hundreds of steps; shapes and strokes carry the colour, which is random per instance.
    colour = np.repeat(_field(rng, grid, size, 40.0, 215.0)[..., None], 3, axis=-1)
    amp = float(rng.uniform(8, 20))
    texture = _field(rng, int(rng.integers(8, 17)), size, -amp, amp)
    return np.clip(colour + texture[..., None], 0, 255).astype(np.uint8)


def _rand_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _distractors(rng: np.random.Generator, draw: ImageDraw.ImageDraw, S: int, f: float) -> None:
    """Random strokes that are not class shapes, drawn on the (supersampled) canvas; f = pixels per 224-px unit."""
    for _ in range(int(rng.integers(1, 4))):  # straight lines
        p = rng.uniform(-0.1 * S, 1.1 * S, 4)
        draw.line([tuple(p[:2]), tuple(p[2:])], fill=_rand_colour(rng), width=max(1, int(rng.uniform(2, 5) * f)))
    for _ in range(int(rng.integers(0, 3))):  # partial arcs (never closed, so never a ring)
        c = rng.uniform(0, S, 2)
        r = rng.uniform(15, 60) * f
        start = float(rng.uniform(0, 360))
        span = float(rng.uniform(40, 220))
        draw.arc([c[0] - r, c[1] - r, c[0] + r, c[1] + r], start, start + span,
                 fill=_rand_colour(rng), width=max(1, int(rng.uniform(2, 5) * f)))
    for _ in range(int(rng.integers(0, 2))):  # scribbles: short random-walk polylines
        n = int(rng.integers(3, 7))
        steps = rng.uniform(10, 40, n - 1) * f
        angles = np.cumsum(rng.uniform(-1.5, 1.5, n - 1)) + rng.uniform(0, 2 * np.pi)
        pts = np.zeros((n, 2))
        pts[0] = rng.uniform(0, S, 2)
        pts[1:] = pts[0] + np.cumsum(np.stack([steps * np.cos(angles), steps * np.sin(angles)], 1), 0)
        draw.line([tuple(q) for q in pts], fill=_rand_colour(rng), width=max(1, int(rng.uniform(2, 4) * f)),
                  joint="curve")
    for _ in range(int(rng.integers(1, 5))):  # small blobs, at most about one patch across
        c = rng.uniform(0, S, 2)
        rx, ry = rng.uniform(3, 9, 2) * f
        draw.ellipse([c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry], fill=_rand_colour(rng))


def _place(rng: np.random.Generator, kind: str, S: int, f: float) -> list[tuple[float, float, float, float]]:
    """Instances as (cx, cy, R, angle) in supersampled pixels; one or two non-overlapping instances."""
    unit = _unit_area(kind)
    margin = _MARGIN * f

    def radius(d: float) -> float:
        return math.sqrt(math.pi * (d * f / 2) ** 2 / unit)

    def centre(R: float) -> np.ndarray:
        lo, hi = margin + R, S - margin - R
        return rng.uniform(lo, hi, 2) if hi > lo else np.array([S / 2, S / 2])

    if rng.random() < _P_PAIR:
        gap = 6 * f
        for _ in range(60):
            R1, R2 = radius(rng.uniform(*_PAIR_D)), radius(rng.uniform(*_PAIR_D))
            a1, a2 = rng.uniform(0, 2 * np.pi, 2)
            c1, c2 = centre(R1), centre(R2)
            if np.hypot(*(c1 - c2)) >= R1 + R2 + gap or _disjoint(kind, (c1, R1, a1), (c2, R2, a2), S, gap):
                return [(c1[0], c1[1], R1, a1), (c2[0], c2[1], R2, a2)]
    R = radius(rng.uniform(*_SINGLE_D))
    c = centre(R)
    return [(c[0], c[1], R, float(rng.uniform(0, 2 * np.pi)))]


def _disjoint(kind: str, i1, i2, S: int, gap: float) -> bool:
    """Exact test at quarter resolution: instance 2 grown by `gap` does not touch instance 1."""
    q = 4
    m1, m2 = Image.new("L", (S // q, S // q)), Image.new("L", (S // q, S // q))
    (c1, R1, a1), (c2, R2, a2) = i1, i2
    _draw_shape(ImageDraw.Draw(m1), kind, c1[0] / q, c1[1] / q, R1 / q, a1)
    _draw_shape(ImageDraw.Draw(m2), kind, c2[0] / q, c2[1] / q, (R2 + gap) / q, a2)
    return not np.any(np.asarray(m1) & np.asarray(m2))


def render(seed: int, split: str, class_idx: int, index: int, img_size: int = 224) -> tuple[Image.Image, Image.Image]:
    """Render one ShapeBench sample: ``(RGB image, L-mode mask with values 0/255)``, both ``img_size`` square.

    Pure function of its arguments (the RNG is derived from ``(seed, split, class_idx, index)``).
    """
    kind = CLASSES[class_idx]
    rng = _rng(seed, split, class_idx, index)
    S = img_size * _SS
    f = img_size / 224 * _SS  # supersampled pixels per pixel of a 224 image

    # the background is smooth, so it is made at 1x and upsampled; strokes and shapes are drawn at 2x
    canvas = Image.fromarray(_background(rng, img_size), "RGB").resize((S, S), Image.BILINEAR)
    _distractors(rng, ImageDraw.Draw(canvas), S, f)

    union = Image.new("L", (S, S), 0)
    for cx, cy, R, angle in _place(rng, kind, S, f):
        inst = Image.new("L", (S, S), 0)
        _draw_shape(ImageDraw.Draw(inst), kind, cx, cy, R, angle)
        # colour: uniformly random, redrawn until it stands out from the background beneath the instance
        x0, x1 = int(max(0, cx - R)), int(min(S, cx + R + 1))
        y0, y1 = int(max(0, cy - R)), int(min(S, cy + R + 1))
        box = (x0, y0, x1, y1)
        under = np.asarray(canvas.crop(box), dtype=np.float32).reshape(-1, 3).mean(0)
        best, best_dist = None, -1.0
        for _ in range(30):
            col = rng.integers(0, 256, 3).astype(np.float32)
            dist = float(np.linalg.norm(col - under))
            if dist > best_dist:
                best, best_dist = col, dist
            if dist >= _MIN_CONTRAST:
                break
        # gentle linear shading across the instance
        theta = rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(0, 30)
        sub_x = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
        sub_y = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
        ramp = (sub_x * math.cos(theta) + sub_y * math.sin(theta)) / R
        fill = np.clip(best[None, None, :] + amp * ramp[..., None], 0, 255).astype(np.uint8)
        canvas.paste(Image.fromarray(fill, "RGB"), box, inst.crop(box))
        union.paste(255, box, inst.crop(box))

    img = np.asarray(canvas.reduce(_SS), dtype=np.float32)
    img += _NOISE_SIGMA * rng.standard_normal(img.shape, dtype=np.float32)
    image = Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8), "RGB")
    mask = Image.fromarray(np.where(np.asarray(union.reduce(_SS)) >= 128, 255, 0).astype(np.uint8), "L")
    return image, mask


# --------------------------------------------------------------------------- writing a folder
def _params(n_train_per_class: int, n_val_per_class: int, seed: int, img_size: int) -> dict[str, Any]:
    return {
        "generator": "repshift.data.shapebench",
        "format_version": FORMAT_VERSION,
        "seed": int(seed),
        "n_train_per_class": int(n_train_per_class),
        "n_val_per_class": int(n_val_per_class),
        "img_size": int(img_size),
        "classes": list(CLASSES),
    }


def _stem(class_idx: int, index: int) -> str:
    return f"{CLASSES[class_idx]}_{index:05d}"


def _write_one(job: tuple[str, str, int, int, int, int]) -> tuple[str, str, int, str, str]:
    root, split, class_idx, index, seed, img_size = job
    image, mask = render(seed, split, class_idx, index, img_size)
    cls, stem = CLASSES[class_idx], _stem(class_idx, index)
    rel_img = f"{split}/{cls}/{stem}.png"
    rel_mask = f"masks/{split}/{cls}/{stem}.png"
    image.save(os.path.join(root, rel_img), format="PNG", compress_level=1)
    mask.save(os.path.join(root, rel_mask), format="PNG", compress_level=6)
    return split, rel_img, class_idx, cls, rel_mask


def _clear(root: Path) -> None:
    """Remove what a previous generation wrote (only ShapeBench's own names; the root itself is kept)."""
    (root / ".complete").unlink(missing_ok=True)
    for name in ("train", "val", "masks"):
        shutil.rmtree(root / name, ignore_errors=True)
    for name in ("labels.csv", "classes.txt"):
        (root / name).unlink(missing_ok=True)


def generate(
    root: str | os.PathLike,
    *,
    n_train_per_class: int = 500,
    n_val_per_class: int = 100,
    seed: int = 0,
    img_size: int = 224,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Write a fresh ShapeBench under ``root`` (clearing a previous one) and return ``root``.

    ``workers``: processes to render with (``None``: up to 8, one per CPU, for more than 200 images; ``0``: in
    this process). The output does not depend on it. ``.complete`` is written last.
    """
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if int(n_train_per_class) < 0 or int(n_val_per_class) < 0:
        raise ValueError("n_train_per_class and n_val_per_class must be >= 0")
    if int(img_size) < 32:
        raise ValueError(f"img_size must be >= 32, got {img_size}")
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    _clear(root)
    params = _params(n_train_per_class, n_val_per_class, seed, img_size)
    counts = {"train": int(n_train_per_class), "val": int(n_val_per_class)}
    for split in SPLITS:
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            (root / "masks" / split / cls).mkdir(parents=True, exist_ok=True)
    jobs = [
        (str(root), split, c, i, int(seed), int(img_size))
        for split in SPLITS
        for c in range(len(CLASSES))
        for i in range(counts[split])
    ]
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if len(jobs) > 200 else 0

    bar = tqdm(total=len(jobs), desc="ShapeBench", unit="img", disable=not progress, dynamic_ncols=True)
    rows = []
    try:
        if workers and workers > 1:
            chunk = max(1, min(64, len(jobs) // (workers * 8)))
            with mp.get_context().Pool(workers) as pool:
                for row in pool.imap(_write_one, jobs, chunksize=chunk):
                    rows.append(row)
                    bar.update(1)
        else:
            for job in jobs:
                rows.append(_write_one(job))
                bar.update(1)
    finally:
        bar.close()

    (root / "classes.txt").write_text("".join(c + "\n" for c in CLASSES))
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["split", "path", "label", "class_name", "mask_path"])
        for split, rel_img, label, cls, rel_mask in rows:
            w.writerow([split, rel_img, label, cls, rel_mask])
    params["n_images"] = len(rows)
    with atomic_open(root / ".complete", "w") as fh:
        fh.write(json.dumps(params, indent=2, sort_keys=True) + "\n")
    return root


def is_complete(root: str | os.PathLike, **params: Any) -> bool:
    """True when ``root`` holds a finished ShapeBench made with exactly these parameters and no file is missing."""
    root = Path(root).expanduser()
    want = _params(
        params.get("n_train_per_class", 500), params.get("n_val_per_class", 100),
        params.get("seed", 0), params.get("img_size", 224),
    )
    try:
        have = json.loads((root / ".complete").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(have, dict) or any(have.get(k) != v for k, v in want.items()):
        return False
    try:
        with open(root / "labels.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return False
    if len(rows) != have.get("n_images"):
        return False
    return all((root / r["path"]).is_file() and (root / r["mask_path"]).is_file() for r in rows)


def ensure(
    root: str | os.PathLike,
    *,
    n_train_per_class: int = 500,
    n_val_per_class: int = 100,
    seed: int = 0,
    img_size: int = 224,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Return ``root``, generating ShapeBench there first unless a complete one with these parameters exists.

    Runs of one sweep (a SLURM array, submitit_local) may start together on the same folder: a lock
    file beside it lets one of them generate while the others wait, then find it complete.
    """
    params = dict(n_train_per_class=n_train_per_class, n_val_per_class=n_val_per_class, seed=seed, img_size=img_size)
    root = Path(root).expanduser()
    if is_complete(root, **params):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete(root, **params):
            return root
        return generate(root, progress=progress, workers=workers, **params)


# --------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m repshift.data.shapebench",
        description="Generate ShapeBench (synthetic shapes with ground-truth masks) in ImageNet layout.",
    )
    p.add_argument("--root", default="data/shapebench", help="output folder (default: data/shapebench)")
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--val-per-class", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--workers", type=int, default=None, help="render processes (default: one per CPU, max 8)")
    p.add_argument("--force", action="store_true", help="regenerate even if a complete copy exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    params = dict(n_train_per_class=a.train_per_class, n_val_per_class=a.val_per_class, seed=a.seed,
                  img_size=a.img_size)
    root = Path(a.root).expanduser().resolve()
    n = len(CLASSES) * (a.train_per_class + a.val_per_class)
    if not a.force and is_complete(root, **params):
        print(f"ShapeBench already complete at {root} ({n} images, seed {a.seed}); nothing to do (--force redoes it).")
        return 0
    t0 = time.perf_counter()
    generate(root, progress=not a.quiet, workers=a.workers, **params)
    dt = time.perf_counter() - t0
    print(f"ShapeBench: wrote {n} images + {n} masks ({len(CLASSES)} classes, seed {a.seed}) to {root} in {dt:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
