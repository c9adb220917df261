"""The ``priorforge`` command.

Each module of ``COMMAND_MODULES`` defines ``register(subparsers)``, which adds its sub-command(s) with ``func``
set to a handler ``handler(args) -> int``. A command module imports torch and the model code inside its
handlers only, so that ``--help`` answers at once (tests/test_layers.py checks it). Handlers raise
:class:`CLIError` (or a ValueError subclass from the library) for bad input; ``main`` prints it as
``priorforge <cmd>: error: ...`` and exits with status 2.
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
    "priorforge.commands.data",
]


class CLIError(Exception):
    """A user error; the message should name the flag at fault."""


DESCRIPTION = """Train image generators on labelled, clustered or captioned images, sample from them,
and run the generation service (web form, JSON API, admin)."""
EPILOG = """examples:
  priorforge train --model aae-cg --dataset digits --condition class --out runs/digits --max-steps 200
  priorforge sample --checkpoint models/mnist --label 7 --n 16 --out sevens.png
  priorforge db upgrade && priorforge serve --dev

Run 'priorforge COMMAND --help' for a command's options; the README and docs/ have the rest."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="priorforge", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
