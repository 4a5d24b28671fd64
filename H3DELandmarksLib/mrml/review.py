"""Review by confidence: which points to check first, what the landmark list shows, where to jump.

Both front-ends, the Slicer module's landmark table and the browser app's list, take their rows
from `review_rows`, their counts from `review_counts`, "Next flagged point" from `next_flagged` and
their jumps from `jump_to`, and observe `POINT_EVENTS` on the landmarks node.

A point is *flagged* (it needs a look) when the model predicted it, the user has not corrected it
yet, and either its expected error is above the user's threshold (millimetres) or, where the model
gave no expected error, its confidence is below the model's confidence threshold. A corrected
point is the user's and is never flagged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import slicer

from .corrections import MOVED, PLACED_BY_HAND, PointReview, review_points
from .markups_node import is_low_confidence
from .volume_node import lps_to_ras

DEFAULT_ERROR_THRESHOLD_MM = 0.5
FLAGGED_TEXT = "check"
POINT_EVENTS = (
    slicer.vtkMRMLMarkupsNode.PointAddedEvent,
    slicer.vtkMRMLMarkupsNode.PointRemovedEvent,
    slicer.vtkMRMLMarkupsNode.PointModifiedEvent,
    slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
    slicer.vtkMRMLMarkupsNode.PointPositionUndefinedEvent,
)


@dataclass(frozen=True)
class ReviewRow:
    """One landmark as the review lists show it.

    Attributes:
        review: the point compared with its prediction.
        flagged: the point needs a look (see module notes).
    """

    review: PointReview
    flagged: bool

    @property
    def index(self) -> int:
        return self.review.index

    @property
    def texts(self) -> tuple[str, str, str, str, str]:
        """Name, confidence, expected error (mm), status and distance moved (mm), as table cells."""
        review = self.review
        status = f"{review.status} ({FLAGGED_TEXT})" if self.flagged else review.status
        return (review.name, _number_text(review.confidence, 2), _number_text(review.expected_error_mm, 2),
                status, _number_text(review.displacement_mm, 1))

    def to_json(self) -> dict:
        """The row in JSON types (None for unknown numbers); positions in LPS millimetres."""
        review = self.review
        return {
            "index": review.index,
            "name": review.name,
            "status": review.status,
            "corrected": review.corrected,
            "placed": review.position is not None,
            "confidence": _finite_or_none(review.confidence),
            "low_confidence": review.low_confidence,
            "expected_error_mm": _finite_or_none(review.expected_error_mm),
            "flagged": self.flagged,
            "position": _rounded(review.position),
            "predicted_position": _rounded(review.predicted_position),
            "displacement_mm": _finite_or_none(review.displacement_mm),
        }


@dataclass(frozen=True)
class ReviewCounts:
    """How many points are flagged, moved by the user, placed by hand and placed at all."""

    total: int
    placed: int
    flagged: int
    moved: int
    placed_by_hand: int

    @property
    def text(self) -> str:
        return (f"{self.placed} of {self.total} placed; {self.flagged} flagged, {self.moved} moved, "
                f"{self.placed_by_hand} placed by hand")


def is_flagged(review: PointReview, error_threshold_mm: float, confidence_threshold: float) -> bool:
    """True when the point needs a look (see module notes)."""
    if review.corrected or not review.model:
        return False
    if math.isfinite(review.expected_error_mm):
        return review.expected_error_mm > error_threshold_mm
    return is_low_confidence(review.confidence, confidence_threshold)


def review_rows(node: slicer.vtkMRMLMarkupsFiducialNode, confidence_threshold: float,
                error_threshold_mm: float = DEFAULT_ERROR_THRESHOLD_MM) -> list[ReviewRow]:
    """Every point of `node`, in node order, with its flag."""
    return [ReviewRow(review, is_flagged(review, error_threshold_mm, confidence_threshold))
            for review in review_points(node, confidence_threshold)]


def review_counts(rows: list[ReviewRow]) -> ReviewCounts:
    """The counts the lists show above the rows."""
    statuses = [row.review.status for row in rows]
    return ReviewCounts(
        total=len(rows),
        placed=sum(row.review.position is not None for row in rows),
        flagged=sum(row.flagged for row in rows),
        moved=statuses.count(MOVED),
        placed_by_hand=statuses.count(PLACED_BY_HAND),
    )


def next_flagged(rows: list[ReviewRow], current: int) -> int | None:
    """Index of the first flagged point after point `current` (wrapping round); None when none is flagged.

    `current` is -1 before any point was visited.
    """
    flagged = [row.index for row in rows if row.flagged]
    if not flagged:
        return None
    return next((index for index in flagged if index > current), flagged[0])


def jump_target(review: PointReview) -> np.ndarray | None:
    """Where to look at a point, in LPS: its position, else the model's guess; None when it has neither."""
    return review.position if review.position is not None else review.predicted_position


def jump_to(scene: slicer.vtkMRMLScene, review: PointReview) -> bool:
    """Centre every slice view of `scene` on the point's `jump_target`; False when it has none."""
    position = jump_target(review)
    if position is None:
        return False
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, *lps_to_ras(position), slicer.vtkMRMLSliceNode.CenteredJumpSlice)
    return True


def _number_text(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}" if math.isfinite(value) else ""


def _finite_or_none(value: float) -> float | None:
    return round(float(value), 4) if math.isfinite(value) else None


def _rounded(position) -> list[float] | None:
    return None if position is None else [round(float(value), 3) for value in position]
