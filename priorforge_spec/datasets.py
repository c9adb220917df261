"""Data set names, the image files a data set may hold, and where derived files are cached."""

from __future__ import annotations

import os
from pathlib import Path

BUILTIN_DATASETS = ("mnist", "fashion-mnist", "cifar10", "digits", "imagefolder")
CAPTIONED_DATASETS = ("cifar10-captions", "fashion-mnist-captions", "oxford102-flowers")
GENERIC_PREFIX = "captions:"  # ``captions:<folder>``: any folder of images with a captions.jsonl
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def image_dataset_name(dataset: str) -> str:
    """The image data set behind a built-in captioned set (``fashion-mnist-captions`` -> ``fashion-mnist``):
    its classifier and test images are the same."""
    base = dataset.removesuffix("-captions")
    return base if base != dataset and base in ("mnist", "fashion-mnist", "cifar10") else dataset


# where a data root holds each built-in image set: torchvision's own layout (what its downloaders write, and
# what ``priorforge download-data`` fetches), or the layout of the project's offline copies (../shared/data)
BUILTIN_LAYOUTS = {
    "mnist": ("MNIST/raw", "mnist"),
    "fashion-mnist": ("FashionMNIST/raw", "fashion-mnist"),
    "cifar10": ("cifar-10-batches-py", "cifar10-jpeg"),
}


def builtin_available(name: str, data_root: str | Path | None) -> bool:
    """Whether ``data_root`` holds built-in image set ``name`` in one of its :data:`BUILTIN_LAYOUTS`."""
    if name == "digits":
        return True  # scikit-learn ships it
    if not data_root or name not in BUILTIN_LAYOUTS:
        return False
    root = Path(data_root).expanduser()
    return any((root / sub).is_dir() for sub in BUILTIN_LAYOUTS[name])


class DatasetError(ValueError):
    """A data set that is missing or malformed; the message names the path and what was expected."""


def cache_root() -> Path:
    """``$PRIORFORGE_CACHE`` (default ``~/.cache/priorforge``): converted data sets, evaluation classifiers,
    caption embeddings."""
    return Path(os.environ.get("PRIORFORGE_CACHE", Path.home() / ".cache" / "priorforge"))
