"""Targets, losses, the training loop, resuming, the model package and `h3de train`."""

import copy
import csv
import json
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from H3DELandmarksLib.cli.main import main
from H3DELandmarksLib.errors import CheckpointError
from H3DELandmarksLib.inference import Predictor
from H3DELandmarksLib.inference.package_loading import load_stage_networks
from H3DELandmarksLib.model.decoding import decode_heatmaps, decode_proposals
from H3DELandmarksLib.model.network import H3DENet
from H3DELandmarksLib.registry import read_package
from H3DELandmarksLib.training.config import (
    TrainingConfigError,
    load_training_config,
    parse_training_config,
)
from H3DELandmarksLib.training.data import TrainingData
from H3DELandmarksLib.training.losses import (
    adaptive_wing_loss,
    hard_negative_indices,
    hnm_heatmap_loss,
    proposal_loss,
)
from H3DELandmarksLib.training.loop import train
from H3DELandmarksLib.training.recipe import merge_recipe
from H3DELandmarksLib.training.targets import HeatmapTarget, heatmap_targets, proposal_targets
from builders_training import TINY_ARCHITECTURE

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "model": {"id": "tiny", "version": "0.0.1", "title": "Tiny test model", "modality": "CT", "license": "Apache-2.0"},
    "landmarks": "from data",
    "architecture": TINY_ARCHITECTURE,
    "preprocessing": {"orientation": "canonical",
                      "intensity": {"clip_min": -1000, "clip_max": 2000, "scale_min": 0, "scale_max": 1}},
    "augmentation": {"rotation_deg": 10, "elastic_mm": 1.0},
    "stages": [
        {"name": "coarse", "spacing_mm": 4.5, "patch_size": [32, 32, 40], "epochs": 2, "samples_per_epoch": 2,
         "batch_size": 1},
        {"name": "fine", "spacing_mm": 3.0, "patch_size": [32, 32, 40], "epochs": 2, "samples_per_epoch": 2,
         "batch_size": 1, "validation_landmarks": 2},
    ],
    "data": {"layout": "phantom", "phantom": {"train_seeds": [10, 12], "validation_seeds": [0, 1], "size": [32, 32, 32],
                                              "spacing_mm": [4.0, 4.5], "absent_probability": 0.2}},
    "seed": 3,
}


@pytest.mark.parametrize("target", [HeatmapTarget("gaussian", sigma=2.0), HeatmapTarget("reference", radius=6.0)])
def test_heatmap_targets_peak_at_the_landmark(target):
    points = torch.tensor([[10.3, 20.7, 15.2], [30.1, 5.5, 40.9], [0.0, 0.0, 0.0]])
    present = torch.tensor([True, True, False])
    maps = heatmap_targets(points, present, (24, 16, 32), 2, target)
    coordinates, confidence = decode_heatmaps(maps, stride=2, peak_value=target.peak)
    assert (coordinates[:2] - points[:2]).abs().max() < 0.1
    assert confidence[:2].min() > 0.9
    assert torch.all(maps[2] == target.background)
    assert maps.max() <= target.peak


def test_reference_target_is_minus_one_outside_the_radius():
    maps = heatmap_targets(torch.tensor([[10.0, 10.0, 10.0]]), torch.tensor([True]), (20, 20, 20), 1,
                           HeatmapTarget("reference", radius=4.0))
    assert maps[0, 10, 10, 10] == 2.0
    assert maps[0, 10, 10, 14] > 0 and maps[0, 10, 10, 15] == -1.0


def test_proposal_targets_decode_back_to_the_landmarks():
    radii = (0.5, 0.75, 1.0, 1.25)
    points = torch.tensor([[13.0, 17.5, 6.2], [30.3, 2.0, 50.9], [1.0, 1.0, 1.0]])
    targets = proposal_targets(points, torch.tensor([True, True, False]), (12, 8, 16), radii)
    assert targets.absent.tolist() == [2]
    assert targets.offsets.abs().max() < 1
    proposals = torch.full((12, 8, 16, 4, 6), -10.0)
    for cell, anchor, landmark, offset in zip(targets.cells, targets.anchors, targets.landmarks, targets.offsets):
        proposals[cell[0], cell[1], cell[2], anchor, :3] = torch.atanh(offset)
        proposals[cell[0], cell[1], cell[2], anchor, 3 + landmark] = 5.0
    coordinates, _ = decode_proposals(proposals, radii)
    assert (coordinates[:2] - points[:2]).abs().max() < 1e-4


