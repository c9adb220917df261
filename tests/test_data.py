"""Data loading: the shared-data layout, image folders, digits, and clear errors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import DatasetError, load_dataset


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes())


@pytest.fixture
def fake_shared_root(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("mnist", "fashion-mnist"):
        write_idx(tmp_path / name, "train", rng.integers(0, 255, (20, 28, 28)), np.arange(20) % 10)
        write_idx(tmp_path / name, "t10k", rng.integers(0, 255, (10, 28, 28)), np.arange(10) % 10)
    return tmp_path


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_shared_layout_of_gz_files_loads_through_torchvision(fake_shared_root, name):
    train = load_dataset(name, fake_shared_root, "train")
    test = load_dataset(name, fake_shared_root, "test")
    assert len(train) == 20 and len(test) == 10
    assert train.images.dtype == torch.uint8 and train.image_shape == (1, 28, 28)
    assert train.labels.tolist() == [i % 10 for i in range(20)]
    images, labels, _ = train.batch(torch.arange(4))
    assert images.min() >= -1 and images.max() <= 1


def test_missing_data_root_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("mnist", tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match=r"found neither .*MNIST/raw.*mnist"):
        load_dataset("mnist", tmp_path, "train")
    with pytest.raises(DatasetError, match="needs --data-root"):
        load_dataset("cifar10", None, "train")
    with pytest.raises(DatasetError, match="unknown data set 'svhn'"):
        load_dataset("svhn", tmp_path, "train")


def test_a_missing_idx_file_is_named(tmp_path):
    write_idx(tmp_path / "mnist", "train", np.zeros((2, 28, 28)), np.zeros(2))
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", tmp_path, "train")


def test_a_corrupt_gzip_is_named(tmp_path):
    write_idx(tmp_path / "mnist", "train", np.zeros((2, 28, 28)), np.zeros(2))
    write_idx(tmp_path / "mnist", "t10k", np.zeros((2, 28, 28)), np.zeros(2))
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz is not a readable gzip"):
        load_dataset("mnist", tmp_path, "train")


def test_cifar_zip_missing_is_a_clear_error(tmp_path):
    (tmp_path / "cifar10-jpeg").mkdir()
    with pytest.raises(DatasetError, match="cifar10-jpeg"):
        load_dataset("cifar10", tmp_path, "train")


def make_image_folder(root: Path, classes=("cat", "dog"), per_class=5, size=(40, 30)) -> Path:
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_image_folder_is_resized_and_split(tmp_path):
    root = make_image_folder(tmp_path / "imgs")
    train = load_dataset("imagefolder", root, "train", image_size=32)
    test = load_dataset("imagefolder", root, "test", image_size=32)
    assert train.class_names == ["cat", "dog"]
    assert train.image_shape == (3, 32, 32)
    assert len(train) + len(test) == 10 and len(test) == 1


def test_image_folder_errors_name_the_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="one sub-folder per class"):
        load_dataset("imagefolder", tmp_path / "empty", "train")
    root = make_image_folder(tmp_path / "bad")
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DatasetError, match=r"broken\.png: not a readable image"):
        load_dataset("imagefolder", root, "train", image_size=16)


def test_digits_needs_no_files():
    train, test = load_dataset("digits", None, "train"), load_dataset("digits", None, "test")
    assert len(train) + len(test) == 1797
    assert train.image_shape == (1, 28, 28)
    assert set(train.labels.tolist()) == set(range(10))


def _load_after(barrier, root: Path, queue) -> None:
    barrier.wait()
    try:
        queue.put(len(load_dataset("mnist", root, "train")))
    except Exception as exc:  # reported to the parent, which asserts on it
        queue.put(repr(exc))


def test_processes_preparing_one_cache_at_once_all_load_it(tmp_path):
    """A benchmark's parallel runs fill the shared-data cache at the same moment: none may fail (they once
    raced on one temporary file name)."""
    import multiprocessing

    rng = np.random.default_rng(0)
    write_idx(tmp_path / "mnist", "train", rng.integers(0, 255, (20000, 28, 28)), np.arange(20000) % 10)
    write_idx(tmp_path / "mnist", "t10k", rng.integers(0, 255, (10, 28, 28)), np.arange(10) % 10)
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(4), ctx.Queue()
    workers = [ctx.Process(target=_load_after, args=(barrier, tmp_path, queue)) for _ in range(4)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    assert results == [20000] * 4
