"""Manifest validation (schema and semantic checks) and model package round trips."""

from __future__ import annotations

import copy
import json
import zipfile

import pytest
import torch

from builders_blobs import manifest as blob_manifest
from builders_models import small_state_dict, valid_manifest
from H3DELandmarksLib.errors import ModelPackageError
from H3DELandmarksLib.model.config import H3DEConfig, default_config
from H3DELandmarksLib.registry import (
    check_package,
    pack_package,
    read_manifest,
    read_package,
    unpack_package,
    validate_manifest,
    write_package,
)


def broken(path: str, value=None, delete: bool = False):
    """A manifest with the dotted `path` set to `value` (or deleted)."""
    manifest = valid_manifest()
    *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
    target = manifest
    for part in parents:
        target = target[part]
    if delete:
        del target[last]
    else:
        target[last] = value
    return manifest


BROKEN_MANIFESTS = [
    (broken("license", delete=True), "manifest.json: license is missing."),
    (broken("preprocessing.stages.0.spacing_mm", [1.0, 1.0]),
     "manifest.json: preprocessing.stages[0].spacing_mm must have 3 items."),
    (broken("preprocessing.stages.1.patch_size", [32, 32, 0]),
     "manifest.json: preprocessing.stages[1].patch_size[2] must be at least 1, not 0."),
    (broken("preprocessing.orientation", "RAS"),
     'manifest.json: preprocessing.orientation must be one of "canonical", "native", not "RAS".'),
    (broken("version", "1.0"), 'manifest.json: version must be a semantic version such as 1.0.0, not "1.0".'),
    (broken("confidence_threshold", 1.5), "manifest.json: confidence_threshold must be at most 1, not 1.5."),
    (broken("schema_version", 2), "manifest.json: schema_version must be 1, not 2."),
    (broken("training.metrics", delete=True), "manifest.json: training.metrics is missing."),
    (broken("landmarks.0.name", 7), "manifest.json: landmarks[0].name must be a string."),
    (broken("extra", "x"), "manifest.json: extra is not a known field."),
    (broken("landmarks", [{"name": "A"}]),
     "manifest.json: landmarks has 1 entry but architecture.n_landmarks is 2."),
    (broken("landmarks.1.name", "A"), 'manifest.json: landmarks[1].name "A" repeats landmarks[0].name.'),
    (broken("architecture.bogus", 1), "manifest.json: architecture.bogus is not a known field."),
    (broken("architecture.output_stride", 3), "manifest.json: architecture.output_stride must be one of 1, 2, not 3."),
    (broken("architecture.output_stride", 1),
     "manifest.json: architecture is invalid: invalid H3DE-Net configuration: decoder_dims needs 5 entries for "
     "output_stride 1 and 4 for output_stride 2; skip_dims needs 2 entries for output_stride 1 and 1 for "
     "output_stride 2."),
    (broken("preprocessing.intensity.clip_max", -2000),
     "manifest.json: preprocessing.intensity.clip_max must be greater than clip_min."),
    (broken("preprocessing.stages", [valid_manifest()["preprocessing"]["stages"][1],
                                     valid_manifest()["preprocessing"]["stages"][0]]),
     "manifest.json: preprocessing.stages must list the coarse stage first and the fine stage second."),
    (broken("created", "yesterday"),
     'manifest.json: created must be an ISO 8601 time such as 2025-01-31T12:00:00Z, not "yesterday".'),
    ([], "manifest.json must be an object."),
]


def test_valid_manifest_passes_and_matches_the_config():
    manifest = valid_manifest()
    validate_manifest(manifest)
    assert H3DEConfig.from_dict(manifest["architecture"]) == default_config(n_landmarks=2)


def test_single_stage_and_optional_fields_are_accepted():
    manifest = valid_manifest()
    manifest["preprocessing"]["stages"] = manifest["preprocessing"]["stages"][:1]
    manifest["citation"] = "Doe et al. 2025"
    del manifest["landmarks"][0]["description"]
    validate_manifest(manifest)


@pytest.mark.parametrize("manifest, message", BROKEN_MANIFESTS, ids=[m for _, m in BROKEN_MANIFESTS])
def test_broken_manifest_names_the_field(manifest, message):
    with pytest.raises(ModelPackageError) as raised:
        validate_manifest(manifest)
    assert str(raised.value) == message


