"""Hostile landmark files, manifests, registries and training configurations (issue 15, section 4):
each ends in one sentence naming the file, and none makes the work grow faster than its size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from builders_models import valid_manifest
from H3DELandmarksLib.cli.main import main
from H3DELandmarksLib.data.landmark_files import read_landmarks, write_landmarks
from H3DELandmarksLib.data.landmark_files.common import MAX_POINTS
from H3DELandmarksLib.data.landmarks import Landmarks
from H3DELandmarksLib.errors import H3DEError, LandmarkFileError, ModelPackageError
from H3DELandmarksLib.registry import load_registry, read_manifest
from H3DELandmarksLib.training.config import load_training_config

DEEP = "[" * 200_000 + "]" * 200_000


def markups(points: list[dict], **markup) -> str:
    return json.dumps({"markups": [{"type": "Fiducial", **markup, "controlPoints": points}]})


def points(count: int) -> list[dict]:
    return [{"label": f"p{index}", "position": [float(index), 0.0, 0.0]} for index in range(count)]


def test_many_unique_names_build_and_a_repeat_is_named():
    names = [f"p{index}" for index in range(MAX_POINTS)]
    landmarks = Landmarks(names=names, positions=np.zeros((MAX_POINTS, 3)))
    assert landmarks.reordered(names[::-1]).names[0] == f"p{MAX_POINTS - 1}"
    with pytest.raises(LandmarkFileError, match="^Landmark names must be unique; repeated: p3, p7.$"):
        Landmarks(names=names[:10] + ["p7", "p3", "p7"], positions=np.zeros((13, 3)))


@pytest.mark.parametrize("suffix", [".mrk.json", ".json", ".csv", ".fcsv"])
def test_files_with_far_more_points_than_any_landmark_set_are_refused(tmp_path, suffix):
    path = tmp_path / f"ok{suffix}"
    write_landmarks(path, Landmarks(names=[f"p{i}" for i in range(MAX_POINTS)], positions=np.zeros((MAX_POINTS, 3))))
    assert len(read_landmarks(path)) == MAX_POINTS
    path = tmp_path / f"huge{suffix}"
    many = MAX_POINTS + 1
    write_landmarks(path, Landmarks(names=[f"p{i}" for i in range(many)], positions=np.zeros((many, 3))))
    with pytest.raises(LandmarkFileError, match=rf"^{path} is not a valid .* file: it holds more than 10000 points, "
                                                "far more than any landmark set.$"):
        read_landmarks(path)


@pytest.mark.parametrize("suffix, kind", [(".mrk.json", "Slicer markups"), (".json", "landmark JSON")])
def test_deeply_nested_landmark_json_is_one_sentence(tmp_path, suffix, kind):
    path = tmp_path / f"deep{suffix}"
    path.write_text(DEEP if suffix == ".json" else '{"markups": ' + DEEP + "}", encoding="utf-8")
    with pytest.raises(LandmarkFileError) as raised:
        read_landmarks(path)
    assert str(raised.value) == f"{path} is not a valid {kind} file: it nests lists or objects too deeply."


def test_deeply_nested_manifest_registry_and_training_config_are_one_sentence(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text(DEEP, encoding="utf-8")
    for read, error, what in [(read_manifest, ModelPackageError, "Model manifest"),
                              (load_registry, ModelPackageError, "The model registry"),
                              (load_training_config, H3DEError, "Training configuration")]:
        with pytest.raises(error) as raised:
            read(path)
        assert str(raised.value) == f"{what} {path} nests lists or objects too deeply to be read."


@pytest.mark.parametrize("units", [{"code": "mm"}, [{"code": "mm"}], 7])
def test_coordinate_units_of_the_wrong_type_are_one_sentence(tmp_path, units):
    path = tmp_path / "units.mrk.json"
    path.write_text(markups(points(2), coordinateUnits=units), encoding="utf-8")
    with pytest.raises(LandmarkFileError, match=rf"^{path} is not a valid Slicer markups file: its coordinateUnits "
                                                r".* are neither mm nor um\.$"):
        read_landmarks(path)


@pytest.mark.parametrize("suffix, header", [(".csv", "label,x,y,z\n"), (".fcsv", "# columns = id,x,y,z\n")])
def test_a_csv_field_over_the_csv_limit_is_one_sentence(tmp_path, suffix, header):
    path = tmp_path / f"long{suffix}"
    row = "a,1,2,3\n" if suffix == ".csv" else "1,1,2,3\n"
    path.write_text(header + row + '"' + "x" * 140_000 + '",1,2,3\n', encoding="utf-8")
    with pytest.raises(LandmarkFileError, match=rf"^{path} is not a valid .* file: line \d cannot be read as CSV "
                                                r"\(field larger than field limit \(131072\)\)\.$"):
        read_landmarks(path)


def test_evaluate_refuses_a_truth_without_points(tmp_path, capsys):
    for folder in ("predictions", "truth"):
        (tmp_path / folder).mkdir()
    (tmp_path / "predictions" / "case.mrk.json").write_text(markups(points(2)), encoding="utf-8")
    (tmp_path / "truth" / "case.mrk.json").write_text(markups([]), encoding="utf-8")
    status = main(["evaluate", "--predictions", str(tmp_path / "predictions"), "--truth", str(tmp_path / "truth"),
                   "--out", str(tmp_path / "report")])
    assert status == 2
    assert capsys.readouterr().err == ("h3de: error: The truth of case 'case' holds no landmarks, so there is "
                                       "nothing to evaluate.\n")
    assert not (tmp_path / "report").exists()


def architecture(**changes) -> dict:
    manifest = valid_manifest()
    manifest["architecture"].update(changes)
    return manifest


def stage(**changes) -> dict:
    manifest = valid_manifest()
    manifest["preprocessing"]["stages"][0].update(changes)
    return manifest


@pytest.mark.parametrize("manifest, problem", [
    (architecture(head_dim=0), "architecture.head_dim must be at least 1, not 0"),
    (architecture(embed_dims=[-64, 128, 256, 512]), "architecture.embed_dims[0] must be at least 1, not -64"),
    (architecture(qk_dims=[64, 128, 256]), "architecture.qk_dims must have 4 items"),
    (architecture(depths=[2.0, 2, 4, 2]), "architecture.depths[0] must be an integer"),
    (architecture(mlp_ratio="4"), "architecture.mlp_ratio must be a number"),
    (architecture(head_dim=128), "architecture is invalid: invalid H3DE-Net configuration: stage width 64 / qk dim "
                                 "64 do not split into heads of 128"),
    (architecture(embed_dims=[4096] * 4, qk_dims=[4096] * 4, depths=[32] * 4),
     "architecture asks for about 27,157 million weights (109 GB in float32); at most 1,000 million are accepted"),
    (stage(patch_size=[64, 64, 4096]), "preprocessing.stages[0].patch_size[2] must be at most 1024, not 4096"),
    (stage(patch_size=[1024, 1024, 64]), "preprocessing.stages[0].patch_size asks for 67,108,864 voxels per "
                                         "network input; at most 16,777,216 (256 × 256 × 256) are accepted"),
    (stage(spacing_mm=[float("nan"), 1.0, 1.0]), "preprocessing.stages[0].spacing_mm[0] must be a number"),
    (stage(spacing_mm=[1.0, float("inf"), 1.0]), "preprocessing.stages[0].spacing_mm[1] must be a number"),
    (stage(spacing_mm=[1.0, 1.0, 1e-7]), "preprocessing.stages[0].spacing_mm[2] must be at least 0.001, not 1e-07"),
])
def test_architecture_and_stage_values_are_checked_before_anything_is_allocated(tmp_path, manifest, problem):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ModelPackageError) as raised:
        read_manifest(path)
    assert str(raised.value).startswith(f"{path}: {problem}")
