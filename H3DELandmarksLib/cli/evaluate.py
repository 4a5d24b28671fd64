"""`h3de evaluate`: score landmark predictions against truth and write a report folder.

Two modes:

- ``--predictions DIR --truth DIR``: compare files by case name; predictions are any of the
  files ``h3de detect`` writes, ``<case>.mrk.json``, ``<case>.json`` or ``<case>.csv`` (the first
  of these a case has); truth is ``<case>.mrk.json``, ``.fcsv`` or ``.csv``. Every prediction needs a truth file; truth files without a prediction are reported.
- ``--model ID|PATH --data DIR``: run the model on every case of a dataset folder, read by
  `GenericDataset` (``volumes/<case>.<ext>``, ``landmarks/<case>.mrk.json``, optional
  ``cases.csv``) or, when it holds ``<case>_volume.nrrd`` files, `MMLDDataset`; record the
  seconds each detection takes, keep the predictions in ``REPORT/predictions/`` and evaluate them.

``--cases`` keeps some cases: comma-separated names, or values of a ``cases.csv`` column (a case
is kept when its name or one of its cells equals an item, so ``--cases exact`` keeps the rows whose
``landmarks`` column says "exact"). ``cases.csv`` is read from the dataset folder, or, in the first
mode, beside or inside the truth folder.

Errors are also given in voxels of the median voxel spacing, taken from the volumes (in the first
mode: ``--voxel-mm``, or the headers of a ``volumes`` folder beside the truth folder). SDR
thresholds default to `default_thresholds` of that spacing (clinical 2/2.5/3/4 mm when unknown).

``--baseline`` puts another method beside the model on the same cases and landmarks: a second
predictions folder (scored against the same truth) or an error table such as
``../shared/data/mouse_ct_atlas/baselines/malpaca_errors.csv`` (``--baseline-runs`` keeps some
of its runs); the report gains ``comparison.md``, per-case and per-landmark CSV tables and a
per-landmark plot of both methods (`evaluation.comparison`).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..atomic import check_writable_folder
from ..data.datasets import CASES_FILE, GenericDataset, MMLDDataset, read_cases_file
from ..data.landmark_files import read_json_metadata, read_landmarks, write_landmarks
from ..data.volume_io import volume_format, volume_stem
from ..errors import H3DEError, LandmarkFileError, VolumeError
from ..evaluation.comparison import compare, method_errors, read_error_table, write_comparison
from ..evaluation.metrics import CLINICAL_THRESHOLDS_MM, default_thresholds, evaluate_cases, threshold_rule
from ..evaluation.reports import PLOTS_SKIPPED, check_report_folder, write_report
from .model_options import add_model_options, predictor_from_args

PREDICTION_SUFFIX = ".mrk.json"  # of the predictions this command writes
PREDICTION_SUFFIXES = (".mrk.json", ".json", ".csv")  # of those it reads, preferred first
TRUTH_SUFFIXES = (".mrk.json", ".fcsv", ".csv")
TIMING_FILE = "timing.csv"
MMLD_VOLUME_PATTERN = "*_volume.nrrd"


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    """Register the `evaluate` sub-command."""
    parser = subparsers.add_parser(
        "evaluate",
        help=summary,
        description=(
            "Score landmark predictions against truth and write summary.md, CSV tables and PNG plots. "
            "Either compare prediction files with truth files (--predictions, --truth) or run a model "
            "on a dataset folder (--model, --data)."
        ),
    )
    files = parser.add_argument_group("compare files")
    files.add_argument("--predictions", type=Path, metavar="DIR",
                       help="folder of h3de detect outputs: <case>.mrk.json, .json or .csv")
    files.add_argument("--truth", type=Path, metavar="DIR", help="folder of <case>.mrk.json/.fcsv/.csv truth")
    files.add_argument("--voxel-mm", type=_positive_mm, metavar="MM", help="voxel size to express errors in voxels")
    model = parser.add_argument_group("run a model")
    add_model_options(model, required=False)
    model.add_argument("--data", type=Path, metavar="DIR", help="dataset folder (generic or MMLD layout)")
    parser.add_argument("--out", type=Path, required=True, metavar="REPORT_DIR", help="report folder")
    parser.add_argument("--cases", metavar="SELECTION", help="comma-separated case names or cases.csv values")
    parser.add_argument("--thresholds", type=_thresholds, metavar="MM,...", help="SDR thresholds in mm")
    parser.add_argument("--big-error-mm", type=_positive_mm, metavar="MM",
                        help="error a reviewer must find, for the reliability section (default: largest SDR threshold)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    baseline = parser.add_argument_group("compare with a baseline")
    baseline.add_argument("--name", metavar="NAME",
                          help="the evaluated method's name beside the baseline (default: predictions folder or model)")
    baseline.add_argument("--baseline", type=Path, metavar="DIR|CSV",
                          help="predictions folder or error table (case, landmark, error_mm[, run]) of another method")
    baseline.add_argument("--baseline-name", metavar="NAME", help="the baseline's name in the report (default: its file)")
    baseline.add_argument("--baseline-runs", metavar="RUN,...", help="runs (or references) of the error table to average")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate in the mode the options choose; returns 0."""
    comparing = args.predictions is not None or args.truth is not None
    running = args.model is not None or args.data is not None
    if comparing == running:
        raise H3DEError("Give either --predictions and --truth, or --model and --data.")
    check_report_folder(args.out, args.overwrite)
    check_writable_folder(args.out, "--out")
    if comparing:
        pairs, seconds, voxel_mm, provenance = _compare_files(args)
    else:
        pairs, seconds, voxel_mm, provenance = _run_model(args)
    thresholds = args.thresholds or (default_thresholds(voxel_mm) if voxel_mm else CLINICAL_THRESHOLDS_MM)
    result = evaluate_cases(pairs, thresholds, voxel_mm)
    provenance.update(
        {
            "Voxel size for voxel errors": f"{voxel_mm:.4g} mm (median spacing)" if voxel_mm else "unknown",
            "SDR thresholds chosen": "with --thresholds" if args.thresholds else f"default: {threshold_rule(voxel_mm)}",
            "Evaluated": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, h3de {__version__}",
        }
    )
    baseline = _baseline(args, pairs, thresholds, voxel_mm) if args.baseline else None
    written = write_report(result, args.out, provenance, seconds, overwrite=args.overwrite,
                           big_error_mm=args.big_error_mm)
    sdr = ", ".join(f"{t:g} mm {100 * v:.1f} %" for t, v in result.sdr.items())
    print(f"MRE {result.mre_mm:.3f} ± {result.sd_mm:.3f} mm over {len(pairs)} cases; SDR {sdr}.")
    if baseline is not None:
        name = args.name or (args.predictions.name if comparing else str(args.model))
        comparison = compare(method_errors(result, name), baseline)
        written += write_comparison(comparison, args.out, overwrite=args.overwrite)
        ours, theirs = comparison.mre(comparison.model), comparison.mre(comparison.baseline)
        print(f"Beside {baseline.name} on the same {len(comparison.model.case_names)} cases: "
              f"MRE {ours:.3f} mm against {theirs:.3f} mm (ratio {ours / theirs:.2f}).")
    if not any(path.suffix == ".png" for path in written):
        print(PLOTS_SKIPPED, file=sys.stderr)
    print(f"Report written to {args.out}.")
    return 0


