"""The tables `fewshot_mouse.py` prints: per-case errors of models beside the baseline's runs on the
same cases, their ratios, and the recorded time of each step of a run.

Times come only from what was recorded: the run's ``timing.json`` (the wall time of each command
the benchmark ran) and, inside ``RUN/train``, each training's package manifest (its seconds of
network training) and ``training_log.csv`` (seconds per epoch, summed per stage). A few-shot
``h3de train`` does not time its registration separately; what its wall time holds beyond the
rounds' network training (registration unless cached before, re-labelling, case caching) is
printed as the difference of the two.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from H3DELandmarksLib.data.landmark_files import read_landmarks
from H3DELandmarksLib.data.landmarks import Landmarks
from H3DELandmarksLib.evaluation.comparison import read_error_table
from H3DELandmarksLib.evaluation.metrics import radial_errors

TIMING_FILE = "timing.json"
# baseline table, its name, and the runs (or references) used by none of the evaluated cases, by shots
BASELINE_RUNS = {5: ("malpaca_errors.csv", "MALPACA", ("malpaca-7", "malpaca-8")),
                 10: ("malpaca_errors.csv", "MALPACA", ("malpaca-7", "malpaca-8", "malpaca-9", "malpaca-10")),
                 1: ("alpaca_single_reference_errors.csv", "ALPACA", ("129X1_SVJ_",))}
# timing.json keys that make a run end to end, and what each timed
RUN_STEPS = {"registration_s": "registration (pseudo-labels step)",
             "train_s": "h3de train (wall time, every invocation)",
             "detect_s": "h3de detect", "evaluate_s": "h3de evaluate"}
OTHER_STEPS = {"detect_from_s": "h3de detect with the --from model (benchmark only)"}


def case_error(landmarks: Landmarks, atlas: Path, case: str) -> float:
    """Mean radial error in mm of `landmarks` against the atlas truth of `case` (its present points)."""
    return float(np.nanmean(radial_errors(landmarks, read_landmarks(atlas / "landmarks" / f"{case}.mrk.json"))))


def folder_errors(folder: Path, atlas: Path, cases: list[str]) -> dict[str, float]:
    """Per-case mean errors of the ``<case>.mrk.json`` detections in `folder`."""
    return {case: case_error(read_landmarks(folder / f"{case}.mrk.json"), atlas, case) for case in cases}


def baseline_errors(atlas: Path, shots: int, cases: list[str]) -> dict[str, dict[str, float]]:
    """Per-case mean errors of each baseline run of `shots` on `cases` (those it has), by run."""
    name, _, runs = BASELINE_RUNS[shots]
    columns = {}
    for run in runs:
        table = read_error_table(atlas / "baselines" / name, run, [run])
        columns[run] = {case: float(np.nanmean(table.errors_mm[table.case_names.index(case)]))
                        for case in cases if case in table.case_names}
    return columns


def print_table(columns: dict[str, dict[str, float]]) -> dict[str, float]:
    """One row per case of the first column, one column per method, then the means (each over the
    cases it has); returns the means by column."""
    cases = sorted(next(iter(columns.values())))
    print(f"{'case':18} " + " ".join(f"{label:>11}" for label in columns))
    for case in cases:
        print(f"{case:18} " + " ".join(f"{values.get(case, np.nan):11.3f}" for values in columns.values()))
    means = {label: float(np.mean([values[case] for case in cases if case in values]))
             for label, values in columns.items()}
    print(f"{'mean':18} " + " ".join(f"{value:11.3f}" for value in means.values()) + f"   over {len(cases)} cases")
    return means


def print_ratio(label: str, numerator: float, denominator: float, target: str = "") -> float:
    """Print and return ``numerator / denominator``."""
    ratio = numerator / denominator
    print(f"{label}: {ratio:.3f}" + (f" (target {target})" if target else ""))
    return ratio


def read_timing(run: Path) -> dict:
    """The run's ``timing.json`` ({} when it has none)."""
    try:
        return json.loads((run / TIMING_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def step_times(run: Path) -> list[tuple[str, float]]:
    """(what, seconds) of every recorded step of `run`, in the order they ran; the parts of the
    training follow its wall time."""
    timing = read_timing(run)
    times = []
    for key, label in {**RUN_STEPS, **OTHER_STEPS}.items():
        if key in timing:
            times.append((label, float(timing[key])))
        if key == "train_s":
            times += _training_parts(run / "train", timing.get("train_s"))
    return times


def end_to_end_seconds(run: Path) -> float:
    """The run's recorded steps added up (the benchmark's own re-detection left out)."""
    timing = read_timing(run)
    return float(sum(timing[key] for key in RUN_STEPS if key in timing))


def print_times(title: str, run: Path) -> None:
    """The time of each recorded step of `run`, and the run end to end."""
    print(f"{title} ({run}):")
    for label, seconds in step_times(run):
        print(f"  {label:78} {seconds:9.1f} s")
    if read_timing(run):
        print(f"  {'end to end':78} {end_to_end_seconds(run):9.1f} s")


def _training_parts(train: Path, wall_s: float | None) -> list[tuple[str, float]]:
    """The network training of each training in `train` (per stage from its log) and, given the
    wall time of ``h3de train``, the rest of that time."""
    parts = []
    for name, folder in _trainings(train):
        seconds = _training_seconds(folder)
        if seconds is not None:
            stages = ", ".join(f"{stage} {value:.0f} s" for stage, value in _stage_seconds(folder).items())
            parts.append((f"  {name}" + (f" ({stages})" if stages else ""), seconds))
    if wall_s is not None and parts:
        parts.append(("  rest (start-up, caching; few-shot: registration if not cached, re-labelling)",
                      float(wall_s) - sum(seconds for _, seconds in parts)))
    return parts


def _trainings(train: Path) -> list[tuple[str, Path]]:
    """(name, folder) of each training in a run's ``train`` folder: the few-shot rounds, or the
    one training of a run without unannotated scans (a fine-tuning)."""
    rounds = train / "rounds"
    if rounds.is_dir():
        numbers = sorted(int(path.name) for path in rounds.iterdir() if path.name.isdigit())
        return [(f"round {number} network training", rounds / str(number)) for number in numbers]
    return [("network training", train)]


def _training_seconds(folder: Path) -> float | None:
    """Seconds of network training a training's package records (None without a package)."""
    try:
        manifest = json.loads((folder / "package" / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return float(manifest["training"]["provenance"]["seconds"])


def _stage_seconds(folder: Path) -> dict[str, float]:
    """Seconds of the epochs of each stage, from the training log."""
    seconds: dict[str, float] = defaultdict(float)
    try:
        with open(folder / "training_log.csv", newline="", encoding="utf-8") as stream:
            for row in csv.DictReader(stream):
                seconds[row["stage"]] += float(row["seconds"])
    except FileNotFoundError:
        return {}
    return dict(seconds)
