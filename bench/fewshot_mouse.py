"""Few-shot, one-shot and fine-tuning benchmarks on the mouse atlas, beside MALPACA and ALPACA on the
same cases.

`prepare` builds the run's dataset folder ``RUN/data`` of symbolic links into the atlas: every
volume, but the landmark files of the references only, so the other scans are unannotated. The
rest runs the product's own commands on it:

- 5-shot: references ``129X1_SVJ_ B6129SF1.J_ C57BLKS.J_ CBA_CAJ_ MRL_MPJ_`` (those of MALPACA
  runs malpaca-7 and malpaca-8), the other 38 scans unannotated;
- 1-shot: reference ``129X1_SVJ_`` (ALPACA's single-reference rows from that scan);
- 10-shot: those 5 and the references of malpaca-9 and malpaca-10 that are atlas cases,
  ``C57BL_6NJ_ BALB_CBYJ_ X129P3.J_ C3H_HEJ_`` (MM2 spells the third ``X129P3_J_``), and in place
  of their fifth, ``I_LnJ_``, which the atlas lacks, ``B6C3F1.J_``: the first ``refined`` case of
  cases.csv without a note, so that no exact case leaves the evaluation. Beside it malpaca-7 to
  malpaca-10, none of which used an evaluated case.

``all`` = ``prepare``, then ``h3de train --data RUN/data --output RUN/train`` (few-shot, recipe
derived from the data, bone from 30), then ``h3de detect`` and ``h3de evaluate`` on the exact cases
that are not references, and the table beside the baseline, with a column for the run's final
labels of those scans (``RUN/train/labels``, the landmarks `h3de train` leaves for them). ``pseudo-labels`` runs the
registration step alone (cached in ``RUN/train/registration``, where the training run finds it)
and scores the fused registration labels of the exact cases, without and with patch matching,
beside the baseline.

``finetune`` fine-tunes the model of run FROM (``h3de train --init-from FROM/train/package``) on
``RUN/data``, the 10-shot references' volumes and landmarks alone, then detects and evaluates the
10-shot run's cases (the exact cases not among its references) and prints FROM's model (its
detections, or new ones when it lacks some), the fine-tuned one, the from-scratch 10-shot
run's (``--scratch``) and MALPACA's on those cases, with the ratio of the fine-tuning's training
time to the 10-shot run's. Training resumes when a run folder holds one and is skipped when it
holds a finished model::

    python bench/fewshot_mouse.py pseudo-labels --shots 5 --run runs/fewshot-5 --cases exact
    python bench/fewshot_mouse.py all --shots 5 --run runs/fewshot-5 --threads 2 --max-minutes 110
    python bench/fewshot_mouse.py all --shots 1 --run runs/fewshot-1 --threads 2 --max-minutes 110
    python bench/fewshot_mouse.py all --shots 10 --run runs/fewshot-10 --threads 2 --max-minutes 110
    python bench/fewshot_mouse.py finetune --from runs/fewshot-5 --run runs/finetune-10 \\
        --scratch runs/fewshot-10 --threads 2 --max-minutes 110

Times of each step are written to ``RUN/timing.json`` and printed with the parts of the training
its run folder records (see `fewshot_report`).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from H3DELandmarksLib.atomic import atomic_write_text
from H3DELandmarksLib.data.datasets import GenericDataset
from H3DELandmarksLib.data.registration import RegistrationSettings
from H3DELandmarksLib.training.fewshot import OUTPUT_LABELS_DIR, registration_workers
from H3DELandmarksLib.training.pseudo_labels import (
    Reference,
    Target,
    match_settings,
    matched_estimates,
    register_references,
    registration_labels,
    run_settings,
)
from fewshot_report import (
    BASELINE_RUNS,
    TIMING_FILE,
    baseline_errors,
    case_error,
    folder_errors,
    print_ratio,
    print_table,
    print_times,
    read_timing,
)

ATLAS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mouse_ct_atlas"
FIVE = ["129X1_SVJ_", "B6129SF1.J_", "C57BLKS.J_", "CBA_CAJ_", "MRL_MPJ_"]  # malpaca-7/8's
# malpaca-9/10's in the atlas (MM2's X129P3_J_ is X129P3.J_), and B6C3F1.J_ for their I_LnJ_
NINE_TEN = ["C57BL_6NJ_", "BALB_CBYJ_", "X129P3.J_", "C3H_HEJ_", "B6C3F1.J_"]
REFERENCES = {5: FIVE, 1: FIVE[:1], 10: FIVE + NINE_TEN}
FINE_TUNED_SHOTS = 10
BONE_THRESHOLD = 30.0
FINE_SPACING_MM = 0.2


class BenchError(Exception):
    """A run folder that cannot be used as asked; the message is one sentence."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.step == "finetune" and (args.from_run is None or args.shots is not None):
        parser.error(f"the finetune step needs --from RUN and no --shots (it is {FINE_TUNED_SHOTS}-shot)")
    if args.step != "finetune" and (args.shots is None or args.from_run or args.scratch):
        parser.error(f"the {args.step} step needs --shots and takes no --from or --scratch")
    try:
        return finetune(args) if args.step == "finetune" else few_shot(args)
    except BenchError as error:
        print(error, file=sys.stderr)
        return 1