def _compare_files(args: argparse.Namespace):
    """Pairs of (prediction, truth) read from two folders, plus provenance."""
    if args.predictions is None or args.truth is None:
        raise H3DEError("Comparing files needs both --predictions DIR and --truth DIR.")
    predictions_dir, truth_dir = _folder(args.predictions, "--predictions"), _folder(args.truth, "--truth")
    predicted_files = _prediction_files(predictions_dir)
    if not predicted_files:
        raise H3DEError(f"{predictions_dir} holds no <case>.mrk.json, <case>.json or <case>.csv prediction files.")
    cases = _selected(list(predicted_files), args.cases, _cases_table(truth_dir, truth_dir.parent))
    pairs = {}
    for case in cases:
        truth_file = _truth_file(truth_dir, case)
        if truth_file is None:
            raise LandmarkFileError(f"There is no truth file for case {case!r} in {truth_dir}.")
        pairs[case] = (read_landmarks(predicted_files[case]), read_landmarks(truth_file))
    seconds = _timing(predictions_dir, cases)
    unpredicted = len(_truth_cases(truth_dir) - set(predicted_files))
    voxel_mm = args.voxel_mm or _median_spacing_from_headers(truth_dir.parent / "volumes", cases)
    provenance = {
        "Predictions": str(predictions_dir.resolve()),
        "Truth": str(truth_dir.resolve()),
        "Cases": f"{len(cases)} evaluated ({args.cases or 'all with a prediction'}); "
        f"{unpredicted} truth files have no prediction",
    }
    if seconds:
        timing_file = predictions_dir / TIMING_FILE
        provenance["Timing"] = (
            f"seconds per case from {timing_file}" if timing_file.is_file()
            else "seconds per case (read + detection + write) from h3de detect's <case>.json files"
        )
    return pairs, seconds, voxel_mm, provenance


