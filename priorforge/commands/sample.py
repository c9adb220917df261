"""``priorforge sample``: images from a checkpoint, as one PNG (a grid for n > 1) with its parameters."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from priorforge_spec.precision import DECODE_PASS_ROWS, PRECISIONS

MAX_SAMPLES = 1024


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("sample", help="generate images from a checkpoint into a PNG",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder")
    p.add_argument("--n", type=int, default=1, help=f"number of images (1..{MAX_SAMPLES})")
    p.add_argument("--seed", type=int, default=0)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--label", default=None, help="class name or index (class models)")
    group.add_argument("--cluster", type=int, default=None, help="cluster id (cluster models)")
    group.add_argument("--prompt", default=None, help="text prompt (text models)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--nrow", type=int, default=None, help="images per grid row")
    p.add_argument("--device", default="auto")
    p.add_argument("--pass-size", type=int, default=DECODE_PASS_ROWS,
                   help="rows per decode pass; with the service's GENERATE_CHUNK (the same default), a seed gives "
                   "the pixels a service job with that seed gets (image i is drawn from seed + i)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="decoder precision: fp32 (bit-exact), bf16 or fp16 autocast (fp16: CUDA only), auto (bf16 "
                   "or fp16 on CUDA, fp32 on CPU); see docs/benchmarks-precision.md for the tolerance")
    p.set_defaults(func=run)


def prompt_embedding(model, info, prompt: str):
    """The condition vector of ``prompt`` for a text model (the text encoder stored with the checkpoint)."""
    from generation.text_encoder import encode_prompt_for_checkpoint

    return encode_prompt_for_checkpoint(model, info, prompt)


def run(args: argparse.Namespace) -> int:
    from generation.checkpoint import load_checkpoint
    from generation.device import resolve_device
    from generation.precision import resolve_precision
    from generation.sampling import condition_from_request, generate_like_service, save_png
    from priorforge.cli import CLIError

    if not 1 <= args.n <= MAX_SAMPLES:
        raise CLIError(f"--n must be between 1 and {MAX_SAMPLES}, got {args.n}")
    if args.pass_size < 1:
        raise CLIError(f"--pass-size must be at least 1, got {args.pass_size}")
    if not args.out.lower().endswith(".png"):
        raise CLIError(f"--out must be a .png file, got {args.out!r}")
    device = resolve_device(args.device)
    try:
        precision = resolve_precision(args.precision, device)
    except ValueError as exc:
        raise CLIError(f"--precision {args.precision}: {exc}") from None
    model, info = load_checkpoint(args.checkpoint, device=device)
    embedding = None
    if args.prompt is not None and model.config.condition == "text":  # other models refuse prompts below
        embedding = prompt_embedding(model, info, args.prompt)
    condition = condition_from_request(model, info.class_names, label=args.label, cluster=args.cluster,
                                       embedding=embedding, prompt=args.prompt)
    images = generate_like_service(model, args.n, condition, args.seed, args.pass_size, precision=precision)
    params = {"backend": info.backend, "checkpoint": str(Path(args.checkpoint).resolve()), "dataset": info.dataset,
              "n": args.n, "seed": args.seed, "precision": precision, **condition.describe()}
    if condition.index is not None and condition.kind == "class":
        params["label"] = info.class_names[condition.index]
    save_png(images, args.out, params, nrow=args.nrow)
    print(args.out)
    return 0
