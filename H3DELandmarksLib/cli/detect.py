"""`h3de detect INPUT... --model ID|PATH --out DIR`: find a model's landmarks in volumes.

Inputs are volume files, DICOM folders, folders of volumes (subfolders too with --recursive) and
glob patterns. Each case writes ``<case>.mrk.json``, ``<case>.csv`` and/or ``<case>.json`` into
--out (case = file name without its volume extension, or the DICOM folder's name); an existing
output is refused unless --overwrite. A failing case is reported in one sentence and the others
still run; a summary table ends the run and the exit status is 0 only if every case succeeded.
``--progress json`` prints one JSON object per line on stdout and nothing else there: the events
of `progress_events`.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm import tqdm

from .. import __version__
from ..data.cases import Case, expand_inputs
from ..data.landmark_files import write_csv, write_json, write_mrk_json
from ..data.volume_io import read_volume
from ..errors import H3DEError
from ..inference import Predictor
from ..progress_events import CASE_DONE, DONE, ERROR_PREFIX, PROGRESS, START, EventWriter
from .model_options import add_model_options, predictor_from_args
from .parent_guard import add_option as add_parent_guard_option
from .parent_guard import stop_when_stdin_closes

FORMATS = ("mrk.json", "csv", "json")


@dataclass
class CaseResult:
    """What happened to one case."""

    case: Case
    ok: bool
    seconds: float
    present: int = 0
    absent: int = 0
    error: str | None = None
    outputs: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


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
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--recursive", action="store_true", help="also take volumes in subfolders of folders")
    parser.add_argument("--shard", type=parse_shard, metavar="I/N",
                        help="process only every N-th case, starting with the I-th (1-based), after sorting")
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                        help="progress display: a bar on stderr, JSON lines on stdout, or none")
    add_parent_guard_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Detect landmarks in every selected case; returns 0 if all succeeded, else 2."""
    stop_when_stdin_closes(args.stop_when_stdin_closes)
    started = time.perf_counter()
    cases = expand_inputs(args.inputs, args.recursive)
    if args.shard:
        index, count = args.shard
        cases = cases[index - 1::count]
    events = EventWriter() if args.progress == "json" else None
    loading = time.perf_counter()
    predictor = predictor_from_args(args)
    load_seconds = time.perf_counter() - loading
    if events:
        events.emit(START, cases=len(cases), model_id=predictor.model_id,
                    model_version=predictor.model_version, device=str(predictor.device),
                    load_seconds=load_seconds)
    results = []
    for number, case in enumerate(cases, start=1):
        result = detect_case(predictor, case, args, events, number, len(cases))
        results.append(result)
        if result.error:
            print(f"{ERROR_PREFIX}{case.name}: {result.error}", file=sys.stderr)
        if events:
            events.emit(CASE_DONE, case=case.name, input=str(case.path),
                        status="ok" if result.ok else "failed", present=result.present, absent=result.absent,
                        seconds=result.seconds, outputs=result.outputs, timings=result.timings, error=result.error)
    failed = sum(not result.ok for result in results)
    if events:
        events.emit(DONE, cases=len(results), succeeded=len(results) - failed, failed=failed,
                    seconds=time.perf_counter() - started, load_seconds=load_seconds)
    print(summary_table(results), file=sys.stderr if events else sys.stdout)
    written = len(results) - failed
    if written:
        kinds = ", ".join(f".{extension}" for extension in args.format)
        print(f"Wrote the {kinds} files of {written} case{'s' if written > 1 else ''} into {args.out.resolve()}.",
              file=sys.stderr if events else sys.stdout)
    return 2 if failed else 0


def detect_case(predictor: Predictor, case: Case, args: argparse.Namespace, events: EventWriter | None,
                number: int, total: int) -> CaseResult:
    """Read, detect and write one case; user errors become a failed result, never an exception."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    bar = None
    try:
        if case.problem:
            raise H3DEError(case.problem)
        outputs = [args.out / f"{case.name}.{extension}" for extension in args.format]
        existing = [path for path in outputs if path.exists()]
        if existing and not args.overwrite:
            raise H3DEError(f"{existing[0]} already exists; pass --overwrite to replace it.")
        reading = time.perf_counter()
        volume = read_volume(case.path)
        timings["read"] = time.perf_counter() - reading
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
        detection = predictor.predict(volume, progress=progress)
        timings.update(detection.timings)
        writing = time.perf_counter()
        write_outputs(detection, volume, case, outputs, predictor, args.overwrite, timings)
        timings["write"] = time.perf_counter() - writing
        present = int(detection.landmarks.present.sum())
        return CaseResult(case, True, time.perf_counter() - started, present, len(detection.landmarks) - present,
                          outputs=[str(path) for path in outputs], timings=timings)
    except H3DEError as error:
        return CaseResult(case, False, time.perf_counter() - started, error=str(error), timings=timings)
    except (MemoryError, torch.OutOfMemoryError):
        message = f"{case.path} needs more memory than is available (try --device cpu or a smaller volume)."
        return CaseResult(case, False, time.perf_counter() - started, error=message, timings=timings)
    finally:
        if bar is not None:
            bar.close()


def write_outputs(detection, volume, case: Case, outputs: list[Path], predictor: Predictor, overwrite: bool,
                  timings: dict[str, float]) -> None:
    """Write the detection in each requested format (atomically; refused over a file unless `overwrite`)."""
    landmarks = detection.landmarks
    for path in outputs:
        name = path.name.lower()
        if name.endswith(".mrk.json"):
            write_mrk_json(path, landmarks, overwrite=overwrite)
        elif name.endswith(".csv"):
            write_csv(path, landmarks, volume, detection.model_id, detection.model_version, overwrite=overwrite)
        else:
            metadata = {
                "model_id": detection.model_id,
                "model_version": detection.model_version,
                **input_facts(case.path),
                "software": "h3de-landmarks",
                "software_version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "device": str(predictor.device),
                "confidence_threshold": predictor.confidence_threshold,
                "timings_s": {key: round(value, 4) for key, value in timings.items()},
            }
            write_json(path, landmarks, volume, metadata, overwrite=overwrite)


def input_facts(path: Path) -> dict:
    """Input path, size in bytes and modification time (for a folder: all files under it, the newest)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    stats = [p.stat() for p in files]
    modified = max((s.st_mtime for s in stats), default=path.stat().st_mtime)
    return {
        "input_file": str(path.resolve()),
        "input_size_bytes": sum(s.st_size for s in stats),
        "input_modified": datetime.fromtimestamp(modified, timezone.utc).isoformat(timespec="seconds"),
    }


def summary_table(results: list[CaseResult]) -> str:
    """Aligned table: case, status, landmarks present and absent, seconds; then the count of
    successes and the failed cases by name (each one's reason was printed when it failed)."""
    rows = [("case", "status", "present", "absent", "seconds")]
    for result in results:
        counts = (str(result.present), str(result.absent)) if result.ok else ("-", "-")
        rows.append((result.case.name, "ok" if result.ok else "failed", *counts, f"{result.seconds:.1f}"))
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    lines = ["  ".join(value.ljust(width) if column < 2 else value.rjust(width)
                       for column, (value, width) in enumerate(zip(row, widths))).rstrip() for row in rows]
    failed = [result for result in results if not result.ok]
    lines.append(f"{len(results) - len(failed)} of {len(results)} cases succeeded."
                 + (f" Failed: {', '.join(result.case.name for result in failed)} (reasons above)." if failed else ""))
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
