"""Landmarks nodes with the real slicer-core scene: corrections, re-detection rules, exports, training cases.

Every check runs on real vtkMRML nodes; exported markups files are read back with Slicer's own
storage node and with the library's readers. Scene positions are RAS, files and `Landmarks` LPS.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from H3DELandmarksLib.data.datasets import GenericDataset
from H3DELandmarksLib.data.landmark_files import read_landmarks
from H3DELandmarksLib.data.landmarks import Landmarks
from H3DELandmarksLib.data.volume import Volume
from H3DELandmarksLib.errors import H3DEError

slicer = pytest.importorskip("slicer")

from H3DELandmarksLib.mrml.corrections import (  # noqa: E402 - needs slicer
    ABSENT,
    MARKED_ABSENT,
    MOVED,
    PLACED_BY_HAND,
    PREDICTED,
    apply_detection,
    has_corrections,
    review_points,
)
from H3DELandmarksLib.mrml.export import CSV_HEADER, export_csv, export_mrk_json  # noqa: E402
from H3DELandmarksLib.mrml.markups_node import (  # noqa: E402
    CONFIDENT_COLOR,
    LOW_CONFIDENCE_COLOR,
    MODEL_ID_ATTRIBUTE,
    MODEL_VERSION_ATTRIBUTE,
    create_landmarks_node,
    landmarks_from_node,
    read_predictions,
    update_confidence_threshold,
)
from H3DELandmarksLib.mrml.training_export import save_for_training  # noqa: E402
from H3DELandmarksLib.mrml.volume_node import lps_to_ras, volume_to_node  # noqa: E402

DEFINED, UNDEFINED = slicer.vtkMRMLMarkupsNode.PositionDefined, slicer.vtkMRMLMarkupsNode.PositionUndefined
THRESHOLD = 0.5


def detected(offset: float = 0.0) -> Landmarks:
    """Four landmarks: two confident, one low-confidence, one absent with a best guess."""
    return Landmarks(
        names=["nasion", "sella", "menton", "dens_tip"],
        positions=np.array([[10.0, -20.0, 30.0], [-4.5, 12.25, 0.5], [3.0, 40.0, -55.0], [1.0, 2.0, 3.0]]) + offset,
        present=[True, True, True, False],
        confidence=[0.95, 0.8, 0.25, 0.05],
        descriptions=["frontonasal suture", "pituitary fossa", "chin", ""],
    )


def small_volume() -> Volume:
    rotation = np.array([[0.0, -1.0, 0.0], [0.6, 0.0, 0.8], [-0.8, 0.0, 0.6]])
    array = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    return Volume(array, (0.5, 0.8, 1.25), (12.0, -3.0, 7.5), rotation)


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture
def volume_node(scene):
    return volume_to_node(small_volume(), scene, "case 01")


@pytest.fixture
def node(scene, volume_node):
    return create_landmarks_node(scene, detected(), "skull", "1.2.0", THRESHOLD, "Landmarks", volume_node)


def ras(node, index: int) -> np.ndarray:
    position = [0.0, 0.0, 0.0]
    node.GetNthControlPointPositionWorld(index, position)
    return np.array(position)


def move_by(node, index: int, lps_offset) -> None:
    node.SetNthControlPointPositionWorld(index, *(ras(node, index) + lps_to_ras(np.asarray(lps_offset, float))))


def test_one_point_per_landmark_with_label_description_status_and_model(node):
    landmarks = detected()
    assert node.GetNumberOfControlPoints() == 4
    assert [node.GetNthControlPointLabel(i) for i in range(4)] == landmarks.names
    assert node.GetNthControlPointDescription(0) == "frontonasal suture; confidence 0.95"
    assert node.GetNthControlPointDescription(3) == "confidence 0.05"
    assert [node.GetNthControlPointPositionStatus(i) for i in range(4)] == [DEFINED, DEFINED, DEFINED, UNDEFINED]
    for index in range(3):
        np.testing.assert_allclose(ras(node, index), lps_to_ras(landmarks.positions[index]), atol=1e-12)
    assert node.GetAttribute(MODEL_ID_ATTRIBUTE) == "skull"
    assert node.GetAttribute(MODEL_VERSION_ATTRIBUTE) == "1.2.0"
    predictions = read_predictions(node)
    np.testing.assert_allclose(predictions["dens_tip"].position, [1.0, 2.0, 3.0])
    assert not predictions["dens_tip"].present and predictions["menton"].model == "skull@1.2.0"


def test_unplaced_point_is_filled_by_the_next_placement(node):
    """Slicer's place mode fills the next undefined point; the absent landmark is one."""
    assert node.GetNumberOfUndefinedControlPoints() == 1
    assert not node.GetControlPointPlacementComplete()


def test_low_confidence_points_are_drawn_in_their_own_colour(node):
    assert [bool(node.GetNthControlPointSelected(i)) for i in range(4)] == [True, True, False, False]
    display = node.GetDisplayNode()
    np.testing.assert_allclose(display.GetSelectedColor(), CONFIDENT_COLOR)
    np.testing.assert_allclose(display.GetColor(), LOW_CONFIDENCE_COLOR)
    assert update_confidence_threshold(node, 0.9)
    assert [bool(node.GetNthControlPointSelected(i)) for i in range(4)] == [True, False, False, False]
    assert not update_confidence_threshold(node, 0.9)


