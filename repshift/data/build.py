"""From a ``dataset`` config node to a dataset: the one place the runner builds data.

A dataset config names its builder in ``_target_`` (a function under ``repshift.data.``), called as
``builder(cfg, split, training)``:

- ``repshift.data.folder.build``: an ImageNet-layout image folder (``imagenet``);
- ``repshift.data.shapebench.build``: ShapeBench, generated under ``root`` on first use (``synthetic``);
- ``repshift.data.video_text.build``: a video-text retrieval set in UMT's annotation format (writing the
  synthetic clips first when ``generate`` is set);
- ``repshift.data.video_qa.build``: a video QA set in UMT's format.
"""
from __future__ import annotations

from torch.utils.data import Dataset, Subset

from repshift.targets import target_of


def build_dataset(cfg, split: str, training: bool = False) -> Dataset:
    """The dataset ``cfg`` (the ``dataset`` config node) describes, for ``split``; ``training`` asks for the
    training transform (image sets; video sets are evaluation only)."""
    return target_of(cfg, section="repshift.data.", what="dataset")(cfg, split, training)


def check_limit(limit) -> int | None:
    """``dataset.limit`` as a count: ``None`` (every sample) or a positive int; anything else is an error."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"dataset.limit={limit!r}: give a positive number of samples, or null for all of them")
    return limit


def location(dataset) -> str:
    """Where a dataset's samples come from, for error messages: the split folder of an image folder, the
    annotation file (and video folder) of a video set; also through ``Subset`` wrappers."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    if getattr(dataset, "anno_path", None) is not None:
        videos = getattr(dataset, "video_dir", None)
        return f"{dataset.anno_path}" + (f" (videos in {videos})" if videos is not None else "")
    if getattr(dataset, "root", None) is not None:
        return f"dataset.root={dataset.root} (split {getattr(dataset, 'split', '?')})"
    return f"a {type(dataset).__name__} of {len(dataset)} samples"


def describe_dataset(cfg, dataset: Dataset) -> dict:
    """What a result file records about the data a run saw (``n``: images, videos of a video-text set, or
    questions of a QA set)."""
    record = {"name": cfg.name, "root": str(cfg.root), "split": cfg.split, "synthetic": bool(cfg.synthetic),
              "n": len(dataset)}
    if hasattr(dataset, "texts"):
        record["n_texts"] = len(dataset.texts)
    if hasattr(dataset, "answer_list"):
        record["n_answers"] = len(dataset.answer_list)
    return record
