"""Raw sampling speed of every backend: images per second at batch 1 and 64, per image size.

Freshly built models at their default sizes (``build_model(name, image_shape=..., condition="none")``; speed
does not depend on the weights), eval mode, ``torch.inference_mode()``. For each (backend, size, batch) the
two halves of generation are timed apart: ``sample_latents`` (noise -> code: a Gaussian draw, a code
generator, a flow inverse, or the LDE's one-dimension-at-a-time loop) and ``decode`` (code -> image). Each
is called ``--warmup`` times untimed, then ``--repeats`` times; the figures are medians, and a batch's time
is the sum of the two medians. Both wall time and this process's CPU time are recorded: on a loaded
machine the wall figure depends on the load, while with one thread the CPU figure is close to what an idle
core gives. ``--precision`` runs ``decode`` under bf16/fp16 autocast (``generation.precision``, as
``generate(..., precision=...)`` does; the latents stay fp32).

    OMP_NUM_THREADS=1 python bench/sampling_speed.py --device cpu --threads 1
    python bench/sampling_speed.py --quick     # tiny models, 28x28 only: a smoke test
    python bench/sampling_speed.py --device cuda --precision bf16     # vs the same with --precision fp32
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/sampling_speed.py` from anywhere

import torch  # noqa: E402

from bench.common import (TINY_MODEL, emit, machine_info, markdown_table, model_overrides, pick_device,  # noqa: E402
                          time_call)
from generation.precision import PRECISIONS, autocast, resolve_precision  # noqa: E402

BACKENDS = ("aae-cg", "glf", "lde", "pga", "vae")
SHAPES = "1x28x28,3x32x32,3x64x64"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--shapes", default=SHAPES, help="image shapes CxHxW, comma-separated")
    p.add_argument("--batch-sizes", default="1,64")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="decode precision (fp16: CUDA only)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json-out", default=None, help="also write the results JSON here")
    p.add_argument("--quick", action="store_true", help="tiny models, 28x28, batches 1 and 4, 2 repeats")
    args = p.parse_args(argv)
    if args.quick:
        args.shapes, args.batch_sizes, args.warmup, args.repeats = "1x28x28", "1,4", 1, 2
    return args


def parse_shape(text: str) -> tuple[int, int, int]:
    c, h, w = (int(x) for x in text.lower().split("x"))
    return c, h, w


def measure(name: str, shape: tuple[int, int, int], batch: int, device: torch.device,
            args: argparse.Namespace) -> dict[str, Any]:
    """One row: the latent and decode medians of ``name`` at ``shape`` and ``batch``."""
    from generation.base import Condition
    from generation.registry import build_model, config_class

    overrides = model_overrides(config_class(name), TINY_MODEL) if args.quick else {}
    torch.manual_seed(0)
    model = build_model(name, image_shape=shape, condition="none", **overrides).to(device).eval()
    condition, generator = Condition("none"), torch.Generator().manual_seed(0)
    with torch.inference_mode():
        latents = model.sample_latents(batch, condition, generator).to(device)
        t_lat = time_call(lambda: model.sample_latents(batch, condition, generator).to(device), device,
                          warmup=args.warmup, repeats=args.repeats)
        with autocast(device, args.precision):
            t_dec = time_call(lambda: model.decode(latents, condition), device, warmup=args.warmup,
                              repeats=args.repeats)
    wall, cpu = t_lat.wall + t_dec.wall, t_lat.cpu + t_dec.cpu
    return {
        "backend": name, "image_shape": "x".join(map(str, shape)), "latent_dim": int(latents.shape[1]),
        "precision": args.precision,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2), "batch": batch,
        "images_per_s": round(batch / wall, 1), "images_per_cpu_s": round(batch / max(cpu, 1e-9), 1),
        "latents_ms": round(t_lat.wall * 1e3, 3), "decode_ms": round(t_dec.wall * 1e3, 3),
        "latents_cpu_ms": round(t_lat.cpu * 1e3, 3), "decode_cpu_ms": round(t_dec.cpu * 1e3, 3),
        "latents_share": round(t_lat.cpu / max(cpu, 1e-9), 3),
    }


COLUMNS = [("backend", "backend"), ("image_shape", "image"), ("latent_dim", "D"), ("params_m", "params (M)"),
           ("precision", "precision"), ("batch", "batch"), ("images_per_s", "img/s (wall)"),
           ("images_per_cpu_s", "img/s (CPU)"),
           ("latents_cpu_ms", "latents CPU ms"), ("decode_cpu_ms", "decode CPU ms"),
           ("latents_share", "latents share")]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    try:
        args.precision = resolve_precision(args.precision, device)  # auto -> what it means on this device
    except ValueError as exc:
        raise SystemExit(f"--precision {args.precision}: {exc}") from None
    machine = machine_info(device)
    started = time.perf_counter()
    rows = [measure(name, parse_shape(shape), int(batch), device, args)
            for name in args.backends.split(",") if name
            for shape in args.shapes.split(",") if shape
            for batch in args.batch_sizes.split(",") if batch]
    table = markdown_table([title for _, title in COLUMNS], [[row[key] for key, _ in COLUMNS] for row in rows])
    payload = {"benchmark": "sampling_speed", "machine": machine, "rows": rows,
               "settings": {"warmup": args.warmup, "repeats": args.repeats, "quick": args.quick,
                            "precision": args.precision,
                            "command": " ".join(["sampling_speed.py", *(argv if argv is not None else sys.argv[1:])])},
               "wall_seconds": round(time.perf_counter() - started, 1)}
    emit(table, payload, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
