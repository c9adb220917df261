"""``priorforge interpolate`` and ``priorforge mix``: latent-space operations on a checkpoint with an encoder.

Images are read with PIL, converted to the checkpoint's channels (L or RGB), centre-cropped to a square
and resized to its image size.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from priorforge_spec.datasets import IMAGE_EXTENSIONS

if TYPE_CHECKING:  # torch is imported when a command runs, never for --help
    from torch import Tensor
MAX_IMAGES = 256
MAX_STEPS = 64


def register(subparsers: Any) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = subparsers.add_parser("interpolate", help="decode a linear path between the codes of two images",
                              formatter_class=fmt)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (a backend with an encoder)")
    p.add_argument("--a", required=True, help="image file at the start of the path")
    p.add_argument("--b", required=True, help="image file at the end of the path")
    p.add_argument("--steps", type=int, default=8, help=f"images on the path, endpoints included (2..{MAX_STEPS})")
    p.add_argument("--out", required=True, help="PNG file to write (one row)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_interpolate)

    m = subparsers.add_parser("mix", help="mix the codes of two image sets (weight toward set A) and decode",
                              formatter_class=fmt)
    m.add_argument("--checkpoint", required=True, help="checkpoint folder (a backend with an encoder)")
    m.add_argument("--set-a", required=True, nargs="+", help="image files and/or folders of images (set A)")
    m.add_argument("--set-b", required=True, nargs="+", help="image files and/or folders of images (set B)")
    m.add_argument("--weight", type=float, default=0.6, help="share of set A's codes, in [0, 1]")
    m.add_argument("--flip", default=None, help="code dims of set B to multiply by -1, e.g. 0,3")
    m.add_argument("--flip-images", default=None, help="set-B images (0-based, in load order) whose whole code "
                   "is multiplied by -1, e.g. 2,5")
    m.add_argument("--out", required=True, help="PNG file to write")
    m.add_argument("--nrow", type=int, default=None, help="images per grid row")
    m.add_argument("--device", default="auto")
    m.set_defaults(func=run_mix)


def load_image(path: Path, image_shape: tuple[int, int, int], flag: str) -> Tensor:
    """One image file -> ``(C, H, W)`` in [-1, 1] at the checkpoint's shape."""
    from PIL import Image, UnidentifiedImageError

    from generation.latent_ops import image_to_tensor
    from priorforge.cli import CLIError

    try:
        with Image.open(path) as img:
            return image_to_tensor(img, image_shape)
    except (UnidentifiedImageError, OSError) as exc:
        raise CLIError(f"{flag}: {path} is not a readable image ({exc})") from None


def collect_files(items: list[str], flag: str) -> list[Path]:
    """Files named in ``items``, folders expanded to their image files (sorted by name)."""
    from priorforge.cli import CLIError

    files: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise CLIError(f"{flag}: folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise CLIError(f"{flag}: {path} does not exist")
    if len(files) > MAX_IMAGES:
        raise CLIError(f"{flag}: {len(files)} images, at most {MAX_IMAGES} allowed")
    return files


def load_images(items: list[str], image_shape: tuple[int, int, int], flag: str) -> Tensor:
    import torch

    return torch.stack([load_image(p, image_shape, flag) for p in collect_files(items, flag)])  # (N, C, H, W)


def parse_int_list(text: str | None, flag: str) -> list[int] | None:
    from priorforge.cli import CLIError

    if text is None or not text.strip():
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CLIError(f"{flag} expects comma-separated integers like 0,3, got {text!r}") from None


def _check_out(out: str) -> None:
    from priorforge.cli import CLIError

    if not out.lower().endswith(".png"):
        raise CLIError(f"--out must be a .png file, got {out!r}")


def _load_model(args: argparse.Namespace):
    from generation.checkpoint import load_checkpoint
    from generation.device import resolve_device
    from generation.latent_ops import require_encoder

    model, info = load_checkpoint(args.checkpoint, device=resolve_device(args.device))
    require_encoder(model)
    return model, info


def run_interpolate(args: argparse.Namespace) -> int:
    from generation.latent_ops import interpolate
    from generation.sampling import save_png
    from priorforge.cli import CLIError

    if not 2 <= args.steps <= MAX_STEPS:
        raise CLIError(f"--steps must be between 2 and {MAX_STEPS}, got {args.steps}")
    _check_out(args.out)
    for flag, value in (("--a", args.a), ("--b", args.b)):
        if not Path(value).expanduser().is_file():
            raise CLIError(f"{flag}: image file {value} does not exist")
    model, info = _load_model(args)
    a = load_image(Path(args.a).expanduser(), info.image_shape, "--a")
    b = load_image(Path(args.b).expanduser(), info.image_shape, "--b")
    images = interpolate(model, a, b, args.steps)
    params = {"operation": "interpolate", "backend": info.backend, "checkpoint": str(Path(args.checkpoint).resolve()),
              "a": str(args.a), "b": str(args.b), "steps": args.steps}
    save_png(images, args.out, params, nrow=args.steps)
    print(args.out)
    return 0


def run_mix(args: argparse.Namespace) -> int:
    from generation.latent_ops import mix
    from generation.sampling import save_png
    from priorforge.cli import CLIError

    if not 0.0 <= args.weight <= 1.0:
        raise CLIError(f"--weight must be between 0 and 1 (the share of set A), got {args.weight}")
    _check_out(args.out)
    flip = parse_int_list(args.flip, "--flip")
    flip_images = parse_int_list(args.flip_images, "--flip-images")
    collect_files(args.set_a, "--set-a")  # missing files are reported before the checkpoint is loaded
    collect_files(args.set_b, "--set-b")
    model, info = _load_model(args)
    set_a = load_images(args.set_a, info.image_shape, "--set-a")
    set_b = load_images(args.set_b, info.image_shape, "--set-b")
    images = mix(model, set_a, set_b, weight=args.weight, flip=flip, flip_images=flip_images)
    params = {"operation": "mix", "backend": info.backend, "checkpoint": str(Path(args.checkpoint).resolve()),
              "set_a": args.set_a, "set_b": args.set_b, "weight": args.weight, "flip": flip or [],
              "flip_images": flip_images or []}
    save_png(images, args.out, params, nrow=args.nrow)
    print(args.out)
    return 0
