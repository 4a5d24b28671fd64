"""Recipes derived from the data, partial recipe files, and fine-tuning from a model (`--init-from`)."""

import json
from pathlib import Path

import numpy as np
import pytest

from H3DELandmarksLib.cli import train as train_cli
from H3DELandmarksLib.cli.main import main
from H3DELandmarksLib.data.landmark_files import read_landmarks, write_landmarks
from H3DELandmarksLib.data.phantom import make_phantom
from H3DELandmarksLib.data.volume_io import write_volume
from H3DELandmarksLib.registry import read_package
from H3DELandmarksLib.training.config import parse_training_config
from H3DELandmarksLib.training.data import pseudo_labelled_validation_count
from H3DELandmarksLib.training.initialization import load_initial_model
from H3DELandmarksLib.training.loop import TrainingResult
from H3DELandmarksLib.training.recipe import (
    BUDGET_SHARE,
    COARSE_BUDGET_SHARE,
    CPU_SECONDS_PER_SAMPLE,
    DataSummary,
    derive_recipe,
    merge_recipe,
    model_id_for,
)
from builders_training import QUICK



def summary(**changes) -> DataSummary:
    """Mouse-skull-like data: 0.14 mm voxels, 45 landmarks 24 mm apart, skulls in any pose."""
    values = dict(cases=[f"case{number}" for number in range(30)], voxel_mm=0.141, landmark_count=45,
                  spread_mm=23.8, extent_mm=35.0, pose_spread_deg=125.0, intensity=(0.0, 110.0))
    return DataSummary(**{**values, **changes})


def test_recipe_for_mouse_like_data_matches_the_hand_written_one():
    recipe = derive_recipe(summary(), "mouse")
    coarse, fine = recipe["stages"]
    assert coarse["spacing_mm"] == [0.79] * 3 and fine["spacing_mm"] == [0.2] * 3
    assert fine["orientation"] == "shape-aligned" and fine["shape_prior_mm"] == 2.0
    assert recipe["augmentation"]["rotation_deg"] == 180.0
    assert recipe["preprocessing"]["intensity"]["clip_max"] == 110.0
    assert recipe["data"]["validation"] == {"fraction": 0.2}
    assert (coarse["epochs"], fine["epochs"]) == (200, 94)
    parse_training_config(recipe)


def test_recipe_follows_pose_landmark_count_and_budget():
    aligned = derive_recipe(summary(pose_spread_deg=8.0), "m")
    assert aligned["augmentation"]["rotation_deg"] == 15.0
    single = derive_recipe(summary(landmark_count=1, spread_mm=0.0, pose_spread_deg=None), "m")
    assert single["stages"][0]["spacing_mm"] == [1.2] * 3
    assert "orientation" not in single["stages"][1] and single["augmentation"]["rotation_deg"] == 180.0
    quick = derive_recipe(summary(), "m", max_minutes=10)
    full = derive_recipe(summary(), "m")
    assert [stage["epochs"] for stage in quick["stages"]] < [stage["epochs"] for stage in full["stages"]]
    planned = 24 * quick["stages"][0]["epochs"] + 24 * 8 * quick["stages"][1]["epochs"]
    assert planned * CPU_SECONDS_PER_SAMPLE <= 10 * 60
    coarse_first = derive_recipe(summary(), "m", max_minutes=20)
    coarse_epochs, fine_epochs = (stage["epochs"] for stage in coarse_first["stages"])
    budget = BUDGET_SHARE * 20 * 60 / CPU_SECONDS_PER_SAMPLE
    assert coarse_epochs < full["stages"][0]["epochs"] and 24 * (coarse_epochs + 1) > COARSE_BUDGET_SHARE * budget
    assert 24 * coarse_epochs + 24 * 8 * fine_epochs <= budget < 24 * coarse_epochs + 24 * 8 * (fine_epochs + 1)
    assert coarse_epochs / full["stages"][0]["epochs"] > fine_epochs / full["stages"][1]["epochs"]
    few = derive_recipe(summary(cases=["a", "b"]), "m")
    assert few["data"]["validation"] == {"training_cases": True}
    parse_training_config(few)


def test_a_few_shot_recipe_plans_for_the_scans_its_split_trains():
    """5 annotated and 38 pseudo-labelled scans: 4 of the latter validate, 39 scans train."""
    cases = [f"case{number}" for number in range(43)]
    assert pseudo_labelled_validation_count(38, 0.2) == 4 and pseudo_labelled_validation_count(2, 0.0) == 1
    recipe = derive_recipe(summary(cases=cases, pseudo_labelled=38), "m", max_minutes=60)
    coarse_epochs, fine_epochs = (stage["epochs"] for stage in recipe["stages"])
    budget = BUDGET_SHARE * 60 * 60 / CPU_SECONDS_PER_SAMPLE
    assert 39 * coarse_epochs + 39 * 8 * fine_epochs <= budget < 39 * coarse_epochs + 39 * 8 * (fine_epochs + 1)


def test_partial_recipe_overrides_by_key_and_stage_name():
    merged = merge_recipe(derive_recipe(summary(), "m"), {"stages": [{"name": "fine", "epochs": 3}],
                                                         "model": {"license": "CC-BY-4.0"}})
    assert [stage["name"] for stage in merged["stages"]] == ["fine"]
    assert merged["stages"][0]["epochs"] == 3 and merged["stages"][0]["spacing_mm"] == [0.2] * 3
    assert merged["model"]["license"] == "CC-BY-4.0" and merged["model"]["id"] == "m"
    assert model_id_for("My Skulls (2026)") == "my-skulls-2026"


