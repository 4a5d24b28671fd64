"""Slicer interoperability of the markups files, checked with Slicer's own readers and writers.

Uses the slicer-core wheel: vtkMRMLMarkupsJsonStorageNode (.mrk.json) and
vtkMRMLMarkupsFiducialStorageNode (.fcsv). Slicer's node API works in RAS; files and `Landmarks`
are LPS, so positions compare with x and y negated.
"""

from __future__ import annotations

import numpy as np
import pytest

from H3DELandmarksLib.data.landmark_files import read_landmarks, write_landmarks
from H3DELandmarksLib.data.landmarks import Landmarks

slicer = pytest.importorskip("slicer")

LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])
DEFINED, MISSING = 2, 3  # vtkMRMLMarkupsNode::PositionDefined, PositionMissing
STORAGE_CLASSES = [
    (".mrk.json", slicer.vtkMRMLMarkupsJsonStorageNode),
    (".fcsv", slicer.vtkMRMLMarkupsFiducialStorageNode),
]


def sample_landmarks() -> Landmarks:
    """Present points, an absent one with a best guess and an absent one without position."""
    return Landmarks(
        names=["Nasion", "Menton, soft", "Gonion L", "Gonion R"],
        positions=[[12.5, -0.1, 1e-7], [-100.25, 33.0, 7.5], [4.0, 5.0, -6.125], [np.nan] * 3],
        present=[True, True, False, False],
        confidence=[0.93, np.nan, 0.125, np.nan],
        descriptions=['deepest point, "frontonasal"', "", "", ""],
    )


def new_scene_node():
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(node)
    return scene, node


def read_with_slicer(path, storage_class):
    """A point list node filled by Slicer's reader from `path`."""
    scene, node = new_scene_node()
    storage = storage_class()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return node


def write_with_slicer(path, storage_class, coordinate_system):
    """Slicer writes RAS points A, B (missing) and C, described, in `coordinate_system`."""
    scene, node = new_scene_node()
    node.AddControlPoint([1.5, -2.25, 3.0], "A")
    node.AddControlPoint([4.0, 5.0, 6.0], "B")
    node.AddControlPoint([-7.125, 8.0, -9.5], "C, last")
    node.SetNthControlPointDescription(2, "tip; confidence 0.75")
    node.SetNthControlPointPositionMissing(1)
    storage = storage_class()
    scene.AddNode(storage)
    storage.SetCoordinateSystem(coordinate_system)
    storage.SetFileName(str(path))
    assert storage.WriteData(node) == 1
    return node


def ras_position(node, index: int) -> np.ndarray:
    position = [0.0, 0.0, 0.0]
    node.GetNthControlPointPosition(index, position)
    return np.array(position)


@pytest.mark.parametrize("suffix, storage_class", STORAGE_CLASSES)
def test_slicer_reads_our_file(tmp_path, suffix, storage_class):
    landmarks = sample_landmarks()
    path = tmp_path / f"landmarks{suffix}"
    write_landmarks(path, landmarks)
    node = read_with_slicer(path, storage_class)

    assert node.GetNumberOfControlPoints() == len(landmarks)
    assert [node.GetNthControlPointLabel(i) for i in range(len(landmarks))] == landmarks.names
    statuses = [node.GetNthControlPointPositionStatus(i) for i in range(len(landmarks))]
    assert statuses == [DEFINED, DEFINED, MISSING, MISSING]
    for index in np.flatnonzero(landmarks.has_position):
        expected = landmarks.positions[index] * LPS_TO_RAS
        np.testing.assert_allclose(ras_position(node, index), expected, atol=5e-5)
    assert node.GetNthControlPointDescription(0) == 'deepest point, "frontonasal"; confidence 0.93'


def test_slicer_restores_the_best_guess_of_an_absent_landmark(tmp_path):
    landmarks = sample_landmarks()
    path = tmp_path / "landmarks.mrk.json"
    write_landmarks(path, landmarks)
    node = read_with_slicer(path, slicer.vtkMRMLMarkupsJsonStorageNode)
    node.RestoreNthControlPointPosition(2)
    assert node.GetNthControlPointPositionStatus(2) == DEFINED
    np.testing.assert_allclose(ras_position(node, 2), landmarks.positions[2] * LPS_TO_RAS, atol=5e-5)


@pytest.mark.parametrize("suffix, storage_class", STORAGE_CLASSES)
@pytest.mark.parametrize("coordinate_system", ["LPS", "RAS"])
def test_we_read_slicer_written_file(tmp_path, suffix, storage_class, coordinate_system):
    path = tmp_path / f"slicer{suffix}"
    system = getattr(slicer.vtkMRMLStorageNode, f"CoordinateSystem{coordinate_system}")
    node = write_with_slicer(path, storage_class, system)
    landmarks = read_landmarks(path)

    assert landmarks.names == ["A", "B", "C, last"]
    np.testing.assert_array_equal(landmarks.present, [True, False, True])
    for index in (0, 2):
        expected = ras_position(node, index) * LPS_TO_RAS
        np.testing.assert_allclose(landmarks.positions[index], expected, atol=5e-5)
    assert landmarks.descriptions == ["", "", "tip"]
    np.testing.assert_array_equal(landmarks.confidence, [np.nan, np.nan, 0.75])
    if suffix == ".mrk.json":  # Slicer's JSON writer drops the position of a missing point
        assert not landmarks.has_position[1]
    else:  # its .fcsv writer keeps it: a best guess
        np.testing.assert_allclose(landmarks.positions[1], ras_position(node, 1) * LPS_TO_RAS, atol=5e-5)
