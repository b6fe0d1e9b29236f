"""Check a video-text dataset folder before a long run: ``python -m repshift.data.check dataset=msrvtt dataset.root=...``

Retrieval sets (``evaluator: retrieval``) and video QA sets (``evaluator: qa``, e.g. ``dataset=msrvtt_qa``).
For every split in ``dataset.anno_files`` (or only ``dataset.split`` with ``--split-only``): the annotation file is
found and parses in UMT's schema (a QA set's answer list too; its "texts" are its questions), and every video it
references is present and decodes (the sampled frames are
read with ``dataset.video_reader``, as the evaluation will; a file holding fewer frames than its container claims,
such as a truncated download, is unreadable whatever the reader). Prints per split the entries, videos, texts, and
which videos are missing or unreadable, then exits 0 when everything is there, 1 when something is missing or
unreadable, 2 when the configuration itself is wrong.

Arguments are ``key=value`` overrides as for ``python -m repshift.run``: ``dataset=<name>`` picks
``repshift/configs/dataset/<name>.yaml``; ``dataset.<key>=...`` and ``paths.<key>=...`` override its values. Options:
``--no-decode`` only checks that the files exist; ``--show N`` lists at most N problem videos per split (default 20);
``--workers N`` decodes in N processes (default: ``dataset.num_workers``).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch.utils.data import DataLoader, Dataset

import repshift.configs as configs
from repshift.data.video import ClipLoader, CorruptVideoError, resolve_reader
from repshift.data.video_qa import load_answer_list, load_qa_annotations
from repshift.data.video_text import AnnotationError, build_retrieval_index, load_annotations

__all__ = ["SplitReport", "load_dataset_config", "check_split", "main"]

#: The evaluators whose datasets this command checks.
VIDEO_EVALUATORS = ("retrieval", "qa")


def load_dataset_config(overrides: list[str]) -> DictConfig:
    """``{paths, dataset}`` as a run would see them: the run config composed with ``dataset=<name>`` and the
    ``group.key=value`` overrides (:func:`repshift.configs.compose`; an unknown key is an error)."""
    if not any(item.partition("=")[0] == "dataset" for item in overrides):
        raise ValueError(f"say which dataset: dataset=<name>, one of {', '.join(configs.names('dataset'))}")
    try:
        cfg = configs.compose(overrides)
    except HydraException as error:
        raise ValueError(str(error)) from None
    return OmegaConf.create({"paths": cfg.paths, "dataset": cfg.dataset})


@dataclass
class SplitReport:
    """What :func:`check_split` found for one split."""

    split: str
    anno_path: str
    anno_error: str | None = None
    entries: int = 0
    videos: int = 0
    texts: int = 0
    missing: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    @property
    def ok(self) -> bool:
        return self.anno_error is None and not self.missing and not self.unreadable


class _Probe(Dataset):
    """Decodes each video the way the evaluation will; returns ``(index, None or the error message)``."""

    def __init__(self, paths: list[str], loader: ClipLoader):
        self.paths, self.loader = paths, loader

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            self.loader.read(self.paths[i])
            return i, None
        except CorruptVideoError as e:
            cause = e.__cause__
            return i, "file not found" if cause is None else f"{type(cause).__name__}: {cause}"


def check_split(cfg: DictConfig, split: str, *, decode: bool = True, workers: int = 0, progress: bool = False) -> SplitReport:
    """Parse split ``split``'s annotation file and look at (and with ``decode``, decode) every referenced video."""
    anno_path = str(cfg.anno_files[split])
    report = SplitReport(split, anno_path)
    try:
        if cfg.evaluator == "qa":
            load_answer_list(cfg.answer_list)
            entries = load_qa_annotations(anno_path)
            videos, texts = list(dict.fromkeys(e["video"] for e in entries)), len(entries)
        else:
            entries = load_annotations(anno_path)
            index = build_retrieval_index(entries, cfg.is_paragraph, cfg.has_multi_vision_gt)
            videos, texts = index.videos, len(index.texts)
    except AnnotationError as e:
        report.anno_error = str(e)
        return report
    report.entries, report.videos, report.texts = len(entries), len(videos), texts
    paths = [str(Path(cfg.video_dir) / v) for v in videos]
    present = []
    for path in paths:
        if os.path.isdir(path):
            report.unreadable.append((path, "a directory, not a video file"))
        else:
            (present if os.path.isfile(path) else report.missing).append(path)
    if decode and present:
        loader = ClipLoader(num_frames=cfg.num_frames, img_size=cfg.img_size, sampling=cfg.sampling,
                            trimmed30=cfg.get("trimmed30", False), reader=cfg.video_reader)
        probes = DataLoader(_Probe(present, loader), batch_size=None, num_workers=workers)
        if progress:
            from tqdm.auto import tqdm

            probes = tqdm(probes, total=len(present), desc=f"decode {split}")
        report.unreadable += [(present[i], why) for i, why in probes if why is not None]
    return report


