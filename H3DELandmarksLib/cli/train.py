"""`h3de train CONFIG`: train every stage of a model from one configuration file.

The output folder keeps the checkpoint (after every epoch), the per-epoch CSV log, the case
cache and, at the end, the model package. `--max-minutes` stops cleanly with a checkpoint and
`--resume` continues exactly where the run stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..inference.device import DEVICES
from ..training.config import load_training_config
from ..training.loop import train


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `train` sub-command."""
    parser = subparsers.add_parser(
        "train",
        help="train a model (coarse and fine stages) from a training configuration file",
        description="Train a model from a training configuration file and write its model package.",
    )
    parser.add_argument("config", type=Path, help="training configuration (JSON), e.g. Resources/Training/phantom.json")
    parser.add_argument("--data", type=Path, metavar="DIR", help="dataset folder (not needed for phantom data)")
    parser.add_argument("--output", type=Path, metavar="DIR",
                        help="folder for checkpoint, log, cache and package (default: runs/ID-VERSION)")
    parser.add_argument("--resume", action="store_true", help="continue the run in the output folder")
    parser.add_argument("--overwrite", action="store_true", help="start over even if the output folder holds a run")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="where to train (default: auto)")
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads")
    parser.add_argument("--max-minutes", type=float, metavar="M",
                        help="stop cleanly after M minutes (resume later with --resume)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train; prints where the package is, or how to resume."""
    config = load_training_config(args.config)
    output = args.output or Path("runs") / f"{config.model['id']}-{config.model['version']}"
    result = train(config, output, data_root=args.data, device=args.device, threads=args.threads,
                   max_minutes=args.max_minutes, resume=args.resume, overwrite=args.overwrite,
                   progress=not args.no_progress, command=_command(args, output, args.resume))
    metrics = ", ".join(f"{stage} {values['val_mre_mm']:.3g} mm" for stage, values in result.metrics.items()
                        if "val_mre_mm" in values)
    if result.finished:
        summary = f" (validation MRE: {metrics})" if metrics else ""
        print(f"Training finished; model package: {result.package}{summary}")
    else:
        again = " ".join(_command(args, output, resume=True))
        print(f"Stopped at the time limit with a checkpoint in {output}; continue with: {again}")
    return 0


def _command(args: argparse.Namespace, output: Path, resume: bool) -> list[str]:
    """The command line of this run (recorded in the manifest), resuming or not."""
    command = ["h3de", "train", str(args.config), "--output", str(output)]
    if args.data:
        command += ["--data", str(args.data)]
    if args.device != "auto":
        command += ["--device", args.device]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.max_minutes is not None:
        command += ["--max-minutes", f"{args.max_minutes:g}"]
    if resume:
        command.append("--resume")
    return command
