"""Inference-only export of a checkpoint: the weights sampling needs, optionally stored in half precision.

An export is an ordinary checkpoint folder (``config.json``, ``model.safetensors``, ``metrics.json``,
``samples.png``) that :func:`generation.checkpoint.load_checkpoint` loads, samples and registers like any
other. It differs in three ways:

- the backend's ``training_only_modules`` are left out (the code-generator AAE's encoder and both
  discriminators; the other backends' encoder, unless ``keep_encoder``), and so is the training state;
- with ``precision="fp16"`` every floating-point tensor is stored as float16 and cast back to float32 on
  load, so sampling still runs in float32: a seed gives the same pixels from the export every time, and
  they differ from the full-precision model's by the rounding of the weights only;
- ``config.json`` gets an ``export`` entry: the source, what was dropped, the precision, and the measured
  difference from the source model over a fixed set of samples (8-bit levels, as in a PNG).

The export is checked before it is kept: the difference must stay within ``tolerance`` levels (default
:data:`DEFAULT_TOLERANCE`), and two draws with one seed must give identical pixels; otherwise the folder is
removed and :class:`ExportError` says why (use ``precision="fp32"``, which is exact).
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file

from generation.base import Condition, GenerativeModel
from generation.checkpoint import (CONFIG_FILE, FORMAT_VERSION, METRICS_FILE, SAMPLES_FILE, WEIGHTS_FILE,
                                   CheckpointError, load_checkpoint, read_checkpoint_config, write_json_atomic)
from generation.sampling import generate, to_uint8

ExportPrecision = Literal["fp32", "fp16"]
EXPORT_PRECISIONS: tuple[str, ...] = ("fp32", "fp16")
DEFAULT_TOLERANCE = 2  # 8-bit levels: the largest allowed |pixel difference| from the source model
CHECK_SAMPLES = 16  # per condition checked
#: extra files of a checkpoint folder an export carries along (model cards read them)
CARRIED_FILES = (METRICS_FILE, SAMPLES_FILE, "card.json", "README.md")


class ExportError(ValueError):
    """An export that cannot be made or does not reproduce its source closely enough."""


def exported_state(model: GenerativeModel, precision: ExportPrecision,
                   dropped: list[str]) -> dict[str, torch.Tensor]:
    """The model's state dict without the ``dropped`` submodules, floats cast to ``precision``."""
    dtype = torch.float16 if precision == "fp16" else torch.float32
    state = {}
    for key, value in model.state_dict().items():
        if key.split(".", 1)[0] in dropped:
            continue
        tensor = value.detach().cpu()
        state[key] = (tensor.to(dtype) if tensor.is_floating_point() else tensor).contiguous()
    return state


def check_conditions(model: GenerativeModel, count: int = 4) -> list[Condition]:
    """A few conditions of every kind the model takes, to compare an export with its source."""
    kind = model.config.condition
    if kind in ("class", "cluster"):
        k = model.config.num_classes
        return [Condition(kind, index=i) for i in sorted({0, k // 3, (2 * k) // 3, k - 1})]
    if kind == "text":  # condition vectors of the size and spread the projection gives (no encoder needed)
        generator = torch.Generator().manual_seed(7)
        directions = torch.nn.functional.normalize(torch.randn(count, model.config.text_encoder_dim,
                                                               generator=generator), dim=1)
        embeddings = model.project_text(directions.to(model.text_projection_mean)).cpu()
        return [Condition("text", embedding=e) for e in embeddings]
    return [Condition("none")]


def pixel_difference(source: GenerativeModel, exported: GenerativeModel, seed: int = 0) -> dict[str, Any]:
    """Largest and mean |difference| in 8-bit levels between the two models' samples, and whether the
    export gives the same pixels twice for one seed."""
    largest, total, count, repeatable = 0, 0.0, 0, True
    for i, condition in enumerate(check_conditions(source)):
        a = to_uint8(generate(source, CHECK_SAMPLES, condition, seed + i)).int()
        b = to_uint8(generate(exported, CHECK_SAMPLES, condition, seed + i)).int()
        again = to_uint8(generate(exported, CHECK_SAMPLES, condition, seed + i)).int()
        repeatable &= bool(torch.equal(b, again))
        diff = (a - b).abs()
        largest = max(largest, int(diff.max()))
        total += float(diff.sum())
        count += diff.numel()
    return {"max_abs_pixel_diff": largest, "mean_abs_pixel_diff": round(total / count, 5),
            "checked_samples": CHECK_SAMPLES * len(check_conditions(source)), "repeatable": repeatable}


def export_checkpoint(source: str | Path, out: str | Path, *, precision: ExportPrecision = "fp16",
                      keep_encoder: bool = False, tolerance: int = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """Write the inference-only export of checkpoint ``source`` into the folder ``out``; returns its
    ``export`` entry. ``out`` must not exist yet, or be an earlier export, which is replaced once the new one has passed its
    checks."""
    if precision not in EXPORT_PRECISIONS:
        raise ExportError(f"precision must be one of {', '.join(EXPORT_PRECISIONS)}, got {precision!r}")
    if tolerance < 0:
        raise ExportError(f"tolerance must be 0 or more 8-bit levels, got {tolerance}")
    src, dst = Path(source), Path(out)
    config = read_checkpoint_config(src)
    if (config.get("export") or {}).get("dropped_modules"):
        raise ExportError(f"{src} is already an inference-only export; export its source checkpoint instead")
    if dst.resolve() == src.resolve():
        raise ExportError("the export folder must differ from the checkpoint folder")
    _check_replaceable(dst)
    model, _ = load_checkpoint(src)
    dropped = [m for m in model.training_only_modules if not (keep_encoder and m == "encoder")]
    state = exported_state(model, precision, dropped)
    staging = dst.with_name(f".{dst.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format_version": str(FORMAT_VERSION),
                                                                 "backend": model.backend, "precision": precision})
        entry: dict[str, Any] = {"source": str(src), "precision": precision, "dropped_modules": dropped,
                 "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_json_atomic(staging / CONFIG_FILE, {**config, "export": entry})
        for name in CARRIED_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, staging / name)
        exported, _ = load_checkpoint(staging)
        entry.update(pixel_difference(model, exported))
        entry["tolerance"] = tolerance
        if not entry["repeatable"]:
            raise ExportError("the export does not give the same pixels twice for one seed")
        if entry["max_abs_pixel_diff"] > tolerance:
            raise ExportError(f"{precision} weights change pixels by up to {entry['max_abs_pixel_diff']} levels "
                              f"(tolerance {tolerance}); export with precision fp32")
        write_json_atomic(staging / CONFIG_FILE, {**config, "export": entry})
        _swap_in(staging, dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return entry


def _check_replaceable(dst: Path) -> None:
    """Refuse to overwrite anything but an earlier export."""
    if not dst.exists():
        return
    try:
        is_export = bool(json.loads((dst / CONFIG_FILE).read_text()).get("export"))
    except (OSError, ValueError):
        is_export = False
    if not is_export:
        raise ExportError(f"{dst} exists and is not an earlier export; choose another --out")


def _swap_in(staging: Path, dst: Path) -> None:
    """Put the checked export in place; an earlier export is removed only once the new one is there."""
    old = dst.with_name(f".{dst.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        dst.rename(old)
    staging.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def folder_size(path: str | Path) -> int:
    """Bytes of the files in a checkpoint folder (not recursive: what an export holds)."""
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())


__all__ = ["DEFAULT_TOLERANCE", "EXPORT_PRECISIONS", "CheckpointError", "ExportError", "export_checkpoint",
           "folder_size", "pixel_difference"]