def test_read_manifest_reports_invalid_json_and_names_the_file(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelPackageError, match=r"manifest.json is not valid JSON \(.* line 1, column 2\)"):
        read_manifest(path)
    path.write_text(json.dumps(broken("id", "Bad Id")), encoding="utf-8")
    with pytest.raises(ModelPackageError, match=f"^{path}: id must be a lower-case identifier"):
        read_manifest(path)


def test_package_round_trip(tmp_path):
    manifest, weights = valid_manifest(), small_state_dict()
    write_package(tmp_path / "package", manifest, weights)
    package = read_package(tmp_path / "package")
    assert package.manifest == manifest
    assert package.config == default_config(n_landmarks=2)
    assert package.landmark_names == ["A", "B"]
    assert package.landmark_descriptions == ["first", "second"]
    loaded = package.state_dict()
    assert loaded.keys() == weights.keys()
    for key, tensor in weights.items():
        assert loaded[key].dtype == tensor.dtype
        assert torch.equal(loaded[key], tensor)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["package"]


def test_write_package_is_atomic_and_refuses_to_overwrite(tmp_path):
    target = tmp_path / "package"
    write_package(target, valid_manifest(version="1.0.0"), small_state_dict())
    with pytest.raises(ModelPackageError, match="already exists"):
        write_package(target, valid_manifest(version="2.0.0"), small_state_dict())
    assert read_package(target).version == "1.0.0"
    write_package(target, valid_manifest(version="2.0.0"), small_state_dict(), overwrite=True)
    assert read_package(target).version == "2.0.0"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["package"]


def test_write_package_rejects_bad_input_and_writes_nothing(tmp_path):
    with pytest.raises(ModelPackageError, match="confidence_threshold"):
        write_package(tmp_path / "package", broken("confidence_threshold", -1), small_state_dict())
    with pytest.raises(ModelPackageError, match="'mask' is not a float"):
        write_package(tmp_path / "package", valid_manifest(), {"mask": torch.tensor([True])})
    assert list(tmp_path.iterdir()) == []


def test_read_package_names_the_missing_file(tmp_path):
    write_package(tmp_path / "package", valid_manifest(), small_state_dict())
    (tmp_path / "package" / "model.safetensors").unlink()
    with pytest.raises(ModelPackageError, match="model.safetensors is missing"):
        read_package(tmp_path / "package")


def test_check_package_detects_corrupt_weights(tmp_path):
    write_package(tmp_path / "package", valid_manifest(), small_state_dict())
    (tmp_path / "package" / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ModelPackageError, match="cannot be read as safetensors"):
        check_package(tmp_path / "package")


def test_pack_is_reproducible_and_unpacks_to_the_same_package(tmp_path):
    write_package(tmp_path / "package", valid_manifest(), small_state_dict())
    first = pack_package(tmp_path / "package", tmp_path / "a.zip")
    second = pack_package(tmp_path / "package", tmp_path / "b.zip")
    assert first.sha256 == second.sha256 and len(first.sha256) == 64
    assert first.size == (tmp_path / "a.zip").stat().st_size
    unpacked = unpack_package(tmp_path / "a.zip", tmp_path / "unpacked")
    assert unpacked.manifest == valid_manifest()
    assert all(torch.equal(unpacked.state_dict()[k], v) for k, v in small_state_dict().items())


def test_unpack_rejects_foreign_archives_and_leaves_nothing(tmp_path):
    write_package(tmp_path / "package", valid_manifest(), small_state_dict())
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as archive:
        archive.write(tmp_path / "package" / "manifest.json", "manifest.json")
        archive.write(tmp_path / "package" / "model.safetensors", "model.safetensors")
        archive.writestr("../escape.txt", "x")
    with pytest.raises(ModelPackageError, match="is not a model package archive"):
        unpack_package(tmp_path / "evil.zip", tmp_path / "out" / "package")
    bad_manifest = copy.deepcopy(valid_manifest())
    bad_manifest["landmarks"] = []
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as archive:
        archive.writestr("manifest.json", json.dumps(bad_manifest))
        archive.write(tmp_path / "package" / "model.safetensors", "model.safetensors")
    with pytest.raises(ModelPackageError, match=r"^bad.zip/manifest.json: landmarks must have at least 1 item\.$"):
        unpack_package(tmp_path / "bad.zip", tmp_path / "out" / "package")
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(ModelPackageError, match="is not a readable zip archive"):
        unpack_package(tmp_path / "junk.zip", tmp_path / "out" / "package")
    assert list((tmp_path / "out").iterdir()) == []