def few_shot(args: argparse.Namespace) -> int:
    """The `pseudo-labels` or `all` step of a few-shot run."""
    atlas, run = args.atlas.resolve(), args.run.resolve()
    timing = read_timing(run)
    data = prepare(atlas, run / "data", REFERENCES[args.shots])
    exact = evaluated_cases(atlas, REFERENCES[args.shots])
    if args.step == "pseudo-labels":
        started = time.perf_counter()
        deadline = None if args.max_minutes is None else time.monotonic() + 60 * args.max_minutes
        chosen = {"exact": exact, "all": None}.get(args.cases, args.cases.split(","))
        label_sets = pseudo_labels(data, run / "train", chosen, args.threads, deadline)
        if label_sets is None:
            print("Stopped at the time limit; the registered pairs are cached, run it again to continue.")
            return 1
        timing["registration_s"] = round(time.perf_counter() - started, 1)
        columns = {name: {case: case_error(labels[case], atlas, case) for case in exact if case in labels}
                   for name, labels in label_sets.items()}
        _write_timing(run, timing)
        _compare(columns, atlas, args.shots)
        return 0
    command = ["h3de", "train", "--data", str(data), "--output", str(run / "train"),
               "--registration-threshold", f"{BONE_THRESHOLD:g}", "--no-progress"] + _limits(args)
    if not train(command, run / "train", timing):
        _write_timing(run, timing)
        print("Training stopped at the time limit; run the same command again to continue.")
        return 1
    detect(run / "train" / "package", atlas, exact, run / "detected", args.threads, timing, "detect_s")
    evaluate(run / "detected", atlas, args.shots, run / "report", f"{args.shots}-shot", timing)
    _write_timing(run, timing)
    _compare(few_shot_columns(run, atlas, exact, args.shots), atlas, args.shots)
    print_times(f"{args.shots}-shot", run)
    return 0


def few_shot_columns(run: Path, atlas: Path, cases: list[str], shots: int) -> dict[str, dict[str, float]]:
    """Per-case errors on `cases` of the run's model (its detections) and, when the run wrote them,
    of its final labels of the unannotated scans (``train/labels``)."""
    columns = {f"{shots}-shot": folder_errors(run / "detected", atlas, cases)}
    labels = run / "train" / OUTPUT_LABELS_DIR
    if labels.is_dir():
        columns[f"{shots}-shot labels"] = folder_errors(labels, atlas, cases)
    return columns


