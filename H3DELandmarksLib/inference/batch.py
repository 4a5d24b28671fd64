"""One case of a batch: read a volume, detect, write its outputs together or not at all.

`detect_case` is the unit a batch is made of (`h3de detect` runs it in a loop; a distributed
runner can run it anywhere the output folder is shared): one input in, a `CaseResult` out, and no
exception for anything that goes wrong with the case itself -- a bad file, implausible geometry,
a full disk, running out of memory or an unexpected error all become a failed result whose
`error` is one sentence. Only cancellation and interruption (`KeyboardInterrupt`) propagate.

A case's outputs (``<case>.mrk.json``, ``.csv``, ``.json``) appear together or not at all. They are
written into a staging folder ``.<case>.h3de-staging`` inside the output folder; renaming it to
``.<case>.h3de-commit`` is the commit point, after which the files are moved to their places and
the folder removed. A run killed before the commit leaves only a staging folder, which the next
run of that case deletes; one killed after it leaves a commit folder, which the next run of that
case finishes moving. So a restarted batch sees each case either complete or absent, and
``skip_existing`` can take every case whose outputs are all there as finished.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from .. import __version__
from ..data.landmark_files import write_csv, write_json, write_mrk_json
from ..data.volume_io import read_volume
from ..errors import DetectionCancelled, H3DEError
from .predictor import Detection, Predictor

FORMATS = ("mrk.json", "csv", "json")
STAGING_SUFFIX = ".h3de-staging"
COMMIT_SUFFIX = ".h3de-commit"
OK, FAILED, SKIPPED = "ok", "failed", "skipped"
MESSAGE_LIMIT = 300

ProgressCallback = Callable[[str, float], None]


@dataclass
class CaseResult:
    """What happened to one case (plain values only, so it pickles and serialises as JSON).

    Attributes:
        name: the case name (output files are ``<name>.<format>``).
        input: the volume file or DICOM folder.
        status: "ok", "failed" or "skipped" (its outputs were already complete).
        seconds: wall time spent on the case.
        present, absent: landmark counts (0 unless ok).
        error: one sentence when failed.
        note: one sentence when ok but worth a look (every landmark absent, and why).
        outputs: the files written.
        timings: seconds per step ("read", the predictor's steps, "write").
    """

    name: str
    input: str
    status: str
    seconds: float = 0.0
    present: int = 0
    absent: int = 0
    error: str | None = None
    note: str | None = None
    outputs: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True unless the case failed (a skipped case is finished)."""
        return self.status != FAILED


def output_paths(out_dir: str | os.PathLike, name: str, formats: Sequence[str]) -> list[Path]:
    """The files of case `name` in `out_dir`, one per format of FORMATS."""
    return [Path(out_dir) / f"{name}.{extension}" for extension in formats]


def detect_case(predictor: Predictor, source: str | os.PathLike, name: str, out_dir: str | os.PathLike,
                formats: Sequence[str] = FORMATS, *, overwrite: bool = False, skip_existing: bool = False,
                progress: ProgressCallback | None = None, cancel: threading.Event | None = None) -> CaseResult:
    """Read the volume `source`, detect `predictor`'s landmarks and write the case's outputs.

    Args:
        predictor: the model.
        source: volume file or DICOM folder.
        name: case name; the outputs are ``out_dir/<name>.<format>``.
        out_dir: output folder (created when missing; it may be shared with other processes, as
            long as each case is run by one process at a time).
        formats: some of FORMATS.
        overwrite: replace existing outputs (otherwise an existing output fails the case).
        skip_existing: a case whose outputs all exist is finished: "skipped", nothing is read.
        progress: ``progress(step, fraction)`` during detection.
        cancel: set it to stop the detection (raises `DetectionCancelled`).

    Returns the `CaseResult`; raises only `DetectionCancelled` and `KeyboardInterrupt`.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    source, out_dir = Path(source), Path(out_dir)

    def failed(message: str) -> CaseResult:
        return CaseResult(name, str(source), FAILED, time.perf_counter() - started, error=message, timings=timings)

    try:
        finish_interrupted_write(out_dir, name)
        outputs = output_paths(out_dir, name, formats)
        existing = [path for path in outputs if path.exists()]
        if skip_existing and len(existing) == len(outputs):
            return CaseResult(name, str(source), SKIPPED, time.perf_counter() - started,
                              outputs=[str(path) for path in outputs])
        if existing and not overwrite:
            raise H3DEError(f"{existing[0]} already exists; pass --overwrite to replace it"
                            f"{' (the case is incomplete)' if skip_existing else ''}.")
        reading = time.perf_counter()
        volume = read_volume(source)
        timings["read"] = time.perf_counter() - reading
        detection = predictor.predict(volume, progress=progress, cancel=cancel)
        timings.update(detection.timings)
        writing = time.perf_counter()
        write_case_outputs(out_dir, name, formats, detection, volume, source, predictor, timings, overwrite)
        timings["write"] = time.perf_counter() - writing
    except DetectionCancelled:
        raise
    except H3DEError as error:
        return failed(str(error))
    except (MemoryError, torch.OutOfMemoryError):
        return failed(f"{source} needs more memory than is available (try --device cpu or a smaller volume).")
    except OSError as error:
        return failed(_os_error_sentence(error, name, out_dir))
    except Exception as error:  # noqa: BLE001 - one bad case must not end the batch
        return failed(f"{source} failed with an unexpected error ({_short(error)}).")
    landmarks = detection.landmarks
    present = int(landmarks.present.sum())
    return CaseResult(name, str(source), OK, time.perf_counter() - started, present, len(landmarks) - present,
                      note=all_absent_note(detection, predictor.confidence_threshold),
                      outputs=[str(path) for path in output_paths(out_dir, name, formats)], timings=timings)


def write_case_outputs(out_dir: str | os.PathLike, name: str, formats: Sequence[str], detection: Detection,
                       volume, source: str | os.PathLike, predictor: Predictor, timings: dict[str, float],
                       overwrite: bool = False) -> list[Path]:
    """Write the detection in each of `formats` as ``out_dir/<name>.<format>``, all or none.

    See the module notes for the staging and commit folders. Refuses (H3DEError) to replace an
    existing output unless `overwrite`; any failure before the commit leaves nothing behind.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging, commit = _staging_folder(out_dir, name), _commit_folder(out_dir, name)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for path in output_paths(staging, name, formats):
            _write_format(path, detection, volume, source, predictor, timings)
        existing = [path for path in output_paths(out_dir, name, formats) if path.exists()]
        if existing and not overwrite:
            raise H3DEError(f"{existing[0]} already exists; pass --overwrite to replace it.")
        os.replace(staging, commit)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _move_committed(commit, out_dir)
    return output_paths(out_dir, name, formats)


def finish_interrupted_write(out_dir: str | os.PathLike, name: str) -> None:
    """Complete or discard what a killed run left of case `name`'s outputs (see module notes)."""
    out_dir = Path(out_dir)
    shutil.rmtree(_staging_folder(out_dir, name), ignore_errors=True)
    commit = _commit_folder(out_dir, name)
    if commit.is_dir():
        _move_committed(commit, out_dir)


def all_absent_note(detection: Detection, threshold: float) -> str | None:
    """Why every landmark is absent, when it is (None otherwise)."""
    landmarks = detection.landmarks
    if len(landmarks) == 0 or landmarks.present.any():
        return None
    best = float(max(landmarks.confidence, default=float("nan")))
    return (f"Every landmark is absent: the highest confidence, {best:.2f}, is below the model's threshold "
            f"{threshold:g} (is this the anatomy and modality model {detection.model_id} was trained on?).")


def _write_format(path: Path, detection: Detection, volume, source: Path, predictor: Predictor,
                  timings: dict[str, float]) -> None:
    landmarks = detection.landmarks
    suffix = path.name.lower()
    if suffix.endswith(".mrk.json"):
        write_mrk_json(path, landmarks)
    elif suffix.endswith(".csv"):
        write_csv(path, landmarks, volume, detection.model_id, detection.model_version)
    else:
        metadata = {
            "model_id": detection.model_id,
            "model_version": detection.model_version,
            **input_facts(source),
            "software": "h3de-landmarks",
            "software_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": str(predictor.device),
            "confidence_threshold": predictor.confidence_threshold,
            "timings_s": {key: round(value, 4) for key, value in timings.items()},
        }
        write_json(path, landmarks, volume, metadata)


def input_facts(path: str | os.PathLike) -> dict:
    """Input path, size in bytes and modification time (for a folder: all files under it, the newest)."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    stats = [p.stat() for p in files]
    modified = max((s.st_mtime for s in stats), default=path.stat().st_mtime)
    return {
        "input_file": str(path.resolve()),
        "input_size_bytes": sum(s.st_size for s in stats),
        "input_modified": datetime.fromtimestamp(modified, timezone.utc).isoformat(timespec="seconds"),
    }


def _staging_folder(out_dir: Path, name: str) -> Path:
    return out_dir / f".{name}{STAGING_SUFFIX}"


def _commit_folder(out_dir: Path, name: str) -> Path:
    return out_dir / f".{name}{COMMIT_SUFFIX}"


def _move_committed(commit: Path, out_dir: Path) -> None:
    """Move every file of a commit folder into `out_dir` (replacing), then remove the folder."""
    for path in sorted(commit.iterdir()):
        os.replace(path, out_dir / path.name)
    commit.rmdir()


def _os_error_sentence(error: OSError, name: str, out_dir: Path) -> str:
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
        return f"The outputs of case {name} cannot be written to {out_dir}: {reason}; nothing of it was kept."
    where = f" ({error.filename})" if error.filename else ""
    return f"Case {name} failed: {reason}{where}."


def _short(error: BaseException) -> str:
    """``Type: message`` on one line, at most MESSAGE_LIMIT characters."""
    text = " ".join(f"{type(error).__name__}: {error}".split()).rstrip(".")
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"
