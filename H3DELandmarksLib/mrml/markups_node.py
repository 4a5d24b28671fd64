"""`Landmarks` ⇄ point list nodes (`vtkMRMLMarkupsFiducialNode`), with the prediction remembered.

One control point per landmark: label = landmark name, description = landmark description with
the model's confidence appended (``"...; confidence 0.93"``, the convention of the landmark files).
A landmark the model found is a defined point; an absent one is an *unplaced* point (position
status undefined), which Slicer's place mode fills with the next click in a view. Points whose
confidence is below the node's threshold are drawn in `LOW_CONFIDENCE_COLOR` (unselected), the
others in `CONFIDENT_COLOR` (selected).

The node remembers what the model said in attributes (saved with the scene): the model id and
version of the last detection and, per landmark name, the predicted LPS position, presence,
confidence and model (`Prediction`), so corrections can be measured against it later.
Positions are world coordinates: RAS in the scene, LPS (x, y negated) everywhere else.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import slicer
import slicer.util

from ..data.landmark_files.common import annotated_description, split_annotated_description
from ..data.landmarks import Landmarks
from .volume_node import lps_to_ras, ras_to_lps

MODEL_ID_ATTRIBUTE = "H3DELandmarks.ModelId"
MODEL_VERSION_ATTRIBUTE = "H3DELandmarks.ModelVersion"
PREDICTIONS_ATTRIBUTE = "H3DELandmarks.Predictions"
THRESHOLD_ATTRIBUTE = "H3DELandmarks.ConfidenceThreshold"
VOLUME_REFERENCE_ROLE = "H3DELandmarks.Volume"
DEFAULT_CONFIDENCE_THRESHOLD = 0.5
CONFIDENT_COLOR = (0.25, 0.85, 0.35)
LOW_CONFIDENCE_COLOR = (1.0, 0.55, 0.0)
POSITION_DEFINED = slicer.vtkMRMLMarkupsNode.PositionDefined


@dataclass(frozen=True)
class Prediction:
    """What the model said about one landmark.

    Attributes:
        position: LPS millimetres, or None when the model gave no position.
        present: False when the model judged the landmark absent (position is then a guess).
        confidence: in [0, 1]; NaN when unknown.
        model: ``"ID@VERSION"`` of the model that predicted it.
        expected_error: the detector's expected error in millimetres; NaN when unknown.
    """

    position: np.ndarray | None
    present: bool
    confidence: float
    model: str
    expected_error: float = math.nan

    def to_json(self) -> dict:
        return {
            "position": None if self.position is None else [float(v) for v in self.position],
            "present": bool(self.present),
            "confidence": float(self.confidence) if math.isfinite(self.confidence) else None,
            "model": self.model,
            "expected_error_mm": float(self.expected_error) if math.isfinite(self.expected_error) else None,
        }

    @classmethod
    def from_json(cls, item: dict) -> "Prediction":
        position = item.get("position")
        confidence = item.get("confidence")
        expected_error = item.get("expected_error_mm")
        return cls(
            position=None if position is None else np.array(position, float),
            present=bool(item.get("present", False)),
            confidence=math.nan if confidence is None else float(confidence),
            model=str(item.get("model", "")),
            expected_error=math.nan if expected_error is None else float(expected_error),
        )


def model_spec(model_id: str, model_version: str) -> str:
    """``"ID@VERSION"``."""
    return f"{model_id}@{model_version}"


def create_landmarks_node(
    scene: slicer.vtkMRMLScene,
    landmarks: Landmarks,
    model_id: str,
    model_version: str,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    name: str = "Landmarks",
    volume_node: slicer.vtkMRMLVolumeNode | None = None,
) -> slicer.vtkMRMLMarkupsFiducialNode:
    """Add a point list node holding `landmarks` as predicted by the model ``model_id@model_version``."""
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", scene.GenerateUniqueName(name))
    node.CreateDefaultDisplayNodes()
    if volume_node is not None:
        node.SetNodeReferenceID(VOLUME_REFERENCE_ROLE, volume_node.GetID())
    write_predicted_landmarks(node, landmarks, model_id, model_version, landmarks.names)
    style_by_confidence(node, confidence_threshold)
    return node


def write_predicted_landmarks(
    node: slicer.vtkMRMLMarkupsFiducialNode,
    landmarks: Landmarks,
    model_id: str,
    model_version: str,
    names: list[str],
) -> None:
    """Set the points named in `names` to their predictions in `landmarks` and record them.

    A point is found by its label and added at the end when the node has none of that name;
    points not named are left exactly as they are. The node's model attributes become
    ``model_id`` / ``model_version``.
    """
    predictions = read_predictions(node)
    spec = model_spec(model_id, model_version)
    labels = point_labels(node)
    with slicer.util.NodeModify(node):
        for name in names:
            row = landmarks.index(name)
            index = labels.index(name) if name in labels else node.AddControlPoint([0.0, 0.0, 0.0], name)
            if index == len(labels):
                labels.append(name)
            _write_point(node, index, landmarks, row)
            predictions[name] = Prediction(
                position=landmarks.positions[row].copy() if landmarks.has_position[row] else None,
                present=bool(landmarks.present[row]),
                confidence=float(landmarks.confidence[row]),
                model=spec,
                expected_error=float(landmarks.expected_error[row]),
            )
        node.SetAttribute(MODEL_ID_ATTRIBUTE, model_id)
        node.SetAttribute(MODEL_VERSION_ATTRIBUTE, model_version)
        node.SetAttribute(
            PREDICTIONS_ATTRIBUTE, json.dumps({name: item.to_json() for name, item in predictions.items()})
        )


def _write_point(node: slicer.vtkMRMLMarkupsFiducialNode, index: int, landmarks: Landmarks, row: int) -> None:
    """Point `index` of `node` takes landmark `row`: label, description, position and status."""
    node.SetNthControlPointLabel(index, landmarks.names[row])
    node.SetNthControlPointDescription(
        index,
        annotated_description(landmarks.descriptions[row], landmarks.confidence[row], landmarks.expected_error[row]),
    )
    if landmarks.has_position[row]:
        node.SetNthControlPointPositionWorld(index, *lps_to_ras(landmarks.positions[row]))
    if not landmarks.present[row] or not landmarks.has_position[row]:
        node.UnsetNthControlPointPosition(index)


def read_predictions(node: slicer.vtkMRMLMarkupsFiducialNode) -> dict[str, Prediction]:
    """The recorded predictions by landmark name (empty for a node this module did not fill)."""
    text = node.GetAttribute(PREDICTIONS_ATTRIBUTE)
    if not text:
        return {}
    return {name: Prediction.from_json(item) for name, item in json.loads(text).items()}


def point_labels(node: slicer.vtkMRMLMarkupsFiducialNode) -> list[str]:
    """Labels of the node's control points, in order."""
    return [node.GetNthControlPointLabel(index) for index in range(node.GetNumberOfControlPoints())]


