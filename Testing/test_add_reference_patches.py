"""bench/add_reference_patches.py: an older package (no patches) gets its training cases' patches
as a new version, weights unchanged; bad input is one sentence and exit 1."""

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from H3DELandmarksLib.cli.main import main as h3de
from H3DELandmarksLib.data.landmark_files import write_landmarks
from H3DELandmarksLib.data.phantom import make_phantom
from H3DELandmarksLib.data.volume_io import write_volume
from H3DELandmarksLib.registry import read_package, write_package
from builders_training import QUICK

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def add_patches(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    return importlib.import_module("add_reference_patches").main


def phantom_dataset(root: Path, count: int = 4) -> Path:
    (root / "volumes").mkdir(parents=True)
    (root / "landmarks").mkdir()
    for seed in range(count):
        volume, landmarks = make_phantom(seed, size=(32, 32, 32), spacing=4.0)
        write_volume(volume, root / "volumes" / f"case{seed}.nrrd")
        write_landmarks(root / "landmarks" / f"case{seed}.mrk.json", landmarks)
    return root


@pytest.mark.slow
def test_an_older_package_gets_the_patches_of_its_training_cases(add_patches, tmp_path, capsys):
    data = phantom_dataset(tmp_path / "data")
    recipe = tmp_path / "quick.json"
    recipe.write_text(json.dumps(QUICK))
    assert h3de(["train", "--data", str(data), "--output", str(tmp_path / "run"), "--config", str(recipe),
                 "--threads", "1", "--no-progress"]) == 0
    trained = read_package(tmp_path / "run" / "package")
    older = {key: value for key, value in trained.manifest.items() if key != "patch_matching"}
    write_package(tmp_path / "old", older, trained.state_dict())
    assert read_package(tmp_path / "old").reference_patches() == []

    out = tmp_path / "new"
    assert add_patches(["--model", str(tmp_path / "old"), "--data", str(data), "--version", "9.0.0",
                        "--out", str(out)]) == 0
    assert "with the patches of" in capsys.readouterr().out
    new = read_package(out)
    assert new.version == "9.0.0"
    train_cases = trained.manifest["training"]["data"]["train_cases"]
    assert new.manifest["patch_matching"]["references"] == sorted(train_cases)
    references = new.reference_patches()
    assert len(references) == len(train_cases) and all(np.nanstd(r.blocks) > 0 for r in references)
    old_weights = trained.state_dict()
    assert all(torch.equal(old_weights[key], value) for key, value in new.state_dict().items())

    assert add_patches(["--model", str(tmp_path / "old"), "--data", str(data), "--version", "9.0.0",
                        "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
