"""Captioned data sets for text-conditional models.

Three sources, all returned as :class:`training.data.ImageData` with ``text_embeddings`` ``(N, K, 384)``
(the RAW sentence embeddings of up to K captions per image, zero rows past ``caption_counts``):

- ``cifar10-captions`` / ``fashion-mnist-captions``: built here from the offline CIFAR-10 / Fashion-MNIST.
  Each image gets ``captions_per_image`` (10, like Reed et al.'s ``text_c10``) captions drawn from
  TRAINING templates and synonyms, naming the class and the attributes read off the image by
  :mod:`training.attributes` (CIFAR: dominant colour; Fashion-MNIST: tone and shape). A disjoint set of
  HELD-OUT templates and synonyms (:data:`PHRASINGS`) never appears in a training caption; the
  text-alignment metrics prompt with those.
- ``oxford102-flowers``: Reed et al.'s layout under ``--data-root``: ``jpg/image_XXXXX.jpg`` and
  ``text_c10/class_XXXXX/image_XXXXX.txt`` (one caption per line). With ``trainvalclasses.txt`` and
  ``testclasses.txt`` at the root, the test split is the test classes (their zero-shot split); otherwise
  every 10th image of each class is held out.
- ``captions:<folder>``: any folder of images plus ``captions.jsonl``, one JSON object per line:
  ``{"file": "a.jpg", "captions": ["...", ...]}`` or ``{"file": ..., "caption": "..."}``, optional
  ``"label"`` (class name or index) and ``"split"`` (``train``/``test``; without any, 10% is held out).

The train command then fits the PCA projection to ``text_dim`` on the training captions and projects the
embeddings (:func:`prepare_text_conditioning`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from priorforge_spec.captions import CAPTIONS_FILE, parse_captions_jsonl
from priorforge_spec.datasets import CAPTIONED_DATASETS, GENERIC_PREFIX
from training import attributes as attrs
from training.data import BUILTIN_DATASETS, DatasetError, ImageData, Split, load_dataset
from training.data import CIFAR10_CLASSES, FASHION_CLASSES, resize_uint8  # noqa: F401 - this module's API too

DEFAULT_CAPTIONS_PER_IMAGE = 10
DEFAULT_FOLDER_IMAGE_SIZE = 64


# -- phrasings --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Phrasing:
    """Templates and synonyms of one built-in captioned set; ``{cls}`` and the attribute names are
    placeholders. ``train_*`` build the training captions, ``heldout_*`` only evaluation prompts."""

    attributes: tuple[str, ...]
    values: dict[str, tuple[str, ...]]  # attribute -> its value names (attrs.COLOR_NAMES...)
    train_templates: tuple[str, ...]
    heldout_templates: tuple[str, ...]
    train_synonyms: dict[str, tuple[str, ...]]  # class name or attribute value -> words
    heldout_synonyms: dict[str, tuple[str, ...]]


def _words(dataset: str, part: str) -> dict[str, tuple[str, ...]]:
    """Class name or attribute value -> its training words (the first is the canonical one) or its held-out
    words, from ``training/vocabulary.json`` (:mod:`training.vocabulary`: WordNet and everyday words)."""
    from training.vocabulary import load

    return {key: tuple(entry[part]) for key, entry in load(dataset).items()}


CIFAR_PHRASING = Phrasing(
    attributes=("color",),
    values={"color": attrs.COLOR_NAMES},
    train_templates=(
        # the original twelve
        "a photo of a {color} {cls}.", "a {color} {cls}.", "a picture of a {color} {cls}",
        "a {cls} that is {color}", "a {color} {cls} in the picture", "this {cls} is {color}",
        "a small {color} {cls}", "a close-up photo of a {color} {cls}", "the {cls} is mostly {color}",
        "an image of a {color} {cls}", "a blurry photo of a {color} {cls}", "a {color}-coloured {cls}",
        # wider wording: other structures, word orders and registers
        "{color} {cls}", "a {cls}, {color}", "a {cls} in {color}", "a {cls} painted {color}",
        "photo: {color} {cls}", "a low-resolution photo of a {color} {cls}", "a {color} colored {cls}",
        "the photo shows a {color} {cls}", "a {cls} with {color} colouring", "a picture showing a {color} {cls}",
        "a {color} {cls} outdoors", "a cropped photo of a {color} {cls}", "a tiny {color} {cls}",
        "look at this {color} {cls}", "a {cls} which is {color}", "a {color} {cls} seen from the side",
        "a {color} thing: a {cls}", "a good photo of the {color} {cls}", "a {cls} of {color} colour",
        "an old photo of a {color} {cls}", "a {color} {cls}, centred in the frame", "it is a {color} {cls}",
        # the class alone: a user may not name a colour
        "a photo of a {cls}", "a {cls}", "a picture of a {cls}", "an image of a {cls}",
    ),
    heldout_templates=(
        "there is a {color} {cls} in this image", "you can see a {cls}, colored {color}",
        "my {color} {cls}", "snapshot showing one {color} {cls}",
    ),
    train_synonyms=_words("cifar10-captions", "train"),
    heldout_synonyms=_words("cifar10-captions", "heldout"),
)

FASHION_PHRASING = Phrasing(
    attributes=("tone", "shape"),
    values={"tone": attrs.TONE_NAMES, "shape": attrs.SHAPE_NAMES},
    train_templates=(
        # the original ten
        "a {tone}, {shape} {cls}", "a photo of a {tone} {shape} {cls}", "a {shape} {cls} in a {tone} shade",
        "a {tone} {cls} with a {shape} cut", "this {cls} is {tone} and {shape}", "a {shape}, {tone} {cls}",
        "an image of a {tone} {shape} {cls}", "a {tone}-coloured {shape} {cls}",
        "a product photo of a {shape} {tone} {cls}", "the {cls} is {shape} and {tone}",
        # wider wording: other structures, word orders and registers
        "{tone} {shape} {cls}", "a {cls}, {tone} and {shape}", "a {tone} and {shape} {cls}",
        "a {cls} that looks {tone} and {shape}", "a {shape}-cut {cls} in {tone} fabric",
        "a {cls} in a {tone} colour with a {shape} fit", "shop photo of a {tone} {cls}, {shape} fit",
        "the {tone} {cls} is {shape}", "a {shape} {cls}, quite {tone}", "a {tone} {cls} with a {shape} silhouette",
        "a greyscale photo of a {shape}, {tone} {cls}", "a {cls} which is {tone}; its cut is {shape}",
        "picture of a {tone} {cls} that is {shape}", "someone's {tone}, {shape} {cls}",
        "a {shape} {tone} {cls} on a black background", "a {tone} {cls} of a {shape} shape",
        # partial descriptions: a user may name only some attributes
        "a {tone} {cls}", "a {shape} {cls}", "a photo of a {tone} {cls}", "a {cls} in a {tone} shade",
        "a {cls} with a {shape} cut", "a {cls}", "a photo of a {cls}", "an image of a {cls}",
    ),
    heldout_templates=(
        "you are looking at a {cls} that is {shape} and {tone}", "one {tone} {cls}, rather {shape}",
        "catalogue shot: {shape} {cls}, {tone} fabric",
    ),
    train_synonyms=_words("fashion-mnist-captions", "train"),
    heldout_synonyms=_words("fashion-mnist-captions", "heldout"),
)

PHRASINGS = {"cifar10-captions": CIFAR_PHRASING, "fashion-mnist-captions": FASHION_PHRASING}
PhrasingKind = Literal["train", "heldout", "heldout-synonyms"]


def fix_articles(text: str) -> str:
    """``a apple`` -> ``an apple`` (vowel letter rule, good enough for these templates)."""
    return re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)


def render(template: str, cls: str, values: dict[str, str]) -> str:
    return fix_articles(template.format(cls=cls, **values))


def prompt_text(dataset: str, class_name: str, values: dict[str, str], kind: PhrasingKind = "heldout",
                variant: int = 0) -> str:
    """One prompt for ``class_name`` with attribute ``values`` (e.g. ``{"color": "red"}``).

    ``train``: a training template and the canonical words; ``heldout``: a held-out template with the
    canonical words; ``heldout-synonyms``: a held-out template and held-out synonyms.
    """
    ph = PHRASINGS[dataset]
    templates = ph.train_templates if kind == "train" else ph.heldout_templates
    template = templates[variant % len(templates)]
    if kind == "heldout-synonyms":
        pick = lambda key: ph.heldout_synonyms[key][variant % len(ph.heldout_synonyms[key])]  # noqa: E731
    else:
        pick = lambda key: ph.train_synonyms[key][0]  # noqa: E731
    return render(template, pick(class_name), {a: pick(v) for a, v in values.items()})


CAPTIONS_PER_COMBINATION = 256


def caption_pool(phrasing: Phrasing, cls: str, image_values: dict[str, str], size: int,
                 rng: np.random.Generator) -> list[str]:
    """Up to ``size`` distinct training captions for one class and attribute values: a template drawn
    uniformly (so that partial descriptions keep their share), then a word for each placeholder."""
    pool: dict[str, None] = {}
    for _ in range(size * 8):  # enough draws to fill the pool when the phrasing allows that many captions
        template = phrasing.train_templates[int(rng.integers(len(phrasing.train_templates)))]
        words = {a: _choice(rng, phrasing.train_synonyms[v]) for a, v in image_values.items()}
        pool.setdefault(render(template, _choice(rng, phrasing.train_synonyms[cls]), words))
        if len(pool) >= size:
            break
    return list(pool)


def build_captions(phrasing: Phrasing, class_names: Sequence[str], labels: Tensor, values: dict[str, Tensor],
                   per_image: int, seed: int, per_combination: int = CAPTIONS_PER_COMBINATION) -> list[list[str]]:
    """``per_image`` distinct training captions per image (deterministic for a seed).

    Every image of one class and attribute values draws from the same pool of ``per_combination`` captions
    (:func:`caption_pool`): wide wording, while the number of distinct sentences the encoder must embed stays
    bounded (40 combinations x 256 for Fashion-MNIST instead of the ~120,000 that free drawing gives).
    """
    rng = np.random.default_rng(seed)
    pools: dict[tuple, list[str]] = {}
    out = []
    for i, label in enumerate(labels.tolist()):
        cls = class_names[label]
        image_values = {a: phrasing.values[a][int(values[a][i])] for a in phrasing.attributes}
        key = (cls, *image_values.values())
        if key not in pools:
            pools[key] = caption_pool(phrasing, cls, image_values, per_combination,
                                      np.random.default_rng([seed, len(pools)]))
        pool = pools[key]
        picks = rng.choice(len(pool), size=per_image, replace=per_image > len(pool))
        out.append([pool[int(k)] for k in picks])
    return out


def _choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def image_attributes(dataset: str, images: Tensor, labels: Tensor, class_names: Sequence[str]) -> dict[str, Tensor]:
    """Attribute value indices ``(N,)`` per attribute of a built-in captioned set."""
    if dataset == "cifar10-captions":
        return {"color": attrs.dominant_colors(images)}
    if dataset == "fashion-mnist-captions":
        names = [class_names[i] for i in labels.tolist()]
        return {"tone": attrs.garment_tone(images), "shape": attrs.garment_shape(images, names)}
    raise DatasetError(f"{dataset!r} has no attribute extractor; known: {', '.join(PHRASINGS)}")


def attribute_count(dataset: str) -> int:
    """How many combined attribute values :func:`attribute_index` gives for a built-in captioned set (0: the
    set's attributes cannot be read off its images)."""
    phrasing = PHRASINGS.get(dataset)
    return int(np.prod([len(phrasing.values[a]) for a in phrasing.attributes])) if phrasing else 0


def attribute_index(dataset: str, images: Tensor, labels: Tensor, class_names: Sequence[str]) -> Tensor:
    """``(N,)`` one index per image for all of its attribute values together (CIFAR-10: the colour, 0..10;
    Fashion-MNIST: tone x 2 + shape, 0..3), read off uint8 ``images`` exactly as its captions were made."""
    values = image_attributes(dataset, images, labels, class_names)
    phrasing = PHRASINGS[dataset]
    index = torch.zeros(len(images), dtype=torch.long)
    for name in phrasing.attributes:
        index = index * len(phrasing.values[name]) + values[name]
    return index


# -- turning caption lists into ImageData -----------------------------------------------------------
def attach_captions(data: ImageData, captions: Sequence[Sequence[str]], name: str | None = None) -> ImageData:
    """``data`` with the raw sentence embeddings ``(N, K, 384)`` of ``captions`` (K = most per image)."""
    from generation.text_encoder import EMBEDDING_DIM, encode_captions_cached

    if len(captions) != len(data):
        raise DatasetError(f"{len(captions)} caption lists for {len(data)} images")
    distinct = sorted({c.strip() for caps in captions for c in caps})
    index = {c: i for i, c in enumerate(distinct)}
    table = encode_captions_cached(distinct)  # (U, 384)
    k = max(len(caps) for caps in captions)
    rows = torch.full((len(data), k), -1, dtype=torch.long)
    for i, caps in enumerate(captions):
        rows[i, :len(caps)] = torch.tensor([index[c.strip()] for c in caps])
    padded = torch.cat([table, torch.zeros(1, EMBEDDING_DIM)])  # row -1: zeros past caption_counts
    embeddings = padded[rows]  # (N, K, 384)
    counts = torch.tensor([len(caps) for caps in captions], dtype=torch.long)
    return ImageData(name or data.name, data.images, data.labels, data.class_names, embeddings, counts,
                     [caps[0].strip() for caps in captions])


def is_captioned_dataset(name: str) -> bool:
    return name in CAPTIONED_DATASETS or name.startswith(GENERIC_PREFIX)


def dataset_choices() -> str:
    """Every valid ``--dataset`` value, for error messages."""
    return ", ".join([*BUILTIN_DATASETS, *CAPTIONED_DATASETS, f"{GENERIC_PREFIX}<folder with {CAPTIONS_FILE}>"])


def load_captioned_dataset(name: str, data_root: str | Path | None, split: Split = "train", *,
                           image_size: int | None = None, captions_per_image: int = DEFAULT_CAPTIONS_PER_IMAGE,
                           seed: int = 0, channels: int | None = None) -> ImageData:
    """Split ``split`` of a captioned data set with RAW 384-D caption embeddings (see the module doc).

    Args:
        name: ``cifar10-captions``, ``fashion-mnist-captions``, ``oxford102-flowers`` or ``captions:<folder>``.
        data_root: the folder holding the data (``../shared/data`` layout for the built-in ones).
        image_size: resize to this square size (default: the set's own; 64 for folders of photos).
        captions_per_image: captions generated per image (built-in sets only).
        seed: seeds the caption phrasing (built-in sets only; the same seed gives the same captions).
        channels: 1 (grey) or 3 (RGB) for folders of images (``captions:<folder>``, flowers; default 3); the
            built-in sets keep their own (Fashion-MNIST grey, CIFAR-10 colour).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name.startswith(GENERIC_PREFIX):
        folder = name[len(GENERIC_PREFIX):]
        if not folder:
            raise DatasetError(f"--dataset {GENERIC_PREFIX}<folder>: the folder is missing")
        return load_jsonl_captions(folder, split, image_size or DEFAULT_FOLDER_IMAGE_SIZE, channels or 3)
    if name == "oxford102-flowers":
        if data_root is None:
            raise DatasetError("oxford102-flowers needs --data-root (the folder holding jpg/ and text_c10/)")
        return load_text_c10(data_root, split, image_size or DEFAULT_FOLDER_IMAGE_SIZE, channels or 3)
    if name not in PHRASINGS:
        raise DatasetError(f"unknown data set {name!r}; valid: {dataset_choices()}")
    if captions_per_image < 1:
        raise ValueError(f"captions_per_image must be at least 1, got {captions_per_image}")
    base = load_dataset(name.removesuffix("-captions"), data_root, split, image_size=image_size)
    values = image_attributes(name, base.images, base.labels, base.class_names)
    captions = build_captions(PHRASINGS[name], base.class_names, base.labels, values, captions_per_image,
                              seed=seed * 2 + (split == "test"))
    return attach_captions(base, captions, name)


# -- the generic jsonl format (parsed by priorforge_spec.captions) --------------------------------
def load_jsonl_captions(folder: str | Path, split: Split, image_size: int, channels: int = 3) -> ImageData:
    """Split ``split`` of a folder with ``captions.jsonl``: images as ``channels`` (1: grey, 3: RGB) x
    ``image_size`` squares, labels where the lines have them (-1 elsewhere), the raw caption embeddings."""
    entries = parse_captions_jsonl(folder)
    if any(e.split is not None for e in entries):
        chosen = [e for e in entries if (e.split or "train") == split]
    else:
        chosen = _holdout([e for e in entries], split)
    if not chosen:
        raise DatasetError(f"{Path(folder) / CAPTIONS_FILE}: no images in the {split!r} split")
    label_names = sorted({str(e.label) for e in entries if e.label is not None},
                         key=lambda s: (not s.lstrip("-").isdigit(), int(s) if s.lstrip("-").isdigit() else 0, s))
    labels = [label_names.index(str(e.label)) if e.label is not None else -1 for e in chosen]
    images = _decode_images([e.file for e in chosen], image_size, channels)
    data = ImageData(f"{GENERIC_PREFIX}{Path(folder).name}", images, torch.tensor(labels, dtype=torch.long),
                     label_names)
    return attach_captions(data, [e.captions for e in chosen])


def _holdout(items: list, split: Split, every: int = 10) -> list:
    """A fixed split: every ``every``-th item (at least one) is test, the rest train."""
    test_index = set(range(every - 1, len(items), every)) or {len(items) - 1}
    if len(items) == 1:
        test_index = set()
    return [x for i, x in enumerate(items) if (i in test_index) == (split == "test")]


def _decode_images(paths: Sequence[Path], size: int, channels: int = 3) -> Tensor:
    """uint8 ``(N, channels, size, size)``, centre-cropped and resized (1 channel: Pillow's grey, "L")."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    from PIL import Image, UnidentifiedImageError

    from training.data import _center_crop_resize

    out = []
    for path in paths:
        try:
            with Image.open(path) as opened:
                img = opened.convert("L" if channels == 1 else "RGB")
                if img.size != (size, size):
                    img = _center_crop_resize(img, size)
                array = np.asarray(img, dtype=np.uint8)
                out.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
        except (UnidentifiedImageError, OSError) as exc:
            raise DatasetError(f"{path}: not a readable image ({exc})") from None
    return torch.from_numpy(np.ascontiguousarray(np.stack(out)))


# -- Oxford-102 flowers, Reed et al.'s text_c10 layout ----------------------------------------------
def load_text_c10(data_root: str | Path, split: Split, image_size: int, channels: int = 3) -> ImageData:
    """``<root>/jpg/image_XXXXX.jpg`` + ``<root>/text_c10/class_XXXXX/image_XXXXX.txt``."""
    root = Path(data_root).expanduser()
    if not (root / "text_c10").is_dir() and (root / "flowers" / "text_c10").is_dir():
        root = root / "flowers"
    text_dir, jpg_dir = root / "text_c10", root / "jpg"
    if not text_dir.is_dir() or not jpg_dir.is_dir():
        raise DatasetError(f"oxford102-flowers: expected {jpg_dir}/image_XXXXX.jpg and "
                           f"{text_dir}/class_XXXXX/image_XXXXX.txt (Reed et al.'s layout); not found")
    classes = sorted(p.name for p in text_dir.iterdir() if p.is_dir() and p.name.startswith("class_"))
    if not classes:
        raise DatasetError(f"{text_dir}: no class_XXXXX folders")
    test_classes = _class_list(root / "testclasses.txt")
    items, problems = [], []
    for label, cls in enumerate(classes):
        files = sorted((text_dir / cls).glob("image_*.txt"))
        per_class = []
        for txt in files:
            captions = [line.strip() for line in txt.read_text(encoding="utf-8", errors="replace").splitlines()]
            captions = [c for c in captions if c]
            image = jpg_dir / f"{txt.stem}.jpg"
            if not image.is_file():
                problems.append(f"{txt}: its image {image} is missing")
            elif not captions:
                problems.append(f"{txt}: no captions")
            else:
                per_class.append((image, captions, label))
        if test_classes is not None:
            items += per_class if (cls in test_classes) == (split == "test") else []
        else:
            items += _holdout(per_class, split)
    if problems:
        raise DatasetError(f"oxford102-flowers: {len(problems)} problem(s):\n  " + "\n  ".join(problems[:50]))
    if not items:
        raise DatasetError(f"oxford102-flowers: no images in the {split!r} split under {root}")
    images = _decode_images([i for i, _, _ in items], image_size, channels)
    labels = torch.tensor([label for _, _, label in items], dtype=torch.long)
    data = ImageData("oxford102-flowers", images, labels, classes)
    return attach_captions(data, [c for _, c, _ in items])


def _class_list(path: Path) -> set[str] | None:
    """``testclasses.txt`` lines (``class_00001``) as a set, or None without the file."""
    if not path.is_file():
        return None
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


# -- projection for training ------------------------------------------------------------------------
def prepare_text_conditioning(model, train: ImageData, test: ImageData | None = None) -> dict[str, Any]:
    """Fit the model's 384 -> text_dim projection on ``train``'s captions, set its buffers, and replace the
    raw embeddings of ``train`` (and ``test``) with projected ``(N, K, text_dim)`` ones. Returns what to
    write into the checkpoint's config.json."""
    from generation.text_encoder import fit_text_projection, set_text_projection

    if train.text_embeddings is None or train.caption_counts is None:
        raise DatasetError(f"data set {train.name!r} has no captions; --condition text needs a captioned set "
                           f"({', '.join(CAPTIONED_DATASETS)}, {GENERIC_PREFIX}<folder>)")
    raw_dim = train.text_embeddings.shape[-1]
    if raw_dim != model.config.text_encoder_dim:
        raise DatasetError(f"caption embeddings have {raw_dim} dims, the model expects "
                           f"{model.config.text_encoder_dim}")
    mean, matrix, info = fit_text_projection(train.text_embeddings, model.config.text_dim,
                                             counts=train.caption_counts)
    set_text_projection(model, mean, matrix)
    for data in (train, test):
        if data is not None and data.text_embeddings is not None:
            assert data.caption_counts is not None  # a captioned split has both
            data.text_embeddings = project_embeddings(model, data.text_embeddings, data.caption_counts)
    return {"text_encoder": model.config.text_encoder, "text_projection": info,
            "captions_per_image": int(train.text_embeddings.shape[1])}


@torch.no_grad()
def project_embeddings(model, raw: Tensor, counts: Tensor, chunk: int = 4096) -> Tensor:
    """``(N, K, 384)`` -> ``(N, K, text_dim)`` with the model's projection (zero rows past ``counts``)."""
    n, k, _ = raw.shape
    out = torch.zeros(n, k, model.config.text_dim)
    valid = torch.arange(k)[None, :] < counts[:, None]  # (N, K)
    mean, matrix = model.text_projection_mean.cpu(), model.text_projection_matrix.cpu()
    for start in range(0, n, chunk):
        block = raw[start:start + chunk]  # (b, K, 384)
        out[start:start + chunk] = (block - mean) @ matrix.T * valid[start:start + chunk, :, None]
    return out
