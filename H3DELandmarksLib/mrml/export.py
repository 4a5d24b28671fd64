"""Export a landmarks node: Slicer markups JSON through Slicer's own writer, and a review CSV.

Both exports hold world positions in LPS millimetres. The node and its storage settings are never
changed: the markups file is written from a copy in a private scene. Writes are atomic and refuse
to replace an existing file unless told.

CSV columns: case, label, description, x, y, z (final LPS position), confidence (the model's),
status (present / absent, as the library's CSV reader expects), review (see `corrections`),
predicted_x, predicted_y, predicted_z, displacement_mm, model_id, model_version. Empty cells mean
"none". The library's `read_csv` reads this file back as the final landmarks.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

import slicer

from ..atomic import atomic_destination, atomic_write_text
from ..data.landmark_files.common import number_text, split_annotated_description, status_text
from ..errors import LandmarkFileError
from .corrections import review_points
from .markups_node import VOLUME_REFERENCE_ROLE, confidence_threshold, point_position_lps
from .volume_node import lps_to_ras

CSV_HEADER = (
    "case", "label", "description", "x", "y", "z", "confidence", "status", "review",
    "predicted_x", "predicted_y", "predicted_z", "displacement_mm", "model_id", "model_version",
)


def case_name(node: slicer.vtkMRMLMarkupsFiducialNode) -> str:
    """Name of the case: the name of the volume the landmarks were detected on, else the node's."""
    volume = node.GetNodeReference(VOLUME_REFERENCE_ROLE)
    return (volume or node).GetName()


def export_mrk_json(
    node: slicer.vtkMRMLMarkupsFiducialNode, path: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Write the node's points to a ``.mrk.json`` file in LPS with Slicer's markups JSON writer."""
    path = Path(path)
    with atomic_destination(path, overwrite, suffix=".part.mrk.json") as temporary:
        storage = slicer.vtkMRMLMarkupsJsonStorageNode()
        storage.SetCoordinateSystem(slicer.vtkMRMLStorageNode.CoordinateSystemLPS)
        storage.SetFileName(str(temporary))
        if not storage.WriteData(_world_copy(node)):
            raise LandmarkFileError(f"Cannot write {path} (disk full or not writable?).")
    return path


def _world_copy(node: slicer.vtkMRMLMarkupsFiducialNode) -> slicer.vtkMRMLMarkupsFiducialNode:
    """A copy of `node` in a private scene, its placed points at their world positions."""
    scene = slicer.vtkMRMLScene()
    scene.AddNode(slicer.vtkMRMLSelectionNode())
    copy = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(copy)
    copy.CopyContent(node)
    copy.SetName(node.GetName())
    for index in range(node.GetNumberOfControlPoints()):
        position = point_position_lps(node, index)
        if position is not None:
            copy.SetNthControlPointPosition(index, *lps_to_ras(position))
    return copy


def export_csv(
    node: slicer.vtkMRMLMarkupsFiducialNode,
    path: str | os.PathLike,
    case: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the review CSV (see module notes); `case` defaults to `case_name(node)`."""
    case = case_name(node) if case is None else case
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for review in review_points(node, confidence_threshold(node)):
        model_id, _, model_version = review.model.partition("@")
        writer.writerow([
            case,
            review.name,
            _description(node, review.index),
            *_coordinates(review.position),
            _number(review.confidence),
            status_text(review.position is not None),
            review.status,
            *_coordinates(review.predicted_position),
            _number(review.displacement_mm),
            model_id,
            model_version,
        ])
    return atomic_write_text(path, stream.getvalue(), overwrite=overwrite)


def _description(node: slicer.vtkMRMLMarkupsFiducialNode, index: int) -> str:
    return split_annotated_description(node.GetNthControlPointDescription(index))[0]


def _coordinates(position) -> list[str]:
    return ["", "", ""] if position is None else [number_text(value) for value in position]


def _number(value: float) -> str:
    return number_text(value) if math.isfinite(value) else ""
