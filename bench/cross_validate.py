"""Cross-validated evaluation: every reported case is predicted by a model that never saw it.

The reported cases (``--report-where landmarks=exact``: the 22 exact cases of the mouse atlas)
are dealt into k folds (seeded, written to ``OUT/folds.json``). For each fold:

1. ``OUT/fold-K/data``: the dataset without the fold's cases (links to the files, cases.csv
   filtered), so neither training nor its inner validation can see them;
2. ``h3de train RECIPE --data OUT/fold-K/data --output OUT/fold-K/run`` (the recipe's own inner
   validation split, drawn from the remaining cases, stops training early);
3. inference settings chosen on those inner validation cases only: the passes and shape prior
   width of each local stage in turn (the fine stage, then the refine stage of a three-stage
   recipe, judged by the final positions with the later stage as the recipe states it), then
   test-time rotations of the last stage for the best of those; the expected-error model fitted
   on their detections with the chosen settings; written as the package ``OUT/fold-K/selected``
   (same weights) and ``selection.json``;
4. ``h3de detect`` on the fold's whole scans with that package into ``OUT/predictions``.

Then ``h3de evaluate`` scores every reported case, with MALPACA's errors on the same cases beside
it (``--baseline``), into ``OUT/report``. Every step is skipped when its output exists, and
training resumes, so the same command continues an interrupted run (``--max-minutes`` bounds one
invocation; exit status 3 means "not finished, run again").

A fold whose cases all have predictions is done and never retrains, so a run can be spread over
machines or sessions: ``--fold K`` runs only fold K (repeat the flag for several), and
``OUT/folds.json``, ``OUT/predictions/`` and each ``OUT/fold-K/selection.json`` are the whole
result of a fold (kept, they let the report be made without the fold's training run). The report
is made once every fold is done.

    python bench/cross_validate.py --data ../shared/data/mouse_ct_atlas \\
        --recipe Resources/Training/mouse-skull-45.json --out runs/cv --folds 4 --threads 2

``--recipe-overrides FILE`` trains with a partial recipe merged onto ``--recipe`` (``h3de train
RECIPE --config FILE``); the refine-stage ablation (a third stage at 0.1 mm) is the same command
with ``--recipe-overrides bench/lever-refine.json --out runs/cv-refine``.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from H3DELandmarksLib.atomic import atomic_write_text
from H3DELandmarksLib.data.datasets import CASES_FILE, GenericDataset, read_cases_file
from H3DELandmarksLib.evaluation.metrics import radial_errors
from H3DELandmarksLib.inference import Predictor
from H3DELandmarksLib.inference.package_loading import load_stage_networks
from H3DELandmarksLib.inference.uncertainty import fit_error_model
from H3DELandmarksLib.registry import read_package, write_package

NOT_FINISHED = 3
PASSES = (1, 2, 3)
SHAPE_PRIORS_MM = (None, 1.0, 2.0, 3.0)
TEST_TIME_ROTATIONS = 4
BASELINE = Path("baselines") / "malpaca_errors.csv"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.monotonic()
    notes = read_cases_file(args.data / CASES_FILE)
    column, value = args.report_where.split("=", 1)
    reported = [case for case, row in notes.items() if row.get(column) == value]
    folds = _folds(args.out / "folds.json", reported, args.folds, args.seed)
    outside = [number for number in args.fold or [] if not 1 <= number <= len(folds)]
    if outside:
        sys.exit(f"--fold {outside[0]} is not a fold of this run (1 to {len(folds)}).")
    for number, test_cases in enumerate(folds, start=1):
        fold = args.out / f"fold-{number}"
        if _fold_done(args.out / "predictions", test_cases) or (args.fold and number not in args.fold):
            continue
        data = _fold_data(args.data, fold / "data", notes, test_cases)
        minutes = None if args.max_minutes is None else args.max_minutes - (time.monotonic() - started) / 60
        if minutes is not None and minutes <= 0:
            return _not_finished(number)
        if not _train(args, data, fold / "run", minutes):
            return _not_finished(number)
        selected = _select(fold, data, args.threads)
        _detect(args, selected, test_cases, args.out / "predictions")
    remaining = [number for number, cases in enumerate(folds, start=1)
                 if not _fold_done(args.out / "predictions", cases)]
    if remaining:
        print(f"Folds {', '.join(map(str, remaining))} of {len(folds)} are not done yet; the report is made once "
              "every fold is.", flush=True)
        return 0
    _evaluate(args)
    return 0


def _fold_done(predictions: Path, cases: list[str]) -> bool:
    """Whether every case of a fold has its prediction."""
    return all((predictions / f"{case}.mrk.json").is_file() for case in cases)


def _folds(path: Path, cases: list[str], count: int, seed: int) -> list[list[str]]:
    """The folds of an earlier invocation, or `cases` dealt into `count` seeded folds."""
    if path.is_file():
        folds = json.loads(path.read_text(encoding="utf-8"))
        if sorted(itertools.chain(*folds)) != sorted(cases):
            sys.exit(f"{path} holds other cases than --report-where selects; use another --out.")
        return folds
    order = np.random.default_rng(seed).permutation(len(cases))
    folds = [sorted(cases[index] for index in part) for part in np.array_split(order, count)]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(folds, indent=1) + "\n")
    return folds


def _fold_data(source: Path, target: Path, notes: dict[str, dict[str, str]], excluded: list[str]) -> Path:
    """A generic dataset of links to every case of `source` but the `excluded` ones."""
    dataset = GenericDataset(source)
    kept = [case for case in dataset.cases() if case not in excluded]
    for case in kept:
        for path in source.glob(f"*/{case}.*"):
            link = target / path.parent.name / path.name
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(path.resolve())
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=["case", *next(iter(notes.values()))], lineterminator="\n")
    writer.writeheader()
    writer.writerows({"case": case, **notes[case]} for case in kept)
    atomic_write_text(target / CASES_FILE, stream.getvalue(), overwrite=True)
    return target


def _train(args: argparse.Namespace, data: Path, run: Path, minutes: float | None) -> bool:
    """Train (or resume) the fold's model; True once its package exists."""
    if (run / "package" / "manifest.json").is_file():
        return True
    command = ["h3de", "train", str(args.recipe), "--data", str(data), "--output", str(run), "--no-progress"]
    if args.recipe_overrides:
        command += ["--config", str(args.recipe_overrides)]
    if (run / "checkpoint.pt").is_file():
        command.append("--resume")
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.device != "auto":
        command += ["--device", args.device]
    if minutes is not None:
        command += ["--max-minutes", f"{minutes:.1f}"]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)
    return (run / "package" / "manifest.json").is_file()


