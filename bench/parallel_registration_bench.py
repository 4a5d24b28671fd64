"""Registration pairs per hour, one pair at a time against several at once, on atlas pairs.

Registers each reference onto each target twice with `training.pseudo_labels.register_references`
(the few-shot run's own code and settings: bone from 30, the working spacing of the reference's
landmark spread): first one pair at a time on every SimpleITK thread, then `--workers` pairs at
once sharing those threads. Prints the wall time of each pass, their ratio and the largest
difference between the landmarks the two carried over (SimpleITK's result depends slightly on its
thread count)::

    python bench/parallel_registration_bench.py --data ../shared/data/mouse_ct_atlas \\
        --references 129X1_SVJ_ --targets 129S1_SVLMJ_,AKR_J_,C57BL6_J_,BALB_CJ_ --workers 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from H3DELandmarksLib.data.landmark_files import read_landmarks
from H3DELandmarksLib.data.registration import RegistrationSettings
from H3DELandmarksLib.data.volume_io import read_volume
from H3DELandmarksLib.training.pseudo_labels import Reference, Target, register_references, run_settings

BONE_THRESHOLD = 30.0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    volumes, landmarks = args.data / "volumes", args.data / "landmarks"
    references = [Reference(name, name, lambda name=name: (read_volume(volumes / f"{name}.nii.gz"),
                                                           read_landmarks(landmarks / f"{name}.mrk.json")))
                  for name in args.references.split(",")]
    targets = [Target(name, name, lambda name=name: read_volume(volumes / f"{name}.nii.gz"))
               for name in args.targets.split(",")]
    first = references[0].load()[1]
    settings = run_settings(RegistrationSettings(threshold=BONE_THRESHOLD), first)
    walls, results = {}, {}
    for workers in (1, args.workers):
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            results[workers] = register_references(references, targets, first.names, Path(folder), settings,
                                                   workers=workers)
            walls[workers] = time.perf_counter() - started
        pairs = len(references) * len(targets)
        print(f"{workers} at once: {walls[workers]:.1f} s wall for {pairs} pairs "
              f"({walls[workers] / pairs:.1f} s per pair)", flush=True)
    difference = max(float(np.nanmax(np.abs(np.array(results[1][name]) - np.array(results[args.workers][name]))))
                     for name in results[1])
    print(f"pairs per hour, {args.workers} at once / one at a time: {walls[1] / walls[args.workers]:.2f}")
    print(f"largest difference between the carried-over landmarks: {difference:.4f} mm")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="mouse_ct_atlas folder")
    parser.add_argument("--references", required=True, help="annotated cases, comma-separated")
    parser.add_argument("--targets", required=True, help="cases registered onto, comma-separated")
    parser.add_argument("--workers", type=int, default=2, help="pairs at once in the second pass")
    return parser


if __name__ == "__main__":
    sys.exit(main())
