"""Few-shot and one-shot benchmarks on the mouse atlas, beside MALPACA and ALPACA on the same cases.

`prepare` builds the run's dataset folder ``RUN/data`` of symbolic links into the atlas: every
volume, but the landmark files (and cases.csv rows) of the references only, so the other scans are
unannotated. The rest runs the product's own commands on it:

- 5-shot: references ``129X1_SVJ_ B6129SF1.J_ C57BLKS.J_ CBA_CAJ_ MRL_MPJ_`` (those of MALPACA
  runs malpaca-7 and malpaca-8), the other 38 scans unannotated;
- 1-shot: reference ``129X1_SVJ_`` (ALPACA's single-reference rows from that scan).

``all`` = ``prepare``, then ``h3de train --data RUN/data --output RUN/train`` (few-shot, recipe
derived from the data, bone from 30), then ``h3de detect`` and ``h3de evaluate`` on the exact cases
that are not references, and the table beside the baseline. ``pseudo-labels`` runs the
registration step alone (cached in ``RUN/train/registration``, where the training run finds it)
and scores the fused registration labels of the exact cases beside the baseline::

    python bench/fewshot_mouse.py pseudo-labels --shots 5 --run runs/fewshot-5 --cases exact
    python bench/fewshot_mouse.py all --shots 5 --run runs/fewshot-5 --threads 2 --max-minutes 110
    python bench/fewshot_mouse.py all --shots 1 --run runs/fewshot-1 --threads 2 --max-minutes 110

Times of each step are printed and written to ``RUN/timing.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from H3DELandmarksLib.atomic import atomic_write_text
from H3DELandmarksLib.data.datasets import GenericDataset
from H3DELandmarksLib.data.landmark_files import read_landmarks
from H3DELandmarksLib.data.registration import RegistrationSettings
from H3DELandmarksLib.training.pseudo_labels import (
    Reference,
    Target,
    register_references,
    registration_labels,
    run_settings,
)

ATLAS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mouse_ct_atlas"
REFERENCES = {5: ["129X1_SVJ_", "B6129SF1.J_", "C57BLKS.J_", "CBA_CAJ_", "MRL_MPJ_"], 1: ["129X1_SVJ_"]}
BASELINE_RUNS = {5: ("malpaca_errors.csv", "run", ("malpaca-7", "malpaca-8")),
                 1: ("alpaca_single_reference_errors.csv", "reference", ("129X1_SVJ_",))}
BONE_THRESHOLD = 30.0
FINE_SPACING_MM = 0.2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run = args.run.resolve()
    timing = _read_timing(run)
    data = prepare(args.atlas.resolve(), run / "data", REFERENCES[args.shots])
    exact = [case for case, kind in _kinds(args.atlas).items() if kind == "exact" and case not in REFERENCES[args.shots]]
    if args.step == "pseudo-labels":
        started = time.perf_counter()
        deadline = None if args.max_minutes is None else time.monotonic() + 60 * args.max_minutes
        chosen = {"exact": exact, "all": None}.get(args.cases, args.cases.split(","))
        labels = pseudo_labels(data, run / "train", chosen, args.threads, deadline)
        if labels is None:
            print("Stopped at the time limit; the registered pairs are cached, run it again to continue.")
            return 1
        timing["registration_s"] = round(time.perf_counter() - started, 1)
        _report({case: _errors(labels[case], args.atlas, case) for case in exact if case in labels}, args)
    else:
        started = time.perf_counter()
        command = ["h3de", "train", "--data", str(data), "--output", str(run / "train"),
                   "--registration-threshold", f"{BONE_THRESHOLD:g}", "--no-progress"]
        for flag, value in (("--threads", args.threads), ("--max-minutes", args.max_minutes)):
            if value is not None:
                command += [flag, str(value)]
        if (run / "train" / "fewshot.json").is_file():
            command.append("--resume")
        subprocess.run(command, check=True)
        timing["train_s"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        scans = [str(data / "volumes" / f"{case}.nii.gz") for case in exact]
        subprocess.run(["h3de", "detect", *scans, "--model", str(run / "train" / "package"), "--out",
                        str(run / "detected"), "--format", "mrk.json", "--overwrite", "--progress", "none"]
                       + (["--threads", str(args.threads)] if args.threads else []), check=True)
        timing["detect_s"] = round(time.perf_counter() - started, 1)
        subprocess.run(["h3de", "evaluate", "--predictions", str(run / "detected"), "--truth",
                        str(args.atlas / "landmarks"), "--out", str(run / "report")], check=True)
        _report({case: _errors(read_landmarks(run / "detected" / f"{case}.mrk.json"), args.atlas, case)
                 for case in exact}, args)
    atomic_write_text(run / "timing.json", json.dumps(timing, indent=2) + "\n", overwrite=True)
    print(json.dumps(timing))
    return 0


def prepare(atlas: Path, folder: Path, references: list[str]) -> Path:
    """``folder/volumes`` (every scan) and ``folder/landmarks`` (the references'), as links."""
    for sub in ("volumes", "landmarks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for volume in sorted((atlas / "volumes").glob("*.nii.gz")):
        _link(volume, folder / "volumes" / volume.name)
    for case in references:
        _link(atlas / "landmarks" / f"{case}.mrk.json", folder / "landmarks" / f"{case}.mrk.json")
    return folder


def pseudo_labels(data: Path, output: Path, cases: list[str] | None, threads: int | None,
                  deadline: float | None) -> dict | None:
    """The fused registration labels of `cases` (all unannotated scans when None), as `h3de train`
    makes them (same settings, same cache)."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads or 1)
    source = GenericDataset(data)
    references = [Reference(case, source.fingerprint(case), lambda case=case: source.load(case))
                  for case in source.cases()]
    first = references[0].load()[1]
    settings = run_settings(RegistrationSettings(threshold=BONE_THRESHOLD), first)
    targets = [Target(case, source.fingerprint(case), lambda case=case: source.load(case)[0])
               for case in source.unannotated_cases() if cases is None or case in cases]
    estimates = register_references(references, targets, first.names, output, settings,
                                    stop=None if deadline is None else lambda: time.monotonic() > deadline)
    if estimates is None:
        return None
    return registration_labels(first.names, first.descriptions, estimates, FINE_SPACING_MM)


def _errors(landmarks, atlas: Path, case: str) -> np.ndarray:
    truth = read_landmarks(atlas / "landmarks" / f"{case}.mrk.json")
    found = landmarks.reordered(truth.names)
    return np.linalg.norm(found.positions - truth.positions, axis=1)[truth.present & found.has_position]


def _report(errors: dict[str, np.ndarray], args: argparse.Namespace) -> None:
    """Mean of per-case MREs, ours beside the baseline's on the same cases, and their ratio."""
    name, column, runs = BASELINE_RUNS[args.shots]
    per_case = defaultdict(list)
    with open(args.atlas / "baselines" / name, newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            if row[column] in runs and row["case"] in errors:
                per_case[(row[column], row["case"])].append(float(row["error_mm"]))
    print(f"{'case':14} {'ours mm':>8} " + " ".join(f"{run:>11}" for run in runs))
    for case, values in sorted(errors.items()):
        baseline = [np.mean(per_case[(run, case)]) if per_case[(run, case)] else np.nan for run in runs]
        print(f"{case:14} {values.mean():8.3f} " + " ".join(f"{value:11.3f}" for value in baseline))
    ours = np.mean([values.mean() for values in errors.values()])
    theirs = [np.mean([np.mean(per_case[(run, case)]) for case in errors if per_case[(run, case)]]) for run in runs]
    print(f"{'mean':14} {ours:8.3f} " + " ".join(f"{value:11.3f}" for value in theirs)
          + f"   ratio ours / baseline: {ours / np.mean(theirs):.3f} over {len(errors)} exact cases")


def _kinds(atlas: Path) -> dict[str, str]:
    with open(atlas / "cases.csv", newline="", encoding="utf-8") as stream:
        return {row["case"]: row["landmarks"] for row in csv.DictReader(stream)}


def _link(source: Path, link: Path) -> None:
    if not link.is_symlink():
        link.symlink_to(source)


def _read_timing(run: Path) -> dict:
    try:
        return json.loads((run / "timing.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=("pseudo-labels", "all"), help="registration labels alone, or everything")
    parser.add_argument("--shots", type=int, choices=sorted(REFERENCES), required=True, help="5-shot or 1-shot")
    parser.add_argument("--run", type=Path, required=True, help="run folder")
    parser.add_argument("--atlas", type=Path, default=ATLAS, help="mouse_ct_atlas folder (default: ../shared)")
    parser.add_argument("--cases", default="all",
                        help="pseudo-labels: register onto 'exact' cases only, 'all' unannotated scans (default) or "
                             "the cases named (comma-separated)")
    parser.add_argument("--threads", type=int, help="CPU threads")
    parser.add_argument("--max-minutes", type=float, help="time limit (the next run continues)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
