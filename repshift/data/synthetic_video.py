"""Synthetic video-text retrieval data: small mp4 clips of a moving coloured shape, captioned by what they show.

Clip ``i`` shows one shape (circle, square, triangle) of one colour (red, green, blue, yellow) crossing a dark
background in one direction (left, right, up, down); attributes come from a seeded permutation of the 48
combinations, so a handful of clips are all different. Captions name the colour, shape and direction, so a model
that reads pixels can in principle retrieve them; numbers measured on this data check the pipeline, not the paper.

:func:`generate` writes, under ``root``::

    videos/clip_000.mp4 ...                 MPEG-4 Part 2 in mp4 (encoded with PyAV; every FFmpeg decodes it)
    annotations/<UMT's file names>          one file per UMT annotation format, same schema as the real ones
    synthetic_video.json                    the generation spec (``ensure`` regenerates when it changes)

The annotation files carry the real datasets' file names (``msrvtt_ret_test1k.json``, ``msvd_ret_test.json``,
``anet_ret_val.json``, ``didemo_ret_{val,test}.json``, ``lsmdc_ret_test_1000.json``,
``ssv2_ret_{label,template}_val_small.json``), so every real dataset config runs on this folder with
``dataset.root=<root>``. Schemas: a list of ``{"video": file, "caption": str}`` (MSRVTT, LSMDC), of
``{"video": file, "caption": [str, ...]}`` (MSVD: several captions per video; ActivityNet, DiDeMo: the sentences
of a paragraph), and of ``{"video": [file, ...], "caption": str}`` (SSV2 label and template: several ground-truth
videos per text).

Video QA files (UMT's MSRVTT-QA and MSVD-QA names, ``msrvtt_qa_test.json`` + ``msrvtt_qa_answer_list.json``,
``msvd_qa_test.json`` + ``msvd_qa_answer_list.json``): three questions per clip (its colour, its shape, its
direction), each a ``{"video", "question", "answer", "question_id"}`` entry (int ids for MSRVTT-QA, string ids for
MSVD-QA, so both id types are exercised), and the answer list of every colour, shape and direction.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from repshift.io import atomic_open

__all__ = ["COLOURS", "SHAPES", "DIRECTIONS", "ANNOTATION_FILES", "QA_FILES", "clip_attributes", "render_clip",
           "write_mp4", "qa_annotations", "generate", "ensure"]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 210, 40),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
BACKGROUND = (30, 30, 30)

#: UMT annotation file names (relative to ``<root>/annotations``) written for each format.
ANNOTATION_FILES: dict[str, tuple[str, ...]] = {
    "msrvtt": ("msrvtt_ret_test1k.json",),
    "msvd": ("msvd_ret_test.json",),
    "anet": ("anet_ret_val.json",),
    "didemo": ("didemo_ret_val.json", "didemo_ret_test.json"),
    "lsmdc": ("lsmdc_ret_test_1000.json",),
    "ssv2_label": ("ssv2_ret_label_val_small.json",),
    "ssv2_template": ("ssv2_ret_template_val_small.json",),
}

#: UMT video QA file names (relative to ``<root>/annotations``): ``format -> (questions, answer list)``.
QA_FILES: dict[str, tuple[str, str]] = {
    "msrvtt_qa": ("msrvtt_qa_test.json", "msrvtt_qa_answer_list.json"),
    "msvd_qa": ("msvd_qa_test.json", "msvd_qa_answer_list.json"),
}

SPEC_FILE = "synthetic_video.json"


def clip_attributes(n_videos: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """``(colour, shape, direction)`` of each clip: the first ``n_videos`` of a seeded permutation of all combos."""
    combos = [(c, s, d) for c in COLOURS for s in SHAPES for d in DIRECTIONS]
    order = np.random.default_rng(seed).permutation(len(combos))
    return [combos[order[i % len(combos)]] for i in range(n_videos)]


def _shape_mask(shape: str, size: int, cx: float, cy: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
    if shape == "square":
        return (np.abs(xx - cx) <= radius) & (np.abs(yy - cy) <= radius)
    if shape == "triangle":  # apex up, base at cy + radius
        inside_height = (yy >= cy - radius) & (yy <= cy + radius)
        half_width = (yy - (cy - radius)) / 2.0
        return inside_height & (np.abs(xx - cx) <= half_width)
    raise ValueError(f"unknown shape {shape!r}; one of {SHAPES}")


def render_clip(colour: str, shape: str, direction: str, num_frames: int = 8, size: int = 64) -> np.ndarray:
    """uint8 ``[num_frames, size, size, 3]``: the shape crosses the frame in ``direction``, one step per frame."""
    radius = size / 6.0
    dx, dy = DIRECTIONS[direction]
    start, end = radius + 1.0, size - radius - 1.0
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        progress = t / max(num_frames - 1, 1)
        along = start + (end - start) * progress
        cx = size / 2.0 if dx == 0 else (along if dx > 0 else size - along)
        cy = size / 2.0 if dy == 0 else (along if dy > 0 else size - along)
        frames[t] = BACKGROUND
        frames[t][_shape_mask(shape, size, cx, cy, radius)] = COLOURS[colour]
    return frames


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int = 8) -> Path:
    """Encode uint8 ``[T, H, W, 3]`` frames (even H, W) into an mp4 at ``path`` with PyAV (MPEG-4 Part 2)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _, height, width, _ = frames.shape
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # muxer picks the format from the suffix
    try:
        with av.open(str(tmp), mode="w") as container:
            stream = container.add_stream("mpeg4", rate=int(fps))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.bit_rate = 4_000_000  # near-lossless at these sizes: decoded frames stay close to the drawn ones
            stream.codec_context.gop_size = 4
            for rgb in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _annotations(videos: list[str], attrs: list[tuple[str, str, str]]) -> dict[str, list[dict]]:
    """Every UMT annotation format for the clips ``videos`` with attributes ``attrs``."""
    one_caption = [{"video": v, "caption": f"a {c} {s} moving {d}"} for v, (c, s, d) in zip(videos, attrs)]
    several = [
        {"video": v, "caption": [f"a {c} {s} moving {d}", f"the {c} {s} goes {d}", f"{s} in {c} slides {d}"]}
        for v, (c, s, d) in zip(videos, attrs)
    ]
    paragraph = [
        {"video": v, "caption": [f"A {c} {s} appears.", f"It moves {d} across the screen.", "Then it stops."]}
        for v, (c, s, d) in zip(videos, attrs)
    ]
    movie = [{"video": v, "caption": f"SOMEONE watches the {c} {s} drift {d}."} for v, (c, s, d) in zip(videos, attrs)]
    by_label: dict[str, list[str]] = {}
    by_template: dict[str, list[str]] = {}
    for v, (_, s, d) in zip(videos, attrs):
        by_label.setdefault(f"Moving {s} {d}", []).append(v)
        by_template.setdefault(f"Moving [something] {d}", []).append(v)
    return {
        "msrvtt": one_caption,
        "msvd": several,
        "anet": paragraph,
        "didemo": paragraph,
        "lsmdc": movie,
        "ssv2_label": [{"video": vs, "caption": text} for text, vs in by_label.items()],
        "ssv2_template": [{"video": vs, "caption": text} for text, vs in by_template.items()],
    }


