"""``priorforge download-data``: fetch the built-in image sets (MNIST, Fashion-MNIST, CIFAR-10) into a data root
with torchvision's own downloaders, where the machine is online. The service lists them as available once
its data root (``PRIORFORGE_DATA_ROOT``) holds them; ``digits`` needs no download (scikit-learn ships it)."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import Any

DOWNLOADABLE = ("mnist", "fashion-mnist", "cifar10")
SIZES = {"mnist": "about 12 MB", "fashion-mnist": "about 30 MB", "cifar10": "about 170 MB"}
TIMEOUT = 60.0  # seconds a download may go without data before it counts as failed
DESCRIPTION = """Fetch the built-in image sets (MNIST, Fashion-MNIST, CIFAR-10) into a data root with torchvision's
own downloaders (the machine must be online). The service lists them as available once its data root
(PRIORFORGE_DATA_ROOT) holds them; digits needs no download (scikit-learn ships it)."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "download-data", help="download mnist, fashion-mnist and cifar10 into a data root (needs the internet)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: priorforge download-data --data-root /srv/priorforge-data mnist fashion-mnist; then start "
               "the service with PRIORFORGE_DATA_ROOT=/srv/priorforge-data bash scripts/run.sh")
    p.add_argument("datasets", nargs="*", metavar="DATASET", default=list(DOWNLOADABLE),
                   help=f"which to fetch: {', '.join(DOWNLOADABLE)} (default: all three)")
    p.add_argument("--data-root", default=os.environ.get("PRIORFORGE_DATA_ROOT"),
                   help="folder to fetch them into (default: $PRIORFORGE_DATA_ROOT, the service's data root)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from priorforge.cli import CLIError
    from priorforge_spec.datasets import BUILTIN_LAYOUTS, builtin_available

    unknown = [name for name in args.datasets if name not in DOWNLOADABLE]
    if unknown:
        raise CLIError(f"cannot download {', '.join(unknown)}; choose from {', '.join(DOWNLOADABLE)} (digits "
                       "ships with scikit-learn; captioned sets are made from their image set)")
    if not args.data_root:
        raise CLIError("--data-root is required (or set PRIORFORGE_DATA_ROOT, the folder the service reads the "
                       "built-in data sets from)")
    root = Path(args.data_root).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise CLIError(f"--data-root {root} is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in dict.fromkeys(args.datasets):  # each once, in the order given
        if builtin_available(name, root):
            print(f"{name}: already in {root} ({' or '.join(BUILTIN_LAYOUTS[name])}); nothing to do", flush=True)
            continue
        print(f"{name}: downloading ({SIZES[name]}) into {root / BUILTIN_LAYOUTS[name][0]} ...", flush=True)
        try:
            download(name, root)
        except Exception as exc:  # offline, a proxy, a checksum: say which and go on with the others
            failed.append(name)
            print(f"{name}: could not download: {type(exc).__name__}: {exc}. Is this machine online? Otherwise "
                  f"copy the files from a machine that has them into {root / BUILTIN_LAYOUTS[name][0]} "
                  "(docs/admin.md, \"Built-in data sets\")", file=sys.stderr, flush=True)
            continue
        print(f"{name}: done, in {root / BUILTIN_LAYOUTS[name][0]}", flush=True)
    if failed:
        print(f"download-data: {len(failed)} of {len(dict.fromkeys(args.datasets))} failed: {', '.join(failed)}",
              file=sys.stderr, flush=True)
        return 1
    print(f"download-data: all in {root}; the service lists them as available when PRIORFORGE_DATA_ROOT={root}",
          flush=True)
    return 0


def download(name: str, root: Path) -> None:
    """Both splits of ``name`` into ``root`` with torchvision's downloader (it checks the files' MD5s)."""
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[name]
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(TIMEOUT)  # urllib, under torchvision, waits for ever by default
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    finally:
        socket.setdefaulttimeout(previous)
