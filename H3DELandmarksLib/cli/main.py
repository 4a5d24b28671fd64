"""Entry point of the `h3de` command: one sub-command per module in this package.

Each sub-command module exposes ``add_parser(subparsers)`` which registers its parser and sets
``func`` (called with the parsed arguments, returning an exit status). Errors a user can cause
(`H3DEError`) end in one sentence on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import H3DEError

SUBCOMMAND_MODULES = [
    "demo",
    "detect",
    "evaluate",
    "import_checkpoint",
    "info",
    "models",
    "serve",
    "train",
]


def build_parser() -> argparse.ArgumentParser:
    """Parser of the whole command line, every sub-command registered."""
    parser = argparse.ArgumentParser(prog="h3de", description="Anatomical landmark detection with H3DE-Net.")
    parser.add_argument("--version", action="version", version=f"h3de {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except H3DEError as error:
        print(f"h3de: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("h3de: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
