"""The review of one case at a time in a Slicer scene: volume, landmarks, corrections, files.

Every decision is the scene bridge's (`H3DELandmarksLib.mrml`): the volume goes into the scene
with `volume_to_node` and back to detection with `volume_from_node`; a detection enters with
`apply_detection` (re-detecting never overwrites a correction); the rows, flags, counts and jumps
come from `mrml.review`, as in the Slicer module; the files are written by `export_mrk_json` and
`export_csv`.

Only the open case's volume is in the scene. Each visited case keeps its landmarks node (small),
hidden while another case is open, so going back to a case shows its corrections again. A point
the model judged absent is an unplaced control point: `start_placing` makes the next click in a
slice view put it there, as Slicer's own place mode does. Positions shown to the user are LPS.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import slicer

from ..data.cases import Case
from ..data.volume import Volume
from ..data.volume_io import read_volume
from ..errors import H3DEError
from ..inference.predictor import Detection
from ..mrml.corrections import apply_detection
from ..mrml.export import export_csv, export_mrk_json
from ..mrml.markups_node import POSITION_DEFINED, VOLUME_REFERENCE_ROLE, confidence_threshold
from ..mrml.review import (
    DEFAULT_ERROR_THRESHOLD_MM,
    POINT_EVENTS,
    ReviewRow,
    next_flagged,
    review_counts,
    review_rows,
)
from ..mrml.review import jump_to as jump_slices_to
from ..mrml.volume_node import volume_from_node, volume_to_node
from .cases import ReviewFiles, review_files


class ReviewSession:
    """The open case, its volume node and every visited case's landmarks node.

    Args:
        scene: the Slicer scene the views show.
        markups_logic: trame-slicer's markups logic (`place_node`, `disable_place_mode`).
        points_changed: called after any change of the open case's points (moved, placed,
            unplaced, relabelled), from the thread that changed them.
        error_threshold_mm: points whose expected error is above it are flagged (`mrml.review`).
    """

    def __init__(self, scene: slicer.vtkMRMLScene, markups_logic,
                 points_changed: Callable[[], None] | None = None) -> None:
        self.scene = scene
        self.markups_logic = markups_logic
        self.points_changed = points_changed or (lambda: None)
        self.error_threshold_mm = DEFAULT_ERROR_THRESHOLD_MM
        self.case: Case | None = None
        self.volume_node: slicer.vtkMRMLScalarVolumeNode | None = None
        self._landmark_nodes: dict[Path, slicer.vtkMRMLMarkupsFiducialNode] = {}

    @property
    def landmarks_node(self) -> slicer.vtkMRMLMarkupsFiducialNode | None:
        """The open case's landmarks node, None before its first detection."""
        return self._landmark_nodes.get(self.case.path) if self.case is not None else None

    def open(self, case: Case) -> slicer.vtkMRMLScalarVolumeNode:
        """Read `case` into the scene in place of the open case; returns its volume node.

        Raises `VolumeError` (the open case stays open) when the volume cannot be read.
        """
        if case.problem:
            raise H3DEError(case.problem)
        volume = read_volume(case.path)
        self.stop_placing()
        self._close()
        self.case = case
        self.volume_node = volume_to_node(volume, self.scene, case.name)
        self.volume_node.CreateDefaultDisplayNodes()
        node = self.landmarks_node
        if node is not None:
            node.SetNodeReferenceID(VOLUME_REFERENCE_ROLE, self.volume_node.GetID())
            node.GetDisplayNode().SetVisibility(True)
        return self.volume_node

    def _close(self) -> None:
        if self.volume_node is not None:
            self.scene.RemoveNode(self.volume_node)
            self.volume_node = None
        node = self.landmarks_node
        if node is not None:
            node.GetDisplayNode().SetVisibility(False)

    def detection_input(self) -> Volume:
        """The open volume, as detection must see it."""
        if self.volume_node is None:
            raise H3DEError("Open a case before detecting landmarks.")
        return volume_from_node(self.volume_node)

    def apply(self, detection: Detection, threshold: float) -> slicer.vtkMRMLMarkupsFiducialNode:
        """Put `detection` into the open case's landmarks node; corrected points are kept as they are.

        `threshold` is the confidence below which points are drawn as low-confidence.
        """
        if self.case is None:
            raise H3DEError("Open a case before detecting landmarks.")
        self.stop_placing()
        node, created = apply_detection(
            self.scene, detection.landmarks, detection.model_id, detection.model_version,
            existing=self.landmarks_node, update_untouched_only=True, confidence_threshold=threshold,
            volume_node=self.volume_node, name=f"{self.case.name} landmarks",
        )
        if created:
            for event in POINT_EVENTS:
                node.AddObserver(event, self._on_point_event)
            self._landmark_nodes[self.case.path] = node
        self.points_changed()
        return node

    def _on_point_event(self, node, _event) -> None:
        if node is self.landmarks_node:
            self.points_changed()

    def review(self) -> list[ReviewRow]:
        """The open case's points with their flags (empty before its first detection)."""
        node = self.landmarks_node
        if node is None:
            return []
        return review_rows(node, confidence_threshold(node), self.error_threshold_mm)

    def rows(self) -> list[dict]:
        """The open case's landmarks for the list (`ReviewRow.to_json`: JSON types, LPS positions)."""
        return [row.to_json() for row in self.review()]

    def counts_text(self) -> str:
        """How many points are placed, flagged, moved and placed by hand ("" before a detection)."""
        rows = self.review()
        return review_counts(rows).text if rows else ""

    def next_flagged(self, current: int) -> int | None:
        """The flagged point after point `current` (-1: none yet), wrapping round; None when none is flagged."""
        return next_flagged(self.review(), current)

    def jump_to(self, index: int) -> bool:
        """Centre every slice view on point `index` (placed, else its predicted guess); False if it has neither."""
        rows = self.review()
        if not 0 <= index < len(rows):
            return False
        return jump_slices_to(self.scene, rows[index].review)

    def start_placing(self, index: int) -> None:
        """Make the next click in a slice view place the unplaced point `index`."""
        node = self.landmarks_node
        if node is None or not 0 <= index < node.GetNumberOfControlPoints():
            raise H3DEError("Detect landmarks before placing one.")
        if node.GetNthControlPointPositionStatus(index) == POSITION_DEFINED:
            raise H3DEError(
                f"{node.GetNthControlPointLabel(index)} is already placed; drag it in a slice view to move it."
            )
        node.SetControlPointPlacementStartIndex(index)
        self.markups_logic.place_node(node, persistent=False)

    def stop_placing(self) -> None:
        """Leave place mode without placing anything."""
        self.markups_logic.disable_place_mode()

    def mark_absent(self, index: int) -> None:
        """Unplace point `index`: the landmark is not in this volume."""
        node = self.landmarks_node
        if node is None or not 0 <= index < node.GetNumberOfControlPoints():
            raise H3DEError("Detect landmarks before marking one absent.")
        node.UnsetNthControlPointPosition(index)

    def save(self) -> ReviewFiles:
        """Write the open case's review beside it (replacing the review saved before); returns the paths."""
        node = self.landmarks_node
        if self.case is None or node is None:
            raise H3DEError("Detect landmarks before exporting them.")
        files = review_files(self.case)
        export_mrk_json(node, files.mrk_json, overwrite=True)
        export_csv(node, files.csv, case=self.case.name, overwrite=True)
        return files

