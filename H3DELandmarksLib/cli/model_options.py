"""Options shared by every command that runs a model, and the predictor they describe."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from ..device import DEVICES


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def probability(text: str) -> float:
    """argparse type: a number between 0 and 1."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def add_model_options(parser, default_model: str | None = None, required: bool = True) -> None:
    """--model, --device, --threads, --threshold, --cache-dir and --no-patch-matching on `parser`
    (or an argument group)."""
    if default_model:
        parser.add_argument("--model", default=default_model, metavar="ID|PATH",
                            help=f"model id or package folder (default: {default_model})")
    else:
        parser.add_argument("--model", required=required, metavar="ID|PATH",
                            help="model id (ID or ID@VERSION, bundled or downloaded) or package folder")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="where the network runs (auto: cuda, then mps, then cpu)")
    parser.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads for PyTorch")
    parser.add_argument("--threshold", type=probability, metavar="T",
                        help="confidence below which a landmark is reported absent (default: the model's)")
    parser.add_argument("--cache-dir", type=Path, metavar="DIR", help="model cache folder")
    parser.add_argument("--no-patch-matching", dest="patch_matching", action="store_false",
                        help="keep the network's positions: do not sharpen them with the model's reference "
                             "patches (no expected errors from a model calibrated with them)")


def predictor_from_args(args: argparse.Namespace, model: str | None = None):
    """The `Predictor` the options of `add_model_options` describe (`model` in place of ``--model``)."""
    return predictor_factory(args, model=model)()


def predictor_factory(args: argparse.Namespace, model: str | None = None, threads: int | None = None,
                      absolute: bool = False):
    """A picklable function that builds that `Predictor` (in another process too); `model` and
    `threads` replace --model and --threads when given, and `absolute` turns a package folder and
    --cache-dir into absolute paths (for processes started elsewhere)."""
    from ..inference import Predictor

    model, cache_dir = model or args.model, args.cache_dir
    if absolute:
        model = str(Path(model).resolve()) if Path(model).exists() else model
        cache_dir = cache_dir.resolve() if cache_dir else None
    return functools.partial(Predictor.from_model, model, device=args.device, threads=threads or args.threads,
                             cache_dir=cache_dir, confidence_threshold=args.threshold,
                             patch_matching=getattr(args, "patch_matching", True))
