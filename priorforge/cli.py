"""The ``priorforge`` command: one sub-command per module in ``COMMAND_MODULES``.

Each module defines ``register(subparsers)``, which adds its sub-command(s) with ``func`` set to a
handler ``handler(args) -> int``. Handlers raise :class:`CLIError` (or a ValueError subclass from the
library) for bad input; ``main`` prints it as ``priorforge <cmd>: error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "priorforge.commands.train",
    "priorforge.commands.sample",
    "priorforge.commands.latent",
    "priorforge.commands.evaluate",
    "priorforge.commands.export",
    "priorforge.commands.zoo",
    "priorforge.commands.service",
]


class CLIError(Exception):
    """A user error; the message should name the flag at fault."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="priorforge", description=__doc__.split("\n")[0])
    from priorforge import __version__

    parser.add_argument("--version", action="version", version=f"priorforge {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, FileNotFoundError) as exc:  # library errors for bad input are ValueErrors
        print(f"priorforge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"priorforge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
