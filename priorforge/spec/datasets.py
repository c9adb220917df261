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


class DatasetError(ValueError):
    """A data set that is missing or malformed; the message names the path and what was expected."""


def cache_root() -> Path:
    """``$PRIORFORGE_CACHE`` (default ``~/.cache/priorforge``): converted data sets, evaluation classifiers,
    caption embeddings."""
    return Path(os.environ.get("PRIORFORGE_CACHE", Path.home() / ".cache" / "priorforge"))