def _select(fold: Path, data: Path, threads: int | None) -> Path:
    """The package with the inference settings that did best on the fold's inner validation
    cases, and an expected-error model fitted on those detections."""
    selected = fold / "selected"
    if (selected / "manifest.json").is_file():
        return selected
    networks = load_stage_networks(fold / "run" / "package")
    manifest = next(iter(networks.values())).package.manifest
    cases = manifest["training"]["data"]["validation_cases"]
    dataset = GenericDataset(data)
    scans = {case: dataset.load(case) for case in cases}
    rows, trials = [], []

    def trial(base: dict, index: int, passes: int, prior: float | None, rotations: int) -> None:
        candidate = _with_settings(base, index, passes, prior, rotations)
        stage = candidate["preprocessing"]["stages"][index]["name"]
        predictor = Predictor(networks, candidate, device="cpu", threads=threads)
        detections = {case: predictor.predict(volume) for case, (volume, _) in scans.items()}
        errors = {case: radial_errors(detections[case].landmarks, truth) for case, (_, truth) in scans.items()}
        mre = float(np.mean([np.nanmean(value) for value in errors.values()]))
        rows.append({"stage": stage, "passes": passes, "shape_prior_mm": prior, "tta_rotations": rotations,
                     "inner_validation_mre_mm": round(mre, 4)})
        print(f"{fold.name}: {stage} passes {passes}, prior {prior}, {rotations} test-time rotations: inner "
              f"validation MRE {mre:.4f} mm", flush=True)
        trials.append((mre, len(trials), candidate, detections, errors))

    chosen = manifest
    stages = manifest["preprocessing"]["stages"]
    for index in range(1, len(stages)) or [0]:
        for passes, prior in _settings(stages[index]):
            trial(chosen, index, passes, prior, 0)
        chosen = min(trials)[2]
    last = chosen["preprocessing"]["stages"][-1]
    trial(chosen, len(stages) - 1, last.get("passes", 1), last.get("shape_prior_mm"), TEST_TIME_ROTATIONS)
    _, _, chosen, detections, errors = min(trials)
    signals = {name: np.concatenate([detections[case].signals[name] for case in cases])
               for name in detections[cases[0]].signals}
    error_model = fit_error_model(signals, np.concatenate([errors[case] for case in cases]),
                                  {"cases": cases, "source": "inner validation of the fold"})
    chosen["uncertainty"] = error_model.to_manifest()
    package = read_package(fold / "run" / "package")
    write_package(selected, chosen, package.state_dict(), overwrite=True, references=package.reference_patches())
    atomic_write_text(fold / "selection.json", json.dumps({"cases": cases, "settings": rows}, indent=1) + "\n",
                      overwrite=True)
    return selected


