"""Fit a model's expected-error model on held-out scans, judged leave one scan out first.

Detects the chosen cases with the package's own settings (its `uncertainty` entry ignored),
scores each scan's points with an error model fitted on the other scans (leave one scan out),
prints the reliability of those held-out expected errors (calibration per fifth of the points,
AUROC for errors above --big-error-mm, share of them among the 10 % reviewed first) beside the
confidence alone, then fits on every scan and prints the manifest's ``uncertainty`` entry
(``--write`` puts it into the package's manifest.json).

This is how mouse-skull-45 got its error model (2.0.0 with its patch matching; the 6 scans its
training held out):

    python bench/fit_error_model.py --model Resources/Models/mouse-skull-45-2.0.0 \\
        --data ../shared/data/mouse_ct_atlas --cases validation --write
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np

from H3DELandmarksLib.atomic import atomic_write_text
from H3DELandmarksLib.data.datasets import GenericDataset
from H3DELandmarksLib.evaluation.metrics import evaluate_cases, radial_errors
from H3DELandmarksLib.evaluation.reliability import reliability, reliability_lines
from H3DELandmarksLib.inference import Predictor
from H3DELandmarksLib.inference.package_loading import load_stage_networks
from H3DELandmarksLib.inference.uncertainty import fit_error_model


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    networks = load_stage_networks(args.model)
    manifest = copy.deepcopy(next(iter(networks.values())).package.manifest)
    manifest.pop("uncertainty", None)
    cases = (manifest["training"]["data"]["validation_cases"] if args.cases == "validation"
             else [case.strip() for case in args.cases.split(",") if case.strip()])
    references = next(iter(networks.values())).package.reference_patches()
    predictor = Predictor(networks, manifest, device="cpu", threads=args.threads, references=references)
    dataset = GenericDataset(args.data)
    detections, truths = {}, {}
    for case in cases:
        volume, truths[case] = dataset.load(case)
        detections[case] = predictor.predict(volume)
        print(f"{case}: detected", flush=True)
    errors = {case: radial_errors(detections[case].landmarks, truths[case]) for case in cases}

    held_out = {}
    for case in cases:
        others = [other for other in cases if other != case]
        model = fit_error_model(_signals(detections, others), np.concatenate([errors[o] for o in others]), {})
        landmarks = detections[case].landmarks.copy()
        landmarks.expected_error = model.expected_error(detections[case].signals)
        held_out[case] = (landmarks, truths[case])
    result = evaluate_cases(held_out, [args.big_error_mm])
    print("\nExpected errors, leave one scan out:")
    print("\n".join(reliability_lines(reliability(result, args.big_error_mm))))
    without = evaluate_cases({case: (detections[case].landmarks, truths[case]) for case in cases}, [args.big_error_mm])
    print("\nConfidence alone:")
    print("\n".join(reliability_lines(reliability(without, args.big_error_mm))))

    fitted = fit_error_model(_signals(detections, cases), np.concatenate([errors[case] for case in cases]),
                             {"cases": cases, "source": args.source})
    entry = fitted.to_manifest()
    print("\n" + json.dumps(entry, indent=2))
    if args.write:
        path = Path(args.model) / "manifest.json"
        written = json.loads(path.read_text(encoding="utf-8"))
        written["uncertainty"] = entry
        atomic_write_text(path, json.dumps(written, indent=2) + "\n", overwrite=True)
        print(f"Wrote the error model into {path}.")
    return 0


def _signals(detections: dict, cases: list[str]) -> dict[str, np.ndarray]:
    names = detections[cases[0]].signals
    return {name: np.concatenate([detections[case].signals[name] for case in cases]) for name in names}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model package folder")
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (generic layout)")
    parser.add_argument("--cases", default="validation",
                        help="comma-separated held-out cases, or 'validation' (the package's own)")
    parser.add_argument("--big-error-mm", type=float, default=0.5, help="error a reviewer must find (default 0.5)")
    parser.add_argument("--source", default="the model's held-out validation cases",
                        help="where the cases come from, recorded in the manifest")
    parser.add_argument("--threads", type=int, help="CPU threads")
    parser.add_argument("--write", action="store_true", help="write the fitted model into the package manifest")
    return parser


if __name__ == "__main__":
    sys.exit(main())