def _run_model(args: argparse.Namespace):
    """Run the model on every selected case of a dataset folder; pairs, seconds, provenance."""
    from tqdm import tqdm

    if args.model is None or args.data is None:
        raise H3DEError("Running a model needs both --model ID|PATH and --data DIR.")
    data = _folder(args.data, "--data")
    source = MMLDDataset(data) if any(data.glob(MMLD_VOLUME_PATTERN)) else GenericDataset(data)
    cases = _selected(source.cases(), args.cases, {case: source.notes(case) for case in source.cases()})
    predictor = predictor_from_args(args)
    pairs, seconds, spacings = {}, {}, []
    for case in tqdm(cases, desc="Evaluating", unit="case"):
        volume, truth = source.load(case)
        spacings.append(float(np.median(volume.spacing)))
        start = time.perf_counter()
        predicted = predictor.predict(volume).landmarks
        seconds[case] = time.perf_counter() - start
        write_landmarks(args.out / "predictions" / f"{case}{PREDICTION_SUFFIX}", predicted, overwrite=args.overwrite)
        pairs[case] = (predicted, truth)
    provenance = {
        "Model": f"{predictor.model_id} {predictor.model_version} (from {args.model})",
        "Device": args.device + (f", {args.threads} threads" if args.threads else ""),
        "Data": f"{data.resolve()} ({source.describe()['layout']} layout)",
        "Cases": f"{len(cases)} evaluated ({args.cases or 'all'})",
        "Timing": "seconds of the prediction call per case, volume already read (the first includes warm-up)",
    }
    return pairs, seconds, float(np.median(spacings)), provenance


def _baseline(args: argparse.Namespace, pairs: dict, thresholds: tuple[float, ...], voxel_mm: float | None):
    """The baseline's errors: a predictions folder scored against the same truth, or an error table."""
    path = args.baseline
    name = args.baseline_name or (path.name[: -len(".csv")] if path.name.endswith(".csv") else path.name)
    runs = [item.strip() for item in args.baseline_runs.split(",") if item.strip()] if args.baseline_runs else None
    if path.is_file():
        return read_error_table(path, name, runs)
    folder = _folder(path, "--baseline")
    if runs:
        raise H3DEError("--baseline-runs applies to an error table, not a predictions folder.")
    predicted_files = _prediction_files(folder)
    scored = {case: (read_landmarks(predicted_files[case]), truth) for case, (_, truth) in pairs.items()
              if case in predicted_files}
    if not scored:
        raise H3DEError(f"{folder} holds no prediction for any evaluated case.")
    return method_errors(evaluate_cases(scored, thresholds, voxel_mm), name)


