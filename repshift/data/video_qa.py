"""Video question answering test sets in UMT's annotation format (MSRVTT-QA, MSVD-QA), and their Dataset.

Two files per set, as UMT reads them (``dataset/qa_dataset.py``, ``tasks/vqa.py``):

* the questions: a JSON list of ``{"video": file, "question": str, "answer": str, "question_id": int | str}``
  (``msrvtt_qa_test.json``, ``msvd_qa_test.json``); ``video`` is relative to the video folder. The answer is
  the one string a prediction must equal (UMT scores these sets by exact match);
* the answer list: a flat JSON list of answer strings (``msrvtt_qa_answer_list.json``,
  ``msvd_qa_answer_list.json``), the candidates every question is ranked over.

Questions are cleaned the way UMT cleans text before tokenising (:func:`repshift.data.video_text.pre_text`);
answers are used as written.

:class:`VideoQADataset` is a Dataset over the *questions* (each decodes its own clip, as UMT's loader does);
``ds[i]`` is ``(clip, i)``, or with ``skip_corrupt=True`` ``(zeros, SKIPPED_INDEX)`` for a video that is missing
or cannot be decoded (the evaluator leaves it out and counts it).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from repshift.data.build import check_limit
from repshift.data.video import ClipLoader
from repshift.data.video_text import AnnotationError, ClipDataset, pre_text, video_name_problem

__all__ = ["VideoQADataset", "load_qa_annotations", "load_answer_list", "build"]

_QA_KEYS = ("video", "question", "answer", "question_id")


def _read_json(path: Path, what: str):
    if not path.is_file():
        raise AnnotationError(
            f"{what} not found: {path}. UMT's QA JSONs (VINDLU's) are shared by the UMT authors (see UMT's "
            "DATASET.md); set dataset.root=<folder> or the dataset's anno_files / answer_list path."
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{what} {path} is not valid JSON: {e}") from e


def _entry_problem(entry) -> str | None:
    if not isinstance(entry, dict):
        return f"expected an object with {', '.join(map(repr, _QA_KEYS))}, got {type(entry).__name__}"
    for key in _QA_KEYS:
        if key not in entry:
            return f"no {key!r} key"
    for key in ("video", "question"):
        if not isinstance(entry[key], str) or not entry[key]:
            return f"{key!r} must be a non-empty string"
    problem = video_name_problem(entry["video"])
    if problem:
        return problem
    if not isinstance(entry["answer"], str):
        return ("'answer' must be a string: the test sets are scored by exact match against one answer "
                f"(got {type(entry['answer']).__name__})")
    if isinstance(entry["question_id"], bool) or not isinstance(entry["question_id"], (int, str)):
        return "'question_id' must be an int or a string"
    return None


def load_qa_annotations(path: str | os.PathLike) -> list[dict]:
    """Parse and validate a UMT QA annotation file (a JSON list of ``{video, question, answer, question_id}``)."""
    path = Path(path)
    entries = _read_json(path, "QA annotation file")
    if not isinstance(entries, list):
        raise AnnotationError(
            f"QA annotation file {path}: expected a JSON list of entries, got {type(entries).__name__}")
    if not entries:
        raise AnnotationError(f"QA annotation file {path} is an empty list: it holds no question, so there is "
                              "nothing to evaluate")
    seen: set = set()
    for i, entry in enumerate(entries):
        problem = _entry_problem(entry)
        if problem:
            raise AnnotationError(f"QA annotation file {path}, entry {i}: {problem} (entry: {str(entry)[:200]})")
        if entry["question_id"] in seen:
            raise AnnotationError(f"QA annotation file {path}, entry {i}: question_id {entry['question_id']!r} "
                                  "appears twice; predictions are kept per question_id")
        seen.add(entry["question_id"])
    return entries


def load_answer_list(path: str | os.PathLike) -> list[str]:
    """Parse and validate a UMT answer list (a flat JSON list of non-empty strings)."""
    path = Path(path)
    answers = _read_json(path, "Answer list")
    if not isinstance(answers, list) or not answers:
        raise AnnotationError(f"Answer list {path}: expected a non-empty JSON list of answer strings")
    for i, answer in enumerate(answers):
        if not isinstance(answer, str) or not answer.strip():
            raise AnnotationError(f"Answer list {path}, entry {i}: expected a non-empty string, got {answer!r}")
    return answers


class VideoQADataset(ClipDataset):
    """The questions of a video QA test set; ``ds[i] -> (clip float [T, 3, S, S], i)``.

    Args:
        anno_path: the UMT QA annotation JSON.
        answer_list_path: the JSON list of candidate answers.
        video_dir: folder the entries' ``video`` names are relative to.
        clip_loader: how a clip is decoded (frames, size, sampling, reader).
        max_q_len, max_a_len: tokenizer lengths of questions and answers (UMT: 25 and 5).
        skip_corrupt: yield ``(zeros, SKIPPED_INDEX)`` for a missing/undecodable video instead of raising.
        limit: keep only the first ``limit`` questions (quick checks).

    Attributes: ``videos`` (absolute path per question), ``questions`` (cleaned), ``answers`` (ground truth),
    ``question_ids``, ``answer_list``, ``max_q_len``, ``max_a_len``.
    """

    def __init__(
        self,
        anno_path: str | os.PathLike,
        answer_list_path: str | os.PathLike,
        video_dir: str | os.PathLike,
        clip_loader: ClipLoader | None = None,
        *,
        max_q_len: int = 25,
        max_a_len: int = 5,
        skip_corrupt: bool = False,
        limit: int | None = None,
    ):
        self.anno_path = Path(anno_path)
        self.answer_list_path = Path(answer_list_path)
        self.video_dir = Path(video_dir)
        self.clip_loader = clip_loader or ClipLoader()
        self.max_q_len, self.max_a_len = int(max_q_len), int(max_a_len)
        self.skip_corrupt = bool(skip_corrupt)
        entries = load_qa_annotations(self.anno_path)
        limit = check_limit(limit)
        if limit:
            entries = entries[:limit]
        self.answer_list = load_answer_list(self.answer_list_path)
        self.videos = [str(self.video_dir / e["video"]) for e in entries]
        self.questions = [pre_text(e["question"]) for e in entries]
        self.answers = [e["answer"] for e in entries]
        self.question_ids = [e["question_id"] for e in entries]

    @classmethod
    def from_config(cls, cfg, split: str | None = None) -> "VideoQADataset":
        """Build from a ``dataset`` config node (repshift/configs/dataset/msrvtt_qa.yaml); ``split`` defaults to ``cfg.split``.

        A config with ``generate`` set (SMOKE) writes the synthetic clips and QA files under ``cfg.root`` first
        (rank 0 under torchrun; the other ranks wait for it).
        """
        split = cls.prepare(cfg, split)
        loader = ClipLoader(num_frames=cfg.num_frames, img_size=cfg.img_size, sampling=cfg.sampling,
                            reader=cfg.video_reader, antialias=cfg.antialias)
        return cls(cfg.anno_files[split], cfg.answer_list, cfg.video_dir, loader, max_q_len=cfg.max_q_len,
                   max_a_len=cfg.max_a_len, skip_corrupt=cfg.skip_corrupt, limit=cfg.get("limit"))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(anno={str(self.anno_path)!r}, questions={len(self.questions)}, "
                f"answers={len(self.answer_list)}, skip_corrupt={self.skip_corrupt})")


def build(cfg, split: str, training: bool = False) -> VideoQADataset:
    """A QA test set from its ``dataset`` config node (``_target_: repshift.data.video_qa.build``)."""
    if training:
        raise ValueError(f"dataset {cfg.name} is a video QA test set: it has no training split here")
    return VideoQADataset.from_config(cfg, split)