def finetune(args: argparse.Namespace) -> int:
    """Fine-tune the model of run FROM on the 10 annotated cases, and compare it with FROM's model,
    the from-scratch 10-shot run (``--scratch``) and the baseline on the same cases."""
    atlas, run, origin = args.atlas.resolve(), args.run.resolve(), args.from_run.resolve()
    scratch = None if args.scratch is None else args.scratch.resolve()
    references = REFERENCES[FINE_TUNED_SHOTS]
    exact = evaluated_cases(atlas, references)
    package = origin / "train" / "package"
    if not (package / "manifest.json").is_file():
        raise BenchError(f"{origin} holds no trained model ({package}); run its `all` step first.")
    for folder in (origin, scratch):
        if folder is not None:
            _check_unseen(folder, exact)
    if scratch is not None:
        missing = [case for case in exact if not (scratch / "detected" / f"{case}.mrk.json").is_file()]
        if missing:
            raise BenchError(f"{scratch / 'detected'} lacks the detections of {missing[0]} ({len(missing)} cases "
                             f"in all); run `all --shots {FINE_TUNED_SHOTS} --run {args.scratch}` first.")
    timing = read_timing(run)
    data = prepare(atlas, run / "data", references, every_volume=False)
    command = ["h3de", "train", "--data", str(data), "--output", str(run / "train"), "--init-from", str(package),
               "--no-progress"] + _limits(args)
    if not train(command, run / "train", timing):
        _write_timing(run, timing)
        print("Training stopped at the time limit; run the same command again to continue.")
        return 1
    detect(run / "train" / "package", atlas, exact, run / "detected", args.threads, timing, "detect_s")
    evaluate(run / "detected", atlas, FINE_TUNED_SHOTS, run / "report", "fine-tuned", timing)
    before = origin / "detected"
    if not all((before / f"{case}.mrk.json").is_file() for case in exact):
        before = run / "detected-from"
        detect(package, atlas, exact, before, args.threads, timing, "detect_from_s")
    _write_timing(run, timing)
    _finetune_report(atlas, exact, origin, before, run, scratch)
    return 0


def _finetune_report(atlas: Path, cases: list[str], origin: Path, before: Path, run: Path,
                     scratch: Path | None) -> None:
    """The table of the models before and after fine-tuning (detections in `before` and
    ``run/detected``), the 10-shot run's and the baseline's, their ratios and every run's times."""
    label = f"{len(_annotated(origin))}-shot"
    columns = {label: folder_errors(before, atlas, cases), "fine-tuned": folder_errors(run / "detected", atlas, cases)}
    if scratch is not None:
        columns["10-shot"] = folder_errors(scratch / "detected", atlas, cases)
    means = _compare(columns, atlas, FINE_TUNED_SHOTS)
    print_ratio(f"error, fine-tuned / {label}", means["fine-tuned"], means[label], "< 1")
    if scratch is not None:
        print_ratio("error, fine-tuned / 10-shot", means["fine-tuned"], means["10-shot"], "<= 1")
    print_times(label, origin)
    print_times("fine-tuned", run)
    if scratch is not None:
        print_times("10-shot from scratch", scratch)
        ours, theirs = read_timing(run).get("train_s"), read_timing(scratch).get("train_s")
        if ours and theirs:
            print_ratio("training time, fine-tuned / 10-shot (h3de train wall times)", ours, theirs, "<= 1/3")