def test_fixed_hard_negatives_are_the_highest_scoring_negatives():
    positive = torch.zeros(12, dtype=torch.bool)
    positive[:4] = True
    scores = torch.tensor([5.0, 4.0, 3.0, 2.0, -1.0, -1.0, 0.9, -1.0, 0.8, -1.0, -1.0, 0.7])
    fixed = hard_negative_indices(scores, positive, 3)
    assert sorted(fixed.tolist()) == [6, 8, 11]
    negatives = torch.nonzero(~positive).flatten()
    published = torch.topk(scores[negatives], 3).indices  # positions in the negative subset, used on the full map
    assert sorted(published.tolist()) != sorted(fixed.tolist())
    assert set(published.tolist()) & {0, 1, 2, 3}


def test_hnm_loss_sees_a_false_peak_far_from_the_landmark():
    target = heatmap_targets(torch.tensor([[8.0, 8.0, 8.0]]), torch.tensor([True]), (16, 16, 16), 1,
                             HeatmapTarget("reference", radius=3.0))[None]
    assert hnm_heatmap_loss(target.clone(), target, 3.0) == 0
    false_peak = target.clone()
    false_peak[0, 0, 1, 1, 1] = 2.0
    assert hnm_heatmap_loss(false_peak, target, 3.0) > 0.01


def test_absent_landmarks_get_hard_negatives_only():
    target = torch.full((1, 1, 10, 10, 10), -1.0)
    prediction = target.clone()
    prediction[0, 0, 5, 5, 5] = 1.0
    assert hnm_heatmap_loss(prediction, target, 2.0) > 0
    assert hnm_heatmap_loss(target.clone(), target, 2.0) == 0


def tiny_network(head="heatmap", landmarks=3):
    config = parse_training_config({**TINY, "architecture": {**TINY_ARCHITECTURE, "head": head},
                                    "stages": [{**TINY["stages"][0], "loss": "proposals" if head == "proposals"
                                                else "adaptive_wing"}]})
    torch.manual_seed(0)
    return H3DENet(config.network_config(landmarks))


@pytest.mark.parametrize("loss", ["adaptive_wing", "hnm", "proposals"])
def test_loss_decreases_over_a_few_steps_on_a_fixed_batch(loss):
    net = tiny_network("proposals" if loss == "proposals" else "heatmap")
    generator = torch.Generator().manual_seed(1)
    image = torch.rand((1, 1, 32, 32, 40), generator=generator)
    points = torch.tensor([[10.0, 12.0, 20.0], [20.0, 8.0, 30.0], [0.0, 0.0, 0.0]])
    present = torch.tensor([True, True, False])
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        output = net(image)
        if loss == "proposals":
            value = proposal_loss(output, [proposal_targets(points, present, tuple(output.shape[1:4]),
                                                            net.config.anchor_radii)])
        else:
            target = HeatmapTarget("reference" if loss == "hnm" else "gaussian", sigma=2.0, radius=4.0)
            maps = heatmap_targets(points, present, tuple(output.shape[2:]), net.output_stride, target)[None]
            value = hnm_heatmap_loss(output, maps, 4.0) if loss == "hnm" else adaptive_wing_loss(output, maps)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(float(value.detach()))
    assert losses[-1] < losses[0]


def test_configuration_errors_name_the_problem():
    with pytest.raises(TrainingConfigError, match="stages\\[0\\].epoch is not a known field"):
        parse_training_config({**TINY, "stages": [{**TINY["stages"][0], "epoch": 3}]})
    with pytest.raises(TrainingConfigError, match="proposal head"):
        parse_training_config({**TINY, "stages": [{**TINY["stages"][0], "loss": "proposals"}]})
    with pytest.raises(TrainingConfigError, match="too small"):
        parse_training_config({**TINY, "stages": [{**TINY["stages"][0], "patch_size": [32, 32, 32]}]})
    with pytest.raises(TrainingConfigError, match="heatmap_peak"):
        parse_training_config({**TINY, "stages": [TINY["stages"][0], {**TINY["stages"][1], "loss": "hnm"}]})
    with pytest.raises(TrainingConfigError, match="model.license"):
        unlicensed = {key: value for key, value in TINY["model"].items() if key != "license"}
        parse_training_config({**TINY, "model": unlicensed})


