"""Seeded generation and PNG output with the generation parameters in PNG text chunks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from torch import Tensor
from torchvision.utils import make_grid

from generation.base import Condition, ConditionError, GenerativeModel
from generation.precision import autocast, resolve_precision, to_device
from priorforge_spec.precision import DECODE_PASS_ROWS
from priorforge_spec.conditions import resolve_label
# backends whose ``decode`` reads the code only, never the condition (the service reads the same set); any
# other backend decodes one condition per pass (see ``decode_group_key``)
from priorforge_spec.experiments import CONDITION_FREE_DECODERS  # noqa: F401  (also imported from here)
from priorforge_spec.png import read_png_params  # noqa: F401  (read back what save_png writes)


def condition_from_request(model: GenerativeModel, class_names: list[str], *, label: str | int | None = None,
                           cluster: int | None = None, embedding: Tensor | None = None,
                           prompt: str | None = None) -> Condition:
    """Turn what a user typed (label name or index, cluster id, prompt embedding) into a Condition."""
    kind = model.config.condition
    given = [name for name, value in (("label", label), ("cluster", cluster), ("prompt", prompt)) if value is not None]
    if len(given) > 1:
        raise ConditionError(f"give only one of label, cluster, prompt (got {', '.join(given)})")
    if label is not None:
        if kind != "class":
            raise ConditionError(f"this model is trained with condition {kind!r}, it does not take a class label")
        return Condition("class", index=resolve_label(label, class_names))
    if cluster is not None:
        if kind != "cluster":
            raise ConditionError(f"this model is trained with condition {kind!r}, it does not take a cluster id")
        if not 0 <= int(cluster) < model.config.num_classes:
            raise ConditionError(f"cluster {cluster} out of range 0..{model.config.num_classes - 1}")
        return Condition("cluster", index=int(cluster))
    if prompt is not None:
        if kind != "text":
            raise ConditionError(f"this model is trained with condition {kind!r}, it does not take a text prompt")
        if embedding is None:
            raise ConditionError("a text prompt needs its embedding (encode it with the model's text encoder)")
        return Condition("text", embedding=embedding, prompt=prompt)
    if kind in ("class", "text"):
        raise ConditionError(f"this model needs a {'label' if kind == 'class' else 'prompt'} (condition {kind!r})")
    return Condition("none")


def generate(model: GenerativeModel, n: int, condition: Condition, seed: int, precision: str = "fp32") -> Tensor:
    """``n`` images for ``condition`` as float32 on the CPU; the latents come from a CPU generator seeded with
    ``seed``, so the same seed gives the same latents on every device.

    ``precision`` (``fp32``, ``bf16``, ``fp16`` or ``auto``; see :mod:`generation.precision`) applies to the
    decoder only: the codes are always drawn in fp32, so a seed names the same code under every precision and
    a half-precision image differs from the fp32 one by the decoder's rounding alone (bounded in
    tests/test_precision.py). ``fp32`` is bit-exact and deterministic.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    device = model.device
    resolved = resolve_precision(precision, device)
    generator = torch.Generator().manual_seed(int(seed))
    model.eval()
    with torch.inference_mode():
        latents = to_device(model.sample_latents(n, condition, generator), device)  # fp32, (n, latent_dim)
        with autocast(device, resolved):
            images = model.decode(latents, condition)  # (n, C, H, W)
    # copied outside inference mode: callers get an ordinary tensor they may modify in place
    return images.to(device="cpu", dtype=torch.float32, copy=True)


# rows per pass of a backend's code computation (``sample_latents_per_seed``): fixed, not the GENERATE_CHUNK
# setting, so that a seed names the same code in every service, CLI and experiment whatever its settings
CODE_PASS_ROWS = 8


def per_image_latents(model: GenerativeModel, n: int, condition: Condition, seed: int) -> Tensor:
    """Codes ``(n, latent_dim)`` with image *i*'s drawn from a CPU generator seeded ``seed + i``: how the service
    draws a job's codes, so one image does not depend on how many were asked for."""
    return model.sample_latents_per_seed(range(seed, seed + n), condition, CODE_PASS_ROWS)


