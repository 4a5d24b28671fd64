"""The project's CSV export: one row per landmark.

Columns: label, description, x, y, z (LPS mm), i, j, k (continuous voxel indices in ITK order, only
when a volume is given), confidence, expected_error_mm (the detector's expected radial error),
status (present / absent), model_id and model_version (each only when given); numbers are rounded
to 1e-4 (mm, voxel, confidence). A landmark without a position has empty x, y, z (and i, j, k); an
unknown confidence or expected error is empty. The reader also takes plain ``label,x,y,z`` tables: column names are matched
case-insensitively ("name" may stand for "label"), the status defaults to present when a position
is given, and voxel-index and model columns are ignored (x, y, z are the truth).
"""

from __future__ import annotations

import csv
import io
import math
import os

from ...atomic import atomic_write_text
from ..landmarks import Landmarks
from ..volume import Volume
from .common import (
    STATUSES,
    build_landmarks,
    check_point_count,
    csv_rows,
    invalid_file,
    number_text,
    parse_number,
    read_text,
    status_text,
)

KIND = "landmark CSV"


def write_csv(
    path: str | os.PathLike,
    landmarks: Landmarks,
    volume: Volume | None = None,
    model_id: str | None = None,
    model_version: str | None = None,
    overwrite: bool = False,
) -> None:
    """Write `landmarks` as a CSV table (see module notes); `volume` adds voxel indices i, j, k."""
    header = ["label", "description", "x", "y", "z"]
    if volume is not None:
        header += ["i", "j", "k"]
        indices = volume.physical_to_index(landmarks.positions)
    header += ["confidence", "expected_error_mm", "status"]
    model_columns = {"model_id": model_id, "model_version": model_version}
    model_columns = {name: value for name, value in model_columns.items() if value is not None}
    header += list(model_columns)

    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(header)
    has_positions = landmarks.has_position
    for index, name in enumerate(landmarks.names):
        has_position = has_positions[index]
        row = [name, landmarks.descriptions[index]]
        row += [number_text(v) if has_position else "" for v in landmarks.positions[index]]
        if volume is not None:
            row += [number_text(v) if has_position else "" for v in indices[index]]
        confidence = landmarks.confidence[index]
        row += [number_text(confidence) if math.isfinite(confidence) else ""]
        expected_error = landmarks.expected_error[index]
        row += [number_text(expected_error) if math.isfinite(expected_error) else ""]
        row += [status_text(landmarks.present[index])]
        row += [str(value) for value in model_columns.values()]
        writer.writerow(row)
    atomic_write_text(path, stream.getvalue(), overwrite=overwrite)


def read_csv(path: str | os.PathLike) -> Landmarks:
    """Read a landmark CSV table (this project's export or a plain ``label,x,y,z`` table)."""
    reader = csv_rows(path, KIND, io.StringIO(read_text(path)))
    header = [name.strip().lower() for name in next(reader, [])]
    columns = {name: position for position, name in reversed(list(enumerate(header)))}
    if "label" not in columns and "name" in columns:
        columns["label"] = columns["name"]
    missing = [name for name in ("label", "x", "y", "z") if name not in columns]
    if missing:
        raise invalid_file(path, KIND, f"its header lacks the column(s) {', '.join(missing)}")

    names, positions, present, confidence, expected_error, descriptions = [], [], [], [], [], []
    for number, row in enumerate(reader, start=1):
        if not any(field.strip() for field in row):
            continue
        check_point_count(path, KIND, len(names) + 1)
        if len(row) != len(header):
            reason = f"data row {number} has {len(row)} fields, its header {len(header)}"
            raise invalid_file(path, KIND, reason)
        field = {name: row[position].strip() for name, position in columns.items()}
        position = _position(path, number, [field["x"], field["y"], field["z"]])
        names.append(row[columns["label"]])
        positions.append([math.nan] * 3 if position is None else position)
        present.append(_is_present(path, number, field.get("status", ""), position is not None))
        confidence.append(_confidence(path, number, field.get("confidence", "")))
        expected_error.append(_expected_error(path, number, field.get("expected_error_mm", "")))
        descriptions.append(row[columns["description"]] if "description" in columns else "")
    return build_landmarks(path, KIND, names, positions, present, confidence, descriptions, expected_error)


def _position(path: str | os.PathLike, number: int, texts: list[str]) -> list[float] | None:
    """x, y, z of a row, or None when all three are empty."""
    if not any(texts):
        return None
    values = [parse_number(text) for text in texts]
    if any(value is None for value in values):
        raise invalid_file(path, KIND, f"x, y, z of data row {number} are not 3 finite numbers")
    return values


def _is_present(path: str | os.PathLike, number: int, status: str, has_position: bool) -> bool:
    """Status of a row: the status column when filled, otherwise whether it has a position."""
    status = status.lower()
    if not status:
        return has_position
    if status not in STATUSES:
        reason = f"data row {number} has the status {status!r} (expected present or absent)"
        raise invalid_file(path, KIND, reason)
    return status == STATUSES[0]


def _confidence(path: str | os.PathLike, number: int, text: str) -> float:
    """Confidence of a row in [0, 1]; NaN when empty."""
    if not text:
        return math.nan
    value = parse_number(text)
    if value is None or not 0.0 <= value <= 1.0:
        reason = f"the confidence {text!r} of data row {number} is not a number in [0, 1]"
        raise invalid_file(path, KIND, reason)
    return value


def _expected_error(path: str | os.PathLike, number: int, text: str) -> float:
    """Expected error of a row in mm (a number ≥ 0); NaN when empty."""
    if not text:
        return math.nan
    value = parse_number(text)
    if value is None or value < 0.0:
        reason = f"the expected error {text!r} of data row {number} is not a number of millimetres ≥ 0"
        raise invalid_file(path, KIND, reason)
    return value
