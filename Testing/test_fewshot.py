"""Registration, fusion of estimates, unannotated cases and few-shot training in rounds."""

import json
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from H3DELandmarksLib.cli.main import main
from H3DELandmarksLib.data.datasets import GenericDataset
from H3DELandmarksLib.data.landmark_files import read_landmarks, write_landmarks
from H3DELandmarksLib.data.landmark_fusion import fuse_estimates, reliability
from H3DELandmarksLib.data.landmarks import Landmarks
from H3DELandmarksLib.data.phantom import make_phantom
from H3DELandmarksLib.data.registration import (
    RegistrationSettings,
    prepare_image,
    transfer_landmarks,
)
from H3DELandmarksLib.data.volume import Volume
from H3DELandmarksLib.data.volume_io import write_volume
from H3DELandmarksLib.errors import CheckpointError
from H3DELandmarksLib.registry import read_package
from H3DELandmarksLib.cli import train as train_cli
from H3DELandmarksLib.training import fewshot, pseudo_labels
from H3DELandmarksLib.training.fewshot import FewShotSettings
from H3DELandmarksLib.training.pseudo_labels import REGISTRATION_DIR
from builders_training import QUICK

QUICK_REGISTRATION = RegistrationSettings(random_rotations=10, optimised_starts=2, bspline_iterations=10)


def affine_copy(volume: Volume, landmarks: Landmarks, matrix: np.ndarray, shift: np.ndarray):
    """`volume` resampled so that its content moves by p -> matrix @ (p - c) + c + shift (c: the
    volume's centre), and its landmarks moved the same way."""
    centre = volume.index_to_physical((np.asarray(volume.shape_ijk) - 1) / 2)
    forward = sitk.AffineTransform(3)
    forward.SetMatrix(matrix.ravel().tolist())
    forward.SetCenter(centre.tolist())
    forward.SetTranslation(shift.tolist())
    image = volume.to_sitk()
    moved = sitk.Resample(image, image, forward.GetInverse(), sitk.sitkLinear, float(volume.array.min()))
    positions = (landmarks.positions - centre) @ matrix.T + centre + shift
    return Volume.from_sitk(moved), Landmarks(landmarks.names, positions, landmarks.present)


