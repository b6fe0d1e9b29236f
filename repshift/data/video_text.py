"""Video-text retrieval test sets in UMT's annotation formats, and a Dataset that decodes their videos.

An annotation file is a non-empty JSON list of entries ``{"video": ..., "caption": ...}`` (extra keys are ignored);
a ``video`` is a path relative to the video folder that stays inside it (:func:`video_name_problem`):

* one entry per video, ``caption`` a string (MSRVTT 1k-A, LSMDC) or a list of strings (MSVD: several captions,
  each its own text);
* ``is_paragraph=True`` (ActivityNet, DiDeMo): the caption list is joined with spaces into one paragraph, one
  text per video;
* ``has_multi_vision_gt=True`` (SSV2-label, SSV2-template): one entry per *text*; ``video`` is a file or a list
  of files, all ground truth for that text. A video listed under several texts is kept once (UMT would add a
  copy per listing; the copies would be identical features, so only tie order could differ).

Every text is cleaned the way UMT does before tokenising (:func:`pre_text`). The index maps
``txt2vid[t]`` (an int, or a list of ints with several ground-truth videos) and ``vid2txt[v]`` (always a list)
are what :func:`repshift.evaluate.retrieval.retrieval_metrics` takes.

:class:`VideoTextRetrievalDataset` is a Dataset over the *videos* (decoded in DataLoader workers); its texts are
plain attributes. ``ds[i]`` is ``(clip, i)``; a missing or undecodable video raises
:class:`~repshift.data.video.CorruptVideoError` naming it, or with ``skip_corrupt=True`` yields
``(zeros, SKIPPED_INDEX)`` so the evaluator leaves it out and counts it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

import torch

import repshift.distributed as distributed
from repshift.data.build import check_limit
from repshift.data.video import ClipLoader, CorruptVideoError

__all__ = [
    "SKIPPED_INDEX",
    "AnnotationError",
    "RetrievalIndex",
    "VideoTextRetrievalDataset",
    "build_retrieval_index",
    "load_annotations",
    "pre_text",
    "video_name_problem",
    "build",
]

#: What ``VideoTextRetrievalDataset[i]`` returns as index for a video skipped with ``skip_corrupt=True``.
SKIPPED_INDEX = -1

_DROP = re.compile(r"[,.'!?\"()*#:;~]")
_TO_SPACE = re.compile(r"[-/]")
_SPACES = re.compile(r"\s{2,}")


def pre_text(text: str) -> str:
    """UMT's caption cleaning: lower-case; drop ``, . ' ! ? " ( ) * # : ; ~``; ``-`` and ``/`` to spaces;
    ``<person>`` to ``person``; collapse whitespace; strip. Square brackets (SSV2 ``[something]``) are kept."""
    text = _DROP.sub("", text.lower())
    text = _TO_SPACE.sub(" ", text).replace("<person>", "person")
    return _SPACES.sub(" ", text).strip()


class AnnotationError(ValueError):
    """An annotation file is missing, is not JSON, or does not have UMT's schema; the message names the file."""


def load_annotations(path: str | os.PathLike) -> list[dict]:
    """Parse and validate a UMT retrieval annotation file (a JSON list of ``{"video", "caption"}`` entries)."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(
            f"Annotation file not found: {path}. UMT's retrieval JSONs (VINDLU's) are shared by the UMT authors "
            "(see UMT's DATASET.md); set dataset.root=<folder> or the dataset.anno_files.<split> path."
        )
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnotationError(f"Annotation file {path} is not valid JSON: {e}") from e
    if not isinstance(entries, list):
        raise AnnotationError(f"Annotation file {path}: expected a JSON list of entries, got {type(entries).__name__}")
    if not entries:
        raise AnnotationError(f"Annotation file {path} is an empty list: it names no video, so there is nothing to "
                              "evaluate")
    for i, entry in enumerate(entries):
        problem = _entry_problem(entry)
        if problem:
            raise AnnotationError(f"Annotation file {path}, entry {i}: {problem} (entry: {str(entry)[:200]})")
    return entries


def _is_str_or_str_list(value) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value))


def video_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a video of the set, or None: a video is a non-empty path relative to the video folder
    that stays inside it (no absolute path, no ``..`` out of it)."""
    if not name:
        return "'video' is an empty string"
    if os.path.isabs(name) or PureWindowsPath(name).drive:
        return f"video {name!r} is an absolute path; videos are named relative to dataset.video_dir"
    parts = Path(os.path.normpath(name)).parts
    if not parts or parts[0] in ("..", "."):
        return f"video {name!r} leaves the video folder (dataset.video_dir)"
    return None


