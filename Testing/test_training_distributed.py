"""Data-parallel training: two gloo processes on the CPU train the model one process trains."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from H3DELandmarksLib.data.datasets import PhantomDataset
from H3DELandmarksLib.errors import H3DEError
from H3DELandmarksLib.inference import Predictor
from H3DELandmarksLib.registry import read_package
from H3DELandmarksLib.training.config import parse_training_config
from H3DELandmarksLib.training.distributed import distributed_context
from H3DELandmarksLib.training.loop import train
from builders_training import TINY_ARCHITECTURE

RECIPE = {
    "model": {"id": "tiny-ddp", "version": "0.0.1", "title": "Tiny data-parallel test model", "modality": "CT",
              "license": "Apache-2.0"},
    "landmarks": "from data",
    "architecture": TINY_ARCHITECTURE,
    "preprocessing": {"orientation": "canonical",
                      "intensity": {"clip_min": -1000, "clip_max": 2000, "scale_min": 0, "scale_max": 1}},
    "augmentation": {"rotation_deg": 10, "elastic_mm": 1.0},
    "stages": [
        # one step per epoch: epoch 2 is the first step of the two processes, from the same weights
        {"name": "coarse", "spacing_mm": 4.5, "patch_size": [32, 32, 40], "epochs": 3, "samples_per_epoch": 2,
         "batch_size": 2},
        # batches of 2 then 1: the second leaves rank 1 without a sample
        {"name": "fine", "spacing_mm": 3.0, "patch_size": [32, 32, 40], "epochs": 2, "samples_per_epoch": 3,
         "batch_size": 2, "validation_landmarks": 2},
    ],
    "data": {"layout": "phantom", "phantom": {"train_seeds": [10, 13], "validation_seeds": [0, 1],
                                              "size": [32, 32, 32], "spacing_mm": [4.0, 4.5]}},
    "seed": 5,
}
# Each rank joins the process group through a file (torchrun's own store listens on every
# interface), then runs the same `h3de train` command line torchrun would start.
RANK = ("import sys, torch.distributed as d; "
        "d.init_process_group('gloo', init_method=sys.argv[1], rank=int(sys.argv[2]), world_size=int(sys.argv[3])); "
        "from H3DELandmarksLib.cli.main import main; status = main(sys.argv[4:]); "
        "d.destroy_process_group(); sys.exit(status)")


def run_ranks(world_size, store, arguments):
    environment = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, "-c", RANK, f"file://{store}", str(rank), str(world_size), *arguments],
                              env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(world_size)]
    outputs = [rank.communicate(timeout=300)[0] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0] * world_size, outputs
    return outputs


def log(folder):
    return [{key: row[key] for key in ("stage", "epoch", "train_loss", "val_loss")}
            for row in csv.DictReader(open(folder / "training_log.csv", encoding="utf-8"))]


@pytest.mark.slow
def test_two_processes_resume_a_single_process_run_and_match_its_loss_curve(tmp_path):
    config = parse_training_config(RECIPE)
    assert train(config, tmp_path / "alone", threads=1, progress=False).finished
    stopped = train(config, tmp_path / "shared", threads=1, max_minutes=0, progress=False)
    assert not stopped.finished
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(RECIPE), encoding="utf-8")
    outputs = run_ranks(2, tmp_path / "store", ["train", str(path), "--output", str(tmp_path / "shared"),
                                                "--resume", "--device", "cpu", "--threads", "1", "--no-progress"])
    assert "Training finished" in outputs[0] and "Training finished" not in outputs[1]
    expected, got = log(tmp_path / "alone"), log(tmp_path / "shared")
    assert [(row["stage"], row["epoch"]) for row in got] == [(row["stage"], row["epoch"]) for row in expected]
    first_shared = [float(got[index][key]) for index in (0, 1) for key in ("train_loss", "val_loss")]
    first_alone = [float(expected[index][key]) for index in (0, 1) for key in ("train_loss", "val_loss")]
    # Two ranks sum their gradients in another order than one process (gloo all-reduce): after an
    # epoch of updates the losses agree to about 1e-4, not to the last bit.
    np.testing.assert_allclose(first_shared, first_alone, rtol=1e-3)
    curve = [float(row[key]) for row in got for key in ("train_loss", "val_loss")]
    np.testing.assert_allclose(curve, [float(row[key]) for row in expected for key in ("train_loss", "val_loss")],
                               rtol=0.05)
    manifest = read_package(tmp_path / "shared" / "package").manifest
    assert manifest["training"]["provenance"]["processes"] == 2
    volume = PhantomDataset(seeds=(0,), size=(32, 32, 32), spacing_mm=(4.0, 4.5)).load("phantom-0")[0]
    detection = Predictor.from_model(tmp_path / "shared" / "package", device="cpu").predict(volume)
    assert list(detection.landmarks.names) == [landmark["name"] for landmark in manifest["landmarks"]]
    assert np.all(np.isfinite(detection.landmarks.positions))
    assert not list((tmp_path / "shared").glob(".*.part"))


def test_distributed_training_refuses_an_apple_gpu(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(H3DEError, match="CUDA GPUs \\(NCCL\\) or CPUs \\(gloo\\)"):
        with distributed_context(torch.device("mps")):
            pass
