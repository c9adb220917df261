"""``priorforge export``: an inference-only copy of a checkpoint (what sampling needs, half precision)."""

from __future__ import annotations

import argparse
import json
from typing import Any

PRECISIONS = ("fp32", "fp16")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export", help="write an inference-only copy of a checkpoint (no discriminators or training state)",
        description="Write an inference-only copy of CHECKPOINT into --out: the weights sampling needs, in half "
                    "precision by default. The copy loads, samples and registers like any checkpoint; it is "
                    "checked against the original (same seeds, pixel difference within --tolerance levels) "
                    "before it is kept.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="the checkpoint folder to export")
    p.add_argument("--out", required=True, help="folder to write (must not exist, or be an earlier export)")
    p.add_argument("--precision", default="fp16", choices=PRECISIONS,
                   help="how the weights are stored; sampling always runs in float32")
    p.add_argument("--tolerance", type=int, default=2,
                   help="largest allowed pixel difference from the original, in 8-bit levels")
    p.add_argument("--keep-encoder", action="store_true",
                   help="keep the encoder (for interpolate / mix); the code-generator AAE's discriminators "
                        "are always dropped")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from priorforge.cli import CLIError

    if args.tolerance < 0:
        raise CLIError(f"--tolerance must be 0 or more, got {args.tolerance}")
    from generation.export import export_checkpoint, folder_size

    entry = export_checkpoint(args.checkpoint, args.out, precision=args.precision, keep_encoder=args.keep_encoder,
                              tolerance=args.tolerance)
    print(json.dumps({**entry, "bytes": folder_size(args.out)}, indent=2))
    return 0