def test_registration_recovers_a_known_rigid_and_affine_transform():
    volume, landmarks = make_phantom(3, size=(48, 48, 48), spacing=3.5, rotation=None, direction=None, noise_hu=5)
    angle = np.radians(12.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    matrix = rotation @ np.diag([1.06, 0.95, 1.02])
    target, truth = affine_copy(volume, landmarks, matrix, np.array([4.0, -3.0, 2.5]))
    moved = np.linalg.norm(truth.positions - landmarks.positions, axis=1)
    points, _ = transfer_landmarks(prepare_image(target, QUICK_REGISTRATION),
                                   prepare_image(volume, QUICK_REGISTRATION), volume, landmarks, QUICK_REGISTRATION)
    errors = np.linalg.norm(points - truth.positions, axis=1)
    usable = np.isfinite(errors)
    assert usable.sum() >= len(landmarks) - 2
    assert np.median(moved) > 5.0
    assert np.median(errors[usable]) < 0.75 and errors[usable].max() < 1.5


def test_fusion_takes_the_median_and_its_spread_as_reliability():
    names = ["a", "b", "c"]
    estimates = [np.array([[0, 0, 0], [1, 1, 1], [np.nan] * 3]),
                 np.array([[2, 0, 0], [1, 1, 1], [np.nan] * 3]),
                 np.array([[1, 0, 0], [1, 1, 4], [5, 5, 5]])]
    fused = fuse_estimates(names, [np.asarray(points, float) for points in estimates])
    np.testing.assert_allclose(fused.landmarks.positions[:2], [[1, 0, 0], [1, 1, 1]])
    np.testing.assert_allclose(fused.landmarks.positions[2], [5, 5, 5])
    np.testing.assert_allclose(fused.spread_mm[:2], [1.0, 0.0])
    assert np.isnan(fused.spread_mm[2]) and list(fused.estimates) == [3, 3, 1]
    np.testing.assert_allclose(reliability(fused.spread_mm, 1.0), [0.5, 1.0, 1.0])
    nowhere = fuse_estimates(["a"], [np.full((1, 3), np.nan)])
    assert not nowhere.landmarks.present[0]


def test_relabelling_weighs_the_model_against_each_label_by_their_expected_errors():
    names = ["a", "b", "c", "d"]
    positions = np.zeros((4, 3))
    before = Landmarks(names, positions, np.array([True, True, True, False]), np.ones(4), ["", "", "", ""],
                       np.array([0.1, 0.3, np.nan, np.nan]))
    found = Landmarks(names, np.tile([[1.0, 0.0, 0.0]], (4, 1)), np.array([True, True, True, True]),
                      np.full(4, 0.9))
    target = pseudo_labels.Target("scan", "digest", lambda: None)
    after = pseudo_labels.model_labels(lambda volume: found, [target], {"scan": before}, model_error_mm=0.3,
                                       scale_mm=0.2, progress=False)["scan"]
    np.testing.assert_allclose(after.positions[:, 0], [0.1, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(after.expected_error, [np.sqrt(0.09 * 0.1), np.sqrt(0.045), np.sqrt(0.045), 0.3])
    np.testing.assert_allclose(after.confidence, reliability(after.expected_error, 0.2))
    assert after.present.all()
    absent = Landmarks(names, np.full((4, 3), np.nan), np.zeros(4, bool), np.full(4, np.nan))
    kept = pseudo_labels.model_labels(lambda volume: absent, [target], {"scan": before}, 0.3, 0.2, False)["scan"]
    np.testing.assert_allclose(kept.positions[:3], positions[:3])
    assert list(kept.present) == [True, True, True, False]


def write_dataset(root: Path, annotated: list[int], unannotated: list[int]) -> Path:
    for seed in annotated + unannotated:
        volume, landmarks = make_phantom(seed, size=(32, 32, 32), spacing=4.0)
        write_volume(volume, root / "volumes" / f"p{seed}.nrrd")
        if seed in annotated:
            write_landmarks(root / "landmarks" / f"p{seed}.mrk.json", landmarks)
    return root


def test_volumes_without_landmarks_are_unannotated_cases(tmp_path):
    source = GenericDataset(write_dataset(tmp_path, [1], [2, 3]))
    assert source.cases() == ["p1"] and source.unannotated_cases() == ["p2", "p3"]
    volume, landmarks = source.load("p2")
    assert volume.array.shape == (32, 32, 32) and len(landmarks) == 0
    assert source.fingerprint("p2") != source.fingerprint("p3")


def refuse(*args, **kwargs):
    raise AssertionError("a cached pair was registered again")


def one_shot_run(tmp_path, monkeypatch) -> tuple[Path, Path, list[str]]:
    """A dataset of one annotated and two unannotated phantoms, its run folder and the arguments
    of a quick two-round `h3de train` on it (quick registration)."""
    monkeypatch.setattr(train_cli, "RegistrationSettings", lambda **given: RegistrationSettings(
        **{**vars(QUICK_REGISTRATION), **{key: value for key, value in given.items() if value is not None}}))
    data = write_dataset(tmp_path / "data", [1], [2, 3])
    quick = tmp_path / "quick.json"
    quick.write_text(json.dumps(QUICK), encoding="utf-8")
    output = tmp_path / "run"
    arguments = ["train", "--data", str(data), "--output", str(output), "--config", str(quick), "--rounds", "2",
                 "--label-tolerance", "0", "--no-progress", "--threads", "1"]
    return data, output, arguments


def test_one_shot_run_in_two_rounds_detects_and_resumes(tmp_path, monkeypatch, capsys):
    data, output, arguments = one_shot_run(tmp_path, monkeypatch)
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert f"model package: {output / 'package'}" in printed
    state = json.loads((output / "fewshot.json").read_text(encoding="utf-8"))
    assert state["rounds"] == 2 and len(state["movement_mm"]) == 2
    labels = read_landmarks(output / "pseudo_labels" / "round-0" / "p2.mrk.json")
    assert labels.present.sum() >= len(labels) - 2
    assert np.all((labels.confidence[labels.present] > 0) & (labels.confidence[labels.present] <= 1))
    assert (output / "pseudo_labels" / "round-1" / "done.json").is_file()
    final = read_landmarks(output / "labels" / "p2.mrk.json")
    last = read_landmarks(output / "pseudo_labels" / "round-2" / "p2.mrk.json")
    assert final.positions.tolist() == last.positions.tolist()
    known = final.expected_error[final.present & np.isfinite(final.expected_error)]
    assert len(known) and np.all(known > 0)
    assert f"Landmarks of the 2 unannotated scans: {output / 'labels'}" in printed
    assert state["model_error_mm"] > state["labels_error_mm"] and "less accurate than those labels" in printed
    manifest = read_package(output / "package").manifest
    assert manifest["training"]["few_shot"]["model_validation_mm"] == state["model_error_mm"]
    assert manifest["training"]["few_shot"]["references"] == ["p1"]
    assert manifest["training"]["few_shot"]["pseudo_labelled_cases"] == ["p2", "p3"]
    assert sorted(manifest["training"]["data"]["pseudo_labelled_cases"]) == ["p2", "p3"]
    first, second = (read_package(output / "rounds" / str(number) / "package").manifest["training"]["recipe"]
                     for number in (1, 2))
    assert manifest["training"]["recipe"] == first
    for full, gentle in zip(first["stages"], second["stages"]):
        assert gentle["lr"] == pytest.approx(0.3 * full["lr"])
        assert gentle["epochs"] == max(1, round(full["epochs"] / 3))
    assert main(["detect", str(data / "volumes" / "p2.nrrd"), "--model", str(output / "package"),
                 "--out", str(tmp_path / "found"), "--progress", "none", "--threads", "1"]) == 0
    assert len(read_landmarks(tmp_path / "found" / "p2.mrk.json")) == len(labels)

    pairs = sorted((output / REGISTRATION_DIR).rglob("*.json"))
    stamps = [path.stat().st_mtime_ns for path in pairs]
    assert len(pairs) == 2
    assert main(arguments) == 2
    assert "--resume" in capsys.readouterr().err
    monkeypatch.setattr(pseudo_labels, "carry_points", refuse)
    assert main(arguments + ["--resume"]) == 0
    assert [path.stat().st_mtime_ns for path in pairs] == stamps
    assert json.loads((output / "fewshot.json").read_text(encoding="utf-8"))["rounds"] == 2
    assert main(arguments + ["--resume", "--rounds", "3"]) == 0
    assert read_package(output / "package").manifest["training"]["few_shot"]["rounds"] == 3


def test_overwrite_removes_the_previous_runs_labels(tmp_path):
    output = tmp_path / "run"
    write_landmarks(output / "labels" / "p2.mrk.json", make_phantom(2, size=(32, 32, 32), spacing=4.0)[1])
    (output / "fewshot.json").write_text("{}", encoding="utf-8")
    config = types.SimpleNamespace(sha256="the recipe's digest")
    with pytest.raises(CheckpointError):
        fewshot._initial_state(output, config, resume=False, overwrite=False)
    assert fewshot._initial_state(output, config, resume=False, overwrite=True)["rounds"] == 0
    assert not (output / "labels").exists() and not (output / "fewshot.json").exists()


def test_a_time_limit_in_a_later_round_leaves_the_previous_rounds_model(tmp_path, monkeypatch, capsys):
    _, output, arguments = one_shot_run(tmp_path, monkeypatch)
    uncut = fewshot.train

    def cut_round_two(config, folder, **options):
        return uncut(config, folder, **{**options, "max_minutes": 0.0 if Path(folder).name == "2" else None})

    monkeypatch.setattr(fewshot, "train", cut_round_two)
    assert main(arguments) == 0
    assert f"model package from the best weights so far: {output / 'package'}" in capsys.readouterr().out
    cut = read_package(output / "package")
    assert cut.manifest["training"]["few_shot"]["stopped_in_round"] == 2
    assert cut.manifest["training"]["few_shot"]["rounds"] == 1
    assert (read_landmarks(output / "labels" / "p3.mrk.json").positions.tolist()
            == read_landmarks(output / "pseudo_labels" / "round-1" / "p3.mrk.json").positions.tolist())
    first = read_package(output / "rounds" / "1" / "package").state_dict()
    assert all(np.array_equal(cut.state_dict()[key], first[key]) for key in first)

    monkeypatch.setattr(fewshot, "train", uncut)
    assert main(arguments + ["--resume"]) == 0
    finished = read_package(output / "package").manifest["training"]["few_shot"]
    assert finished["rounds"] == 2 and "stopped_in_round" not in finished


def test_round_budget_is_what_registration_and_relabelling_leave(tmp_path):
    data = write_dataset(tmp_path / "data", annotated=[0, 1], unannotated=[2, 3, 4])
    source = GenericDataset(data)
    settings = FewShotSettings(rounds=2)
    output = tmp_path / "run"
    pairs = 2 * 3 * fewshot.SECONDS_PER_PAIR / 60
    relabel = 2 * 3 * fewshot.SECONDS_PER_RELABEL / 60
    assert fewshot.round_minutes(source, settings, output, 60.0) == pytest.approx((60.0 - pairs - relabel) / (4 / 3))
    stored = pseudo_labels._pair_path(output, source.unannotated_cases()[0], source.cases()[0])
    stored.parent.mkdir(parents=True)
    stored.write_text("{}")
    assert pseudo_labels.pending_pairs(output, source.unannotated_cases(), source.cases()) == 5
    assert fewshot.round_minutes(source, settings, output, 60.0) == pytest.approx(
        (60.0 - pairs * 5 / 6 - relabel) / (4 / 3))
    assert fewshot.round_minutes(source, settings, output, 60.0, workers=2) == pytest.approx(
        (60.0 - pairs * 5 / 12 - relabel) / (4 / 3))
    assert fewshot.round_minutes(source, settings, output, 1.0) == pytest.approx(1.0 / 20 / (4 / 3))


@pytest.fixture
def simpleitk_threads():
    """SimpleITK's thread count, restored afterwards."""
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    yield sitk.ProcessObject.SetGlobalDefaultNumberOfThreads
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def test_parallel_registration_stores_the_same_pairs_and_resumes_after_a_stop(tmp_path, simpleitk_threads):
    source = GenericDataset(write_dataset(tmp_path / "data", annotated=[0, 1], unannotated=[2, 3, 4]))
    references = [pseudo_labels.Reference(case, source.fingerprint(case), lambda case=case: source.load(case))
                  for case in source.cases()]
    targets = [pseudo_labels.Target(case, source.fingerprint(case), lambda case=case: source.load(case)[0])
               for case in source.unannotated_cases()]
    names = references[0].load()[1].names
    simpleitk_threads(1)
    one_at_a_time = pseudo_labels.register_references(references, targets, names, tmp_path / "one",
                                                      QUICK_REGISTRATION, progress=False)
    simpleitk_threads(2)
    stored = tmp_path / "two" / REGISTRATION_DIR
    stopped = pseudo_labels.register_references(references, targets, names, tmp_path / "two", QUICK_REGISTRATION,
                                                progress=False, stop=lambda: any(stored.rglob("*.json")),
                                                workers=2)
    assert stopped is None
    first = {path: path.stat().st_mtime_ns for path in stored.rglob("*.json")}
    assert 1 <= len(first) <= 4
    assert pseudo_labels.pending_pairs(tmp_path / "two", source.unannotated_cases(), source.cases()) == 6 - len(first)
    two_at_a_time = pseudo_labels.register_references(references, targets, names, tmp_path / "two",
                                                      QUICK_REGISTRATION, progress=False, workers=2)
    assert {path: path.stat().st_mtime_ns for path in first} == first and len(list(stored.rglob("*.json"))) == 6
    for target in source.unannotated_cases():
        np.testing.assert_array_equal(np.array(two_at_a_time[target]), np.array(one_at_a_time[target]))


def test_labels_a_worse_model_cannot_move_have_not_settled():
    names = ["a", "b", "c"]
    labels = {"scan": Landmarks(names, np.zeros((3, 3)), np.array([True, True, False]), np.ones(3), ["", "", ""],
                                np.array([0.2, 0.3, 0.01]))}
    assert pseudo_labels.labels_settled(0.01, 0.1, model_error_mm=0.25, labels=labels)
    assert not pseudo_labels.labels_settled(0.01, 0.1, model_error_mm=2.5, labels=labels)
    assert not pseudo_labels.labels_settled(0.2, 0.1, model_error_mm=0.1, labels=labels)
    unknown = {"scan": Landmarks(names, np.zeros((3, 3)), np.ones(3, bool), np.ones(3), ["", "", ""],
                                 np.full(3, np.nan))}
    assert pseudo_labels.labels_settled(0.01, 0.1, model_error_mm=2.5, labels=unknown)
