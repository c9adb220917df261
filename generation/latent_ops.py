"""Latent-space operations for any backend with an encoder, through the uniform ``encode``/``decode`` API only.

- :func:`interpolate`: linear paths between the codes of two images (or two batches of images).
- :func:`interpolate_generated`: the same between two generated codes (two seeds, labels or prompts), for any
  backend, encoder or not: the service's interpolation experiment.
- :func:`mix`: the STL-10 write-up's latent mixing ("pegasus" = horse codes + bird codes, methods.md
  section 5): encode two image sets, optionally flip chosen code dims (or the whole codes of chosen set-B
  images) by multiplying by -1, mix with weight ``w`` toward set A: ``z = w * z_A + (1 - w) * z_B``, decode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor

from generation.base import Condition, GenerativeModel
# backends that can re-generate an encoded image under another condition, keeping what is not the condition:
# glf inverts its conditional flow (the code's noise under the image's own condition, decoded from the other
# condition's code of that noise); pga and vae decode the code itself with the other condition. The
# code-generator AAE's generator and the LDE's autoregressive sampler cannot be inverted.
from priorforge_spec.experiments import REGENERATING_BACKENDS

if TYPE_CHECKING:
    from generation.glf import GenerativeLatentFlow


class LatentOpError(ValueError):
    """A latent operation that cannot run: a backend without an encoder, bad images, bad arguments."""


def require_encoder(model: GenerativeModel) -> None:
    """Raise :class:`LatentOpError` unless ``model`` has an encoder."""
    if not getattr(model, "has_encoder", False):
        raise LatentOpError(f"backend {model.backend!r} has no encoder; latent operations need one")


def _as_batch(images: Tensor, model: GenerativeModel, name: str) -> Tensor:
    if images.dim() == 3:
        images = images.unsqueeze(0)
    expected = tuple(model.config.image_shape)
    if images.dim() != 4 or tuple(images.shape[1:]) != expected:
        raise LatentOpError(f"{name}: expected images of shape (B, {', '.join(map(str, expected))}), "
                            f"got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise LatentOpError(f"{name}: no images")
    return images


@torch.no_grad()
def encode_images(model: GenerativeModel, images: Tensor, condition: Condition | None = None) -> Tensor:
    """Codes ``(B, latent_dim)`` of ``images`` (the posterior mean for stochastic encoders), in eval mode."""
    require_encoder(model)
    images = _as_batch(images, model, "images")
    model.eval()
    try:
        out = model.encode(images.to(model.device), condition)
    except NotImplementedError:
        raise LatentOpError(f"backend {model.backend!r} has no encoder; latent operations need one") from None
    return out.latents


@torch.no_grad()
def decode_latents(model: GenerativeModel, latents: Tensor, condition: Condition | None = None) -> Tensor:
    """Images ``(B, C, H, W)`` in [-1, 1] on the CPU from codes, in eval mode."""
    model.eval()
    return model.decode(latents.to(model.device), condition).float().cpu()


def interpolate(model: GenerativeModel, a_images: Tensor, b_images: Tensor, steps: int,
                condition: Condition | None = None) -> Tensor:
    """Decoded linear interpolations between the codes of ``a_images`` and ``b_images``.

    Args:
        model: any backend with an encoder.
        a_images, b_images: ``(B, C, H, W)`` (or one ``(C, H, W)`` image each), same B, in [-1, 1].
        steps: points per path, endpoints included (>= 2).
        condition: passed to ``encode``/``decode`` for backends whose autoencoder is conditional.

    Returns:
        ``(B * steps, C, H, W)``: pair i occupies rows ``i * steps .. (i + 1) * steps - 1``, from a to b.
    """
    if int(steps) < 2:
        raise LatentOpError(f"steps must be at least 2 (the two endpoints), got {steps}")
    a = _as_batch(a_images, model, "a_images")
    b = _as_batch(b_images, model, "b_images")
    if a.shape[0] != b.shape[0]:
        raise LatentOpError(f"a_images and b_images must hold as many images, got {a.shape[0]} and {b.shape[0]}")
    za, zb = encode_images(model, a, condition), encode_images(model, b, condition)  # (B, D) each
    return decode_latents(model, lerp_codes(za, zb, steps).flatten(0, 1), condition)  # (B * S, C, H, W)


def image_to_tensor(picture, image_shape: tuple[int, int, int] | list[int]) -> Tensor:
    """A PIL image -> ``(C, H, W)`` in [-1, 1] at a checkpoint's shape: converted to its channels (L or RGB),
    centre-cropped to a square and resized (bicubic) to its side. The ``interpolate`` and ``mix`` commands and
    the service's reconstruct and mix experiments read their images this way."""
    import numpy as np
    from PIL import Image

    channels, size = int(image_shape[0]), int(image_shape[1])
    img = picture.convert("L" if channels == 1 else "RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
    pixels = pixels.unsqueeze(0) if pixels.dim() == 2 else pixels.permute(2, 0, 1)  # (C, H, W)
    return pixels.float().div(127.5).sub(1.0)


@torch.inference_mode()
def reconstruct_and_mix(model: GenerativeModel, images: list[Tensor], steps: int | None, pass_size: int,
                        condition: Condition | None = None, precision: str = "fp32") -> Tensor:
    """The service's reconstruct and mix experiments. Each image ``(C, H, W)`` in [-1, 1] is encoded alone (a
    batch of one, so its code does not depend on the others); then, with one image and ``steps`` None, the
    result is ``(2, C, H, W)``: the image as the model sees it and its reconstruction; with two images, the
    ``steps`` decodes of the codes mixed ``(1 - t) * z_a + t * z_b`` for t from 0 to 1 (:func:`mix_codes`'s
    weight of A going from 1 to 0), whose ends are the two reconstructions. Decoded as a job decodes (passes of
    exactly ``pass_size`` rows), so a reconstruction is the same pixels in both."""
    from generation.precision import autocast
    from generation.sampling import decode_fixed_passes

    codes = [encode_images(model, image, condition) for image in images]  # each (1, D)
    if len(images) == 1 and steps is None:
        z = codes[0]
    elif len(images) == 2 and steps is not None:
        z = lerp_codes(codes[0], codes[1], steps)[0]  # (steps, D), ends exactly z_a and z_b
    else:
        raise LatentOpError("give one image to reconstruct, or two images and the steps between them")
    with autocast(model.device, precision):
        decoded = decode_fixed_passes(model, z, condition, max(1, pass_size)).float()
    if steps is None:
        return torch.cat([images[0].unsqueeze(0).float().cpu(), decoded])
    return decoded



@torch.inference_mode()
def regenerate_as(model: GenerativeModel, image: Tensor, condition: Condition, targets: list[Condition],
                  pass_size: int, precision: str = "fp32") -> Tensor:
    """Images ``(len(targets), C, H, W)``: ``image`` (``(C, H, W)`` in [-1, 1], whose condition is
    ``condition``) re-generated under each of ``targets`` with its code kept, by the rule of
    :data:`REGENERATING_BACKENDS`. Under its own condition this gives back the reconstruction (for glf up to the
    flow's float rounding)."""
    from generation.precision import autocast
    from generation.sampling import decode_fixed_passes

    if model.backend not in REGENERATING_BACKENDS:
        raise LatentOpError(f"backend {model.backend!r} cannot re-generate an image under another condition "
                            f"(its sampler cannot be inverted); {', '.join(sorted(REGENERATING_BACKENDS))} can")
    code = encode_images(model, image, condition)  # (1, D)
    parts = []
    with autocast(model.device, precision):
        if model.backend == "glf":
            generator = torch.Generator()

            def vector(c: Condition) -> Tensor | None:
                if not model.config.condition_dim:
                    return None
                return model.condition_vectors(1, c, generator).to(model.device)

            flow = cast("GenerativeLatentFlow", model).flow  # the branch is taken for a glf only
            noise = flow.standard_noise(code, vector(condition))
            codes = torch.cat([flow.sample(noise, vector(target)) for target in targets])
            parts.append(decode_fixed_passes(model, codes, None, max(1, pass_size)))
        else:  # the decoder reads the condition: one decode per target
            for target in targets:
                parts.append(decode_fixed_passes(model, code, target, max(1, pass_size)))
    return torch.cat(parts).float()


def lerp_codes(za: Tensor, zb: Tensor, steps: int) -> Tensor:
    """``(B, steps, D)``: the linear paths from the codes ``za`` to ``zb`` (each ``(B, D)``), ``steps`` points
    each with the endpoints exactly ``za`` and ``zb`` (so an end decodes to the very pixels of its code)."""
    if int(steps) < 2:
        raise LatentOpError(f"steps must be at least 2 (the two endpoints), got {steps}")
    t = torch.linspace(0.0, 1.0, int(steps), device=za.device).view(1, -1, 1)  # (1, S, 1)
    z = (1 - t) * za.unsqueeze(1) + t * zb.unsqueeze(1)  # (B, S, D)
    z[:, 0], z[:, -1] = za, zb  # exact endpoints
    return z


@torch.inference_mode()
def interpolate_generated(model: GenerativeModel, condition_a: Condition, seed_a: int, condition_b: Condition,
                          seed_b: int, steps: int, pass_size: int, precision: str = "fp32") -> Tensor:
    """Images ``(steps, C, H, W)`` in [-1, 1] on a linear path between two *generated* codes: the code the
    service draws for ``condition_a`` with seed ``seed_a`` (image 0 of that job) and the one of ``condition_b``
    with ``seed_b``. No encoder is needed. The ends are decoded as a job decodes its codes (passes of exactly
    ``pass_size`` rows, :func:`generation.sampling.decode_fixed_passes`), so they are pixel for pixel image 0
    of those two jobs. Between two seeds of one condition the path crosses the noise's codes; between two
    conditions (labels, prompts) with one seed it keeps the noise and crosses from one condition's code to the
    other's, which needs a decoder that ignores the condition (``decode_group_key`` None); a backend whose
    decoder reads it (pga, vae) interpolates between seeds of one condition only.

    ``precision`` (resolved: fp32, bf16 or fp16) is the decoder's autocast, as in the service."""
    from generation.precision import autocast
    from generation.sampling import decode_fixed_passes, decode_group_key, per_image_latents

    key_a, key_b = decode_group_key(model, condition_a), decode_group_key(model, condition_b)
    if key_a != key_b:
        raise LatentOpError(f"backend {model.backend!r} decodes with the condition, so it interpolates between "
                            "seeds of one condition only, not between two conditions")
    model.eval()
    za = per_image_latents(model, 1, condition_a, int(seed_a))  # (1, D), as image 0 of the job draws it
    zb = per_image_latents(model, 1, condition_b, int(seed_b))
    codes = lerp_codes(za, zb, steps)[0]  # (steps, D)
    with autocast(model.device, precision):
        images = decode_fixed_passes(model, codes, None if key_a is None else condition_a, max(1, pass_size))
    return images.float()


def mix_codes(z_a: Tensor, z_b: Tensor, weight: float = 0.6, flip: list[int] | None = None,
              flip_images: list[int] | None = None) -> Tensor:
    """``weight * z_a + (1 - weight) * z_b'`` where ``z_b'`` is ``z_b`` with the dims ``flip`` and the rows
    ``flip_images`` multiplied by -1. A set of one code is broadcast against the other set."""
    if not 0.0 <= float(weight) <= 1.0:
        raise LatentOpError(f"weight must be between 0 and 1 (the share of set A), got {weight}")
    if z_a.shape[0] != z_b.shape[0] and 1 not in (z_a.shape[0], z_b.shape[0]):
        raise LatentOpError(f"set A has {z_a.shape[0]} images and set B {z_b.shape[0]}: give as many images "
                            f"in both, or a single image in one of them")
    dim = z_b.shape[1]
    z_b = z_b.clone()
    if flip:
        bad = [d for d in flip if not 0 <= int(d) < dim]
        if bad:
            raise LatentOpError(f"flip: code dims {bad} out of range 0..{dim - 1}")
        z_b[:, [int(d) for d in flip]] *= -1  # (the write-up flips the codes of dark-winged birds)
    if flip_images:
        bad = [i for i in flip_images if not 0 <= int(i) < z_b.shape[0]]
        if bad:
            raise LatentOpError(f"flip_images: set-B images {bad} out of range 0..{z_b.shape[0] - 1}")
        z_b[[int(i) for i in flip_images]] *= -1
    return float(weight) * z_a + (1.0 - float(weight)) * z_b  # (N, D)


def mix(model: GenerativeModel, set_a: Tensor, set_b: Tensor, weight: float = 0.6, flip: list[int] | None = None,
        flip_images: list[int] | None = None, condition: Condition | None = None) -> Tensor:
    """Latent mixing of two image sets (STL-10 write-up): images ``(N, C, H, W)`` decoded from
    ``weight * E(set_a) + (1 - weight) * flip(E(set_b))``; see :func:`mix_codes`.

    Args:
        model: any backend with an encoder.
        set_a, set_b: ``(N, C, H, W)`` image batches in [-1, 1] (same N, or one of them a single image).
        weight: share of set A, in [0, 1] (the write-up: 0.6).
        flip: code dims of set B's codes to multiply by -1.
        flip_images: indices of set-B images whose whole code is multiplied by -1 (the write-up's variant).
        condition: passed to ``encode``/``decode`` for backends whose autoencoder is conditional.
    """
    if not 0.0 <= float(weight) <= 1.0:
        raise LatentOpError(f"weight must be between 0 and 1 (the share of set A), got {weight}")
    a = _as_batch(set_a, model, "set_a")
    b = _as_batch(set_b, model, "set_b")
    z = mix_codes(encode_images(model, a, condition), encode_images(model, b, condition), weight, flip, flip_images)
    return decode_latents(model, z, condition)