def generate_like_service(model: GenerativeModel, n: int, condition: Condition, seed: int,
                          pass_size: int = DECODE_PASS_ROWS, precision: str = "fp32") -> Tensor:
    """``n`` images exactly as a service job with this seed gets them (float32 on the CPU): image *i* from seed
    ``seed + i`` (:func:`per_image_latents`), decoded in passes of ``pass_size`` rows (the service's
    ``GENERATE_CHUNK``; :func:`decode_fixed_passes`)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if pass_size < 1:
        raise ValueError(f"pass_size must be at least 1, got {pass_size}")
    resolved = resolve_precision(precision, model.device)
    model.eval()
    with torch.inference_mode():
        latents = per_image_latents(model, n, condition, int(seed))  # (n, latent_dim), fp32
        with autocast(model.device, resolved):
            images = decode_fixed_passes(model, latents, condition, pass_size)  # (n, C, H, W)
    return images.to(dtype=torch.float32, copy=True)


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] floats ``(B, C, H, W)`` -> uint8 ``(B, C, H, W)``."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def image_grid(images: Tensor, nrow: int | None = None) -> Image.Image:
    """One PIL image: the image itself for a single image, a grid (torchvision) otherwise."""
    pixels = to_uint8(images)
    if pixels.shape[0] == 1:
        grid = pixels[0]
    else:
        nrow = nrow or max(1, int(round(pixels.shape[0] ** 0.5)))
        grid = make_grid(pixels, nrow=nrow, padding=2, pad_value=0)
        if pixels.shape[1] == 1:  # make_grid repeats a grey channel three times: grey grids stay grey
            grid = grid[:1]
    array = grid.permute(1, 2, 0).numpy()  # (H, W, C) uint8
    if array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0], mode="L")
    return Image.fromarray(array, mode="RGB")


def png_metadata(params: dict[str, Any]) -> PngInfo:
    info = PngInfo()
    info.add_text("priorforge", json.dumps(params, sort_keys=True))
    for key, value in params.items():
        info.add_text(str(key), str(value))
    return info


def save_png(images: Tensor, path: str | Path, params: dict[str, Any] | None = None,
             nrow: int | None = None) -> Path:
    """Write ``images`` as one PNG (a grid when there are several) with ``params`` as text chunks."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, nrow).save(out, format="PNG", pnginfo=png_metadata(params or {}))
    return out


# -- batch-invariant decoding (the service decodes many jobs in one pass) ---------------------------------
def decode_group_key(model: GenerativeModel, condition: Condition) -> tuple[Any, ...] | None:
    """Codes with the same key can share a ``decode`` call; None when the decoder ignores the condition."""
    if model.config.condition == "none" or model.backend in CONDITION_FREE_DECODERS:
        return None
    return (condition.kind, condition.index, condition.prompt)


@torch.inference_mode()
def decode_fixed_passes(model: GenerativeModel, latents: Tensor, condition: Condition | None,
                        pass_size: int) -> Tensor:
    """``decode`` in passes of exactly ``pass_size`` rows, the last one padded with zero codes.

    CPU kernels pick their blocking by batch size, so a row's floats (and, rarely, its uint8 pixels) depend
    on how many rows share the pass. With every pass the same size, a code decodes to the same pixels
    whichever other codes it is batched with (checked on CPU: bit-identical at any position of the pass).
    """
    return torch.cat(list(iter_decode_passes(model, latents, condition, pass_size)))


def iter_decode_passes(model: GenerativeModel, latents: Tensor, condition: Condition | None,
                       pass_size: int, *, set_eval: bool = True) -> Iterator[Tensor]:
    """The passes of :func:`decode_fixed_passes` one at a time: images ``(rows, C, H, W)`` on the CPU, in
    order, so a caller can use the first rows while the next pass decodes. Runs in the caller's inference
    mode and autocast (each ``next()`` decodes one pass)."""
    if set_eval:  # False: the caller's model is in eval mode already (a worker's cached model)
        model.eval()
    total = latents.shape[0]  # latents: (N, latent_dim)
    for start in range(0, total, pass_size):
        part = latents[start:start + pass_size].to(model.device)
        rows = part.shape[0]
        if rows < pass_size:
            part = torch.cat([part, part.new_zeros(pass_size - rows, *part.shape[1:])])
        yield model.decode(part, condition)[:rows].float().cpu()
