"""The project's plain JSON export.

Layout::

    {"coordinate_system": "LPS", "units": "mm",
     "landmarks": [{"label": "...", "description": "...", "position": [x, y, z] or null,
                    "index": [i, j, k] or null (only when a volume is given),
                    "confidence": 0.93 or null, "expected_error_mm": 0.12 or null,
                    "status": "present" or "absent"}, ...],
     "metadata": {... free, given by the caller: model id and version, input file, software ...}}

Positions are LPS millimetres, indices continuous voxel indices in ITK (i, j, k) order; numbers
are rounded to 1e-4 (mm, voxel, confidence). An absent landmark keeps its best-guess position when
it has one.
"""

from __future__ import annotations

import json
import math
import os

from ...atomic import atomic_write_text
from ..landmarks import Landmarks
from ..volume import Volume
from .common import (
    STATUSES,
    as_point,
    build_landmarks,
    check_point_count,
    invalid_file,
    parse_json,
    rounded,
    status_text,
)

KIND = "landmark JSON"


def write_json(
    path: str | os.PathLike,
    landmarks: Landmarks,
    volume: Volume | None = None,
    metadata: dict | None = None,
    overwrite: bool = False,
) -> None:
    """Write `landmarks` as plain JSON (see module notes); `metadata` must be JSON-serialisable."""
    indices = volume.physical_to_index(landmarks.positions) if volume is not None else None
    items = []
    has_positions = landmarks.has_position
    for index, name in enumerate(landmarks.names):
        has_position = bool(has_positions[index])
        item = {
            "label": name,
            "description": landmarks.descriptions[index],
            "position": [rounded(v) for v in landmarks.positions[index]] if has_position else None,
        }
        if indices is not None:
            item["index"] = [rounded(v) for v in indices[index]] if has_position else None
        confidence = float(landmarks.confidence[index])
        item["confidence"] = rounded(confidence) if math.isfinite(confidence) else None
        expected_error = float(landmarks.expected_error[index])
        item["expected_error_mm"] = rounded(expected_error) if math.isfinite(expected_error) else None
        item["status"] = status_text(landmarks.present[index])
        items.append(item)
    document = {"coordinate_system": "LPS", "units": "mm", "landmarks": items, "metadata": metadata or {}}
    atomic_write_text(path, json.dumps(document, indent=2, allow_nan=False) + "\n", overwrite=overwrite)


def read_json(path: str | os.PathLike) -> Landmarks:
    """Read the landmarks of a plain JSON export."""
    document = _document(path)
    names, positions, present, confidence, expected_error, descriptions = [], [], [], [], [], []
    for number, item in enumerate(document["landmarks"], start=1):
        if not isinstance(item, dict) or not isinstance(item.get("label"), str):
            raise invalid_file(path, KIND, f"landmark {number} is not an object with a text 'label'")
        position = _position(path, number, item.get("position"))
        names.append(item["label"])
        positions.append([math.nan] * 3 if position is None else position)
        present.append(_is_present(path, number, item.get("status"), position is not None))
        confidence.append(_confidence(path, number, item.get("confidence")))
        expected_error.append(_expected_error(path, number, item.get("expected_error_mm")))
        descriptions.append(str(item.get("description") or ""))
    return build_landmarks(path, KIND, names, positions, present, confidence, descriptions, expected_error)


def read_json_metadata(path: str | os.PathLike) -> dict:
    """The free ``metadata`` object of a plain JSON export (empty when it has none)."""
    metadata = _document(path).get("metadata", {})
    if not isinstance(metadata, dict):
        raise invalid_file(path, KIND, "its 'metadata' is not an object")
    return metadata


def _document(path: str | os.PathLike) -> dict:
    """The parsed file, its frame checked (LPS, mm, a 'landmarks' list)."""
    document = parse_json(path, KIND)
    if not isinstance(document, dict) or not isinstance(document.get("landmarks"), list):
        raise invalid_file(path, KIND, "it has no 'landmarks' list")
    check_point_count(path, KIND, len(document["landmarks"]))
    if document.get("coordinate_system", "LPS") != "LPS":
        raise invalid_file(path, KIND, f"its coordinate_system is {document['coordinate_system']!r}, not LPS")
    if document.get("units", "mm") != "mm":
        raise invalid_file(path, KIND, f"its units are {document['units']!r}, not mm")
    return document


def _position(path: str | os.PathLike, number: int, value: object) -> list[float] | None:
    """A landmark's position as 3 floats, or None for null."""
    if value is None:
        return None
    point = as_point(value)
    if point is not None:
        return point
    raise invalid_file(path, KIND, f"the position of landmark {number} is neither null nor 3 finite numbers")


def _is_present(path: str | os.PathLike, number: int, status: object, has_position: bool) -> bool:
    """The status field, or whether the landmark has a position when the field is missing."""
    if status is None:
        return has_position
    if status not in STATUSES:
        reason = f"landmark {number} has the status {status!r} (expected present or absent)"
        raise invalid_file(path, KIND, reason)
    return status == STATUSES[0]


def _confidence(path: str | os.PathLike, number: int, value: object) -> float:
    """Confidence in [0, 1], NaN for null."""
    if value is None:
        return math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
        return float(value)
    raise invalid_file(path, KIND, f"the confidence of landmark {number} is not a number in [0, 1]")


def _expected_error(path: str | os.PathLike, number: int, value: object) -> float:
    """Expected error in mm (≥ 0), NaN for null or a missing field."""
    if value is None:
        return math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < math.inf:
        return float(value)
    raise invalid_file(path, KIND, f"the expected error of landmark {number} is not a number of millimetres ≥ 0")
