"""`h3de detect` end to end with a tiny random-weight model package: inputs, outputs, failures, shards."""

from __future__ import annotations

import json

import numpy as np
import pytest

from builders_blobs import DIRECTIONS, blob_volume, truth_positions
from builders_models import tiny_package
from builders_volumes import SERIES_A, make_volume, write_dicom_series
from H3DELandmarksLib.cli.detect import parse_shard
from H3DELandmarksLib.cli.main import main
from H3DELandmarksLib.data.cases import expand_inputs
from H3DELandmarksLib.data.landmark_files import read_json_metadata, read_landmarks
from H3DELandmarksLib.data.volume_io import write_volume

LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])
CSV_HEADER = "label,description,x,y,z,i,j,k,confidence,expected_error_mm,status,model_id,model_version"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    one_window = [{"name": "fine", "spacing_mm": [3.0, 3.0, 3.0], "patch_size": [40, 40, 40]}]
    return tiny_package(tmp_path_factory.mktemp("model") / "package", n_landmarks=2, stages=one_window).path


def write_case(path, direction="oblique"):
    write_volume(blob_volume(DIRECTIONS[direction], truth_positions()[:2], extent_mm=30.0), path)
    return path


def detect(*arguments) -> int:
    return main(["detect", *map(str, arguments), "--device", "cpu"])


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_batch_writes_every_format_and_json_progress(tmp_path, model, capsys):
    write_case(tmp_path / "in" / "alpha.nrrd")
    write_case(tmp_path / "in" / "beta.nii.gz", "flipped")
    write_dicom_series(make_volume(shape_kji=(12, 14, 16)), tmp_path / "gamma", SERIES_A)
    (tmp_path / "in" / "notes.txt").write_text("not a volume")
    out = tmp_path / "out"

    assert detect(tmp_path / "in", tmp_path / "gamma", "--model", model, "--out", out, "--progress", "json") == 0

    events = json_lines(capsys.readouterr().out)
    assert events[0]["event"] == "start" and events[0]["cases"] == 3
    assert events[-1] == {**events[-1], "event": "done", "succeeded": 3, "failed": 0}
    done = [event for event in events if event["event"] == "case_done"]
    assert [event["case"] for event in done] == ["gamma", "alpha", "beta"]
    assert all(event["status"] == "ok" and event["present"] + event["absent"] == 2 for event in done)
    for case in ("alpha", "beta", "gamma"):
        fractions = [e["fraction"] for e in events if e["event"] == "progress" and e["case"] == case]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0
        from_json = read_landmarks(out / f"{case}.json")
        for suffix in (".csv", ".mrk.json"):
            other = read_landmarks(out / f"{case}{suffix}")
            assert other.names == from_json.names == ["L0", "L1"]
            np.testing.assert_array_equal(other.positions, from_json.positions)
            np.testing.assert_array_equal(other.present, from_json.present)
    assert (out / "alpha.csv").read_text(encoding="utf-8").splitlines()[0] == CSV_HEADER
    metadata = read_json_metadata(out / "alpha.json")
    assert metadata["model_id"] == "blob-standin" and metadata["input_file"].endswith("alpha.nrrd")
    assert metadata["input_size_bytes"] == (tmp_path / "in" / "alpha.nrrd").stat().st_size
    assert {"input_modified", "software_version", "created", "timings_s"} <= set(metadata)


def test_slicer_reads_the_markups_file_with_identical_labels_and_positions(tmp_path, model):
    slicer = pytest.importorskip("slicer")
    assert detect(write_case(tmp_path / "case.nrrd"), "--model", model, "--out", tmp_path, "--progress", "none") == 0
    ours = read_landmarks(tmp_path / "case.json")
    scene, node = slicer.vtkMRMLScene(), slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "case.mrk.json"))
    assert storage.ReadData(node) == 1
    assert [node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())] == ours.names
    for index in range(len(ours)):
        position = [0.0, 0.0, 0.0]
        node.GetNthControlPointPosition(index, position)
        np.testing.assert_allclose(position, ours.positions[index] * LPS_TO_RAS, atol=5e-5)