def _entry_problem(entry) -> str | None:
    if not isinstance(entry, dict):
        return f"expected an object with 'video' and 'caption', got {type(entry).__name__}"
    for key in ("video", "caption"):
        if key not in entry:
            return f"no {key!r} key"
        if not _is_str_or_str_list(entry[key]):
            return f"{key!r} must be a string or a non-empty list of strings"
    for name in [entry["video"]] if isinstance(entry["video"], str) else entry["video"]:
        problem = video_name_problem(name)
        if problem:
            return problem
    return None


@dataclass
class RetrievalIndex:
    """Videos (file names relative to the video folder), cleaned texts, and the ground-truth maps."""

    videos: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    txt2vid: list = field(default_factory=list)  # int per text, or list[int] with several ground-truth videos
    vid2txt: list[list[int]] = field(default_factory=list)


def build_retrieval_index(
    entries: list[dict], is_paragraph: bool = False, has_multi_vision_gt: bool = False
) -> RetrievalIndex:
    """Texts, videos and ground truth from parsed annotation entries, under the dataset's flags."""
    if is_paragraph and has_multi_vision_gt:
        raise ValueError("is_paragraph and has_multi_vision_gt exclude each other (no UMT dataset sets both)")
    index = RetrievalIndex()
    if has_multi_vision_gt:
        video_ids: dict[str, int] = {}
        for entry in entries:
            t = len(index.texts)
            captions = entry["caption"] if isinstance(entry["caption"], list) else [entry["caption"]]
            if len(captions) != 1:
                raise AnnotationError(f"multi-video-ground-truth entries have one caption each, got {captions!r}")
            index.texts.append(pre_text(captions[0]))
            gts: list[int] = []
            for video in [entry["video"]] if isinstance(entry["video"], str) else entry["video"]:
                if video not in video_ids:
                    video_ids[video] = len(index.videos)
                    index.videos.append(video)
                    index.vid2txt.append([])
                v = video_ids[video]
                if v not in gts:
                    gts.append(v)
                    index.vid2txt[v].append(t)
            index.txt2vid.append(gts)
        return index
    for entry in entries:
        if not isinstance(entry["video"], str):
            raise AnnotationError(
                f"entry has a list of videos {entry['video'][:3]!r}...: only SSV2-style sets "
                "(dataset.has_multi_vision_gt=true) have several videos per entry"
            )
        v = len(index.videos)
        index.videos.append(entry["video"])
        captions = [entry["caption"]] if isinstance(entry["caption"], str) else list(entry["caption"])
        if is_paragraph:
            captions = [" ".join(captions)]
        index.vid2txt.append([])
        for caption in captions:
            index.vid2txt[v].append(len(index.texts))
            index.texts.append(pre_text(caption))
            index.txt2vid.append(v)
    return index


class ClipDataset(torch.utils.data.Dataset):
    """One clip per item: ``ds[i] -> (clip, i)``, ``self.videos[i]`` decoded by ``self.clip_loader``.

    With ``skip_corrupt`` a missing or undecodable video gives ``(blank clip, SKIPPED_INDEX)``, which the
    evaluators leave out and count. Subclasses set ``videos``, ``clip_loader`` and ``skip_corrupt``.
    """

    videos: list[str]
    clip_loader: ClipLoader
    skip_corrupt: bool

    @staticmethod
    def prepare(cfg, split: str | None) -> str:
        """The split a ``from_config`` reads (``cfg.split`` by default), after writing the synthetic clips and
        annotations a config with ``generate`` asks for (SMOKE; rank 0 under torchrun, the others wait)."""
        if cfg.get("generate"):
            from repshift.data import synthetic_video

            if distributed.is_main():
                synthetic_video.ensure(cfg.root, **cfg.generate)
            distributed.barrier()
        split = split or cfg.split
        if split not in cfg.anno_files:
            raise KeyError(f"dataset {cfg.name} has no annotation file for split {split!r} "
                           f"(dataset.anno_files has: {', '.join(cfg.anno_files)})")
        return split

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            return self.clip_loader(self.videos[index]), index
        except CorruptVideoError:
            if not self.skip_corrupt:
                raise
            return self.clip_loader.blank(), SKIPPED_INDEX