def test_a_point_list_without_predictions_is_never_restyled(scene):
    other = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    other.AddControlPoint([1.0, 2.0, 3.0], "mine")
    other.SetNthControlPointSelected(0, False)
    assert not update_confidence_threshold(other, 0.2)
    assert not other.GetNthControlPointSelected(0)


def test_untouched_detection_has_no_corrections(node):
    reviews = review_points(node, THRESHOLD)
    assert [review.status for review in reviews] == [PREDICTED, PREDICTED, PREDICTED, ABSENT]
    assert [review.low_confidence for review in reviews] == [False, False, True, True]
    np.testing.assert_allclose([review.displacement_mm for review in reviews[:3]], 0.0, atol=1e-9)
    assert np.isnan(reviews[3].displacement_mm)
    assert not has_corrections(node)


def test_moves_placements_and_removals_are_tracked(node):
    move_by(node, 0, [3.0, 4.0, 0.0])
    node.SetNthControlPointPositionWorld(3, *lps_to_ras([1.0, 2.0, 5.0]))
    node.UnsetNthControlPointPosition(1)
    reviews = review_points(node, THRESHOLD)
    assert [review.status for review in reviews] == [MOVED, MARKED_ABSENT, PREDICTED, PLACED_BY_HAND]
    assert reviews[0].displacement_mm == pytest.approx(5.0)
    assert reviews[3].placed_by_hand and reviews[3].displacement_mm == pytest.approx(2.0)
    np.testing.assert_allclose(reviews[0].position, detected().positions[0] + [3.0, 4.0, 0.0])
    np.testing.assert_allclose(reviews[0].predicted_position, detected().positions[0])
    assert has_corrections(node)


def test_deleting_a_predicted_point_counts_as_a_correction(node):
    node.RemoveNthControlPoint(2)
    assert has_corrections(node)


def test_redetection_replaces_an_untouched_node_in_place(scene, volume_node, node):
    again, created = apply_detection(scene, detected(offset=1.0), "skull", "1.3.0", existing=node,
                                     volume_node=volume_node)
    assert again is node and not created
    np.testing.assert_allclose(ras(node, 0), lps_to_ras(detected(offset=1.0).positions[0]))
    assert node.GetAttribute(MODEL_VERSION_ATTRIBUTE) == "1.3.0"
    assert not has_corrections(node)


def test_redetection_never_overwrites_a_corrected_node(scene, volume_node, node):
    move_by(node, 0, [0.0, 0.0, 2.0])
    before = landmarks_from_node(node)
    fresh, created = apply_detection(scene, detected(offset=1.0), "skull", "1.3.0", existing=node,
                                     volume_node=volume_node, name="Landmarks")
    assert created and fresh is not node
    np.testing.assert_array_equal(landmarks_from_node(node).positions, before.positions)
    assert node.GetAttribute(MODEL_VERSION_ATTRIBUTE) == "1.2.0"
    assert fresh.GetName() != node.GetName()


def test_redetection_can_update_only_untouched_points(scene, volume_node, node):
    move_by(node, 0, [0.0, 0.0, 2.0])
    corrected = ras(node, 0)
    new = detected(offset=1.0)
    same, created = apply_detection(scene, new, "skull", "1.3.0", existing=node, update_untouched_only=True,
                                    volume_node=volume_node)
    assert same is node and not created
    np.testing.assert_allclose(ras(node, 0), corrected)
    np.testing.assert_allclose(ras(node, 1), lps_to_ras(new.positions[1]))
    reviews = review_points(node, THRESHOLD)
    assert reviews[0].status == MOVED and reviews[0].displacement_mm == pytest.approx(2.0)
    assert reviews[0].model == "skull@1.2.0" and reviews[1].model == "skull@1.3.0"


def test_redetection_on_another_volume_makes_a_new_node(scene, node):
    other = volume_to_node(small_volume(), scene, "case 02")
    fresh, created = apply_detection(scene, detected(), "skull", "1.2.0", existing=node, volume_node=other)
    assert created and fresh is not node


def read_with_slicer(scene, path):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return node


def test_markups_export_reloads_identically_through_slicer(tmp_path, scene, node):
    move_by(node, 1, [1.5, 0.0, -2.0])
    path = export_mrk_json(node, tmp_path / "case.mrk.json")
    assert '"coordinateSystem": "LPS"' in path.read_text(encoding="utf-8")
    reloaded = read_with_slicer(slicer.vtkMRMLScene(), path)
    count = node.GetNumberOfControlPoints()
    assert reloaded.GetNumberOfControlPoints() == count
    for index in range(count):
        assert reloaded.GetNthControlPointLabel(index) == node.GetNthControlPointLabel(index)
        assert reloaded.GetNthControlPointDescription(index) == node.GetNthControlPointDescription(index)
        status = node.GetNthControlPointPositionStatus(index)
        assert reloaded.GetNthControlPointPositionStatus(index) == status
        if status == DEFINED:
            np.testing.assert_allclose(ras(reloaded, index), ras(node, index), atol=1e-9)
    expected = landmarks_from_node(node)
    ours = read_landmarks(path)
    assert ours.names == expected.names and ours.descriptions == expected.descriptions
    np.testing.assert_array_equal(ours.present, expected.present)
    np.testing.assert_allclose(ours.positions, expected.positions, atol=1e-9)
    np.testing.assert_allclose(ours.confidence, expected.confidence)
    assert node.GetStorageNode() is None, "exporting must not change the node's storage"


