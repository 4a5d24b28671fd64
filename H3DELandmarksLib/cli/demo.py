"""`h3de demo`: the product's main job on its embedded default, with the truth known.

Draws a CT head phantom (random pose, orientation and shape from --seed), writes it as NRRD with
its true landmarks, detects the landmarks with the bundled `phantom` model (or --model), writes
`.mrk.json` + CSV like `h3de detect`, and prints each landmark's error against the truth.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..errors import H3DEError
from .model_options import add_model_options, predictor_from_args

DEFAULT_MODEL = "phantom"


def add_parser(subparsers, summary: str) -> None:
    parser = subparsers.add_parser(
        "demo", help=summary,
        description="Draw a CT head phantom, detect its landmarks and print each one's error against the truth.")
    parser.add_argument("--seed", type=int, default=7, help="phantom seed (default 7)")
    add_model_options(parser, default_model=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, default=Path("h3de-demo"), help="output folder (default ./h3de-demo)")
    parser.add_argument("--absent", default="", help="comma-separated landmarks whose structure the phantom lacks")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..atomic import check_writable_folder
    from ..data.landmark_files import write_mrk_json
    from ..data.landmark_files.common import status_text
    from ..data.phantom import PHANTOM_LANDMARK_NAMES, make_phantom
    from ..data.volume_io import write_volume
    from ..evaluation.metrics import radial_errors
    from ..inference.batch import output_paths, write_case_outputs

    absent = [name.strip() for name in args.absent.split(",") if name.strip()]
    unknown = [name for name in absent if name not in PHANTOM_LANDMARK_NAMES]
    if unknown:
        raise H3DEError(f"--absent names unknown landmarks ({', '.join(unknown)}); "
                        f"choose from {', '.join(PHANTOM_LANDMARK_NAMES)}.")
    check_writable_folder(args.out, "--out")
    case = f"phantom-{args.seed}"
    formats = ("mrk.json", "csv")
    outputs = output_paths(args.out, case, formats)
    volume_path, truth_path = args.out / f"{case}.nrrd", args.out / f"{case}-truth.mrk.json"
    earlier = [path.name for path in (volume_path, truth_path, *outputs) if path.exists()]
    if earlier and not args.overwrite:
        raise H3DEError(f"{args.out} already holds this demo's files from an earlier run ({', '.join(earlier)}); "
                        f"add --overwrite to replace them, or --out DIR to write somewhere else.")
    started = time.perf_counter()
    predictor = predictor_from_args(args)
    volume, truth = make_phantom(args.seed, absent=absent)
    write_volume(volume, volume_path, overwrite=args.overwrite)
    write_mrk_json(truth_path, truth, overwrite=args.overwrite)
    detection = predictor.predict(volume)
    outputs = write_case_outputs(args.out, case, formats, detection, volume, volume_path, predictor,
                                 detection.timings, args.overwrite)
    predicted = detection.landmarks.reordered(truth.names)
    errors = radial_errors(predicted, truth)
    print(f"Phantom seed {args.seed}: {'x'.join(map(str, volume.shape_ijk))} voxels at "
          f"{volume.spacing[0]:.2f} mm; model {detection.model_id} {detection.model_version}; "
          f"{time.perf_counter() - started:.1f} s including model loading.")
    print(f"{'landmark':<14} {'truth':>8} {'predicted':>10} {'confidence':>10} {'error mm':>9}")
    for index, name in enumerate(truth.names):
        status = status_text(truth.present[index])
        found = status_text(predicted.present[index])
        error = "" if np.isnan(errors[index]) else f"{errors[index]:.2f}"
        print(f"{name:<14} {status:>8} {found:>10} {predicted.confidence[index]:>10.2f} {error:>9}")
    valid = errors[~np.isnan(errors)]
    agree = int((predicted.present == truth.present).sum())
    print(f"Mean radial error {valid.mean():.2f} mm (median {np.median(valid):.2f}, max {valid.max():.2f}) over "
          f"{valid.size} present landmarks; present/absent right for {agree}/{len(truth)}.")
    print(f"Wrote into {args.out}/: {volume_path.name} (the phantom), {outputs[0].name} and {outputs[1].name} "
          f"(detected), {truth_path.name} (the truth).")
    return 0
