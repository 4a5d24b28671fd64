"""3D Slicer's older markups CSV files (``.fcsv``).

Layout: ``#`` header lines (``# Markups fiducial file version = 4.11``, ``# CoordinateSystem =``
LPS, RAS, 1 or 0, ``# columns = ...``), then one row per point with the fixed columns
id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID. Slicer 5 writes a 15th column, the
position status as a number (0 undefined, 1 preview, 2 defined, 3 missing), and reads it back; a
file without it has every point defined. Columns are read by position, as Slicer does.

Reading: RAS positions have x and y negated; a missing CoordinateSystem line means LPS (Slicer 5's
default); empty (or NaN) x, y, z mean no position; a status other than defined marks the landmark
absent, keeping its position as the best guess. Writing: version 4.11 and ``# CoordinateSystem = 1``
(LPS in numeric form: older Slicer readers parse the value as a number and would take "LPS" for 0,
which is RAS), the 14 classic columns plus the status column that old readers ignore; an absent
landmark without a position has empty x, y, z. The confidence rides at the end of the description.
"""

from __future__ import annotations

import csv
import io
import math
import os

from ...atomic import atomic_write_text
from ..landmarks import Landmarks
from .common import (
    build_landmarks,
    annotated_description,
    check_point_count,
    csv_rows,
    invalid_file,
    number_text,
    parse_number,
    read_text,
    split_annotated_description,
)

KIND = "Slicer fiducial CSV (.fcsv)"
COLUMNS = "id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID,positionStatus"
LABEL, DESCRIPTION, STATUS = 11, 12, 14
STATUS_NAMES = ("undefined", "preview", "defined", "missing")
DEFINED, MISSING = 2, 3
LPS_SIGNS, RAS_SIGNS = (1.0, 1.0, 1.0), (-1.0, -1.0, 1.0)
COORDINATE_SYSTEMS = {"LPS": LPS_SIGNS, "1": LPS_SIGNS, "RAS": RAS_SIGNS, "0": RAS_SIGNS}
COORDINATE_SYSTEM_HEADER = "# CoordinateSystem ="


def read_fcsv(path: str | os.PathLike) -> Landmarks:
    """Read a Slicer ``.fcsv`` file as LPS landmarks (see module notes)."""
    flip = LPS_SIGNS
    rows = []
    for line in read_text(path).splitlines():
        if line.startswith(COORDINATE_SYSTEM_HEADER):
            system = line[len(COORDINATE_SYSTEM_HEADER) :].strip().upper()
            if system not in COORDINATE_SYSTEMS:
                raise invalid_file(path, KIND, f"its coordinate system {system!r} is none of LPS, RAS, 1, 0")
            flip = COORDINATE_SYSTEMS[system]
        elif line.strip() and not line.startswith("#"):
            rows.append(line)

    names, positions, present, confidence, expected_error, descriptions = [], [], [], [], [], []
    check_point_count(path, KIND, len(rows))
    for number, fields in enumerate(csv_rows(path, KIND, rows), start=1):
        if len(fields) < 4:
            raise invalid_file(path, KIND, f"point row {number} has fewer than the 4 columns id,x,y,z")
        fields += [""] * (STATUS + 1 - len(fields))
        position = _position(path, number, fields[1:4])
        status = _status(path, number, fields[STATUS])
        description, point_confidence, point_error = split_annotated_description(fields[DESCRIPTION])
        names.append(fields[LABEL])
        positions.append([math.nan] * 3 if position is None else [v * s for v, s in zip(position, flip)])
        present.append(status == DEFINED and position is not None)
        confidence.append(point_confidence)
        expected_error.append(point_error)
        descriptions.append(description)
    return build_landmarks(path, KIND, names, positions, present, confidence, descriptions, expected_error)


def write_fcsv(path: str | os.PathLike, landmarks: Landmarks, overwrite: bool = False) -> None:
    """Write `landmarks` as a version 4.11 ``.fcsv`` file in LPS (see module notes)."""
    stream = io.StringIO()
    stream.write("# Markups fiducial file version = 4.11\n")
    stream.write(f"{COORDINATE_SYSTEM_HEADER} 1\n")
    stream.write(f"# columns = {COLUMNS}\n")
    writer = csv.writer(stream, lineterminator="\n")
    has_positions = landmarks.has_position
    for index, name in enumerate(landmarks.names):
        if has_positions[index]:
            xyz = [number_text(value) for value in landmarks.positions[index]]
        else:
            xyz = ["", "", ""]
        description = annotated_description(
            landmarks.descriptions[index], landmarks.confidence[index], landmarks.expected_error[index]
        )
        status = DEFINED if landmarks.present[index] else MISSING
        writer.writerow([index + 1, *xyz, 0, 0, 0, 1, 1, 1, 0, name, description, "", status])
    atomic_write_text(path, stream.getvalue(), overwrite=overwrite)


def _position(path: str | os.PathLike, number: int, texts: list[str]) -> list[float] | None:
    """x, y, z of a row as floats, or None when all three are empty or NaN."""
    if all(not text.strip() or text.strip().lower() == "nan" for text in texts):
        return None
    values = [parse_number(text) for text in texts]
    if any(value is None for value in values):
        raise invalid_file(path, KIND, f"x, y, z of point row {number} are not 3 finite numbers")
    return values


def _status(path: str | os.PathLike, number: int, text: str) -> int:
    """Position status of a row: a number 0-3 or its name; defined when the column is empty."""
    text = text.strip().lower()
    if not text:
        return DEFINED
    if text in STATUS_NAMES:
        return STATUS_NAMES.index(text)
    if text.isdigit() and int(text) < len(STATUS_NAMES):
        return int(text)
    raise invalid_file(path, KIND, f"point row {number} has the unknown position status {text!r}")
