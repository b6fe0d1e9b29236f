"""From a ``dataset`` config node to a dataset: the one place the runner builds data."""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset, Subset

from repshift.data.folder import ImageFolderDataset
from repshift.data.transforms import eval_transform, train_transform
from repshift import distributed


def build_dataset(cfg, split: str, training: bool = False) -> Dataset:
    """``cfg`` is the ``dataset`` config group (root, split, img_size, crop_pct, generate, limit, ...).

    A config with ``answer_list`` is a video QA set in UMT's format
    (:meth:`repshift.data.video_qa.VideoQADataset.from_config`; SMOKE writes synthetic QA files first).
    A config with ``anno_files`` is a video-text retrieval set in UMT's annotation format
    (:meth:`repshift.data.video_text.VideoTextRetrievalDataset.from_config`, which also writes the
    synthetic clips of ``synthetic_video`` on first use). Otherwise it is an image folder; one with
    ``generate`` set is ShapeBench: it is generated under ``root`` on first use (by rank 0 under
    torchrun, the others wait). ``limit`` keeps N images spread evenly over the split, so a quick
    check still sees every class.
    """
    if cfg.get("answer_list"):
        from repshift.data.video_qa import VideoQADataset

        return VideoQADataset.from_config(cfg, split)
    if cfg.get("anno_files"):
        from repshift.data.video_text import VideoTextRetrievalDataset

        return VideoTextRetrievalDataset.from_config(cfg, split)
    root = Path(cfg.root)
    if cfg.generate:
        from repshift.data import shapebench

        if distributed.is_main():
            shapebench.ensure(root, **cfg.generate, img_size=cfg.img_size)
        distributed.barrier()
    transform = (
        train_transform(cfg.img_size)
        if training
        else eval_transform(cfg.img_size, crop_pct=cfg.crop_pct, interpolation=cfg.interpolation)
    )
    dataset = ImageFolderDataset(root, split, transform, skip_corrupt=cfg.skip_corrupt, image_size=cfg.img_size)
    if cfg.limit and not training and cfg.limit < len(dataset):
        step = len(dataset) / cfg.limit
        dataset = Subset(dataset, [int(i * step) for i in range(cfg.limit)])
    return dataset


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