def qa_annotations(videos: list[str], attrs: list[tuple[str, str, str]]) -> dict[str, tuple[list[dict], list[str]]]:
    """``format -> (questions, answer list)`` for the clips ``videos`` with attributes ``attrs``."""
    answer_list = list(COLOURS) + list(SHAPES) + list(DIRECTIONS)
    out = {}
    for fmt, id_of in (("msrvtt_qa", lambda n: n), ("msvd_qa", lambda n: f"q{n}")):
        questions = []
        for v, (colour, shape, direction) in zip(videos, attrs):
            for question, answer in ((f"What colour is the {shape}?", colour),
                                     (f"Which shape is {colour}?", shape),
                                     (f"Where does the {shape} go?", direction)):
                questions.append({"video": v, "question": question, "answer": answer,
                                  "question_id": id_of(len(questions))})
        out[fmt] = (questions, answer_list)
    return out


def _all_files() -> list[str]:
    return [f for names in ANNOTATION_FILES.values() for f in names] + [f for pair in QA_FILES.values() for f in pair]


def generate(
    root: str | os.PathLike, n_videos: int = 8, num_frames: int = 8, size: int = 64, fps: int = 8, seed: int = 0
) -> dict[str, list[Path]]:
    """Write ``n_videos`` clips and every annotation format under ``root``; returns ``{format: [json paths]}``."""
    if size % 2:
        raise ValueError(f"size must be even (yuv420p), got {size}")
    root = Path(root)
    attrs = clip_attributes(n_videos, seed)
    videos = [f"clip_{i:03d}.mp4" for i in range(n_videos)]
    for name, (colour, shape, direction) in zip(videos, attrs):
        write_mp4(root / "videos" / name, render_clip(colour, shape, direction, num_frames, size), fps)
    written: dict[str, list[Path]] = {}
    for fmt, entries in _annotations(videos, attrs).items():
        for file_name in ANNOTATION_FILES[fmt]:
            path = root / "annotations" / file_name
            with atomic_open(path) as fh:
                json.dump(entries, fh, indent=1)
            written.setdefault(fmt, []).append(path)
    for fmt, contents in qa_annotations(videos, attrs).items():
        for file_name, content in zip(QA_FILES[fmt], contents):
            path = root / "annotations" / file_name
            with atomic_open(path) as fh:
                json.dump(content, fh, indent=1)
            written.setdefault(fmt, []).append(path)
    spec = dict(n_videos=n_videos, num_frames=num_frames, size=size, fps=fps, seed=seed)
    with atomic_open(root / SPEC_FILE) as fh:
        json.dump(spec, fh)
    return written


def ensure(root: str | os.PathLike, **spec) -> Path:
    """Generate under ``root`` unless a finished generation with the same spec and every annotation file is there
    (a folder written before a format was added is completed)."""
    root = Path(root)
    spec_path = root / SPEC_FILE
    wanted = dict(n_videos=8, num_frames=8, size=64, fps=8, seed=0) | {k: int(v) for k, v in spec.items()}
    if spec_path.is_file() and all((root / "annotations" / f).is_file() for f in _all_files()):
        try:
            if json.loads(spec_path.read_text()) == wanted:
                return root
        except json.JSONDecodeError:
            pass
    generate(root, **wanted)
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--n-videos", type=int, default=8)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    generate(args.root, args.n_videos, args.num_frames, args.size, args.fps, args.seed)
    print(f"wrote {args.n_videos} clips and the UMT annotation files under {args.root}")


if __name__ == "__main__":
    main()
