"""Helpers shared by the landmark file readers and writers.

Errors name the file in one sentence; numbers are written in Python's shortest exact form, so a
position read back equals the one written; a confidence and an expected error that a format has no
column for travel at the end of the landmark's description text as
``"...; confidence 0.93; expected error 0.12 mm"``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ...errors import LandmarkFileError
from ..landmarks import Landmarks

# A landmark's status in the CSV and JSON tables, present first.
STATUSES = ("present", "absent")


def status_text(present: bool) -> str:
    """"present" or "absent"."""
    return STATUSES[0] if present else STATUSES[1]
CONFIDENCE_SUFFIX = re.compile(r"(?:^|;\s*)confidence\s*[:=]?\s*(?P<value>[-+0-9.eE]+)\s*$", re.IGNORECASE)
EXPECTED_ERROR_SUFFIX = re.compile(
    r"(?:^|;\s*)expected error\s*[:=]?\s*(?P<value>[-+0-9.eE]+)\s*mm\s*$", re.IGNORECASE
)


# Far more points than any landmark set has: a file with more is refused before it is parsed further.
MAX_POINTS = 10_000


def invalid_file(path: str | os.PathLike, kind: str, reason: str) -> LandmarkFileError:
    """Error for a file that breaks its format: ``<path> is not a valid <kind> file: <reason>.``"""
    return LandmarkFileError(f"{path} is not a valid {kind} file: {reason}.")


def read_text(path: str | os.PathLike) -> str:
    """Text of a UTF-8 landmark file (a byte-order mark is allowed); errors name the file."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LandmarkFileError(f"Landmark file {path} does not exist.") from None
    except UnicodeDecodeError:
        raise LandmarkFileError(f"Landmark file {path} is not UTF-8 text.") from None
    except OSError as error:
        raise LandmarkFileError(f"Cannot read landmark file {path}: {error.strerror or error}.") from None


def parse_json(path: str | os.PathLike, kind: str) -> object:
    """The JSON document in a landmark file; malformed or absurdly nested JSON is an error naming it."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise invalid_file(path, kind, f"it is not JSON ({error.msg} at line {error.lineno})") from None
    except RecursionError:
        raise invalid_file(path, kind, "it nests lists or objects too deeply") from None


def csv_rows(path: str | os.PathLike, kind: str, lines: Iterable[str]) -> Iterator[list[str]]:
    """The rows of CSV `lines`; a line the csv module cannot read (a field over its 131,072
    characters, a NUL) is an error naming the file."""
    reader = csv.reader(lines)
    try:
        yield from reader
    except csv.Error as error:
        raise invalid_file(path, kind, f"line {reader.line_num} cannot be read as CSV ({error})") from None


def check_point_count(path: str | os.PathLike, kind: str, count: int) -> None:
    """Refuse a file holding more than MAX_POINTS points."""
    if count > MAX_POINTS:
        raise invalid_file(path, kind, f"it holds more than {MAX_POINTS} points, far more than any landmark set")


def build_landmarks(
    path: str | os.PathLike,
    kind: str,
    names: list[str],
    positions: list,
    present: list[bool],
    confidence: list[float],
    descriptions: list[str],
    expected_error: list[float] | None = None,
) -> Landmarks:
    """Make `Landmarks` from parsed columns; an inconsistency becomes an error naming the file."""
    try:
        return Landmarks(
            names=names,
            positions=np.array(positions, float).reshape(len(names), 3),
            present=np.array(present, bool),
            confidence=np.array(confidence, float),
            descriptions=descriptions,
            expected_error=None if expected_error is None else np.array(expected_error, float),
        )
    except LandmarkFileError as error:
        reason = str(error).rstrip(".")
        raise invalid_file(path, kind, reason[:1].lower() + reason[1:]) from None


DECIMALS = 4  # 1e-4 mm, voxel and confidence: far below any detector's or annotator's precision


def rounded(value: float) -> float:
    """`value` rounded to DECIMALS places, as written to files (-0.0 written as 0.0)."""
    return round(float(value), DECIMALS) + 0.0


def number_text(value: float) -> str:
    """Shortest text of `value` rounded to DECIMALS places ("12.3457", "0.97", "3.0")."""
    return repr(rounded(value))


def parse_number(text: str) -> float | None:
    """The finite float in `text`, or None when it is not one."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def as_point(value: object) -> list[float] | None:
    """`value` as 3 floats when it is a list of 3 finite (JSON) numbers, otherwise None."""
    if not isinstance(value, list) or len(value) != 3:
        return None
    if not all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in value):
        return None
    return [float(item) for item in value] if all(math.isfinite(item) for item in value) else None


def annotated_description(description: str, confidence: float, expected_error: float = math.nan) -> str:
    """`description` followed by ``confidence <value>`` and ``expected error <value> mm`` when known."""
    parts = [description] if description else []
    if math.isfinite(confidence):
        parts.append(f"confidence {number_text(confidence)}")
    if math.isfinite(expected_error):
        parts.append(f"expected error {number_text(expected_error)} mm")
    return "; ".join(parts)


def split_annotated_description(text: str) -> tuple[str, float, float]:
    """Inverse of `annotated_description`: (description, confidence or NaN, expected error or NaN)."""
    text, expected_error = _split_suffix(text, EXPECTED_ERROR_SUFFIX, 0.0, math.inf)
    text, confidence = _split_suffix(text, CONFIDENCE_SUFFIX, 0.0, 1.0)
    return text, confidence, expected_error


def _split_suffix(text: str, pattern: re.Pattern, low: float, high: float) -> tuple[str, float]:
    """(`text` without a trailing `pattern`, its value in [low, high]); NaN when there is none."""
    match = pattern.search(text)
    if match is None:
        return text, math.nan
    value = parse_number(match.group("value"))
    if value is None or not low <= value <= high:
        return text, math.nan
    return text[: match.start()], value