def shape_aligned_manifest(**fine_fields) -> dict:
    """A valid four-landmark manifest whose fine stage is shape-aligned and runs twice."""
    fine = {"name": "fine", "spacing_mm": [1.0, 1.0, 1.0], "patch_size": [32, 32, 32],
            "orientation": "shape-aligned", "passes": 2, "shape_prior_mm": 1.5, **fine_fields}
    manifest = blob_manifest(4, "canonical", [{"name": "coarse", "spacing_mm": [2.0] * 3, "patch_size": [32] * 3}, fine])
    manifest["preprocessing"]["mean_shape"] = [[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 8.0, 0.0], [0.0, 0.0, 6.0]]
    return manifest


def test_shape_aligned_stage_needs_a_mean_shape_of_every_landmark():
    validate_manifest(shape_aligned_manifest())
    problems = {
        "needs": "manifest.json: preprocessing.mean_shape is needed by the shape-aligned stage.",
        "count": "manifest.json: preprocessing.mean_shape has 3 points for 4 landmarks.",
        "few": "manifest.json: preprocessing.mean_shape needs at least 4 points.",
        "coarse": ("manifest.json: preprocessing.stages[0].orientation may be shape-aligned only for the fine stage "
                   "or the refine stage."),
        "passes": "manifest.json: preprocessing.stages[0].passes applies only to the fine stage or the refine stage.",
        "prior": "manifest.json: preprocessing.stages[0].shape_prior_mm applies only to a shape-aligned stage.",
        "head": "manifest.json: preprocessing.stages[1].shape_prior_mm applies only to the heatmap head.",
    }
    manifests = {name: shape_aligned_manifest() for name in problems}
    del manifests["needs"]["preprocessing"]["mean_shape"]
    manifests["count"]["preprocessing"]["mean_shape"].pop()
    manifests["few"]["preprocessing"]["mean_shape"][0] = None
    manifests["coarse"]["preprocessing"]["stages"][0]["orientation"] = "shape-aligned"
    manifests["passes"]["preprocessing"]["stages"][0]["passes"] = 2
    manifests["prior"]["preprocessing"]["stages"][0]["shape_prior_mm"] = 2.0
    manifests["head"]["architecture"] = default_config(4, head="proposals").to_dict()
    for name, message in problems.items():
        with pytest.raises(ModelPackageError) as raised:
            validate_manifest(manifests[name])
        assert str(raised.value) == message


REFINE = {"name": "refine", "spacing_mm": [0.25, 0.25, 0.25], "patch_size": [24, 24, 24]}


def with_stages(stages: list[dict]) -> dict:
    return {**valid_manifest(), "preprocessing": {**valid_manifest()["preprocessing"], "stages": stages}}


def test_a_refine_stage_follows_the_fine_stage_and_may_be_shape_aligned():
    document = shape_aligned_manifest()
    document["preprocessing"]["stages"].append({**REFINE, "orientation": "shape-aligned", "passes": 2,
                                                "shape_prior_mm": 1.0, "tta_rotations": 2})
    validate_manifest(document)
    coarse, fine = valid_manifest()["preprocessing"]["stages"]
    for stages in ([coarse, REFINE], [REFINE], [fine, REFINE], [coarse, REFINE, fine]):
        with pytest.raises(ModelPackageError) as raised:
            validate_manifest(with_stages(stages))
        assert str(raised.value) == ("manifest.json: preprocessing.stages has a refine stage without a coarse and a "
                                     "fine stage before it (it starts from the fine positions).")
    with pytest.raises(ModelPackageError) as raised:
        validate_manifest(with_stages([coarse, fine, {**fine, "spacing_mm": [0.25] * 3}]))
    assert str(raised.value) == ("manifest.json: preprocessing.stages must list the coarse stage first, the fine "
                                 "stage second and the refine stage third.")
