"""Image data sets: MNIST, Fashion-MNIST, CIFAR-10 (through torchvision), an image folder, sklearn digits.

Every loader returns an :class:`ImageData` holding the whole split in memory as uint8 (a few hundred MB at
most for the built-in sets), which on 2 CPU cores is far faster to batch from than a per-item DataLoader.

``--data-root`` may be laid out the torchvision way (``MNIST/raw/...``, ``cifar-10-batches-py/``) or as
``../shared/data`` is (``mnist/*.gz``, ``fashion-mnist/*.gz``, ``cifar10-jpeg/*.zip``); the second is
turned once into a torchvision-layout cache under ``$PRIORFORGE_CACHE`` (default ``~/.cache/priorforge``).
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import os
import shutil
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from priorforge_spec.datasets import BUILTIN_DATASETS, IMAGE_EXTENSIONS, DatasetError, cache_root  # noqa: F401

Split = Literal["train", "test"]
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


class Batch(NamedTuple):
    images: Tensor  # (B, C, H, W) float in [-1, 1]
    labels: Tensor  # (B,) int64
    # the field shadows tuple.index (a method), which mypy reports; Batch stays a tuple (callers unpack it)
    index: Tensor  # type: ignore[assignment]  # (B,) rows of the data set


@dataclass
class ImageData:
    """One split of a data set, in memory.

    Args:
        name: data set name (``mnist``...).
        images: uint8 ``(N, C, H, W)``.
        labels: int64 ``(N,)``; -1 where unlabelled.
        class_names: names of the label values.
    """

    name: str
    images: Tensor
    labels: Tensor
    class_names: list[str]
    # captioned data sets: (N, K, D) condition vectors of up to K captions per image, and how many are real
    text_embeddings: Tensor | None = None
    caption_counts: Tensor | None = None
    first_captions: list[str] | None = None  # each image's first caption (the live grids' prompts)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def batch(self, index: Tensor) -> Batch:
        """Images as floats in [-1, 1], their labels and their row indices, for the given indices."""
        return Batch(to_float(self.images[index]), self.labels[index], index)

    def text_conditions(self, index: Tensor, generator: torch.Generator) -> Tensor:
        """One randomly chosen caption embedding per image ``(B, D)`` (the paper's one caption per step)."""
        if self.text_embeddings is None or self.caption_counts is None:
            raise ValueError(f"data set {self.name!r} has no captions; it cannot train a text model")
        counts = self.caption_counts[index]
        pick = (torch.rand(len(index), generator=generator) * counts).long().clamp(max=counts - 1)
        return self.text_embeddings[index, pick]

    def batches(self, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True,
                drop_last: bool = True) -> Iterator[Batch]:
        """One epoch of batches."""
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        stop = len(self) - (len(self) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            yield self.batch(order[start:start + batch_size])

    def subset(self, count: int, seed: int = 0) -> "ImageData":
        """A random subset of ``count`` images (all of them if fewer)."""
        if count >= len(self):
            return self
        index = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:count]
        return self.select(index)

    def select(self, index: Tensor) -> "ImageData":
        """The rows ``index`` of this data set (captions included)."""
        return ImageData(self.name, self.images[index], self.labels[index], self.class_names,
                         None if self.text_embeddings is None else self.text_embeddings[index],
                         None if self.caption_counts is None else self.caption_counts[index],
                         None if self.first_captions is None else [self.first_captions[int(i)] for i in index])


def to_float(images_uint8: Tensor) -> Tensor:
    return images_uint8.float().div(127.5).sub(1.0)


def _cache_dir_for(source: Path, kind: str) -> Path:
    digest = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]
    folder = cache_root() / "datasets" / f"{kind}-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def load_dataset(name: str, data_root: str | Path | None, split: Split = "train", *, download: bool = False,
                 image_size: int | None = None, channels: int | None = None) -> ImageData:
    """Load split ``split`` of data set ``name``.

    Args:
        name: one of ``mnist``, ``fashion-mnist``, ``cifar10``, ``digits``, ``imagefolder``.
        data_root: the folder holding the data (ignored for ``digits``).
        download: let torchvision download MNIST/Fashion-MNIST/CIFAR-10 into ``data_root`` if missing.
        image_size: resize to this square size (default: the data set's own; 64 for image folders).
        channels: 1 or 3 to force grey or RGB (image folders; default 3).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == "digits":
        data = _load_digits(split)
    else:
        if name not in BUILTIN_DATASETS:
            raise DatasetError(f"unknown data set {name!r}; valid: {', '.join(BUILTIN_DATASETS)}")
        if data_root is None:
            raise DatasetError(f"data set {name!r} needs --data-root")
        root = Path(data_root).expanduser()
        if not root.is_dir():
            raise DatasetError(f"data root {root} does not exist or is not a folder")
        if name == "imagefolder":
            data = _load_image_folder(root, split, image_size or 64, channels or 3)
        elif name == "cifar10":
            data = _load_cifar10(root, split, download)
        else:  # mnist, fashion-mnist
            data = _load_mnist_family(name, root, split, download)
    if image_size is not None and data.image_shape[1] != image_size:
        data = ImageData(data.name, resize_uint8(data.images, image_size), data.labels, data.class_names)
    return data


def resize_uint8(images: Tensor, size: int) -> Tensor:
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


# -- MNIST and Fashion-MNIST ------------------------------------------------------------------------
def _load_mnist_family(name: str, root: Path, split: Split, download: bool) -> ImageData:
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    folder_name = cls.__name__  # torchvision layout: <root>/MNIST/raw/...
    tv_root = root
    if not (root / folder_name / "raw").is_dir():
        shared = root / ("mnist" if name == "mnist" else "fashion-mnist")
        if shared.is_dir():
            tv_root = _prepare_idx_cache(shared, folder_name)
        elif not download:
            raise DatasetError(
                f"{name}: found neither {root / folder_name / 'raw'} (torchvision layout) nor {shared} "
                f"(folder of the four *-idx?-ubyte.gz files); pass --download to fetch it"
            )
    try:
        dataset = cls(str(tv_root), train=split == "train", download=download)
    except RuntimeError as exc:
        raise DatasetError(f"{name}: could not load from {tv_root}: {exc}") from None
    images = dataset.data.unsqueeze(1).contiguous()  # (N, 1, 28, 28) uint8
    class_names = [str(i) for i in range(10)] if name == "mnist" else FASHION_CLASSES
    return ImageData(name, images, dataset.targets.long(), class_names)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (``flock`` on ``path``): processes that fill one cache entry at
    once (a benchmark's parallel runs, a worker and a trainer) wait for each other instead of racing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _prepare_idx_cache(shared: Path, folder_name: str) -> Path:
    """Gunzip ``shared/*-idx?-ubyte.gz`` into ``<cache>/<folder_name>/raw/`` (torchvision's layout)."""
    cache = _cache_dir_for(shared, folder_name.lower())
    raw = cache / folder_name / "raw"
    if all((raw / stem).is_file() for stem in MNIST_FILES):
        return cache
    with file_lock(cache / "prepare.lock"):
        _gunzip_idx_files(shared, raw)
    return cache


def _gunzip_idx_files(shared: Path, raw: Path) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    for stem in MNIST_FILES:
        target = raw / stem
        if target.is_file():
            continue
        source = shared / f"{stem}.gz"
        if not source.is_file():
            plain = shared / stem
            if plain.is_file():
                shutil.copyfile(plain, target)
                continue
            raise DatasetError(f"{shared}: expected {stem}.gz (one of the four MNIST-format idx files)")
        tmp = target.with_suffix(f".{os.getpid()}.partial")
        try:
            with gzip.open(source, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except (OSError, EOFError) as exc:
            tmp.unlink(missing_ok=True)
            raise DatasetError(f"{source} is not a readable gzip file: {exc}") from None
        os.replace(tmp, target)


# -- CIFAR-10 ---------------------------------------------------------------------------------------
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _load_cifar10(root: Path, split: Split, download: bool) -> ImageData:
    from torchvision import datasets

    if (root / "cifar-10-batches-py").is_dir() or (download and not (root / "cifar10-jpeg").is_dir()):
        dataset = datasets.CIFAR10(str(root), train=split == "train", download=download)
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
        return ImageData("cifar10", images, torch.tensor(dataset.targets, dtype=torch.long), list(dataset.classes))
    jpeg_dir = root / "cifar10-jpeg"
    zips = sorted(jpeg_dir.glob("*.zip")) if jpeg_dir.is_dir() else []
    if not zips:
        raise DatasetError(
            f"cifar10: found neither {root / 'cifar-10-batches-py'} (torchvision layout) nor a zip in {jpeg_dir} "
            f"(train/<class>/*.jpg, test/<class>/*.jpg); pass --download to fetch it"
        )
    return _cached_folder_tensor(zips[0], split, "cifar10")


def _cached_folder_tensor(archive: Path, split: Split, name: str) -> ImageData:
    """Decode ``archive``'s ``<split>/<class>/*`` images once and cache them as a safetensors file."""
    cache = _cache_dir_for(archive, name)
    tensor_file = cache / f"{split}.safetensors"
    if not tensor_file.is_file():
        with file_lock(cache / "prepare.lock"):
            if not tensor_file.is_file():  # another process may have decoded it meanwhile
                return _decode_archive_split(archive, split, name, cache, tensor_file)
    stored = load_file(str(tensor_file))
    names = (cache / "classes.txt").read_text().split("\n")
    return ImageData(name, stored["images"], stored["labels"], names)


def _decode_archive_split(archive: Path, split: Split, name: str, cache: Path, tensor_file: Path) -> ImageData:
    extract_dir = cache / "extracted"
    if not (extract_dir / split).is_dir():
        _safe_extract(archive, extract_dir)
    split_dir = extract_dir / split
    if not split_dir.is_dir():
        raise DatasetError(f"{archive}: expected a top-level folder {split}/ with one sub-folder per class")
    data = _decode_folder(split_dir, name, size=None, channels=3)
    tmp = tensor_file.with_suffix(f".{os.getpid()}.partial")
    save_file({"images": data.images.contiguous(), "labels": data.labels.contiguous()}, str(tmp))
    (cache / "classes.txt").write_text("\n".join(data.class_names))
    os.replace(tmp, tensor_file)
    return data


def _safe_extract(archive: Path, target: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                resolved = (target / member).resolve()
                if not str(resolved).startswith(str(target.resolve())):
                    raise DatasetError(f"{archive}: member {member!r} would be written outside {target}")
            zf.extractall(target)
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{archive} is not a valid zip file: {exc}") from None


# -- image folders ----------------------------------------------------------------------------------
def _load_image_folder(root: Path, split: Split, size: int, channels: int) -> ImageData:
    """``root/<class>/*.png`` (one split, 10% held out for test) or ``root/{train,test}/<class>/*``."""
    if (root / "train").is_dir():
        split_root = root / split
        if not split_root.is_dir():
            raise DatasetError(f"{root} has train/ but no {split}/ folder")
        return _decode_folder(split_root, "imagefolder", size, channels)
    data = _decode_folder(root, "imagefolder", size, channels)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(1234))
    n_test = max(1, len(data) // 10)
    index = order[:n_test] if split == "test" else order[n_test:]
    return ImageData(data.name, data.images[index], data.labels[index], data.class_names)


def _decode_folder(folder: Path, name: str, size: int | None, channels: int) -> ImageData:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{folder}: expected one sub-folder per class holding images, found no sub-folders")
    images, labels = [], []
    mode = "L" if channels == 1 else "RGB"
    for label, class_name in enumerate(classes):
        files = sorted(p for p in (folder / class_name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        for path in files:
            try:
                with Image.open(path) as opened:
                    img = opened.convert(mode)
                    if size is not None and img.size != (size, size):
                        img = _center_crop_resize(img, size)
                    array = np.asarray(img, dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as exc:
                raise DatasetError(f"{path}: not a readable image ({exc})") from None
            images.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise DatasetError(f"{folder}: the class folders hold no images ({', '.join(IMAGE_EXTENSIONS)})")
    shapes = {img.shape for img in images}
    if len(shapes) > 1:
        raise DatasetError(f"{folder}: images have different sizes {sorted(shapes)[:3]}...; pass --image-size")
    return ImageData(name, torch.from_numpy(np.ascontiguousarray(np.stack(images))), torch.tensor(labels, dtype=torch.long), classes)


def _center_crop_resize(img, size: int):
    from torchvision.transforms import functional as TF

    side = min(img.size)
    return TF.resize(TF.center_crop(img, [side, side]), [size, size], antialias=True)


# -- sklearn digits ---------------------------------------------------------------------------------
def _load_digits(split: Split) -> ImageData:
    """scikit-learn's 1,797 8x8 digits (bundled, no download), upsampled to 28x28; a fixed 80/20 split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().unsqueeze(1) * (255.0 / 16.0)  # (N, 1, 8, 8) in 0..255
    images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)
    images = images.round().clamp(0, 255).to(torch.uint8)
    labels = torch.from_numpy(bunch.target).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    n_test = len(labels) // 5
    index = order[:n_test] if split == "test" else order[n_test:]
    return ImageData("digits", images[index].contiguous(), labels[index], [str(i) for i in range(10)])
