"""Helpers shared by the landmark file readers and writers.

Errors name the file in one sentence; numbers are written in Python's shortest exact form, so a
position read back equals the one written; a confidence that a format has no column for travels at
the end of the landmark's description text as ``"...; confidence 0.93"``.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np

from ...errors import LandmarkFileError
from ..landmarks import Landmarks

CONFIDENCE_SUFFIX = re.compile(r"(?:^|;\s*)confidence\s*[:=]?\s*(?P<value>[-+0-9.eE]+)\s*$", re.IGNORECASE)


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


def build_landmarks(
    path: str | os.PathLike,
    kind: str,
    names: list[str],
    positions: list,
    present: list[bool],
    confidence: list[float],
    descriptions: list[str],
) -> Landmarks:
    """Make `Landmarks` from parsed columns; an inconsistency becomes an error naming the file."""
    try:
        return Landmarks(
            names=names,
            positions=np.array(positions, float).reshape(len(names), 3),
            present=np.array(present, bool),
            confidence=np.array(confidence, float),
            descriptions=descriptions,
        )
    except LandmarkFileError as error:
        reason = str(error).rstrip(".")
        raise invalid_file(path, kind, reason[:1].lower() + reason[1:]) from None


def number_text(value: float) -> str:
    """Shortest text that reads back as exactly `value`."""
    return repr(float(value))


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


def description_with_confidence(description: str, confidence: float) -> str:
    """`description` followed by ``confidence <value>`` when the confidence is known."""
    if not math.isfinite(confidence):
        return description
    suffix = f"confidence {number_text(confidence)}"
    return f"{description}; {suffix}" if description else suffix


def split_confidence(text: str) -> tuple[str, float]:
    """Inverse of `description_with_confidence`: (description, confidence or NaN)."""
    match = CONFIDENCE_SUFFIX.search(text)
    if match is None:
        return text, math.nan
    value = parse_number(match.group("value"))
    if value is None or not 0.0 <= value <= 1.0:
        return text, math.nan
    return text[: match.start()], value