def _reader_name(reader: str) -> str:
    return f"auto -> {resolve_reader(reader)}" if reader == "auto" else reader


def _summary(cfg: DictConfig, reports: list[SplitReport], show: int, decode: bool) -> str:
    lines = [f"dataset {cfg.name}: root {cfg.root}", f"  videos from {cfg.video_dir}"
             + (f", decoded with {_reader_name(cfg.video_reader)}" if decode else " (existence only, --no-decode)")]
    for r in reports:
        lines.append(f"[{r.split}] {r.anno_path}")
        if r.anno_error:
            lines.append(f"  ANNOTATION PROBLEM: {r.anno_error}")
            continue
        lines.append(f"  {r.entries} entries -> {r.videos} videos, {r.texts} texts")
        readable = r.videos - len(r.missing) - len(r.unreadable)
        lines.append(f"  present and readable: {readable}/{r.videos}; missing: {len(r.missing)}; "
                     f"unreadable: {len(r.unreadable)}")
        for path in r.missing[:show]:
            lines.append(f"    missing    {path}")
        if len(r.missing) > show:
            lines.append(f"    ... and {len(r.missing) - show} more missing (--show N lists more)")
        for path, why in r.unreadable[:show]:
            lines.append(f"    unreadable {path}: {why}")
        if len(r.unreadable) > show:
            lines.append(f"    ... and {len(r.unreadable) - show} more unreadable (--show N lists more)")
    ok = all(r.ok for r in reports)
    lines.append("OK: every annotation file parses and every video is there" + (" and decodes" if decode else "")
                 if ok else "PROBLEMS FOUND: fix the paths above, or run with dataset.skip_corrupt=true to "
                 "evaluate without the unreadable videos (missing annotation files cannot be skipped)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repshift.data.check", description=__doc__.splitlines()[0],
                                     epilog="overrides: dataset=<name> [dataset.root=...] [dataset.video_reader=...]")
    parser.add_argument("overrides", nargs="*", help="key=value")
    parser.add_argument("--no-decode", action="store_true", help="only check that the video files exist")
    parser.add_argument("--show", type=int, default=20, help="list at most N problem videos per split")
    parser.add_argument("--workers", type=int, default=None, help="decode in N processes (default dataset.num_workers)")
    parser.add_argument("--split-only", action="store_true", help="check only dataset.split")
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = load_dataset_config(args.overrides).dataset
        if cfg.get("evaluator") not in VIDEO_EVALUATORS:
            raise ValueError(f"dataset={cfg.name} is not a video-text dataset (evaluator: {cfg.get('evaluator')}; "
                             f"this checks {', '.join(VIDEO_EVALUATORS)})")
        if cfg.get("generate"):
            from repshift.data import synthetic_video

            synthetic_video.ensure(cfg.root, **cfg.generate)
        splits = [cfg.split] if args.split_only else list(cfg.anno_files)
        if not args.no_decode:
            resolve_reader(cfg.video_reader)
        workers = cfg.num_workers if args.workers is None else args.workers
        reports = [check_split(cfg, s, decode=not args.no_decode, workers=workers, progress=sys.stderr.isatty())
                   for s in splits]
    except (ValueError, KeyError, ImportError, OmegaConfBaseException) as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    print(_summary(cfg, reports, args.show, not args.no_decode))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
