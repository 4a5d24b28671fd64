"""The bundled models: `h3de demo` on the phantom model, and the mouse model on an unseen scan."""

import json
from pathlib import Path

import numpy as np
import pytest

from H3DELandmarksLib.cli.main import main
from H3DELandmarksLib.data.landmark_files import read_landmarks
from H3DELandmarksLib.data.volume_io import read_volume
from H3DELandmarksLib.inference import Predictor
from H3DELandmarksLib.registry import read_package

MODELS = Path(__file__).resolve().parents[1] / "Resources" / "Models"
MOUSE_CASE = "NU_J_"
# Measured for this case when the model shipped: MRE 0.148 mm, largest error 0.419 mm.
MOUSE_MRE_LIMIT_MM = 0.25
MOUSE_MAX_LIMIT_MM = 0.8


def test_every_registry_entry_is_a_bundled_package_that_verifies():
    entries = json.loads((MODELS / "models.json").read_text(encoding="utf-8"))["models"]
    assert {entry["id"] for entry in entries} == {"phantom", "mouse-skull-45"}
    for entry in entries:
        manifest = read_package(MODELS / entry["bundled"]).manifest
        assert (manifest["id"], manifest["version"]) == (entry["id"], entry["version"])
        assert main(["models", "verify", entry["id"]]) == 0


def test_demo_detects_the_phantom_landmarks(tmp_path, capsys):
    assert main(["demo", "--seed", "7", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0] in
            {"nasion", "sella", "dens_tip", "menton"}]
    assert len(rows) == 4 and all(float(row[-1]) < 4.0 for row in rows), out
    assert "Mean radial error" in out
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == ["phantom-7-truth.mrk.json", "phantom-7.csv", "phantom-7.mrk.json", "phantom-7.nrrd"]
    assert f"Wrote into {tmp_path}/: phantom-7.nrrd (the phantom)" in out


def test_a_second_demo_run_explains_overwrite(tmp_path, capsys):
    (tmp_path / "phantom-7.nrrd").write_bytes(b"an earlier run's phantom")
    assert main(["demo", "--seed", "7", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"h3de: error: {tmp_path} already holds this demo's files from an earlier run (phantom-7.nrrd); "
        "add --overwrite to replace them, or --out DIR to write somewhere else.\n")
    assert (tmp_path / "phantom-7.nrrd").read_bytes() == b"an earlier run's phantom"


@pytest.mark.slow
def test_mouse_model_finds_the_landmarks_of_a_held_out_exact_scan(shared_dir):
    root = shared_dir / "data" / "mouse_ct_atlas"
    predictor = Predictor.from_model("mouse-skull-45", device="cpu")
    assert MOUSE_CASE in predictor.manifest["training"]["data"]["validation_cases"]
    assert MOUSE_CASE not in predictor.manifest["training"]["data"]["train_cases"]
    detection = predictor.predict(read_volume(root / "volumes" / f"{MOUSE_CASE}.nii.gz"))
    truth = read_landmarks(root / "landmarks" / f"{MOUSE_CASE}.mrk.json")
    found = detection.landmarks.reordered(truth.names)
    errors = np.linalg.norm(found.positions - truth.positions, axis=1)
    assert found.present.all()
    assert np.mean(errors) < MOUSE_MRE_LIMIT_MM and np.max(errors) < MOUSE_MAX_LIMIT_MM, np.round(errors, 2)
    expected = found.expected_error
    assert np.all((expected > 0.05) & (expected < 1.0)) and abs(np.mean(expected) - np.mean(errors)) < 0.1