def write_dataset(root: Path, seeds: range, drop: str | None = None) -> Path:
    for seed in seeds:
        volume, landmarks = make_phantom(seed, size=(32, 32, 32), spacing=4.0)
        if drop is not None:
            landmarks = landmarks.reordered([name for name in landmarks.names if name != drop])
        write_volume(volume, root / "volumes" / f"p{seed}.nrrd")
        write_landmarks(root / "landmarks" / f"p{seed}.mrk.json", landmarks)
    return root


@pytest.mark.slow
def test_train_from_data_alone_then_fine_tune_with_a_dropped_landmark(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", range(4))
    quick = tmp_path / "quick.json"
    quick.write_text(json.dumps(QUICK), encoding="utf-8")
    output = tmp_path / "Head Run"
    assert main(["train", "--data", str(data), "--output", str(output), "--config", str(quick),
                 "--no-progress", "--threads", "1"]) == 0
    recipe = json.loads((output / "recipe.json").read_text(encoding="utf-8"))
    assert recipe["model"]["id"] == "head-run"
    assert recipe["stages"][0]["patch_size"] == [32, 32, 40] and recipe["stages"][0]["spacing_mm"][0] > 4.0
    assert recipe["data"]["validation"] == {"fraction": 0.2}
    package = read_package(output / "package")
    assert package.manifest["training"]["recipe"] == recipe
    assert main(["detect", str(data / "volumes" / "p0.nrrd"), "--model", str(output / "package"),
                 "--out", str(tmp_path / "found"), "--progress", "none", "--threads", "1"]) == 0
    assert len(read_landmarks(tmp_path / "found" / "p0.mrk.json")) == len(package.landmark_names)

    dropped = package.landmark_names[1]
    corrected = write_dataset(tmp_path / "corrected", range(20, 22), drop=dropped)
    tuned = tmp_path / "tuned"
    capsys.readouterr()
    assert main(["train", "--data", str(corrected), "--output", str(tuned), "--init-from",
                 str(output / "package")]) == 2
    assert f"lacks landmark '{dropped}'" in capsys.readouterr().err
    assert main(["train", "--data", str(corrected), "--output", str(tuned), "--init-from", str(output / "package"),
                 "--drop-landmarks", "--no-progress", "--threads", "1"]) == 0
    manifest = read_package(tuned / "package").manifest
    kept = [name for name in package.landmark_names if name != dropped]
    assert [landmark["name"] for landmark in manifest["landmarks"]] == kept
    assert manifest["preprocessing"]["stages"] == package.manifest["preprocessing"]["stages"]
    assert manifest["training"]["recipe"]["data"]["validation"] == {"training_cases": True}
    assert "--init-from" in manifest["training"]["command"]
    assert f"Detect with: h3de detect SCANS --model {tuned / 'package'}" in capsys.readouterr().out


def test_initial_model_keeps_the_channels_and_mean_shape_of_kept_landmarks(tmp_path):
    data = write_dataset(tmp_path / "data", range(4))
    quick = tmp_path / "quick.json"
    quick.write_text(json.dumps(QUICK), encoding="utf-8")
    main(["train", "--data", str(data), "--output", str(tmp_path / "run"), "--config", str(quick),
          "--no-progress", "--threads", "1"])
    package = tmp_path / "run" / "package"
    names = read_package(package).landmark_names
    whole = load_initial_model(package, set(names))
    part = load_initial_model(package, set(names) - {names[0]}, drop=True)
    assert part.names == names[1:]
    for stage, state in part.networks.items():
        np.testing.assert_array_equal(state["final_conv.weight"].numpy(), whole.networks[stage]["final_conv.weight"][1:].numpy())
        assert state["final_conv.bias"].shape[0] == len(names) - 1
    if whole.mean_shape is not None:
        np.testing.assert_array_equal(part.mean_shape, whole.mean_shape[1:])


def test_a_new_run_replaces_a_recipe_left_without_a_run_but_never_a_runs(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "data", range(4))
    quick = tmp_path / "quick.json"
    quick.write_text(json.dumps(QUICK), encoding="utf-8")
    output = tmp_path / "run"
    output.mkdir()
    (output / "recipe.json").write_text(json.dumps({"stale": True}), encoding="utf-8")
    used = []
    monkeypatch.setattr(train_cli, "train", lambda config, *args, **kwargs: used.append(config.raw)
                        or TrainingResult(False, output, None, {}))
    arguments = ["train", "--data", str(data), "--output", str(output), "--config", str(quick), "--no-progress"]
    assert main(arguments) == 0
    recorded = json.loads((output / "recipe.json").read_text(encoding="utf-8"))
    assert recorded == used[0] and "stale" not in recorded
    (output / "checkpoint.pt").write_bytes(b"a run")
    (output / "recipe.json").write_text(json.dumps({"of": "the run"}), encoding="utf-8")
    assert main(arguments) == 0
    assert json.loads((output / "recipe.json").read_text(encoding="utf-8")) == {"of": "the run"}