def point_position_lps(node: slicer.vtkMRMLMarkupsFiducialNode, index: int) -> np.ndarray | None:
    """World LPS position of point `index`, or None when the point is not placed (defined)."""
    if node.GetNthControlPointPositionStatus(index) != POSITION_DEFINED:
        return None
    ras = [0.0, 0.0, 0.0]
    node.GetNthControlPointPositionWorld(index, ras)
    return ras_to_lps(ras)


def landmarks_from_node(node: slicer.vtkMRMLMarkupsFiducialNode) -> Landmarks:
    """The node's current points as `Landmarks` in LPS (what the user sees, corrections included).

    A placed (defined) point is present at its world position; any other point is absent without
    a position. Descriptions and confidences come from the point descriptions.
    """
    count = node.GetNumberOfControlPoints()
    positions = np.full((count, 3), np.nan)
    descriptions, confidence, expected_error = [], [], []
    for index in range(count):
        position = point_position_lps(node, index)
        if position is not None:
            positions[index] = position
        description, value, error = split_annotated_description(node.GetNthControlPointDescription(index))
        descriptions.append(description)
        confidence.append(value)
        expected_error.append(error)
    return Landmarks(
        names=point_labels(node),
        positions=positions,
        present=np.all(np.isfinite(positions), axis=1),
        confidence=confidence,
        descriptions=descriptions,
        expected_error=expected_error,
    )


def is_low_confidence(confidence: float, threshold: float) -> bool:
    """True when a known confidence is below `threshold`."""
    return math.isfinite(confidence) and confidence < threshold


def confidence_threshold(node: slicer.vtkMRMLMarkupsFiducialNode) -> float:
    """The threshold the node was last styled with."""
    text = node.GetAttribute(THRESHOLD_ATTRIBUTE)
    return float(text) if text else DEFAULT_CONFIDENCE_THRESHOLD


def update_confidence_threshold(node: slicer.vtkMRMLMarkupsFiducialNode, threshold: float) -> bool:
    """Restyle a detected node whose threshold differs from `threshold`; True when it did.

    Point lists that hold no prediction (not made by detection) are left alone.
    """
    if not read_predictions(node) or confidence_threshold(node) == float(threshold):
        return False
    style_by_confidence(node, threshold)
    return True


def style_by_confidence(node: slicer.vtkMRMLMarkupsFiducialNode, threshold: float) -> None:
    """Draw points whose predicted confidence is below `threshold` in the low-confidence colour."""
    predictions = read_predictions(node)
    with slicer.util.NodeModify(node):
        node.SetAttribute(THRESHOLD_ATTRIBUTE, repr(float(threshold)))
        for index, name in enumerate(point_labels(node)):
            prediction = predictions.get(name)
            low = prediction is not None and is_low_confidence(prediction.confidence, threshold)
            node.SetNthControlPointSelected(index, not low)
    display = node.GetDisplayNode()
    if display is not None:
        display.SetSelectedColor(*CONFIDENT_COLOR)
        display.SetColor(*LOW_CONFIDENCE_COLOR)
