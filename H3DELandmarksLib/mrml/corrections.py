"""Corrections: how the user's points differ from the model's prediction, and re-detection rules.

Each point of a landmarks node is compared with the prediction recorded for its label
(`markups_node.Prediction`) and gets one status:

- ``predicted``: placed where the model put it (within `MOVE_TOLERANCE_MM`);
- ``moved``: the user moved it away from the predicted position;
- ``placed by hand``: placed although the model gave no present landmark of that name;
- ``marked absent``: the model found it, the user unplaced it (or marked it missing);
- ``absent``: the model found no such landmark and the point is still unplaced.

The first and last are untouched; the others are corrections. Re-running detection
(`apply_detection`) never overwrites a correction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import slicer
import slicer.util

from ..data.landmarks import Landmarks
from .markups_node import (
    DEFAULT_CONFIDENCE_THRESHOLD,
    PREDICTIONS_ATTRIBUTE,
    VOLUME_REFERENCE_ROLE,
    create_landmarks_node,
    is_low_confidence,
    point_labels,
    point_position_lps,
    read_predictions,
    style_by_confidence,
    write_predicted_landmarks,
)

PREDICTED = "predicted"
MOVED = "moved"
PLACED_BY_HAND = "placed by hand"
MARKED_ABSENT = "marked absent"
ABSENT = "absent"
UNTOUCHED_STATUSES = (PREDICTED, ABSENT)
MOVE_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class PointReview:
    """One control point compared with its prediction.

    Attributes:
        index: control point index in the node.
        name: its label.
        status: one of the statuses of this module.
        confidence: the model's confidence for this landmark (NaN when it made no prediction).
        low_confidence: the confidence is below the node's threshold.
        displacement_mm: distance between the point and the predicted position; NaN when either
            is missing.
        position: final LPS position, or None when the point is not placed.
        predicted_position: predicted LPS position (a guess for an absent landmark), or None.
        model: ``"ID@VERSION"`` of the predicting model, "" for a point it never predicted.
        expected_error_mm: the model's expected error for this landmark; NaN when unknown.
    """

    index: int
    name: str
    status: str
    confidence: float
    low_confidence: bool
    displacement_mm: float
    position: np.ndarray | None
    predicted_position: np.ndarray | None
    model: str
    expected_error_mm: float = math.nan

    @property
    def corrected(self) -> bool:
        """True when the user changed this point (moved, placed or marked absent)."""
        return self.status not in UNTOUCHED_STATUSES

    @property
    def placed_by_hand(self) -> bool:
        return self.status == PLACED_BY_HAND


def review_points(node: slicer.vtkMRMLMarkupsFiducialNode, threshold: float) -> list[PointReview]:
    """Status, displacement and confidence of every point, in node order."""
    predictions = read_predictions(node)
    reviews = []
    for index, name in enumerate(point_labels(node)):
        prediction = predictions.get(name)
        position = point_position_lps(node, index)
        predicted = prediction.position if prediction is not None else None
        displacement = math.nan
        if position is not None and predicted is not None:
            displacement = float(np.linalg.norm(position - predicted))
        confidence = prediction.confidence if prediction is not None else math.nan
        reviews.append(PointReview(
            index=index,
            name=name,
            status=_status(position is not None, prediction is not None and prediction.present, displacement),
            confidence=confidence,
            low_confidence=is_low_confidence(confidence, threshold),
            displacement_mm=displacement,
            position=position,
            predicted_position=predicted,
            model=prediction.model if prediction is not None else "",
            expected_error_mm=prediction.expected_error if prediction is not None else math.nan,
        ))
    return reviews


def _status(placed: bool, predicted_present: bool, displacement: float) -> str:
    if placed and predicted_present:
        return MOVED if displacement > MOVE_TOLERANCE_MM else PREDICTED
    if placed:
        return PLACED_BY_HAND
    return MARKED_ABSENT if predicted_present else ABSENT


def has_corrections(node: slicer.vtkMRMLMarkupsFiducialNode) -> bool:
    """True when any point was corrected, or a predicted point was deleted."""
    if any(review.corrected for review in review_points(node, DEFAULT_CONFIDENCE_THRESHOLD)):
        return True
    return bool(set(read_predictions(node)) - set(point_labels(node)))


def apply_detection(
    scene: slicer.vtkMRMLScene,
    landmarks: Landmarks,
    model_id: str,
    model_version: str,
    existing: slicer.vtkMRMLMarkupsFiducialNode | None = None,
    update_untouched_only: bool = False,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    volume_node: slicer.vtkMRMLVolumeNode | None = None,
    name: str = "Landmarks",
) -> tuple[slicer.vtkMRMLMarkupsFiducialNode, bool]:
    """Put a detection into the scene without ever losing a correction; returns (node, created).

    - No `existing` node, or one made for another volume than `volume_node`: a new node.
    - `existing` holds no corrections: its points are replaced by the detection (same node).
    - `existing` holds corrections: a new node; or, with `update_untouched_only`, only the
      untouched points of `existing` (and landmarks it lacks) take the new prediction while
      corrected points keep both their position and their original prediction.
    """
    if (
        existing is None
        or not _made_for(existing, volume_node)
        or (has_corrections(existing) and not update_untouched_only)
    ):
        node = create_landmarks_node(
            scene, landmarks, model_id, model_version, confidence_threshold, name, volume_node
        )
        return node, True
    with slicer.util.NodeModify(existing):
        if has_corrections(existing):
            reviews = {review.name: review for review in review_points(existing, confidence_threshold)}
            names = [n for n in landmarks.names if n not in reviews or not reviews[n].corrected]
        else:
            existing.RemoveAllControlPoints()
            existing.RemoveAttribute(PREDICTIONS_ATTRIBUTE)
            names = landmarks.names
        write_predicted_landmarks(existing, landmarks, model_id, model_version, names)
        if volume_node is not None:
            existing.SetNodeReferenceID(VOLUME_REFERENCE_ROLE, volume_node.GetID())
        style_by_confidence(existing, confidence_threshold)
    return existing, False


def _made_for(node: slicer.vtkMRMLMarkupsFiducialNode, volume_node: slicer.vtkMRMLVolumeNode | None) -> bool:
    """False when `node` records a volume other than `volume_node`."""
    recorded = node.GetNodeReferenceID(VOLUME_REFERENCE_ROLE)
    return recorded is None or volume_node is None or recorded == volume_node.GetID()
