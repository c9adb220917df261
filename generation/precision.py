"""Numeric precision of inference (``fp32 | bf16 | fp16 | auto``) and the context that applies it.

``fp32`` is today's path: bit-exact, deterministic for a seed. ``bf16`` / ``fp16`` run the networks under
``torch.autocast`` (matmuls and convolutions in the half type, reductions and losses in fp32 where autocast
says so); the images then differ from fp32 by a small, documented amount (docs/benchmarks-precision.md,
tests/test_precision.py). ``auto`` picks bf16 on a CUDA device that supports it, else fp16 on CUDA, and
fp32 on the CPU, where results stay bit-exact unless bf16 is asked for by name (on a CPU with AVX512-BF16 it
about doubled decode throughput at batch 64: docs/benchmarks-precision.md). fp16 on the CPU is refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from priorforge_spec.precision import AMP_MODES, PRECISIONS

HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``precision`` for ``device`` -> ``fp32``, ``bf16`` or ``fp16`` (``auto`` resolved); a clear ValueError for
    an unknown name or a combination the device cannot run."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    cuda = device.type == "cuda"
    if precision == "auto":
        if not cuda:
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and not cuda:
        raise ValueError(f"fp16 needs a CUDA device, got {device.type} (the CPU runs fp32 or bf16 only)")
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ValueError("bf16 is not supported by this GPU (use fp16 or fp32)")
    if device.type not in ("cpu", "cuda") and precision != "fp32":
        raise ValueError(f"{precision} autocast is only wired for cpu and cuda, got {device.type}")
    return precision


def resolve_amp(amp: str, device: torch.device) -> str:
    """A training mixed-precision mode (``off``, ``bf16``, ``fp16``) checked against ``device``."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    return amp if amp == "off" else resolve_precision(amp, device)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to the half type of ``precision`` (a resolved one); a no-op for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=HALF_DTYPES[precision])


@contextlib.contextmanager
def inference_context(device: torch.device, precision: str = "fp32") -> Iterator[str]:
    """``torch.inference_mode()`` plus autocast for ``precision`` (``auto`` allowed); yields the resolved
    precision."""
    resolved = resolve_precision(precision, device)
    with torch.inference_mode(), autocast(device, resolved):
        yield resolved


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """``tensor`` on ``device``; a CPU tensor bound for CUDA goes through pinned memory with a non-blocking
    copy (the copy is ordered on the current stream, so later kernels see the data)."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
