"""Checkpoint folders: ``config.json`` + ``model.safetensors`` (+ ``metrics.json``, ``samples.png``).

Training state for resuming (optimizer states, step) goes to ``training_state.safetensors`` +
``training_state.json`` in the same folder. Nothing here is ever a pickle. The file names and the JSON
readers are torch-free, in :mod:`priorforge_spec.checkpoint` (the service reads checkpoints with them).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from generation.base import GenerativeModel
from generation.registry import get_model_class
from priorforge_spec.checkpoint import (CONFIG_FILE, FORMAT_VERSION, METRICS_FILE, SAMPLES_FILE,  # noqa: F401
                                        STATE_JSON_FILE, STATE_TENSORS_FILE, WEIGHTS_FILE, CheckpointError,
                                        read_checkpoint_config, read_metrics, write_json_atomic)


@dataclass
class CheckpointInfo:
    """Everything in ``config.json`` besides the model config."""

    backend: str
    class_name: str
    dataset: str
    image_shape: tuple[int, int, int]
    class_names: list[str]
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def condition(self) -> str:
        return self.extra.get("condition", "none")


def save_checkpoint(model: GenerativeModel, out_dir: str | Path, *, dataset: str, class_names: list[str],
                    metrics: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Save ``model`` into the folder ``out_dir`` (created if needed); returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".model.")
    os.close(fd)
    save_file(state, tmp, metadata={"format_version": str(FORMAT_VERSION), "backend": model.backend})
    os.replace(tmp, out / WEIGHTS_FILE)
    config = {
        "format_version": FORMAT_VERSION,
        "backend": model.backend,
        "class_name": type(model).__name__,
        "model_config": model.config.to_dict(),
        "dataset": dataset,
        "image_shape": list(model.config.image_shape),
        "class_names": list(class_names),
        "condition": model.config.condition,
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    write_json_atomic(out / CONFIG_FILE, config)
    if metrics is not None:
        write_json_atomic(out / METRICS_FILE, metrics)
    return out


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[GenerativeModel, CheckpointInfo]:
    """Rebuild the model saved in ``path`` (in eval mode, on ``device``) and its metadata."""
    folder = Path(path)
    config = read_checkpoint_config(folder)
    cls = get_model_class(config["backend"])
    if cls.__name__ != config.get("class_name"):
        raise CheckpointError(f"{folder}: class {config.get('class_name')!r} does not match backend {config['backend']!r}")
    model = cls(cls.config_class.from_dict(config["model_config"]))
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{folder} is not a complete checkpoint: {WEIGHTS_FILE} is missing")
    dropped = (config.get("export") or {}).get("dropped_modules") or []
    if dropped:  # an inference-only export (generation/export.py): its weights are what sampling needs
        try:
            model.drop_modules(dropped)
        except ValueError as exc:
            raise CheckpointError(f"{folder}: {exc}") from None
    # half-precision exports are cast back to the model's float32 here; sampling always runs in float32
    _load_weights(model, load_file(str(weights), device="cpu"), folder)
    model.to(device).eval()
    known = {"format_version", "backend", "class_name", "model_config", "dataset", "image_shape", "class_names"}
    info = CheckpointInfo(
        backend=config["backend"],
        class_name=config["class_name"],
        dataset=config.get("dataset", "unknown"),
        image_shape=tuple(config["image_shape"]),
        class_names=list(config.get("class_names", [])),
        format_version=config["format_version"],
        extra={k: v for k, v in config.items() if k not in known},
    )
    return model, info


# -- training state ---------------------------------------------------------------------------------
def _load_weights(model: GenerativeModel, state: dict[str, torch.Tensor], folder: Path) -> None:
    """Load ``state`` strictly, except that a training-only module saved with another layout (an older
    version's discriminator) is dropped: the model loads for sampling, as an inference-only one."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    stale = sorted({key.split(".", 1)[0] for key in [*missing, *unexpected]})
    if not stale:
        return
    if not set(stale) <= set(model.training_only_modules):
        keys = [*missing, *unexpected][:5]
        raise CheckpointError(f"{folder}: the weights do not match the {model.backend} model "
                              f"(missing or unexpected: {keys}...)")
    model.drop_modules(stale)


def _flatten_optimizer(name: str, state_dict: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Move the tensors of an optimizer state dict into ``tensors``; return the JSON-able rest."""
    plain: dict[str, Any] = {"param_groups": state_dict["param_groups"], "state": {}}
    for param_id, param_state in state_dict["state"].items():
        entry: dict[str, Any] = {}
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensor_key = f"{name}/{param_id}/{key}"
                tensors[tensor_key] = value.detach().cpu().contiguous()
                entry[key] = {"__tensor__": tensor_key}
            else:
                entry[key] = value
        plain["state"][str(param_id)] = entry
    return plain


def _unflatten_optimizer(plain: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for param_id, entry in plain["state"].items():
        state[int(param_id)] = {
            key: tensors[value["__tensor__"]] if isinstance(value, dict) and "__tensor__" in value else value
            for key, value in entry.items()
        }
    return {"state": state, "param_groups": plain["param_groups"]}


EXTRA_PREFIX = "extra/"  # a trainer's own tensors in the training state (e.g. a weight average)


def save_training_state(out_dir: str | Path, optimizers: dict[str, torch.optim.Optimizer],
                        progress: dict[str, Any], extra_tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Optimizer states and a trainer's ``extra_tensors`` (safetensors) and loop progress (JSON: step, epoch,
    RNG seed...) for resuming."""
    out = Path(out_dir)
    tensors: dict[str, torch.Tensor] = {f"{EXTRA_PREFIX}{key}": value.detach().cpu().contiguous()
                                        for key, value in (extra_tensors or {}).items()}
    plain = {name: _flatten_optimizer(name, opt.state_dict(), tensors) for name, opt in optimizers.items()}
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".state.")
    os.close(fd)
    save_file(tensors, tmp)
    os.replace(tmp, out / STATE_TENSORS_FILE)
    write_json_atomic(out / STATE_JSON_FILE, {"optimizers": plain, "progress": progress})


def load_training_state(out_dir: str | Path, optimizers: dict[str, torch.optim.Optimizer],
                        extra_tensors: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Restore optimizer states saved by :func:`save_training_state`, and fill ``extra_tensors`` with the
    trainer's own tensors saved with them; returns the saved progress."""
    folder = Path(out_dir)
    state_json, state_tensors = folder / STATE_JSON_FILE, folder / STATE_TENSORS_FILE
    if not state_json.is_file() or not state_tensors.is_file():
        raise CheckpointError(f"{folder} has no training state to resume from ({STATE_JSON_FILE} missing)")
    saved = json.loads(state_json.read_text())
    tensors = load_file(str(state_tensors))
    missing = sorted(set(optimizers) - set(saved["optimizers"]))
    if missing:
        raise CheckpointError(f"{folder}: training state lacks optimizer(s) {missing}")
    for name, opt in optimizers.items():
        opt.load_state_dict(_unflatten_optimizer(saved["optimizers"][name], tensors))
    if extra_tensors is not None:
        extra_tensors.update({key[len(EXTRA_PREFIX):]: value for key, value in tensors.items()
                              if key.startswith(EXTRA_PREFIX)})
    return saved["progress"]