def test_markups_export_writes_world_positions_of_a_transformed_node(tmp_path, scene, node):
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = np.eye(4)
    matrix[:3, 3] = [5.0, -6.0, 7.0]
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    node.SetAndObserveTransformNodeID(transform.GetID())
    landmarks = read_landmarks(export_mrk_json(node, tmp_path / "moved.mrk.json"))
    np.testing.assert_allclose(landmarks.positions[0], detected().positions[0] + [-5.0, 6.0, 7.0], atol=1e-9)


def test_export_refuses_to_replace_a_file_unless_told(tmp_path, node):
    path = tmp_path / "case.mrk.json"
    path.write_text("keep me")
    with pytest.raises(H3DEError, match="already exists"):
        export_mrk_json(node, path)
    assert path.read_text(encoding="utf-8") == "keep me"
    export_mrk_json(node, path, overwrite=True)
    assert read_landmarks(path).names == detected().names


def test_csv_holds_final_and_predicted_positions_displacement_and_model(tmp_path, node):
    move_by(node, 0, [0.0, 3.0, 4.0])
    path = export_csv(node, tmp_path / "case.csv")
    with open(path, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert tuple(rows[0]) == CSV_HEADER
    first, absent = rows[0], rows[3]
    assert first["case"] == "case 01" and first["label"] == "nasion" and first["review"] == MOVED
    np.testing.assert_allclose([float(first[k]) for k in "xyz"], detected().positions[0] + [0.0, 3.0, 4.0])
    np.testing.assert_allclose([float(first[f"predicted_{k}"]) for k in "xyz"], detected().positions[0])
    assert float(first["displacement_mm"]) == pytest.approx(5.0)
    assert (first["confidence"], first["status"], first["model_id"], first["model_version"]) == (
        "0.95", "present", "skull", "1.2.0")
    assert (absent["x"], absent["status"], absent["review"], absent["displacement_mm"]) == ("", "absent", ABSENT, "")
    assert float(absent["predicted_z"]) == 3.0
    final = read_landmarks(path)
    expected = landmarks_from_node(node)
    assert final.names == expected.names
    np.testing.assert_allclose(final.positions, expected.positions)
    np.testing.assert_array_equal(final.present, expected.present)


def test_saved_training_case_is_read_back_by_the_dataset_reader(tmp_path, volume_node, node):
    move_by(node, 2, [1.0, 1.0, 1.0])
    dataset = tmp_path / "dataset"
    saved = save_for_training(volume_node, node, dataset)
    assert saved.case == "case_01"
    assert saved.volume_path == dataset / "volumes" / "case_01.nrrd"
    assert saved.landmarks_path == dataset / "landmarks" / "case_01.mrk.json"
    source = GenericDataset(dataset)
    assert source.cases() == ["case_01"]
    volume, landmarks = source.load("case_01")
    np.testing.assert_allclose(volume.index_to_physical_matrix, small_volume().index_to_physical_matrix, atol=1e-9)
    np.testing.assert_array_equal(volume.array, small_volume().array)
    expected = landmarks_from_node(node)
    assert landmarks.names == expected.names
    np.testing.assert_allclose(landmarks.positions, expected.positions, atol=1e-9)


def test_saving_a_case_again_needs_overwrite_and_lists_it_in_cases_csv(tmp_path, volume_node, node):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "cases.csv").write_text("case,split\nold,train\n")
    save_for_training(volume_node, node, dataset, case="new")
    assert (dataset / "cases.csv").read_text(encoding="utf-8") == "case,split\nold,train\nnew,\n"
    with pytest.raises(H3DEError, match="already exists"):
        save_for_training(volume_node, node, dataset, case="new")
    save_for_training(volume_node, node, dataset, case="new", overwrite=True)
    assert (dataset / "cases.csv").read_text(encoding="utf-8").count("new") == 1


def test_saving_into_a_flat_dataset_or_beside_another_landmark_file_is_refused(tmp_path, volume_node, node):
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "other.nii.gz").write_bytes(b"")
    with pytest.raises(H3DEError, match="top level"):
        save_for_training(volume_node, node, flat)
    clash = tmp_path / "clash"
    (clash / "landmarks").mkdir(parents=True)
    (clash / "landmarks" / "case_01.fcsv").write_text("")
    with pytest.raises(H3DEError, match="already has the file"):
        save_for_training(volume_node, node, clash)
    assert not (clash / "volumes").exists()
