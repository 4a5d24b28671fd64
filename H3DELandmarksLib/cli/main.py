"""Entry point of the `h3de` command: one sub-command per module in this package.

Each sub-command module exposes ``add_parser(subparsers, summary)`` which registers its parser
and sets ``func`` (called with the parsed arguments, returning an exit status). Only the module of
the sub-command being run is imported (torch and SimpleITK take seconds to import), so ``h3de
--help`` and ``h3de --version`` answer at once; the one-line summaries shown by ``--help`` live
here. Errors a user can cause (`H3DEError`) end in one sentence on stderr and exit status 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import H3DEError
from ..progress_events import ERROR_PREFIX

SUBCOMMANDS = {
    # name: (module in this package, summary for `h3de --help`)
    "demo": ("demo", "detect landmarks on a generated CT phantom and print the error of each"),
    "detect": ("detect", "detect landmarks in volumes and write .mrk.json, CSV and JSON files"),
    "evaluate": ("evaluate", "score predicted landmarks against truth (MRE, SDR, absent landmarks) into a report"),
    "import-checkpoint": ("import_checkpoint", "turn a published checkpoint into a model package"),
    "info": ("info", "show size, spacing, origin, direction and intensity range of volumes"),
    "models": ("models", "list, show, download, verify and remove models"),
    "serve": ("serve", "review and correct landmarks in a browser (needs the web extra)"),
    "train": ("train", "train a model (coarse and fine stages) from annotated data, a recipe file or a model "
                       "to fine-tune"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Parser of the whole command line; only `command`'s own options are registered (its
    module imported), the other sub-commands appear by name and summary."""
    parser = argparse.ArgumentParser(prog="h3de", description="Anatomical landmark detection with H3DE-Net.")
    parser.add_argument("--version", action="version", version=f"h3de {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, summary) in SUBCOMMANDS.items():
        if name == command:
            importlib.import_module(f"{__package__}.{module}").add_parser(subparsers, summary)
        else:
            subparsers.add_parser(name, help=summary)
    return parser


def requested_command(argv: list[str]) -> str | None:
    """The sub-command named on the command line (the first argument that is not an option:
    the top-level options take no value), or None."""
    return next((argument for argument in argv if not argument.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(requested_command(argv)).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except H3DEError as error:
        print(f"{ERROR_PREFIX}{error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("h3de: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
