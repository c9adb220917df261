"""Data sets for training runs: the built-in ones found under ``DATA_ROOT``, the uploaded ones
(:mod:`app.services.uploads` stores them), and how a worker loads one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy import select

from app.core.errors import ApiError
from app.core.extensions import db
from app.core.tables import Dataset, iso
from priorforge_spec.datasets import CAPTIONED_DATASETS, IMAGE_EXTENSIONS, builtin_available

BUILTIN = ("mnist", "fashion-mnist", "cifar10", "digits")
# the captioned built-in sets: captions written from the image set's classes and attributes (flowers: its own)
CAPTIONED_BUILTIN = {"fashion-mnist-captions": "fashion-mnist", "cifar10-captions": "cifar10",
                     "oxford102-flowers": None}
assert set(CAPTIONED_BUILTIN) == set(CAPTIONED_DATASETS)
RESERVED_NAMES = (*BUILTIN, *CAPTIONED_DATASETS, "imagefolder")  # an upload may not take these names


def dataset_source(name: str) -> dict[str, Any]:
    """How a worker loads data set ``name``: ``loader`` (a name for :func:`training.data.load_dataset` or a
    ``captions:<folder>``), ``data_root``, and what it offers (``labels``, ``captions``, ``images``)."""
    data_root = current_app.config.get("DATA_ROOT")
    if name in BUILTIN:
        available = {d["name"]: d["available"] for d in builtin_datasets()}
        if not available[name]:
            raise ApiError(422, f"built-in data set {name!r} is not available: DATA_ROOT "
                                f"({data_root or 'not set'}) does not hold it", field="dataset")
        return {"loader": name, "data_root": data_root, "labels": True, "captions": False, "images": None}
    if name in CAPTIONED_DATASETS:
        available = {d["name"]: d["available"] for d in builtin_datasets()}
        if not available[name]:
            raise ApiError(422, f"built-in data set {name!r} is not available: DATA_ROOT "
                                f"({data_root or 'not set'}) does not hold it", field="dataset")
        return {"loader": name, "data_root": data_root, "labels": True, "captions": True, "images": None}
    row = db.session.scalars(select(Dataset).where(Dataset.name == name)).first()
    if row is None:
        uploaded = list(db.session.scalars(select(Dataset.name)))
        raise ApiError(422, f"unknown data set {name!r}; built-in: {', '.join(BUILTIN)}; captioned built-in: "
                            f"{', '.join(CAPTIONED_DATASETS)}; uploaded: {', '.join(uploaded) or 'none'}",
                       field="dataset")
    if row.layout == "captions":  # lines with a "label" make classes: class-conditional by default then
        return {"loader": f"captions:{row.path}", "data_root": None, "labels": row.classes >= 2,
                "captions": True, "images": row.images, **_image_defaults(Path(row.path))}
    return {"loader": "imagefolder", "data_root": row.path, "labels": row.classes >= 2, "captions": False,
            "images": row.images, **_image_defaults(Path(row.path))}


def _image_defaults(folder: Path) -> dict[str, int]:
    """The size and channels a run on an uploaded set uses unless told: from its first image (the header
    only), the side rounded up to a size the models take (28 stays 28; at most 256), grey -> 1 channel."""
    from PIL import Image

    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            with Image.open(path) as img:
                side, grey = max(img.size), img.mode in ("1", "L", "LA", "I", "I;16", "F")
            size = 28 if side == 28 else next((s for s in (8, 16, 32, 64, 128) if s >= side), 256)
            return {"default_image_size": size, "default_channels": 1 if grey else 3}
    return {}


def dataset_to_dict(row: Dataset) -> dict[str, Any]:
    body = {"name": row.name, "layout": row.layout, "images": row.images, "classes": row.classes,
            "class_names": row.class_names, "captions": row.captions, "size_bytes": row.size_bytes,
            "source": row.source, "created_at": iso(row.created_at), "builtin": False}
    if hasattr(row, "ignored"):
        body["ignored"] = row.ignored
    return body


def uploaded_datasets() -> list[Dataset]:
    return list(db.session.scalars(select(Dataset).order_by(Dataset.created_at.desc(), Dataset.id.desc())))


def builtin_datasets() -> list[dict[str, Any]]:
    """The built-in data sets and whether ``DATA_ROOT`` holds them (``digits`` ships with scikit-learn), then
    the captioned built-in sets (``captions: true``), available when their image set is."""
    data_root = current_app.config.get("DATA_ROOT")
    root = Path(data_root).expanduser() if data_root else None
    out = []
    for name in BUILTIN:
        out.append({"name": name, "builtin": True, "available": builtin_available(name, data_root),
                    "captions": False})
    images = {d["name"]: d["available"] for d in out}
    for name, base in CAPTIONED_BUILTIN.items():
        if base is not None:
            available = images[base]
        else:  # Reed et al.'s layout: <root>/text_c10 (or <root>/flowers/text_c10) beside jpg/
            available = root is not None and any((root / sub / "text_c10").is_dir() for sub in (".", "flowers"))
        out.append({"name": name, "builtin": True, "available": available, "captions": True})
    return out