class VideoTextRetrievalDataset(ClipDataset):
    """The videos of a retrieval test set; ``ds[i] -> (clip float [T, 3, S, S], i)``.

    Args:
        anno_path: the UMT annotation JSON.
        video_dir: folder the entries' ``video`` names are relative to.
        clip_loader: how a clip is decoded (frames, size, sampling, trimmed30, reader).
        is_paragraph, has_multi_vision_gt: the dataset's flags (see the module docstring).
        max_txt_len: tokenizer length for this dataset's texts (UMT's ``max_txt_l``).
        skip_corrupt: yield ``(zeros, SKIPPED_INDEX)`` for a missing/undecodable video instead of raising.
        limit: keep only the first ``limit`` annotation entries (quick checks).

    Attributes: ``videos`` (absolute paths), ``texts``, ``txt2vid``, ``vid2txt``, ``max_txt_len``.
    """

    def __init__(
        self,
        anno_path: str | os.PathLike,
        video_dir: str | os.PathLike,
        clip_loader: ClipLoader | None = None,
        *,
        is_paragraph: bool = False,
        has_multi_vision_gt: bool = False,
        max_txt_len: int = 32,
        skip_corrupt: bool = False,
        limit: int | None = None,
    ):
        self.anno_path = Path(anno_path)
        self.video_dir = Path(video_dir)
        self.clip_loader = clip_loader or ClipLoader()
        self.max_txt_len = int(max_txt_len)
        self.skip_corrupt = bool(skip_corrupt)
        entries = load_annotations(self.anno_path)
        limit = check_limit(limit)
        if limit:
            entries = entries[:limit]
        index = build_retrieval_index(entries, is_paragraph, has_multi_vision_gt)
        self.videos = [str(self.video_dir / v) for v in index.videos]
        self.texts, self.txt2vid, self.vid2txt = index.texts, index.txt2vid, index.vid2txt

    @classmethod
    def from_config(cls, cfg, split: str | None = None) -> "VideoTextRetrievalDataset":
        """Build from a ``dataset`` config node (repshift/configs/dataset/<name>.yaml); ``split`` defaults to ``cfg.split``.

        A config with ``generate`` set (synthetic_video) writes its clips under ``cfg.root`` first (rank 0 under
        torchrun; the other ranks wait for it).
        """
        split = cls.prepare(cfg, split)
        loader = ClipLoader(
            num_frames=cfg.num_frames,
            img_size=cfg.img_size,
            sampling=cfg.sampling,
            trimmed30=cfg.trimmed30,
            reader=cfg.video_reader,
            antialias=cfg.antialias,
        )
        return cls(
            cfg.anno_files[split],
            cfg.video_dir,
            loader,
            is_paragraph=cfg.is_paragraph,
            has_multi_vision_gt=cfg.has_multi_vision_gt,
            max_txt_len=cfg.max_txt_len,
            skip_corrupt=cfg.skip_corrupt,
            limit=cfg.get("limit"),
        )

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(anno={str(self.anno_path)!r}, videos={len(self.videos)}, "
                f"texts={len(self.texts)}, skip_corrupt={self.skip_corrupt})")


def build(cfg, split: str, training: bool = False) -> VideoTextRetrievalDataset:
    """A retrieval test set from its ``dataset`` config node (``_target_: repshift.data.video_text.build``)."""
    if training:
        raise ValueError(f"dataset {cfg.name} is a video-text retrieval test set: it has no training split here")
    return VideoTextRetrievalDataset.from_config(cfg, split)
