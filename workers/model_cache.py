"""The models a worker process holds in memory: each model version is loaded once per process (from the object
store into this machine's cache first, when it lives there) and kept in an LRU of ``MODEL_CACHE_SIZE``."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from flask import current_app

from app.core.checkpoint_store import checkpoint_folder
from app.core.tables import ModelVersion

@dataclass(frozen=True)
class VersionSnapshot:
    """What the task needs of a model version (read once: the task's commits expire ORM objects)."""

    id: int
    name: str
    version: int
    backend: str
    checkpoint_path: str
    weights_sha256: str | None
    checkpoint_key: str | None
    checkpoint_files: dict[str, str] | None

    @classmethod
    def columns(cls) -> list:
        return [getattr(ModelVersion, name) for name in cls.__dataclass_fields__]



_MODELS: OrderedDict[tuple[int, str], tuple[Any, Any]] = OrderedDict()
_MODELS_LOCK = threading.Lock()


def get_model(version: ModelVersion | Any) -> tuple[Any, Any]:
    """(model, CheckpointInfo) of a model version, loaded once per process; LRU of MODEL_CACHE_SIZE."""
    key = (version.id, version.checkpoint_path)
    with _MODELS_LOCK:
        if key in _MODELS:
            _MODELS.move_to_end(key)
            return _MODELS[key]
    from generation.checkpoint import load_checkpoint
    from generation.device import resolve_device

    # from the object store into this machine's cache when it lives there; its hash checked either way
    folder = checkpoint_folder(version, current_app.extensions["priorforge_storage"],
                               current_app.config["MODEL_CACHE_DIR"])
    model, info = load_checkpoint(folder, device=resolve_device(current_app.config["DEVICE"]))
    with _MODELS_LOCK:
        _MODELS[key] = (model, info)
        _MODELS.move_to_end(key)
        while len(_MODELS) > max(1, current_app.config["MODEL_CACHE_SIZE"]):
            _MODELS.popitem(last=False)
    return model, info


def loaded_models() -> list[tuple[int, str]]:
    """(version id, checkpoint path) of every model in memory, least recently used first."""
    with _MODELS_LOCK:
        return list(_MODELS)


def model_cached(version: ModelVersion | Any) -> bool:
    with _MODELS_LOCK:
        return (version.id, version.checkpoint_path) in _MODELS
