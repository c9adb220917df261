"""The project's own image classifier, one per data set and image shape, used by the evaluation.

It gives two things: class predictions for generated images (label accuracy, cluster alignment) and its
penultimate layer's 128-D activations, the feature space of ``feature_fid`` and of precision/recall.
``feature_fid`` is the Fréchet distance in *this* classifier's feature space: it is NOT the Inception FID
of the papers and its values are not comparable with theirs (methods.md: Inception weights are not
available offline).

Each classifier is trained once (a few epochs on the CPU) and cached under
``<cache_root>/classifiers/<dataset>-<C>x<H>x<W>.safetensors`` with a JSON beside it holding its test
accuracy, class names, architecture and training settings. Writes go through a temporary file + rename,
and a lock file keeps two processes from training the same classifier at once.

The built-in data sets' classifiers at their own image sizes ship in ``models/classifiers/`` (the same two
files, the weights in fp16; ``scripts/build_classifiers.py`` trains them with the default settings and
records each one's test accuracy there): an evaluation on a fresh install loads one instead of training it
first, which took minutes on a CPU (7.5 of a 27-minute admin run on ``digits``). A classifier in the cache
wins over the shipped one, and explicit ``epochs``/``max_steps`` that differ from its settings train anew.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from generation.checkpoint import write_json_atomic
from training.data import ImageData, cache_root, file_lock, load_dataset, resize_uint8

FORMAT_VERSION = 1
FEATURE_DIM = 128
EVAL_BATCH = 256
# the classifiers shipped with the repository (built-in data sets at their own image size)
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "models" / "classifiers"
SHIPPED_DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")


@dataclass(frozen=True)
class ClassifierSettings:
    """How a classifier is trained.

    Args:
        epochs: passes over the training split (raised for tiny sets so that at least ``min_steps`` run).
        max_steps: stop after this many steps (None: all epochs); tests use a handful.
        batch_size: images per step.
        lr: peak Adam learning rate (one-cycle schedule).
        seed: weights, batch order and augmentation.
        min_steps: lower bound on the number of steps for small data sets (sklearn digits).
    """

    epochs: int = 2
    max_steps: int | None = None
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    min_steps: int = 600


class ImageClassifier(nn.Module):
    """Three conv stages (3x3 conv, BN, ReLU, 2x2 max-pool; 32/64/128 channels), FC 128 (the features), FC K.

    Args:
        image_shape: ``(C, H, W)``; any size of at least 8 pixels.
        num_classes: number of output classes.
        width: channels of the first stage (doubling per stage).
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, width: int = 32):
        super().__init__()
        channels, height, width_px = image_shape
        if min(height, width_px) < 8:
            raise ValueError(f"the classifier needs images of at least 8x8 pixels, got {height}x{width_px}")
        layers: list[nn.Module] = []
        in_ch, size_h, size_w = channels, height, width_px
        for ch in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(in_ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(),
                       nn.MaxPool2d(2)]
            in_ch, size_h, size_w = ch, size_h // 2, size_w // 2
        self.conv = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Linear(in_ch * size_h * size_w, FEATURE_DIM), nn.BatchNorm1d(FEATURE_DIM),
                                   nn.ReLU())
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, images: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` in [-1, 1] -> penultimate activations ``(B, 128)``."""
        return self.embed(self.conv(images).flatten(1))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(images)))  # (B, K) logits


@dataclass
class TrainedClassifier:
    """A classifier with what the cache knows about it.

    Args:
        model: the network, in eval mode on its device.
        class_names: names of its output classes.
        test_accuracy: accuracy on the data set's test split.
        path: the weights file it was loaded from / saved to.
        trained_now: True when this call trained it (False: loaded from the cache).
        info: the cached JSON (settings, architecture, data set).
    """

    model: ImageClassifier
    class_names: list[str]
    test_accuracy: float
    path: Path
    trained_now: bool
    info: dict[str, Any]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Images ``(N, C, H, W)`` in [-1, 1] (any device) -> CPU float64 features ``(N, 128)`` and logits."""
        feats, logits = [], []
        for start in range(0, images.shape[0], EVAL_BATCH):
            x = images[start:start + EVAL_BATCH].to(self.device, torch.float32)
            f = self.model.features(x)
            feats.append(f.double().cpu())
            logits.append(self.model.head(f).double().cpu())
        return torch.cat(feats), torch.cat(logits)

    def predict(self, images: Tensor) -> Tensor:
        return self.features_and_logits(images)[1].argmax(1)


def classifier_path(dataset: str, image_shape: tuple[int, int, int], data_root: str | Path | None = None) -> Path:
    """``<cache_root>/classifiers/<dataset>-<C>x<H>x<W>.safetensors`` (image folders: + a hash of the root)."""
    name = dataset
    if dataset == "imagefolder" and data_root is not None:
        name += "-" + hashlib.sha256(str(Path(data_root).expanduser().resolve()).encode()).hexdigest()[:10]
    shape = "x".join(str(int(s)) for s in image_shape)
    return cache_root() / "classifiers" / f"{name}-{shape}.safetensors"


def shipped_classifier_path(dataset: str, image_shape: tuple[int, int, int]) -> Path | None:
    """The shipped classifier of a built-in data set at ``image_shape`` (``models/classifiers/``), or None."""
    if dataset not in SHIPPED_DATASETS:
        return None
    path = SHIPPED_DIR / classifier_path(dataset, image_shape).name
    return path if path.is_file() else None


def get_classifier(dataset: str, data_root: str | Path | None, device: str | torch.device = "cpu",
                   train_data: ImageData | None = None, test_data: ImageData | None = None, *,
                   image_shape: tuple[int, int, int] | None = None, epochs: int | None = None,
                   max_steps: int | None = None, quiet: bool = False,
                   progress: Any = None) -> TrainedClassifier:
    """The cached classifier of ``dataset`` (training and caching it on first use).

    Args:
        dataset: data set name, as for :func:`training.data.load_dataset`.
        data_root: folder holding the data set (loaded only when the classifier must be trained or tested).
        device: where the classifier runs (and trains).
        train_data / test_data: the splits, when the caller has them already.
        image_shape: the shape the classifier must take (default: the data's); data of another size is
            resized, e.g. for a model trained with ``--image-size``.
        epochs / max_steps: training length; explicit values that differ from the cached classifier's
            settings retrain it.
        quiet: do not print the "training ..." line.
        progress: called as ``progress(steps_done, total_steps)`` while a classifier trains (a run's page
            shows it).
    """
    device = torch.device(device)
    shape = _chw(image_shape) if image_shape is not None else _data_shape(dataset, data_root, train_data, test_data)
    path = classifier_path(dataset, shape, data_root)
    settings = default_settings(dataset, shape)
    if epochs is not None:
        settings = ClassifierSettings(**{**asdict(settings), "epochs": epochs})
    if max_steps is not None:
        settings = ClassifierSettings(**{**asdict(settings), "max_steps": max_steps})
    wanted = {k: v for k, v in (("epochs", epochs), ("max_steps", max_steps)) if v is not None}
    cached = _load_cached(path, device, wanted)
    if cached is not None:
        return cached
    shipped = shipped_classifier_path(dataset, shape)
    cached = _load_cached(shipped, device, wanted) if shipped is not None else None
    if cached is not None:
        return cached
    with file_lock(path.with_suffix(".lock")):
        cached = _load_cached(path, device, wanted)  # another process may have trained it meanwhile
        if cached is not None:
            return cached
        size, channels = _size_of(shape)
        train = match_shape(train_data or load_dataset(dataset, data_root, "train", image_size=size,
                                                       channels=channels), shape)
        test = match_shape(test_data or load_dataset(dataset, data_root, "test", image_size=size,
                                                     channels=channels), shape)
        if not quiet:
            print(f"training the {dataset} classifier for the evaluation ({shape[0]}x{shape[1]}x{shape[2]}, "
                  f"{len(train)} images, once; cached in {path})", file=sys.stderr, flush=True)
        model = train_classifier(train, settings, device, progress=progress)
        accuracy = classifier_accuracy(model, test)
        info = {"format_version": FORMAT_VERSION, "dataset": dataset, "image_shape": list(shape),
                "class_names": list(train.class_names), "num_classes": len(train.class_names),
                "width": 32, "feature_dim": FEATURE_DIM, "test_accuracy": round(accuracy, 5),
                "test_images": len(test), "train_images": len(train), "settings": asdict(settings)}
        _save(model, path, info)
        return TrainedClassifier(model.eval(), list(train.class_names), accuracy, path, True, info)


def default_settings(dataset: str, image_shape: tuple[int, int, int]) -> ClassifierSettings:
    """Two epochs for 28x28 grey sets (~99% MNIST, ~90% Fashion), three for colour images."""
    return ClassifierSettings(epochs=3 if image_shape[0] == 3 else 2)


def train_classifier(data: ImageData, settings: ClassifierSettings, device: torch.device,
                     progress: Any = None) -> ImageClassifier:
    """Train a fresh classifier on ``data`` (labelled) with Adam and a one-cycle learning rate;
    ``progress(steps_done, total_steps)`` is called every few steps.

    Gradients are switched on here, whatever the caller's mode: the first evaluation of a data set trains its
    classifier from inside ``torch.no_grad()`` / ``inference_mode()`` code such as the text-alignment metrics.
    """
    with torch.inference_mode(False), torch.enable_grad():
        return _train_classifier(data, settings, device, progress)


def _train_classifier(data: ImageData, settings: ClassifierSettings, device: torch.device,
                      progress: Any = None) -> ImageClassifier:
    labelled = data.select(torch.nonzero(data.labels >= 0).squeeze(1))
    if len(labelled) < 2 or len(labelled.class_names) < 2:
        raise ValueError(f"data set {data.name!r}: the evaluation classifier needs labelled images of "
                         f"at least 2 classes")
    torch.manual_seed(settings.seed)
    model = ImageClassifier(labelled.image_shape, len(labelled.class_names)).to(device)
    batch_size = min(settings.batch_size, len(labelled))
    per_epoch = len(labelled) // batch_size
    epochs = max(settings.epochs, math.ceil(settings.min_steps / per_epoch))
    total = per_epoch * epochs if settings.max_steps is None else min(per_epoch * epochs, settings.max_steps)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.lr, total_steps=max(total, 2))
    generator = torch.Generator().manual_seed(settings.seed)
    flip = labelled.image_shape[0] == 3  # horizontal flips suit natural images, not digits or garments' text
    model.train()
    step = 0
    while step < total:
        for batch in labelled.batches(batch_size, generator):
            if step >= total:
                break
            images = _augment(batch.images, generator, flip).to(device)
            loss = F.cross_entropy(model(images), batch.labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if progress is not None and (step % 10 == 0 or step == total):
                progress(step, total)
    return model.eval()


def _augment(images: Tensor, generator: torch.Generator, flip: bool) -> Tensor:
    """Random shifts of up to 2 pixels (pad + crop), and horizontal flips for colour images."""
    b, _, h, w = images.shape
    padded = F.pad(images, (2, 2, 2, 2), value=-1.0)
    dy, dx = torch.randint(0, 5, (2,), generator=generator).tolist()
    out = padded[:, :, dy:dy + h, dx:dx + w]
    if flip:
        mask = torch.rand(b, generator=generator) < 0.5
        out = torch.where(mask[:, None, None, None], out.flip(3), out)
    return out.contiguous()


@torch.no_grad()
def classifier_accuracy(model: ImageClassifier, data: ImageData) -> float:
    model.eval()
    keep = data.labels >= 0
    if not keep.any():
        return float("nan")
    device = next(model.parameters()).device
    correct = 0
    index = torch.nonzero(keep).squeeze(1)
    for start in range(0, len(index), EVAL_BATCH):
        batch = data.batch(index[start:start + EVAL_BATCH])
        correct += int((model(batch.images.to(device)).argmax(1).cpu() == batch.labels).sum())
    return correct / len(index)


# -- cache -----------------------------------------------------------------------------------------
def _info_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _load_cached(path: Path, device: torch.device, wanted: dict[str, Any]) -> TrainedClassifier | None:
    """The cached classifier at ``path``, or None if absent, unreadable or trained with other settings."""
    info_file = _info_path(path)
    if not (path.is_file() and info_file.is_file()):
        return None
    try:
        info = json.loads(info_file.read_text())
        if info.get("format_version") != FORMAT_VERSION:
            return None
        if any(info["settings"].get(key) != value for key, value in wanted.items()):
            return None
        model = ImageClassifier(tuple(info["image_shape"]), int(info["num_classes"]), int(info["width"]))
        # the shipped classifiers' fp16 weights load into the fp32 network (load_state_dict copies with a cast)
        model.load_state_dict(load_file(str(path), device="cpu"))
    except (OSError, ValueError, KeyError, RuntimeError):
        return None  # half-written by an older version or corrupted: retrain
    return TrainedClassifier(model.to(device).eval(), list(info["class_names"]), float(info["test_accuracy"]),
                             path, False, info)


def _save(model: ImageClassifier, path: Path, info: dict[str, Any], dtype: torch.dtype | None = None) -> None:
    """Weights first, then the JSON (the JSON's presence marks a complete entry); both tmp + rename.
    ``dtype``: store the floating-point tensors in it (fp16 halves a shipped classifier's file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"format_version": str(FORMAT_VERSION), "dataset": info["dataset"]})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    write_json_atomic(_info_path(path), info)


# -- data helpers ------------------------------------------------------------------------------------
def _size_of(shape: tuple[int, int, int]) -> tuple[int, int]:
    """(image size, channels) of a (C, H, W) shape, as load_dataset takes them."""
    return int(shape[1]), int(shape[0])


def _chw(shape: Sequence[int]) -> tuple[int, int, int]:
    channels, height, width = (int(v) for v in shape)
    return channels, height, width


def _data_shape(dataset: str, data_root: str | Path | None, train_data: ImageData | None,
                test_data: ImageData | None) -> tuple[int, int, int]:
    given = train_data or test_data
    if given is not None:
        return given.image_shape
    return load_dataset(dataset, data_root, "test").image_shape


def match_shape(data: ImageData, shape: tuple[int, int, int]) -> ImageData:
    """``data`` resized to ``shape``'s square size; a different number of channels is an error."""
    if data.image_shape == tuple(shape):
        return data
    if data.image_shape[0] != shape[0]:
        raise ValueError(f"data set {data.name!r} has {data.image_shape[0]}-channel images, the model "
                         f"{shape[0]}-channel ones")
    return ImageData(data.name, resize_uint8(data.images, int(shape[1])), data.labels, data.class_names,
                     data.text_embeddings, data.caption_counts)


__all__ = ["ClassifierSettings", "FEATURE_DIM", "ImageClassifier", "TrainedClassifier", "classifier_path",
           "get_classifier", "match_shape", "shipped_classifier_path", "train_classifier"]