def _settings(stage: dict) -> list[tuple[int, float | None]]:
    """The (passes, shape prior) pairs tried for a local stage."""
    priors = SHAPE_PRIORS_MM if stage.get("orientation") == "shape-aligned" else (None,)
    return [(passes, prior) for passes in PASSES for prior in priors]


def _with_settings(manifest: dict, index: int, passes: int, prior: float | None, rotations: int) -> dict:
    """A copy of `manifest` whose stage `index` runs with these settings."""
    candidate = json.loads(json.dumps(manifest))
    stage = candidate["preprocessing"]["stages"][index]
    stage["passes"] = passes
    stage.pop("tta_rotations", None)
    if rotations:
        stage["tta_rotations"] = rotations
    stage.pop("shape_prior_mm", None)
    if prior is not None:
        stage["shape_prior_mm"] = prior
    return candidate


def _detect(args: argparse.Namespace, package: Path, cases: list[str], out: Path) -> None:
    """`h3de detect` on the fold's whole scans that have no prediction yet."""
    volumes = [path for case in cases if not (out / f"{case}.mrk.json").is_file()
               for path in (args.data / "volumes").glob(f"{case}.*")]
    if not volumes:
        return
    command = ["h3de", "detect", *map(str, volumes), "--model", str(package), "--out", str(out),
               "--format", "mrk.json,csv,json", "--progress", "none"]
    if args.threads:
        command += ["--threads", str(args.threads)]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)


def _evaluate(args: argparse.Namespace) -> None:
    command = ["h3de", "evaluate", "--predictions", str(args.out / "predictions"), "--truth",
               str(args.data / "landmarks"), "--out", str(args.out / "report"), "--overwrite",
               "--name", args.name, "--big-error-mm", "0.5"]
    if (args.data / BASELINE).is_file():
        command += ["--baseline", str(args.data / BASELINE), "--baseline-name", "MALPACA"]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)


def _not_finished(fold: int) -> int:
    print(f"Stopped at the time limit in fold {fold}; run the same command again to continue.", flush=True)
    return NOT_FINISHED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (generic layout with cases.csv)")
    parser.add_argument("--recipe", type=Path, required=True, help="training recipe file")
    parser.add_argument("--recipe-overrides", type=Path, metavar="FILE",
                        help="partial recipe merged onto --recipe, e.g. bench/lever-refine.json")
    parser.add_argument("--out", type=Path, required=True, help="folder for folds, runs, predictions and report")
    parser.add_argument("--folds", type=int, default=4, help="number of folds (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment")
    parser.add_argument("--fold", type=int, action="append", metavar="K",
                        help="run only fold K (1-based; repeat for several); default: every fold")
    parser.add_argument("--report-where", default="landmarks=exact", metavar="COLUMN=VALUE",
                        help="cases.csv cells of the reported cases (default landmarks=exact)")
    parser.add_argument("--name", default="H3DE-Net (cross-validated)", help="the method's name in the report")
    parser.add_argument("--threads", type=int, help="CPU threads for training and detection")
    parser.add_argument("--device", default="auto", help="training device")
    parser.add_argument("--max-minutes", type=float, help="stop cleanly after this many minutes (run again to go on)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
