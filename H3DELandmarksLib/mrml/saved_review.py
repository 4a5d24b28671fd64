"""Read a review back into the scene: the ``.mrk.json`` and review CSV that `export` wrote.

The markups file holds the reviewed points (labels, descriptions with the expected error, LPS
positions, placed or not) and is read with the library's reader; Slicer's markups JSON keeps no node attributes, so what
the model predicted comes from the review CSV beside it (``predicted_x..z``, ``confidence``,
``review``, ``model_id``, ``model_version``). The node then shows the same statuses as when it was
saved, and re-detection keeps its corrections. Without a usable CSV (missing, or for other
labels) the points load with no prediction: placed ones count as placed by hand.
"""

from __future__ import annotations

import csv
import io
import math
import os

import numpy as np
import slicer
import slicer.util

from ..data.landmark_files import read_landmarks
from ..data.landmark_files.common import parse_number, read_text
from ..data.landmarks import Landmarks
from ..errors import LandmarkFileError
from .corrections import ABSENT, PLACED_BY_HAND
from .markups_node import DEFAULT_CONFIDENCE_THRESHOLD, create_landmarks_node
from .volume_node import lps_to_ras

PREDICTION_ABSENT_REVIEWS = (PLACED_BY_HAND, ABSENT)


def read_review(
    scene: slicer.vtkMRMLScene,
    mrk_json: str | os.PathLike,
    review_csv: str | os.PathLike | None,
    name: str = "Landmarks",
    volume_node: slicer.vtkMRMLVolumeNode | None = None,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
) -> slicer.vtkMRMLMarkupsFiducialNode:
    """A new landmarks node holding the saved review (see module notes).

    Raises `LandmarkFileError` (one sentence) when the markups file cannot be read.
    """
    final = read_landmarks(mrk_json)
    predicted, model_id, model_version = _predictions(review_csv, final)
    node = create_landmarks_node(scene, predicted, model_id, model_version, confidence_threshold, name, volume_node)
    with slicer.util.NodeModify(node):
        for index, placed in enumerate(final.present):
            if placed:
                node.SetNthControlPointPositionWorld(index, *lps_to_ras(final.positions[index]))
            else:
                node.UnsetNthControlPointPosition(index)
    return node


def _predictions(review_csv, final: Landmarks) -> tuple[Landmarks, str, str]:
    """The predictions recorded in the review CSV for `final`'s labels; none when unusable."""
    count = len(final)
    positions = np.full((count, 3), np.nan)
    present = np.zeros(count, bool)
    confidence = np.full(count, np.nan)
    model_id = model_version = ""
    rows = _rows(review_csv)
    if rows is not None and [row.get("label") for row in rows] == final.names:
        for index, row in enumerate(rows):
            guess = [parse_number(row.get(f"predicted_{axis}", "")) for axis in "xyz"]
            if all(value is not None for value in guess):
                positions[index] = guess
            present[index] = row.get("review") not in PREDICTION_ABSENT_REVIEWS and np.isfinite(positions[index]).all()
            value = parse_number(row.get("confidence", ""))
            confidence[index] = math.nan if value is None else value
        model_id, model_version = rows[0].get("model_id") or "", rows[0].get("model_version") or ""
    predicted = Landmarks(final.names, positions, present, confidence, final.descriptions, final.expected_error)
    return predicted, model_id, model_version


def _rows(review_csv) -> list[dict] | None:
    if review_csv is None or not os.path.isfile(review_csv):
        return None
    try:
        return list(csv.DictReader(io.StringIO(read_text(review_csv))))
    except (LandmarkFileError, csv.Error, ValueError):
        return None