def prepare(atlas: Path, folder: Path, references: list[str], every_volume: bool = True) -> Path:
    """``folder/landmarks`` (the references') and ``folder/volumes`` (every scan, or the references'
    alone), as links."""
    for sub in ("volumes", "landmarks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for volume in sorted((atlas / "volumes").glob("*.nii.gz")):
        if every_volume or volume.name[: -len(".nii.gz")] in references:
            _link(volume, folder / "volumes" / volume.name)
    for case in references:
        _link(atlas / "landmarks" / f"{case}.mrk.json", folder / "landmarks" / f"{case}.mrk.json")
    return folder


def evaluated_cases(atlas: Path, references: list[str]) -> list[str]:
    """The atlas's exact cases that are not references."""
    with open(atlas / "cases.csv", newline="", encoding="utf-8") as stream:
        return [row["case"] for row in csv.DictReader(stream)
                if row["landmarks"] == "exact" and row["case"] not in references]


def train(command: list[str], folder: Path, timing: dict) -> bool:
    """Run `command` (an ``h3de train`` into `folder`, resumed when `folder` holds a run) unless
    `folder` holds a finished model; its wall time is added to ``timing["train_s"]``. Whether the
    model is finished."""
    if _finished(folder):
        return True
    resume = any((folder / name).exists() for name in ("checkpoint.pt", "fewshot.json", "rounds"))
    earlier = timing.get("train_s", 0.0) if folder.is_dir() else 0.0
    started = time.perf_counter()
    _run(command + (["--resume"] if resume else []))
    timing["train_s"] = round(earlier + time.perf_counter() - started, 1)
    return _finished(folder)


def detect(package: Path, atlas: Path, cases: list[str], out: Path, threads: int | None, timing: dict,
           key: str) -> None:
    """``h3de detect`` of the atlas scans `cases` into `out`, timed as ``timing[key]``."""
    started = time.perf_counter()
    scans = [str(atlas / "volumes" / f"{case}.nii.gz") for case in cases]
    _run(["h3de", "detect", *scans, "--model", str(package), "--out", str(out), "--format", "mrk.json",
          "--overwrite", "--progress", "none"] + (["--threads", str(threads)] if threads else []))
    timing[key] = round(time.perf_counter() - started, 1)


def evaluate(predictions: Path, atlas: Path, shots: int, out: Path, name: str, timing: dict) -> None:
    """``h3de evaluate`` of `predictions` against the atlas, beside the baseline runs of `shots`."""
    table, baseline, runs = BASELINE_RUNS[shots]
    started = time.perf_counter()
    _run(["h3de", "evaluate", "--predictions", str(predictions), "--truth", str(atlas / "landmarks"), "--out",
          str(out), "--overwrite", "--name", name, "--baseline", str(atlas / "baselines" / table),
          "--baseline-name", baseline, "--baseline-runs", ",".join(runs)])
    timing["evaluate_s"] = round(time.perf_counter() - started, 1)


def pseudo_labels(data: Path, output: Path, cases: list[str] | None, threads: int | None,
                  deadline: float | None) -> dict[str, dict] | None:
    """The fused labels of `cases` (all unannotated scans when None) from the registrations alone
    ("registration") and, as `h3de train` makes them, sharpened by patch matching ("registration +
    patch matching"; same settings, same cache)."""
    registered = registered_estimates(data, output, cases, threads, deadline)
    if registered is None:
        return None
    references, targets, first, estimates = registered
    matched = matched_estimates(references, targets, estimates, match_settings(targets))
    return {name: registration_labels(first.names, first.descriptions, found, FINE_SPACING_MM)
            for name, found in (("registration", estimates), ("registration + patch matching", matched))}


def registered_estimates(data: Path, output: Path, cases: list[str] | None, threads: int | None,
                         deadline: float | None = None) -> tuple | None:
    """The references, the targets (`cases`, or all unannotated scans when None), the first
    reference's landmarks and every reference's landmarks carried onto every target, as `h3de
    train` registers them (same settings, same cache in `output`); None at the `deadline`."""
    source = GenericDataset(data)
    references = [Reference(case, source.fingerprint(case), lambda case=case: source.load(case))
                  for case in source.cases()]
    first = references[0].load()[1]
    settings = run_settings(RegistrationSettings(threshold=BONE_THRESHOLD), first)
    targets = [Target(case, source.fingerprint(case), lambda case=case: source.load(case)[0])
               for case in source.unannotated_cases() if cases is None or case in cases]
    estimates = register_references(references, targets, first.names, output, settings,
                                    stop=None if deadline is None else lambda: time.monotonic() > deadline,
                                    workers=registration_workers(threads))
    return None if estimates is None else (references, targets, first, estimates)


def _compare(ours: dict[str, dict[str, float]], atlas: Path, shots: int) -> dict[str, float]:
    """The table of `ours` beside the baseline runs of `shots` and each one's ratio to their mean;
    the mean error of every column."""
    baseline = baseline_errors(atlas, shots, sorted(next(iter(ours.values()))))
    means = print_table({**ours, **baseline})
    for label in ours:
        print_ratio(f"error, {label} / {BASELINE_RUNS[shots][1]} (mean of its runs)", means[label],
                    float(np.mean([means[run] for run in baseline])))
    return means


def _check_unseen(run: Path, cases: list[str]) -> None:
    """`run`'s annotated references must not include an evaluated case."""
    annotated = _annotated(run)
    if not annotated:
        raise BenchError(f"{run / 'data' / 'landmarks'} holds no reference landmarks; is {run} a run folder?")
    seen = sorted(annotated & set(cases))
    if seen:
        raise BenchError(f"{run} was trained on the landmarks of {seen[0]}, an evaluated case; it cannot be compared.")


def _annotated(run: Path) -> set[str]:
    """The cases whose landmarks `run` trained on."""
    return {path.name[: -len(".mrk.json")] for path in (run / "data" / "landmarks").glob("*.mrk.json")}


def _finished(folder: Path) -> bool:
    """Whether `folder` holds a finished model package (not one a time limit stopped: in a stage,
    or in a later few-shot round, whose package is then the round before)."""
    try:
        manifest = json.loads((folder / "package" / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    if "stopped_in_round" in manifest["training"].get("few_shot", {}):
        return False
    return not any(isinstance(values, dict) and values.get("stopped_early")
                   for values in manifest["training"]["metrics"].values())


def _limits(args: argparse.Namespace) -> list[str]:
    """``--threads`` and ``--max-minutes`` of `args` for ``h3de train``."""
    limits = []
    for flag, value in (("--threads", args.threads), ("--max-minutes", args.max_minutes)):
        if value is not None:
            limits += [flag, str(value)]
    return limits


def _run(command: list[str]) -> None:
    """Run an ``h3de`` command; its failure (already explained on stderr) ends the benchmark with its status."""
    completed = subprocess.run(command)
    if completed.returncode:
        raise SystemExit(completed.returncode)


def _link(source: Path, link: Path) -> None:
    if not link.is_symlink():
        link.symlink_to(source)


def _write_timing(run: Path, timing: dict) -> None:
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run / TIMING_FILE, json.dumps(timing, indent=2) + "\n", overwrite=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=("pseudo-labels", "all", "finetune"),
                        help="registration labels alone, everything, or fine-tuning a run's model")
    parser.add_argument("--shots", type=int, choices=sorted(REFERENCES), help="10-, 5- or 1-shot (not for finetune)")
    parser.add_argument("--run", type=Path, required=True, help="run folder")
    parser.add_argument("--from", dest="from_run", type=Path,
                        help="finetune: the run whose model is fine-tuned (e.g. runs/fewshot-5)")
    parser.add_argument("--scratch", type=Path,
                        help="finetune: the from-scratch 10-shot run to compare with (e.g. runs/fewshot-10)")
    parser.add_argument("--atlas", type=Path, default=ATLAS, help="mouse_ct_atlas folder (default: ../shared)")
    parser.add_argument("--cases", default="all",
                        help="pseudo-labels: register onto 'exact' cases only, 'all' unannotated scans (default) or "
                             "the cases named (comma-separated)")
    parser.add_argument("--threads", type=int, help="CPU threads")
    parser.add_argument("--max-minutes", type=float, help="time limit (the next run continues)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