def test_existing_outputs_are_refused_without_overwrite(tmp_path, model, capsys):
    case = write_case(tmp_path / "case.nrrd")
    assert detect(case, "--model", model, "--out", tmp_path, "--format", "csv", "--progress", "none") == 0
    written = (tmp_path / "case.csv").read_text(encoding="utf-8")
    (tmp_path / "case.csv").write_text("corrected by hand\n")
    capsys.readouterr()

    assert detect(case, "--model", model, "--out", tmp_path, "--format", "csv") == 2
    captured = capsys.readouterr()
    assert "case.csv already exists; pass --overwrite to replace it." in captured.err
    assert (tmp_path / "case.csv").read_text(encoding="utf-8") == "corrected by hand\n"

    assert detect(case, "--model", model, "--out", tmp_path, "--format", "csv", "--overwrite") == 0
    assert (tmp_path / "case.csv").read_text(encoding="utf-8") == written


def test_a_bad_input_fails_alone(tmp_path, model, capsys):
    good = write_case(tmp_path / "good.nrrd")
    (tmp_path / "broken.nrrd").write_text("this is not NRRD")
    out = tmp_path / "out"
    status = detect(good, tmp_path / "broken.nrrd", tmp_path / "missing.nii.gz", str(tmp_path / "*.mha"),
                    "--model", model, "--out", out, "--format", "json", "--progress", "none")
    assert status == 2
    assert sorted(p.name for p in out.iterdir()) == ["good.json"]
    captured = capsys.readouterr()
    table = captured.out.splitlines()
    assert table[0].split() == ["case", "status", "present", "absent", "seconds"]
    assert "1 of 4 cases succeeded. Failed: " in captured.out and "(reasons above)" in captured.out
    assert sum(line.split()[1] == "failed" for line in table[1:5]) == 3
    assert any(line.split()[0] == str(tmp_path / "*.mha") for line in table[1:5])  # the pattern, not "*"
    assert f"Wrote the .json files of 1 case into {out.resolve()}." in captured.out
    for reason in ("missing.nii.gz does not exist", "matches no file or folder"):
        assert captured.err.count(reason) == 1 and reason not in captured.out


def test_shard_takes_every_nth_case_after_sorting(tmp_path, model):
    write_case(tmp_path / "in" / "c2.nrrd")
    for name in ("c3", "c1", "c4"):
        (tmp_path / "in" / f"{name}.nrrd").write_text("never read")
    out = tmp_path / "out"
    assert detect(str(tmp_path / "in" / "c*.nrrd"), "--model", model, "--out", out, "--shard", "2/3",
                  "--format", "json", "--progress", "none") == 0
    assert sorted(p.name for p in out.iterdir()) == ["c2.json"]
    assert parse_shard("3/3") == (3, 3)
    for bad in ("0/2", "3/2", "x"):
        with pytest.raises(SystemExit):
            main(["detect", "a.nrrd", "--model", "m", "--out", "o", "--shard", bad])


def test_input_expansion(tmp_path):
    for relative in ("data/b.nii.gz", "data/a.nrrd", "data/readme.md", "data/sub/a.mha", "other/a.nrrd"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("")
    write_dicom_series(make_volume(), tmp_path / "data" / "sub" / "ct", SERIES_A)
    (tmp_path / "empty").mkdir()

    flat = expand_inputs([str(tmp_path / "data")], recursive=False)
    assert [(c.path.name, c.name) for c in flat] == [("a.nrrd", "a"), ("b.nii.gz", "b")]
    deep = expand_inputs([str(tmp_path / "data"), str(tmp_path / "other" / "*.nrrd")], recursive=True)
    assert [c.name for c in deep] == ["data_a", "b", "sub_a", "ct", "other_a"]
    assert deep[3].path == tmp_path / "data" / "sub" / "ct"
    dicom = expand_inputs([str(tmp_path / "data" / "sub" / "ct")], recursive=False)
    assert [(c.name, c.problem) for c in dicom] == [("ct", None)]
    empty = expand_inputs([str(tmp_path / "empty")], recursive=True)
    assert "holds no volume files or DICOM series" in empty[0].problem
