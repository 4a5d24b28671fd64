"""Review by confidence with the real slicer-core scene: flags, row texts, counts, next flagged, jumps.

One detection of five landmarks with known expected errors and confidences goes into a point list;
the flags, table texts and counts both front-ends show are checked on it before and after the
user corrects points, and a jump must centre a real slice node on the point (RAS).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from H3DELandmarksLib.data.landmarks import Landmarks

slicer = pytest.importorskip("slicer")

from H3DELandmarksLib.mrml.markups_node import create_landmarks_node, read_predictions  # noqa: E402
from H3DELandmarksLib.mrml.review import (  # noqa: E402
    POINT_EVENTS,
    is_flagged,
    jump_to,
    next_flagged,
    review_counts,
    review_rows,
)
from H3DELandmarksLib.mrml.volume_node import lps_to_ras  # noqa: E402

CONFIDENCE_THRESHOLD = 0.5
ERROR_THRESHOLD_MM = 0.5


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture
def node(scene):
    """far: error above the threshold; near: below; doubtful: no error, low confidence;
    sure: no error, high confidence; missing: judged absent with a guess and low confidence."""
    landmarks = Landmarks(
        names=["far", "near", "doubtful", "sure", "missing"],
        positions=[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0], [10.0, 11.0, 12.0], [13.0, 14.0, 15.0]],
        present=[True, True, True, True, False],
        confidence=[0.9, 0.2, 0.3, 0.9, 0.1],
        expected_error=[0.8, 0.2, math.nan, math.nan, math.nan],
    )
    return create_landmarks_node(scene, landmarks, "skull", "1.0.0", CONFIDENCE_THRESHOLD)


def rows(node):
    return review_rows(node, CONFIDENCE_THRESHOLD, ERROR_THRESHOLD_MM)


def test_the_expected_error_is_remembered_with_the_prediction(node):
    predictions = read_predictions(node)
    assert predictions["far"].expected_error == 0.8
    assert math.isnan(predictions["sure"].expected_error)


def test_points_above_the_error_threshold_or_without_error_and_low_confidence_are_flagged(node):
    assert [row.flagged for row in rows(node)] == [True, False, True, False, True]
    assert [row.flagged for row in review_rows(node, CONFIDENCE_THRESHOLD, 1.0)] == [False, False, True, False, True]


def test_a_corrected_or_hand_placed_point_is_never_flagged(node):
    node.SetNthControlPointPositionWorld(0, *lps_to_ras(np.array([1.0, 2.0, 5.0])))
    node.SetNthControlPointPositionWorld(4, *lps_to_ras(np.array([13.0, 14.0, 16.0])))
    extra = node.AddControlPoint([0.0, 0.0, 0.0], "extra")
    reviewed = rows(node)
    assert [row.review.status for row in reviewed] == ["moved", "predicted", "predicted", "predicted",
                                                       "placed by hand", "placed by hand"]
    assert [row.flagged for row in reviewed] == [False, False, True, False, False, False]
    assert not is_flagged(reviewed[extra].review, 0.0, 1.0)


def test_rows_show_confidence_expected_error_status_and_distance_moved(node):
    node.SetNthControlPointPositionWorld(1, *lps_to_ras(np.array([4.0, 5.0, 8.5])))
    texts = [row.texts for row in rows(node)]
    assert texts[0] == ("far", "0.90", "0.80", "predicted (check)", "0.0")
    assert texts[1] == ("near", "0.20", "0.20", "moved", "2.5")
    assert texts[3] == ("sure", "0.90", "", "predicted", "0.0")
    assert texts[4] == ("missing", "0.10", "", "absent (check)", "")


def test_rows_as_json_hold_the_same_facts(node):
    first, *_, last = [row.to_json() for row in rows(node)]
    assert first["expected_error_mm"] == 0.8 and first["flagged"] and first["placed"]
    assert first["position"] == [1.0, 2.0, 3.0]
    assert last["expected_error_mm"] is None and last["position"] is None
    assert last["predicted_position"] == [13.0, 14.0, 15.0]


def test_counts_of_placed_flagged_moved_and_hand_placed_points(node):
    node.SetNthControlPointPositionWorld(0, *lps_to_ras(np.array([1.0, 2.0, 5.0])))
    node.AddControlPoint([0.0, 0.0, 0.0], "extra")
    counts = review_counts(rows(node))
    assert (counts.total, counts.placed, counts.flagged, counts.moved, counts.placed_by_hand) == (6, 5, 2, 1, 1)
    assert counts.text == "5 of 6 placed; 2 flagged, 1 moved, 1 placed by hand"


def test_next_flagged_point_goes_round_the_flagged_points_in_order(node):
    reviewed = rows(node)
    assert next_flagged(reviewed, -1) == 0
    assert next_flagged(reviewed, 0) == 2
    assert next_flagged(reviewed, 2) == 4
    assert next_flagged(reviewed, 4) == 0
    assert next_flagged(review_rows(node, 0.0, 10.0), -1) is None


def test_a_jump_centres_the_slice_views_on_the_point_or_on_the_guess_of_an_absent_one(scene, node):
    slice_node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    slice_node.SetLayoutName("Red")
    slice_node.SetOrientationToAxial()
    reviewed = rows(node)
    for index, lps in ((0, [1.0, 2.0, 3.0]), (4, [13.0, 14.0, 15.0])):
        assert jump_to(scene, reviewed[index].review)
        matrix = slicer.util.arrayFromVTKMatrix(slice_node.GetSliceToRAS())
        np.testing.assert_allclose(matrix[:3, 3], lps_to_ras(np.array(lps)), atol=1e-9)


def test_a_point_without_position_or_guess_has_no_jump(scene, node):
    index = node.AddControlPoint([0.0, 0.0, 0.0], "unplaced")
    node.UnsetNthControlPointPosition(index)
    assert not jump_to(scene, rows(node)[index].review)


def test_every_observed_event_fires_when_points_are_moved_unplaced_placed_added_and_removed(node):
    fired = set()
    tags = [node.AddObserver(event, lambda caller, name, event=event: fired.add(event)) for event in POINT_EVENTS]
    node.SetNthControlPointPositionWorld(0, 0.0, 0.0, 0.0)
    node.UnsetNthControlPointPosition(0)
    node.SetNthControlPointPositionWorld(0, 1.0, 0.0, 0.0)
    node.RemoveNthControlPoint(node.AddControlPoint([0.0, 0.0, 0.0], "added"))
    for tag in tags:
        node.RemoveObserver(tag)
    assert fired == set(POINT_EVENTS)