REFINE = {"name": "refine", "spacing_mm": 2.0, "patch_size": [32, 32, 40], "epochs": 2, "samples_per_epoch": 2,
          "batch_size": 1, "validation_landmarks": 2, "centre_jitter": 0.1}


def test_a_refine_stage_is_local_and_needs_the_fine_stage_before_it():
    stages = parse_training_config({**TINY, "stages": [*TINY["stages"], REFINE]}).stages
    assert [(stage.name, stage.local) for stage in stages] == [("coarse", False), ("fine", True), ("refine", True)]
    with pytest.raises(TrainingConfigError) as error:
        parse_training_config({**TINY, "stages": [TINY["stages"][0], REFINE]}, "tiny.json")
    assert str(error.value) == ("tiny.json: stages must be a coarse stage, a fine stage, coarse then fine, or coarse, "
                                "fine then refine (a refine stage starts from the fine positions).")


@pytest.mark.parametrize("change, sentence", [
    ({"data": {**TINY["data"], "validation": {"fractoin": 0.2}}}, "data.validation.fractoin is not a known field."),
    ({"stages": [{**TINY["stages"][0], "epochs": "3"}]}, "stages[0].epochs must be an integer."),
    ({"stages": [{**TINY["stages"][0], "tta_rotations": 20}]}, "stages[0].tta_rotations must be at most 12, not 20."),
    ({"stages": [{**TINY["stages"][0], "spacing_mm": [4.5, 4.5]}]}, "stages[0].spacing_mm must have 3 items."),
    ({"landmarks": ["nasion", {"nam": "sella"}]}, "landmarks[1] must be a name or a {name, description} object"),
])
def test_schema_errors_are_one_sentence_naming_the_key_path(change, sentence):
    with pytest.raises(TrainingConfigError) as error:
        parse_training_config({**TINY, **change}, "tiny.json")
    assert str(error.value).startswith(f"tiny.json: {sentence}")


def test_shipped_configurations_parse_and_the_mouse_split_uses_exact_cases(shared_dir, tmp_path):
    phantom = load_training_config(REPO / "Resources" / "Training" / "phantom.json")
    assert [stage.name for stage in phantom.stages] == ["coarse", "fine"]
    mouse = load_training_config(REPO / "Resources" / "Training" / "mouse-skull-45.json")
    with pytest.raises(TrainingConfigError, match="--data"):
        TrainingData(mouse, tmp_path)
    root = shared_dir / "data" / "mouse_ct_atlas"
    names = [str(n) for n in range(1, 52) if n not in (23, 26, 34, 35, 45, 48)]
    data = TrainingData(mouse, tmp_path, root, names=names)
    assert len(data.names) == 45 and len(data.validation_cases) == 6
    assert "KK.HlJ_" in data.train_cases
    _, landmarks = data.case("KK.HlJ_")
    assert not landmarks.present[data.names.index("28")] and landmarks.present.sum() == 44


def test_the_refine_ablation_recipe_adds_a_refine_stage_to_the_mouse_recipe():
    mouse = json.loads((REPO / "Resources" / "Training" / "mouse-skull-45.json").read_text())
    partial = json.loads((REPO / "bench" / "lever-refine.json").read_text())
    config = parse_training_config(merge_recipe(mouse, partial), "bench/lever-refine.json")
    assert [stage.name for stage in config.stages] == ["coarse", "fine", "refine"]
    assert config.raw["stages"][:2] == mouse["stages"] and config.raw["data"] == mouse["data"]
    assert config.stages[2].spacing_mm < config.stages[1].spacing_mm


