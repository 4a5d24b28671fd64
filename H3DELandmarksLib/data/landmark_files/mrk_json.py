"""3D Slicer markups files (``.mrk.json``, markups schema v1.0.x).

Reading follows Slicer's own reader: a missing ``coordinateSystem`` means LPS, RAS positions have x
and y negated, ``coordinateUnits`` "um" is scaled to mm, a control point without a ``position``
(or with Slicer's empty-string placeholder) has no position, and ``positionStatus`` other than
"defined" (undefined, preview, missing) marks the landmark absent while keeping any position given
as its best guess. Labels become names; a ``confidence <value>`` suffix of the description is the
landmark's confidence.

Writing produces one "Fiducial" markup in LPS millimetres (rounded to 1e-4 mm, as the CSV and
JSON exports). A present landmark is "defined"; an
absent one is "missing" -- Slicer's status for a point that does not exist in this image: it is
not drawn, and the placement workflow skips it. An absent landmark's best guess is kept as its
``position``: Slicer's reader keeps that position for a missing point (not drawn; restoring the
point, ``RestoreNthControlPointPosition``, makes it a defined point right there), but Slicer's
writer drops positions of missing points, so the guess survives only until Slicer saves the file.
The published schema files (v1.0.3, v1.0.4) list only undefined, preview and defined as statuses
although Slicer itself writes and reads "missing"; every other field follows the schema.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from ...atomic import atomic_write_text
from ..landmarks import Landmarks
from .common import (
    as_point,
    build_landmarks,
    annotated_description,
    check_point_count,
    invalid_file,
    parse_json,
    rounded,
    split_annotated_description,
)

KIND = "Slicer markups"
SCHEMA_URL = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
POSITION_STATUSES = ("undefined", "preview", "defined", "missing")
UNIT_SCALES = {"mm": 1.0, "um": 1e-3}


def is_markups_document(document: object) -> bool:
    """True for a parsed JSON document that looks like a Slicer markups file."""
    return isinstance(document, dict) and isinstance(document.get("markups"), list)


def read_mrk_json(path: str | os.PathLike, markup_index: int | str | None = None) -> Landmarks:
    """Read the control points of one markup of a Slicer ``.mrk.json`` file as LPS landmarks.

    Args:
        path: the markups file.
        markup_index: which markup when the file holds several: its position in the file (int),
            its name (str), or None for the first "Fiducial" (point list) markup.
    """
    document = parse_json(path, KIND)
    if not is_markups_document(document):
        raise invalid_file(path, KIND, "it has no 'markups' list")
    markup = _chosen_markup(path, document["markups"], markup_index)
    scale = _unit_scale(path, markup.get("coordinateUnits", "mm"))
    flip = _lps_flip(path, markup.get("coordinateSystem", "LPS"))
    points = markup.get("controlPoints", [])
    if not isinstance(points, list):
        raise invalid_file(path, KIND, "its 'controlPoints' is not a list")
    check_point_count(path, KIND, len(points))

    names, positions, present, confidence, expected_error, descriptions = [], [], [], [], [], []
    for number, point in enumerate(points, start=1):
        if not isinstance(point, dict):
            raise invalid_file(path, KIND, f"control point {number} is not an object")
        position = _position(path, number, point.get("position"))
        status = point.get("positionStatus", "defined")
        if status not in POSITION_STATUSES:
            reason = f"control point {number} has the unknown positionStatus {status!r}"
            raise invalid_file(path, KIND, reason)
        description, point_confidence, point_error = split_annotated_description(str(point.get("description", "")))
        names.append(str(point.get("label", "")))
        positions.append([math.nan] * 3 if position is None else position * flip * scale)
        present.append(status == "defined" and position is not None)
        confidence.append(point_confidence)
        expected_error.append(point_error)
        descriptions.append(description)
    return build_landmarks(path, KIND, names, positions, present, confidence, descriptions, expected_error)


def write_mrk_json(path: str | os.PathLike, landmarks: Landmarks, overwrite: bool = False) -> None:
    """Write `landmarks` as one Slicer "Fiducial" markup in LPS millimetres (see module notes)."""
    points = []
    has_positions = landmarks.has_position
    for index, name in enumerate(landmarks.names):
        description = annotated_description(
            landmarks.descriptions[index], landmarks.confidence[index], landmarks.expected_error[index]
        )
        point = {"id": str(index + 1), "label": name, "description": description}
        if has_positions[index]:
            point["position"] = [rounded(value) for value in landmarks.positions[index]]
        point["positionStatus"] = "defined" if landmarks.present[index] else "missing"
        points.append(point)
    markup = {
        "type": "Fiducial",
        "coordinateSystem": "LPS",
        "coordinateUnits": "mm",
        "locked": False,
        "fixedNumberOfControlPoints": False,
        "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": len(points),
        "controlPoints": points,
        "measurements": [],
    }
    document = {"@schema": SCHEMA_URL, "markups": [markup]}
    atomic_write_text(path, json.dumps(document, indent=2, allow_nan=False) + "\n", overwrite=overwrite)


def _chosen_markup(path: str | os.PathLike, markups: list, markup_index: int | str | None) -> dict:
    """The markup selected by `markup_index` (see `read_mrk_json`)."""
    if not all(isinstance(markup, dict) for markup in markups):
        raise invalid_file(path, KIND, "an item of its 'markups' list is not an object")
    if markup_index is None:
        for markup in markups:
            if markup.get("type") == "Fiducial":
                return markup
        raise invalid_file(path, KIND, "it holds no point list ('Fiducial') markup")
    if isinstance(markup_index, str):
        for markup in markups:
            if markup.get("name") == markup_index:
                return markup
        available = ", ".join(repr(markup.get("name", "")) for markup in markups)
        raise invalid_file(path, KIND, f"it holds no markup named {markup_index!r} (it has {available})")
    if not -len(markups) <= markup_index < len(markups):
        reason = f"it holds {len(markups)} markups, so there is no markup {markup_index}"
        raise invalid_file(path, KIND, reason)
    return markups[markup_index]


def _unit_scale(path: str | os.PathLike, units: object) -> float:
    """Factor from the file's coordinate units to mm; units may be a code string or a coded entry."""
    code = units[0] if isinstance(units, list) and units else units
    if not isinstance(code, str) or code not in UNIT_SCALES:
        raise invalid_file(path, KIND, f"its coordinateUnits {units!r} are neither mm nor um")
    return UNIT_SCALES[code]


def _lps_flip(path: str | os.PathLike, coordinate_system: object) -> np.ndarray:
    """Per-axis signs taking the file's coordinates to LPS."""
    if coordinate_system == "LPS":
        return np.array([1.0, 1.0, 1.0])
    if coordinate_system == "RAS":
        return np.array([-1.0, -1.0, 1.0])
    raise invalid_file(path, KIND, f"its coordinateSystem {coordinate_system!r} is neither LPS nor RAS")


def _position(path: str | os.PathLike, number: int, value: object) -> np.ndarray | None:
    """A control point's position as 3 floats, or None when it has none (absent or Slicer's "")."""
    if value is None or value == "":
        return None
    point = as_point(value)
    if point is None:
        raise invalid_file(path, KIND, f"the position of control point {number} is not 3 finite numbers")
    return np.array(point)