def _prediction_files(folder: Path) -> dict[str, Path]:
    """Prediction file of each case in `folder` (the first of PREDICTION_SUFFIXES it has), by case."""
    found: dict[str, tuple[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name in (TIMING_FILE, CASES_FILE):
            continue
        rank = next((rank for rank, suffix in enumerate(PREDICTION_SUFFIXES) if path.name.endswith(suffix)), None)
        if rank is not None:
            case = path.name[: -len(PREDICTION_SUFFIXES[rank])]
            if case and (case not in found or rank < found[case][0]):
                found[case] = (rank, path)
    return {case: path for case, (_, path) in sorted(found.items())}


def _selected(cases: list[str], selection: str | None, table: dict[str, dict[str, str]]) -> list[str]:
    """Cases kept by `selection` (names or cases.csv values); all when no selection."""
    if not selection:
        return cases
    items = {item.strip() for item in selection.split(",") if item.strip()}
    kept = [case for case in cases if case in items or items & set(table.get(case, {}).values())]
    if not kept:
        raise H3DEError(f"No case matches --cases {selection!r}.")
    return kept


def _cases_table(*folders: Path) -> dict[str, dict[str, str]]:
    """Notes of the first cases.csv found in `folders`, by case name ({} when there is none)."""
    for folder in folders:
        if (folder / CASES_FILE).is_file():
            return read_cases_file(folder / CASES_FILE)
    return {}


def _timing(folder: Path, cases: list[str]) -> dict[str, float]:
    """Seconds per case: from a timing.csv (columns case, seconds) in the predictions folder, else
    from the timings h3de detect keeps in ``<case>.json`` (read + detection + write); {} if none."""
    path = folder / TIMING_FILE
    if path.is_file():
        try:
            with path.open(newline="", encoding="utf-8-sig") as stream:
                return {row["case"]: float(row["seconds"]) for row in csv.DictReader(stream)}
        except (KeyError, TypeError, ValueError, csv.Error):
            raise H3DEError(f"{path} is not a timing table with columns 'case' and 'seconds'.") from None
    seconds = {}
    for case in cases:
        if (folder / f"{case}.json").is_file():
            timings = read_json_metadata(folder / f"{case}.json").get("timings_s", {})
            if "total" in timings:
                seconds[case] = sum(float(timings.get(key, 0.0)) for key in ("read", "total", "write"))
    return seconds


def _truth_file(folder: Path, case: str) -> Path | None:
    for suffix in TRUTH_SUFFIXES:
        path = folder / f"{case}{suffix}"
        if path.is_file():
            return path
    return None


def _truth_cases(folder: Path) -> set[str]:
    cases = set()
    for path in folder.iterdir():
        for suffix in TRUTH_SUFFIXES:
            if path.name.endswith(suffix):
                cases.add(path.name[: -len(suffix)])
                break
    return cases


def _case_of_volume(path: Path) -> str | None:
    """Case name of a volume file, None for anything else."""
    if not path.is_file() or volume_format(path) is None:
        return None
    return volume_stem(path)


def _median_spacing_from_headers(volumes: Path, cases: list[str]) -> float | None:
    """Median voxel spacing of the cases' volume files in `volumes` (headers only), or None."""
    if not volumes.is_dir():
        return None
    spacings = []
    for path in volumes.iterdir():
        if _case_of_volume(path) in cases:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            try:
                reader.ReadImageInformation()
            except RuntimeError:
                raise VolumeError(f"Cannot read the header of volume {path}.") from None
            spacings.append(float(np.median(reader.GetSpacing())))
    return float(np.median(spacings)) if spacings else None


def _folder(path: Path, option: str) -> Path:
    if not path.is_dir():
        raise H3DEError(f"{option} {path} is not a folder.")
    return path


def _positive_mm(text: str) -> float:
    """Parse one positive length in millimetres."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a length in millimetres") from None
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive millimetres")
    return value


def _thresholds(text: str) -> tuple[float, ...]:
    """Parse "2,2.5,3" into positive millimetres."""
    values = tuple(_positive_mm(item.strip()) for item in text.split(",") if item.strip())
    if not values:
        raise argparse.ArgumentTypeError("give at least one threshold in millimetres")
    return values