def write_config(folder: Path, raw: dict) -> Path:
    path = folder / "tiny.json"
    path.write_text(json.dumps(raw))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An uninterrupted run of the tiny configuration through `h3de train`."""
    folder = tmp_path_factory.mktemp("trained")
    config = write_config(folder, TINY)
    status = main(["train", str(config), "--output", str(folder / "run"), "--no-progress", "--threads", "1"])
    assert status == 0
    return folder / "run"


@pytest.mark.slow
def test_training_writes_the_log_and_a_package_of_two_networks(trained):
    rows = list(csv.DictReader(open(trained / "training_log.csv")))
    assert [(row["stage"], row["epoch"]) for row in rows] == [("coarse", "1"), ("coarse", "2"),
                                                              ("fine", "1"), ("fine", "2")]
    assert list(rows[0]) == ["epoch", "stage", "train_loss", "val_loss", "val_mre_mm", "lr", "seconds"]
    assert all(np.isfinite(float(row["val_loss"])) for row in rows)
    package = read_package(trained / "package")
    manifest = package.manifest
    assert manifest["heatmap_peak"] == 1.0
    assert [landmark["name"] for landmark in manifest["landmarks"]][:2] == ["nasion", "bregma"]
    assert [stage["name"] for stage in manifest["preprocessing"]["stages"]] == ["coarse", "fine"]
    assert manifest["training"]["recipe"] == TINY
    assert manifest["training"]["data"]["validation_cases"] == ["phantom-0"]
    assert set(manifest["training"]["metrics"]) == {"coarse", "fine"}
    assert manifest["training"]["command"][:2] == ["h3de", "train"]
    keys = load_file(trained / "package" / "model.safetensors")
    assert {key.split(".")[0] for key in keys} == {"coarse", "fine", "patches"}
    assert {key.split(".")[0] for key in package.state_dict()} == {"coarse", "fine"}
    matching = manifest["patch_matching"]
    assert matching["references"] and "phantom-0" not in matching["references"]
    references = package.reference_patches()
    assert len(references) == len(matching["references"])
    assert references[0].positions.shape == (12, 3) and references[0].blocks.std() > 0
    networks = load_stage_networks(trained / "package")
    assert set(networks) == {"coarse", "fine"}
    with torch.no_grad():
        output = networks["fine"](torch.zeros(1, 1, 32, 32, 40))
    assert output.shape == (1, 12, 16, 16, 20)


@pytest.mark.slow
def test_resume_continues_bit_exactly(trained, tmp_path, capsys):
    config = write_config(tmp_path, TINY)
    output = tmp_path / "run"
    main(["train", str(config), "--output", str(output), "--no-progress", "--threads", "1", "--max-minutes", "0"])
    assert "--resume" in capsys.readouterr().out
    assert not (output / "package").exists()
    with pytest.raises(CheckpointError, match="--resume"):
        train(load_training_config(config), output, progress=False)
    changed = copy.deepcopy(TINY)
    changed["seed"] = 4
    with pytest.raises(CheckpointError, match="different training configuration"):
        train(parse_training_config(changed), output, resume=True, progress=False)
    result = train(load_training_config(config), output, resume=True, threads=1, progress=False)
    assert result.finished
    uninterrupted = load_file(trained / "package" / "model.safetensors")
    resumed = load_file(output / "package" / "model.safetensors")
    assert uninterrupted.keys() == resumed.keys()
    assert all(torch.allclose(uninterrupted[key], resumed[key], rtol=0, atol=0, equal_nan=True)
               for key in uninterrupted)
    logged = [row["val_loss"] for row in csv.DictReader(open(output / "training_log.csv"))]
    assert logged == [row["val_loss"] for row in csv.DictReader(open(trained / "training_log.csv"))]


@pytest.mark.slow
def test_a_run_stopped_by_the_time_limit_writes_a_usable_package(tmp_path, capsys, monkeypatch):
    """The clock jumps past --max-minutes once the fine stage has validated one epoch of two."""
    from H3DELandmarksLib.training import loop

    jump = {"seconds": 0.0}
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(monotonic=lambda: time.monotonic() + jump["seconds"]))
    end_epoch = loop._StageTrainer._end_epoch

    def end_epoch_then_jump(trainer, validation):
        over = end_epoch(trainer, validation)
        if trainer.stage.name == "fine":
            jump["seconds"] = 3600.0
        return over

    monkeypatch.setattr(loop._StageTrainer, "_end_epoch", end_epoch_then_jump)
    output = tmp_path / "run"
    assert main(["train", str(write_config(tmp_path, TINY)), "--output", str(output), "--no-progress",
                 "--threads", "1", "--max-minutes", "30"]) == 0
    out = capsys.readouterr().out
    assert f"model package from the best weights so far: {output / 'package'}" in out and "--resume" in out
    metrics = read_package(output / "package").manifest["training"]["metrics"]
    assert metrics["fine"]["stopped_early"] and metrics["fine"]["epochs_trained"] == 1
    assert "stopped_early" not in metrics["coarse"] and metrics["coarse"]["epochs_trained"] == 2
    data = TrainingData(load_training_config(write_config(tmp_path, TINY)), output / "cache")
    volume, _ = data.case(data.validation_cases[0])
    detection = Predictor.from_model(output / "package", device="cpu").predict(volume)
    assert np.all(np.isfinite(detection.landmarks.positions))


@pytest.mark.slow
def test_a_shape_aligned_fine_stage_ships_the_mean_shape_and_detects(tmp_path):
    raw = copy.deepcopy(TINY)
    for stage in raw["stages"]:
        stage.update(epochs=1, samples_per_epoch=1)
    raw["stages"][1].update(orientation="shape-aligned", passes=2, augmentation={"rotation_deg": 5})
    result = train(parse_training_config(raw), tmp_path / "run", threads=1, progress=False)
    manifest = read_package(result.package).manifest
    fine = manifest["preprocessing"]["stages"][1]
    assert (fine["orientation"], fine["passes"]) == ("shape-aligned", 2)
    shape = np.array(manifest["preprocessing"]["mean_shape"], float)
    assert shape.shape == (len(manifest["landmarks"]), 3)
    np.testing.assert_allclose(shape.mean(axis=0), 0.0, atol=1e-3)
    data = TrainingData(parse_training_config(raw), tmp_path / "run" / "cache")
    expected = data.mean_shape
    np.testing.assert_allclose(shape, expected, atol=1e-4)
    volume, _ = data.case(data.validation_cases[0])
    detection = Predictor.from_model(result.package, device="cpu").predict(volume)
    assert np.all(np.isfinite(detection.landmarks.positions))
    weights = load_file(result.package / "model.safetensors")
    raw["stages"][1].update(passes=3, shape_prior_mm=1.5)
    changed = parse_training_config(raw)
    assert changed.sha256 == parse_training_config({**raw, "stages": [raw["stages"][0], {
        key: value for key, value in raw["stages"][1].items() if key not in ("passes", "shape_prior_mm")}]}).sha256
    again = train(changed, tmp_path / "run", resume=True, threads=1, progress=False)
    fine = read_package(again.package).manifest["preprocessing"]["stages"][1]
    assert (fine["passes"], fine["shape_prior_mm"]) == (3, 1.5)
    assert all(torch.allclose(weights[key], tensor, rtol=0, atol=0, equal_nan=True)
               for key, tensor in load_file(again.package / "model.safetensors").items())


@pytest.mark.slow
def test_a_partial_recipe_adds_a_refine_stage_that_trains_packages_and_detects_last(tmp_path):
    partial = tmp_path / "refine.json"
    partial.write_text(json.dumps({"stages": [{"name": "coarse"}, {"name": "fine"}, REFINE]}))
    output = tmp_path / "run"
    assert main(["train", str(write_config(tmp_path, TINY)), "--config", str(partial), "--output", str(output),
                 "--no-progress", "--threads", "1"]) == 0
    recipe = json.loads((output / "recipe.json").read_text())
    assert recipe == {**TINY, "stages": [*TINY["stages"], REFINE]}
    rows = list(csv.DictReader(open(output / "training_log.csv")))
    assert [row["stage"] for row in rows] == ["coarse"] * 2 + ["fine"] * 2 + ["refine"] * 2
    manifest = read_package(output / "package").manifest
    assert [stage["name"] for stage in manifest["preprocessing"]["stages"]] == ["coarse", "fine", "refine"]
    assert manifest["training"]["command"][2:5] == [str(tmp_path / "tiny.json"), "--config", str(partial)]
    metrics = manifest["training"]["metrics"]
    assert metrics["refine"]["validation_patches"] == metrics["fine"]["validation_patches"] == 2
    assert np.isfinite(metrics["refine"]["val_mre_mm"])
    assert {key.split(".")[0] for key in read_package(output / "package").state_dict()} == {
        "coarse", "fine", "refine"}
    data = TrainingData(parse_training_config(recipe), output / "cache")
    volume, _ = data.case(data.validation_cases[0])
    detection = Predictor.from_model(output / "package", device="cpu").predict(volume)
    assert np.all(np.isfinite(detection.landmarks.positions))
    assert {"refine_preprocessing", "refine_network", "refine_decoding"} <= set(detection.timings)
    assert set(detection.signals) == {"pass_shift_mm", "shape_residual_mm", "confidence", "match_spread_mm"}
    assert "patch matching" in detection.timings
    unmatched = Predictor.from_model(output / "package", device="cpu", patch_matching=False).predict(volume)
    assert "match_spread_mm" not in unmatched.signals and "patch matching" not in unmatched.timings
    search = manifest["patch_matching"]["search_mm"]
    shift = np.abs(detection.landmarks.positions - unmatched.landmarks.positions)
    assert shift.max() <= search + 1e-6 and shift.max() > 0
