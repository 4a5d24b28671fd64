"""`h3de detect INPUT... --model ID|PATH --out DIR`: find a model's landmarks in volumes.

Inputs are volume files, DICOM folders, folders of volumes (subfolders too with --recursive) and
glob patterns. Each case writes ``<case>.mrk.json``, ``<case>.csv`` and/or ``<case>.json`` into
--out (case = file name without its volume extension, or the DICOM folder's name); an existing
output is refused unless --overwrite, and --skip-existing resumes a batch, skipping the cases
whose outputs all exist (a case's outputs appear together or not at all: `inference.batch`). The
output folder is checked before any work. A failing case, whatever went wrong, is reported in one
sentence and the others still run; a summary table ends the run and the exit status is 0 only if
every case succeeded.
``--progress json`` prints one JSON object per line on stdout and nothing else there: the events
of `progress_events`. With --workers N or --cluster ADDRESS the cases run on a Dask cluster
(`detect_cluster`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from ..atomic import check_writable_folder
from ..data.cases import Case, expand_inputs
from ..inference import Predictor
from ..inference.batch import FAILED, FORMATS, OK, SKIPPED, CaseResult, detect_case
from ..progress_events import CASE_DONE, DONE, ERROR_PREFIX, NOTE_PREFIX, PROGRESS, START, EventWriter
from .detect_cluster import add_cluster_options, detect_cases_on_cluster, uses_cluster
from .model_options import add_model_options, predictor_from_args
from .parent_guard import add_option as add_parent_guard_option
from .parent_guard import stop_when_stdin_closes

def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    """Register the `detect` sub-command."""
    parser = subparsers.add_parser(
        "detect",
        help=summary,
        description="Detect a model's landmarks in volume files, DICOM folders, folders of volumes and globs.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="volume file, DICOM folder, folder of volumes, or glob pattern (quote it)")
    add_model_options(parser)
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the output files")
    parser.add_argument("--format", type=parse_formats, default=list(FORMATS), metavar="LIST",
                        help="comma-separated output formats among mrk.json, csv, json (default: all three)")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace existing output files")
    existing.add_argument("--skip-existing", action="store_true",
                          help="resume a batch: skip the cases whose output files all exist")
    parser.add_argument("--recursive", action="store_true", help="also take volumes in subfolders of folders")
    parser.add_argument("--shard", type=parse_shard, metavar="I/N",
                        help="process only every N-th case, starting with the I-th (1-based), after sorting")
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                        help="progress display: a bar on stderr, JSON lines on stdout, or none")
    add_cluster_options(parser)
    add_parent_guard_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Detect landmarks in every selected case; returns 0 if all succeeded, else 2."""
    stop_when_stdin_closes(args.stop_when_stdin_closes)
    started = time.perf_counter()
    check_writable_folder(args.out, "--out")
    cases = expand_inputs(args.inputs, args.recursive)
    if args.shard:
        index, count = args.shard
        cases = cases[index - 1::count]
    events = EventWriter() if args.progress == "json" else None

    def report(case: Case, result: CaseResult) -> None:
        report_case(case, result, events)

    if uses_cluster(args):
        load_seconds, results = detect_cases_on_cluster(args, cases, events, report)
    else:
        load_seconds, results = detect_cases_here(args, cases, events, report)
    failed = sum(not result.ok for result in results)
    if events:
        events.emit(DONE, cases=len(results), succeeded=len(results) - failed, failed=failed,
                    seconds=time.perf_counter() - started, load_seconds=load_seconds)
    print(summary_table(results), file=sys.stderr if events else sys.stdout)
    written = sum(result.status == OK for result in results)
    if written:
        kinds = ", ".join(f".{extension}" for extension in args.format)
        print(f"Wrote the {kinds} files of {written} case{'s' if written > 1 else ''} into {args.out.resolve()}.",
              file=sys.stderr if events else sys.stdout)
    return 2 if failed else 0


