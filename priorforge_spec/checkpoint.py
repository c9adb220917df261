"""The files of a checkpoint folder, and reading its JSON without loading the weights.

A checkpoint is a folder: ``config.json`` (format version, backend, class name, model config, data set, image
shape, class names, condition) + ``model.safetensors`` (+ ``metrics.json``, ``samples.png``; training state
for resuming in ``training_state.{safetensors,json}``). :mod:`generation.checkpoint` writes and loads them;
the service registers a checkpoint from its ``config.json`` alone.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
SAMPLES_FILE = "samples.png"
CARD_FILE = "card.json"  # shipped models (training/zoo.py): what the Models page and GET /api/v1/models show
STATE_TENSORS_FILE = "training_state.safetensors"
STATE_JSON_FILE = "training_state.json"


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, incomplete or of an unknown format."""


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file + rename so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    folder = Path(path)
    config_path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    if not config_path.is_file():
        raise CheckpointError(f"{folder} is not a checkpoint: {CONFIG_FILE} is missing")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path} is not valid JSON: {exc}") from None
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{config_path}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
    return config


def read_metrics(path: str | Path) -> dict[str, Any]:
    metrics_path = Path(path) / METRICS_FILE
    return json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}


def read_card(path: str | Path) -> dict[str, Any] | None:
    """The folder's ``card.json`` (a shipped model's card), or None when it has none."""
    card_path = Path(path) / CARD_FILE
    if not card_path.is_file():
        return None
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{card_path} is not valid JSON: {exc}") from None
    if not isinstance(card, dict):
        raise CheckpointError(f"{card_path} must hold a JSON object")
    return card


def weights_digest(path: str | Path) -> str:
    """SHA-256 of the folder's weights file: tells a rebuilt model from the one registered before."""
    import hashlib

    digest = hashlib.sha256()
    with open(Path(path) / WEIGHTS_FILE, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
