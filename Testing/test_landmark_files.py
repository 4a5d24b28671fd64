"""Landmark file readers and writers: round trips, Slicer conventions, MMLD cases, bad files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import SimpleITK as sitk

from H3DELandmarksLib.data.landmark_files import (
    MMLD_LANDMARK_NAMES,
    read_csv,
    read_json_metadata,
    read_landmarks,
    read_mmld_case,
    write_csv,
    write_json,
    write_landmarks,
    write_mmld_case,
)
from H3DELandmarksLib.data.landmark_files.common import annotated_description, split_annotated_description
from H3DELandmarksLib.data.landmarks import Landmarks
from H3DELandmarksLib.data.volume import Volume
from H3DELandmarksLib.errors import H3DEError, LandmarkFileError

FORMATS = [".mrk.json", ".fcsv", ".csv", ".json"]
SCHEMA_URL = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])

# What Slicer's markups reader needs (vtkMRMLMarkupsJsonStorageNode), with the field types of the
# published markups schema v1.0.3. The schema file is not shipped with slicer-core, and its
# positionStatus list lacks "missing", which Slicer itself writes and reads.
SLICER_MARKUPS_SCHEMA = {
    "type": "object",
    "required": ["@schema", "markups"],
    "properties": {
        "@schema": {"type": "string", "pattern": r"markups-schema-v1\.[0-9]+\.[0-9]+\.json#*$"},
        "markups": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["type"],
                "properties": {
                    "type": {"enum": ["Fiducial", "Line", "Angle", "Curve", "ClosedCurve", "Plane", "ROI"]},
                    "coordinateSystem": {"enum": ["LPS", "RAS"]},
                    "coordinateUnits": {"enum": ["mm", "um"]},
                    "locked": {"type": "boolean"},
                    "fixedNumberOfControlPoints": {"type": "boolean"},
                    "labelFormat": {"type": "string"},
                    "lastUsedControlPointNumber": {"type": "integer"},
                    "measurements": {"type": "array"},
                    "controlPoints": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string"},
                                "label": {"type": "string"},
                                "description": {"type": "string"},
                                "associatedNodeID": {"type": "string"},
                                "position": {
                                    "type": "array",
                                    "items": {"type": "number"},
                                    "minItems": 3,
                                    "maxItems": 3,
                                },
                                "positionStatus": {"enum": ["undefined", "preview", "defined", "missing"]},
                            },
                        },
                    },
                },
            },
        },
    },
}


def sample_landmarks() -> Landmarks:
    """Present (with and without confidence), absent with a best guess, absent without position."""
    return Landmarks(
        names=["Nasion", "Menton, soft", "Gonion L", "Gonion R"],
        positions=[
            [12.345678901234567, -0.1, 1e-7],
            [-100.25, 33.0, 7.5],
            [4.0, 5.0, -6.125],
            [np.nan, np.nan, np.nan],
        ],
        present=[True, True, False, False],
        confidence=[0.93, np.nan, 0.125, 0.01],
        descriptions=['deepest point, "frontonasal"', "", "guess", ""],
        expected_error=[0.0625, np.nan, 1.5, np.nan],
    )


def assert_same_landmarks(actual: Landmarks, expected: Landmarks) -> None:
    """Equal up to the 1e-4 rounding of the writers."""
    assert actual.names == expected.names
    np.testing.assert_allclose(actual.positions, expected.positions, atol=5e-5, rtol=0)
    np.testing.assert_array_equal(actual.present, expected.present)
    np.testing.assert_allclose(actual.confidence, expected.confidence, atol=5e-5, rtol=0)
    np.testing.assert_allclose(actual.expected_error, expected.expected_error, atol=5e-5, rtol=0)
    assert actual.descriptions == expected.descriptions


def oblique_volume() -> Volume:
    """A small volume whose direction matrix rotates and mirrors its axes."""
    angle = np.deg2rad(30.0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    direction = rotation @ np.diag([1.0, -1.0, 1.0])
    array = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    return Volume(array=array, spacing=(0.3, 0.4, 0.5), origin=(10.0, -20.0, 30.0), direction=direction)


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def fiducial(points: list[dict], **fields) -> dict:
    return {"type": "Fiducial", **fields, "controlPoints": points}


def write_markups(path: Path, *markups: dict) -> Path:
    return write_text(path, markups_document(list(markups)))


def markups_document(markups: list[dict]) -> str:
    return json.dumps({"@schema": SCHEMA_URL, "markups": markups})


@pytest.mark.parametrize("suffix", FORMATS)
def test_round_trip_keeps_everything(tmp_path, suffix):
    landmarks = sample_landmarks()
    path = tmp_path / f"case{suffix}"
    write_landmarks(path, landmarks)
    assert_same_landmarks(read_landmarks(path), landmarks)


@pytest.mark.parametrize("suffix", FORMATS)
def test_existing_file_is_replaced_only_when_told(tmp_path, suffix):
    path = tmp_path / f"case{suffix}"
    write_landmarks(path, sample_landmarks())
    with pytest.raises(H3DEError, match="already exists"):
        write_landmarks(path, sample_landmarks().reordered(["Gonion R", "Nasion"]))
    write_landmarks(path, sample_landmarks().reordered(["Gonion R", "Nasion"]), overwrite=True)
    assert read_landmarks(path).names == ["Gonion R", "Nasion"]


def test_written_markups_file_is_schema_valid_and_lps(tmp_path):
    path = tmp_path / "case.mrk.json"
    write_landmarks(path, sample_landmarks())
    document = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.validate(document, SLICER_MARKUPS_SCHEMA)
    (markup,) = document["markups"]
    assert markup["type"] == "Fiducial"
    assert (markup["coordinateSystem"], markup["coordinateUnits"]) == ("LPS", "mm")
    points = markup["controlPoints"]
    assert [point["positionStatus"] for point in points] == ["defined", "defined", "missing", "missing"]
    assert points[2]["position"] == [4.0, 5.0, -6.125]
    assert "position" not in points[3]
    assert points[0]["description"] == 'deepest point, "frontonasal"; confidence 0.93; expected error 0.0625 mm'


def test_markups_in_ras_without_coordinate_system_and_in_microns(tmp_path):
    points = [{"label": "A", "position": [1.0, -2.0, 3.0]}]
    ras = write_markups(tmp_path / "ras.mrk.json", fiducial(points, coordinateSystem="RAS"))
    default = write_markups(tmp_path / "default.mrk.json", fiducial(points))
    microns = write_markups(tmp_path / "um.mrk.json", fiducial(points, coordinateUnits="um"))
    np.testing.assert_array_equal(read_landmarks(ras).positions, [[-1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(read_landmarks(default).positions, [[1.0, -2.0, 3.0]])
    np.testing.assert_allclose(read_landmarks(microns).positions, [[1e-3, -2e-3, 3e-3]])


def test_markups_position_statuses(tmp_path):
    points = [
        {"label": "defined", "position": [1, 2, 3]},
        {"label": "missing", "position": [4, 5, 6], "positionStatus": "missing"},
        {"label": "undefined", "positionStatus": "undefined"},
        {"label": "preview", "position": [7, 8, 9], "positionStatus": "preview"},
        {"label": "slicer placeholder", "position": "", "positionStatus": "missing"},
        {"label": "defined without position"},
    ]
    path = write_markups(tmp_path / "statuses.mrk.json", fiducial(points))
    landmarks = read_landmarks(path)
    np.testing.assert_array_equal(landmarks.present, [True, False, False, False, False, False])
    np.testing.assert_array_equal(landmarks.has_position, [True, True, False, True, False, False])
    np.testing.assert_array_equal(landmarks.positions[1], [4, 5, 6])


def test_file_with_two_markups(tmp_path):
    curve = {"type": "Curve", "name": "outline", "controlPoints": [{"label": "c1", "position": [0, 0, 0]}]}
    points = fiducial([{"label": "p1", "position": [1, 2, 3]}], name="skull", coordinateSystem="RAS")
    path = write_markups(tmp_path / "two.mrk.json", curve, points)
    assert read_landmarks(path).names == ["p1"]
    np.testing.assert_array_equal(read_landmarks(path).positions, [[-1, -2, 3]])
    assert read_landmarks(path, markup_index=0).names == ["c1"]
    assert read_landmarks(path, markup_index="skull").names == ["p1"]
    with pytest.raises(LandmarkFileError, match="no markup named 'jaw'"):
        read_landmarks(path, markup_index="jaw")
    with pytest.raises(LandmarkFileError, match="no markup 2"):
        read_landmarks(path, markup_index=2)


def test_json_extension_holding_markups_reads_as_markups(tmp_path):
    points = fiducial([{"label": "p", "position": [1, 2, 3]}], coordinateSystem="RAS")
    path = write_markups(tmp_path / "slicer.json", points)
    np.testing.assert_array_equal(read_landmarks(path).positions, [[-1, -2, 3]])


@pytest.mark.parametrize("system, signs", [("RAS", RAS_TO_LPS), ("0", RAS_TO_LPS), ("LPS", 1.0), ("1", 1.0)])
def test_fcsv_coordinate_systems(tmp_path, system, signs):
    text = (
        "# Markups fiducial file version = 4.11\n"
        f"# CoordinateSystem = {system}\n"
        "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
        'vtkMRMLMarkupsFiducialNode_0,1.5,-2,3,0,0,0,1,1,1,0,"A, left",note,\n'
        "vtkMRMLMarkupsFiducialNode_1,4,5,6,0,0,0,1,1,1,0,B,,vtkMRMLScalarVolumeNode1\n"
    )
    landmarks = read_landmarks(write_text(tmp_path / "points.fcsv", text))
    assert landmarks.names == ["A, left", "B"]
    assert landmarks.descriptions == ["note", ""]
    np.testing.assert_array_equal(landmarks.positions, np.array([[1.5, -2, 3], [4, 5, 6]]) * signs)
    assert landmarks.present.all()


def test_fcsv_status_column_of_later_slicer_versions(tmp_path):
    text = (
        "# Markups fiducial file version = 5.8\n# CoordinateSystem = LPS\n"
        "1,1,2,3,0,0,0,1,1,1,0,defined,,,2,0\n"
        "2,4,5,6,0,0,0,1,1,1,0,missing,,,3,0\n"
        "3,0,0,0,0,0,0,1,1,1,0,undefined,,,undefined,0\n"
    )
    landmarks = read_landmarks(write_text(tmp_path / "statuses.fcsv", text))
    np.testing.assert_array_equal(landmarks.present, [True, False, False])
    np.testing.assert_array_equal(landmarks.positions[1], [4, 5, 6])


def test_csv_and_json_with_volume_and_model(tmp_path):
    landmarks, volume = sample_landmarks(), oblique_volume()
    expected_ijk = volume.physical_to_index(landmarks.positions)
    write_csv(tmp_path / "out.csv", landmarks, volume=volume, model_id="h3de-mmld", model_version="1.2.0")
    header, *rows = (tmp_path / "out.csv").read_text(encoding="utf-8").splitlines()
    assert header == "label,description,x,y,z,i,j,k,confidence,expected_error_mm,status,model_id,model_version"
    assert rows[0].endswith(",0.93,0.0625,present,h3de-mmld,1.2.0")
    assert_same_landmarks(read_csv(tmp_path / "out.csv"), landmarks)

    metadata = {"model_id": "h3de-mmld", "model_version": "1.2.0", "input": {"file": "ct.nrrd", "size": 1234}}
    write_json(tmp_path / "out.json", landmarks, volume=volume, metadata=metadata)
    document = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert (document["coordinate_system"], document["units"]) == ("LPS", "mm")
    np.testing.assert_allclose(document["landmarks"][2]["index"], expected_ijk[2], atol=5e-5)
    assert document["landmarks"][3]["index"] is None and document["landmarks"][3]["position"] is None
    assert read_json_metadata(tmp_path / "out.json") == metadata
    assert_same_landmarks(read_landmarks(tmp_path / "out.json"), landmarks)


def test_plain_label_xyz_csv(tmp_path):
    text = "Label,X,Y,Z\nA,1,2,3\nB,,,\nC,-1.5,0,2e-3\n"
    landmarks = read_landmarks(write_text(tmp_path / "plain.csv", text))
    assert landmarks.names == ["A", "B", "C"]
    np.testing.assert_array_equal(landmarks.present, [True, False, True])
    np.testing.assert_array_equal(landmarks.positions[[0, 2]], [[1, 2, 3], [-1.5, 0, 2e-3]])
    assert np.isnan(landmarks.confidence).all()


def test_mmld_round_trip_with_oblique_direction_and_absent_landmark(tmp_path):
    volume = oblique_volume()
    ijk = np.random.default_rng(0).uniform(0, 4, size=(14, 3))
    positions = volume.index_to_physical(ijk)
    present = np.ones(14, bool)
    present[5] = False
    landmarks = Landmarks(names=MMLD_LANDMARK_NAMES, positions=positions, present=present)
    write_mmld_case(tmp_path, "case7", volume, landmarks)

    labels = np.load(tmp_path / "case7_label.npy")
    np.testing.assert_allclose(labels[present], ijk[present], atol=1e-9)
    np.testing.assert_array_equal(labels[5], [-1000.0] * 3)
    np.testing.assert_allclose(np.load(tmp_path / "case7_spacing.npy"), volume.spacing)

    read_volume, read_back = read_mmld_case(tmp_path, "case7")
    np.testing.assert_array_equal(read_volume.array, volume.array)
    assert read_back.names == MMLD_LANDMARK_NAMES
    np.testing.assert_array_equal(read_back.present, present)
    np.testing.assert_allclose(read_back.positions[present], positions[present], atol=1e-6)
    assert not read_back.has_position[5]


def test_mmld_label_columns_are_itk_ijk(tmp_path):
    """Independent of Volume: label (i, j, k) maps to LPS as ITK maps that continuous index."""
    volume = oblique_volume()
    image = volume.to_sitk()
    sitk.WriteImage(image, str(tmp_path / "c_volume.nrrd"))
    ijk = np.array([[1.0, 2.0, 3.0], [4.5, 0.25, 2.0]])
    np.save(tmp_path / "c_label.npy", ijk)
    np.save(tmp_path / "c_spacing.npy", np.array(volume.spacing))
    _, landmarks = read_mmld_case(tmp_path, "c", names=["a", "b"])
    expected = [image.TransformContinuousIndexToPhysicalPoint(tuple(row)) for row in ijk]
    np.testing.assert_allclose(landmarks.positions, expected, atol=1e-9)


def test_mmld_spacing_disagreement_is_an_error(tmp_path):
    volume = oblique_volume()
    landmarks = Landmarks(names=MMLD_LANDMARK_NAMES, positions=volume.index_to_physical(np.ones((14, 3))))
    write_mmld_case(tmp_path, "c", volume, landmarks)
    np.save(tmp_path / "c_spacing.npy", np.array([0.3, 0.4, 0.6]))
    with pytest.raises(LandmarkFileError, match="c_spacing.npy gives the spacing 0.3 x 0.4 x 0.6 mm"):
        read_mmld_case(tmp_path, "c")


def test_mmld_label_file_of_wrong_shape_or_count(tmp_path):
    volume = oblique_volume()
    landmarks = Landmarks(names=MMLD_LANDMARK_NAMES, positions=volume.index_to_physical(np.ones((14, 3))))
    write_mmld_case(tmp_path, "c", volume, landmarks)
    with pytest.raises(LandmarkFileError, match="holds 14 landmarks; 2 names were given"):
        read_mmld_case(tmp_path, "c", names=["a", "b"])
    np.save(tmp_path / "c_label.npy", np.ones((14, 2)))
    with pytest.raises(LandmarkFileError, match=r"c_label.npy is not a valid MMLD label file"):
        read_mmld_case(tmp_path, "c")


def test_shared_atlas_markups_file(shared_dir):
    path = next((shared_dir / "data" / "mouse_ct_atlas" / "landmarks").glob("*.mrk.json"))
    landmarks = read_landmarks(path)
    assert len(landmarks) == 45 and landmarks.present.all()
    point = json.loads(path.read_text(encoding="utf-8"))["markups"][0]["controlPoints"][0]
    np.testing.assert_array_equal(landmarks.positions[0], point["position"])


MALFORMED = {
    "broken.mrk.json": '{"markups": [',
    "no_markups.mrk.json": '{"@schema": "x"}',
    "no_points_list.mrk.json": markups_document([{"type": "Curve"}]),
    "bad_position.mrk.json": markups_document([fiducial([{"position": [1, 2]}])]),
    "bad_status.mrk.json": markups_document([fiducial([{"position": [1, 2, 3], "positionStatus": "lost"}])]),
    "bad_system.mrk.json": markups_document([fiducial([], coordinateSystem="IJK")]),
    "repeated.mrk.json": markups_document([fiducial([{"label": "A", "position": [1, 2, 3]}] * 2)]),
    "bad_system.fcsv": "# CoordinateSystem = XYZ\n1,1,2,3\n",
    "bad_xyz.fcsv": "# CoordinateSystem = LPS\n1,1,two,3,0,0,0,1,1,1,0,A,,\n",
    "short_row.fcsv": "1,2\n",
    "no_xyz.csv": "label,description\nA,x\n",
    "bad_status.csv": "label,x,y,z,status\nA,1,2,3,lost\n",
    "bad_confidence.csv": "label,x,y,z,confidence\nA,1,2,3,1.5\n",
    "present_without_position.csv": "label,x,y,z,status\nA,,,,present\n",
    "ragged.csv": "label,x,y,z\nA,1,2\n",
    "bad_units.json": '{"coordinate_system": "LPS", "units": "cm", "landmarks": []}',
    "bad_position.json": '{"landmarks": [{"label": "A", "position": [1, "2", 3]}]}',
    "not_utf8.csv": b"label,x,y,z\n\xff\xfe,1,2,3\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_files_raise_one_sentence_naming_the_file(tmp_path, name):
    content = MALFORMED[name]
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(LandmarkFileError) as raised:
        read_landmarks(path)
    message = str(raised.value)
    assert str(path) in message
    assert message.endswith(".") and "\n" not in message


def test_unusable_paths_and_options(tmp_path):
    with pytest.raises(LandmarkFileError, match="does not exist"):
        read_landmarks(tmp_path / "absent.csv")
    with pytest.raises(LandmarkFileError, match="no landmark file extension"):
        read_landmarks(write_text(tmp_path / "points.txt", "A,1,2,3\n"))
    csv_path = tmp_path / "points.csv"
    write_landmarks(csv_path, sample_landmarks())
    with pytest.raises(LandmarkFileError, match="not a Slicer markups file"):
        read_landmarks(csv_path, markup_index=0)


def test_description_carries_confidence_and_expected_error():
    text = annotated_description("tip; of the nose", 0.5, 0.25)
    assert text == "tip; of the nose; confidence 0.5; expected error 0.25 mm"
    assert split_annotated_description(text) == ("tip; of the nose", 0.5, 0.25)
    description, confidence, error = split_annotated_description("confidence 0.5")
    assert (description, confidence, math.isnan(error)) == ("", 0.5, True)
    description, confidence, error = split_annotated_description("expected error -3 mm")
    assert (description, math.isnan(confidence), math.isnan(error)) == ("expected error -3 mm", True, True)


def test_negative_expected_error_in_csv_is_refused(tmp_path):
    path = write_text(tmp_path / "bad.csv", "label,x,y,z,expected_error_mm\nA,1,2,3,-0.5\n")
    with pytest.raises(LandmarkFileError, match="expected error '-0.5' of data row 1"):
        read_csv(path)


def test_csv_and_json_carry_four_decimals(tmp_path):
    write_csv(tmp_path / "case.csv", sample_landmarks())
    write_json(tmp_path / "case.json", sample_landmarks())
    first_row = (tmp_path / "case.csv").read_text().splitlines()[1]
    assert first_row.startswith('Nasion,"deepest point, ""frontonasal""",12.3457,-0.1,0.0,0.93,0.0625,present')
    item = json.loads((tmp_path / "case.json").read_text())["landmarks"][0]
    assert (item["position"], item["confidence"], item["expected_error_mm"]) == ([12.3457, -0.1, 0.0], 0.93, 0.0625)