def detect_cases_here(args: argparse.Namespace, cases: list[Case], events: EventWriter | None,
                      report: Callable[[Case, CaseResult], None]) -> tuple[float, list[CaseResult]]:
    """Model loading time and the results of `cases`, one after the other in this process."""
    loading = time.perf_counter()
    predictor = predictor_from_args(args)
    load_seconds = time.perf_counter() - loading
    if events:
        events.emit(START, cases=len(cases), model_id=predictor.model_id,
                    model_version=predictor.model_version, device=str(predictor.device),
                    load_seconds=load_seconds)
    results = []
    for number, case in enumerate(cases, start=1):
        results.append(run_case(predictor, case, args, events, number, len(cases)))
        report(case, results[-1])
    return load_seconds, results


def report_case(case: Case, result: CaseResult, events: EventWriter | None) -> None:
    """A case's error or note on stderr, and its ``case_done`` event."""
    if result.error:
        print(f"{ERROR_PREFIX}{case.name}: {result.error}", file=sys.stderr)
    elif result.note:
        print(f"{NOTE_PREFIX}{case.name}: {result.note}", file=sys.stderr)
    if events:
        events.emit(CASE_DONE, case=case.name, input=str(case.path), status=result.status,
                    present=result.present, absent=result.absent, seconds=result.seconds,
                    outputs=result.outputs, timings=result.timings, error=result.error, note=result.note)


def run_case(predictor: Predictor, case: Case, args: argparse.Namespace, events: EventWriter | None,
             number: int, total: int) -> CaseResult:
    """`detect_case` for one case of the command line, with its progress display."""
    if case.problem:
        return CaseResult(case.name, str(case.path), FAILED, error=case.problem)
    bar = None
    if events:
        def progress(step: str, fraction: float) -> None:
            events.emit(PROGRESS, case=case.name, index=number, total=total, step=step, fraction=fraction)
    elif args.progress == "bar":
        bar = tqdm(total=100, desc=f"{case.name} ({number}/{total})", file=sys.stderr, leave=False,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}")

        def progress(step: str, fraction: float) -> None:
            bar.set_postfix_str(f"{step} stage", refresh=False)
            bar.update(round(100 * fraction) - bar.n)
    else:
        progress = None
    try:
        return detect_case(predictor, case.path, case.name, args.out, args.format, overwrite=args.overwrite,
                           skip_existing=args.skip_existing, progress=progress)
    finally:
        if bar is not None:
            bar.close()


def summary_table(results: list[CaseResult]) -> str:
    """Aligned table: case, status, landmarks present and absent, seconds; then the count of
    successes (and of cases already done) and the failed cases by name (each one's reason, and each
    note, was printed when it happened)."""
    rows = [("case", "status", "present", "absent", "seconds")]
    for result in results:
        counts = (str(result.present), str(result.absent)) if result.status == OK else ("-", "-")
        rows.append((result.name, result.status, *counts, f"{result.seconds:.1f}"))
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    lines = ["  ".join(value.ljust(width) if column < 2 else value.rjust(width)
                       for column, (value, width) in enumerate(zip(row, widths))).rstrip() for row in rows]
    failed = [result for result in results if not result.ok]
    skipped = sum(result.status == SKIPPED for result in results)
    lines.append(f"{len(results) - len(failed)} of {len(results)} cases succeeded"
                 + (f" ({skipped} already done, skipped)" if skipped else "") + "."
                 + (f" Failed: {', '.join(result.name for result in failed)} (reasons above)." if failed else ""))
    return "\n".join(lines)


def parse_formats(text: str) -> list[str]:
    """"mrk.json,csv" -> ["mrk.json", "csv"] (each of FORMATS, no repeats)."""
    formats = []
    for item in (part.strip().lower().lstrip(".") for part in text.split(",")):
        if item not in FORMATS:
            raise argparse.ArgumentTypeError(f"unknown format {item!r}; use {', '.join(FORMATS)}")
        if item not in formats:
            formats.append(item)
    return formats


def parse_shard(text: str) -> tuple[int, int]:
    """"2/5" -> (2, 5), with 1 <= I <= N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N, e.g. 1/4") from None
    if not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"shard {text!r} needs 1 <= I <= N")
    return index, count
