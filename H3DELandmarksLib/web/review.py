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

A case whose review was saved before opens with that review (`read_review`). Saving never
replaces review files this session did not read or write itself: when the files beside the case
are new or changed since (another session, another program), `save` raises `ReviewConflict`
until the user says to replace them. Downloads are made from the scene, without saving.
"""

from __future__ import annotations

import tempfile
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
from ..mrml.saved_review import read_review
from ..mrml.volume_node import volume_from_node, volume_to_node
from .cases import ReviewFiles, review_files


class ReviewConflict(H3DEError):
    """Saving would replace review files this session has not read or written."""


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
        self._known_files: dict[Path, tuple | None] = {}
        self.review_problem: str | None = None

    @property
    def landmarks_node(self) -> slicer.vtkMRMLMarkupsFiducialNode | None:
        """The open case's landmarks node, None before its first detection."""
        return self._landmark_nodes.get(self.case.path) if self.case is not None else None

    def open(self, case: Case) -> slicer.vtkMRMLScalarVolumeNode:
        """Read `case` into the scene in place of the open case (with its saved review); returns its volume node.

        `review_problem` then says why a saved review could not be shown (None when it could).

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
        self.review_problem = None
        if case.path not in self._landmark_nodes:
            self._read_saved_review(case)
        node = self.landmarks_node
        if node is not None:
            node.SetNodeReferenceID(VOLUME_REFERENCE_ROLE, self.volume_node.GetID())
            node.GetDisplayNode().SetVisibility(True)
        return self.volume_node

    def _read_saved_review(self, case: Case) -> None:
        """Show the review saved beside `case`, if there is one (see module notes)."""
        files = review_files(case)
        self._known_files[case.path] = files.fingerprint()
        if not files.mrk_json.exists():
            return
        try:
            node = read_review(self.scene, files.mrk_json, files.csv, f"{case.name} landmarks", self.volume_node)
        except H3DEError as error:
            self._known_files[case.path] = None
            self.review_problem = f"The saved review could not be read, so it is not shown: {error}"
            return
        self._observe(node)
        self._landmark_nodes[case.path] = node

    def _observe(self, node: slicer.vtkMRMLMarkupsFiducialNode) -> None:
        for event in POINT_EVENTS:
            node.AddObserver(event, self._on_point_event)

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
            self._observe(node)
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

    def save(self, replace: bool = False) -> ReviewFiles:
        """Write the open case's review beside it; returns the paths.

        Raises `ReviewConflict` when that would replace files this session did not read or write,
        unless `replace`.
        """
        node = self._node_to_export()
        files = review_files(self.case)
        found = files.fingerprint()
        if found is not None and found != self._known_files.get(self.case.path) and not replace:
            raise ReviewConflict(
                f"{files.mrk_json.name} beside {self.case.name} was saved by another session or program "
                "since this one opened it; replace it with this review?"
            )
        export_mrk_json(node, files.mrk_json, overwrite=True)
        export_csv(node, files.csv, case=self.case.name, overwrite=True)
        self._known_files[self.case.path] = files.fingerprint()
        return files

    def export_bytes(self, kind: str) -> bytes:
        """The open case's review as a ``"mrk_json"`` or ``"csv"`` file's bytes, written nowhere else."""
        node = self._node_to_export()
        with tempfile.TemporaryDirectory(prefix="h3de-download-") as folder:
            files = ReviewFiles(Path(folder) / "review.mrk.json", Path(folder) / "review.csv")
            if kind == "mrk_json":
                return export_mrk_json(node, files.mrk_json).read_bytes()
            return export_csv(node, files.csv, case=self.case.name).read_bytes()

    def _node_to_export(self) -> slicer.vtkMRMLMarkupsFiducialNode:
        node = self.landmarks_node
        if self.case is None or node is None:
            raise H3DEError("Detect landmarks before exporting them.")
        return node

