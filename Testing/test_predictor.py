"""The predictor's behaviour around the geometry: progress, cancellation, thresholds, devices,
windows and patch groups, a refine stage after the fine one, and a real (tiny, random-weight) model
package end to end."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from builders_blobs import (
    COARSE,
    COARSE_TILED,
    DIRECTIONS,
    FINE,
    LEVEL_STEP,
    BlobHeatmapNet,
    blob_volume,
    heatmap_predictor,
    manifest,
    truth_positions,
)
from builders_models import tiny_package
from H3DELandmarksLib.data.preprocessing import IntensityMap, stage_grid
from H3DELandmarksLib.data.volume import Volume
from H3DELandmarksLib.device import resolve_device
from H3DELandmarksLib.errors import DetectionCancelled, H3DEError, ModelPackageError
from H3DELandmarksLib.inference import Predictor
from H3DELandmarksLib.inference.package_loading import load_stage_networks
from H3DELandmarksLib.inference.tiling import group_landmarks, plan_windows


def test_progress_fractions_increase_to_one():
    volume = blob_volume(DIRECTIONS["flipped"], truth_positions())
    seen = []
    detection = heatmap_predictor([COARSE_TILED, FINE]).predict(volume, progress=lambda *event: seen.append(event))
    fractions = [fraction for _, fraction in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(set(fractions)) > 10
    assert {"coarse", "fine", "done"} <= {step for step, _ in seen}
    expected = {f"{stage}_{part}" for stage in ("coarse", "fine") for part in ("preprocessing", "network", "decoding")}
    assert expected | {"total"} == set(detection.timings)


@pytest.mark.parametrize("cancel_after", [0, 3])
def test_cancellation_stops_between_windows(cancel_after):
    volume = blob_volume(DIRECTIONS["identity"], truth_positions())
    cancel = threading.Event()
    calls = []

    def progress(step, fraction):
        calls.append(step)
        if len(calls) > cancel_after:
            cancel.set()

    if cancel_after == 0:
        cancel.set()
    with pytest.raises(DetectionCancelled):
        heatmap_predictor([COARSE_TILED, FINE]).predict(volume, progress=progress, cancel=cancel)
    assert len(calls) <= cancel_after + 1


def test_threshold_override_marks_all_absent_and_keeps_positions():
    volume = blob_volume(DIRECTIONS["identity"], truth_positions())
    net = BlobHeatmapNet(4, 1 / (LEVEL_STEP * 5))
    predictor = Predictor(net, manifest(4, "canonical", [COARSE, FINE]), device="cpu", confidence_threshold=0.99)
    landmarks = predictor.predict(volume).landmarks
    assert not landmarks.present.any()
    assert np.all(np.isfinite(landmarks.positions))
    with pytest.raises(H3DEError, match="between 0 and 1"):
        Predictor(net, manifest(4, "canonical", [FINE]), device="cpu", confidence_threshold=1.5)


def test_invalid_manifest_is_refused():
    broken = manifest(4, "canonical", [FINE])
    broken["preprocessing"]["orientation"] = "sideways"
    with pytest.raises(ModelPackageError):
        Predictor(torch.nn.Identity(), broken, device="cpu")


def test_device_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cuda", "mps", "cpu"}
    with pytest.raises(H3DEError, match="Unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(H3DEError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.parametrize("grid, window", [(10, 16), (16, 16), (17, 16), (100, 16), (61, 12)])
def test_windows_cover_the_grid_with_overlap_and_cores_partition_it(grid, window):
    windows = plan_windows((grid, 5, 5), (window, 16, 16))
    starts = sorted({int(w.start[0]) for w in windows})
    assert starts[0] <= 0 and starts[-1] + window >= grid
    assert all(b - a <= 0.75 * window for a, b in zip(starts, starts[1:]))
    centres = np.stack(np.meshgrid(np.arange(grid), np.arange(5), np.arange(5), indexing="ij"), -1).reshape(-1, 3)
    owners = np.sum([w.owns(centres) for w in windows], axis=0)
    assert np.all(owners == 1)
    for w in windows:
        owned = centres[w.owns(centres)]
        assert np.all((owned >= w.start) & (owned < w.start + [window, 16, 16]))


def test_patch_groups_fit_with_a_quarter_patch_margin():
    rng = np.random.default_rng(3)
    positions = rng.uniform(-30, 30, size=(40, 3))
    direction = DIRECTIONS["oblique"]
    spacing, size = np.array([0.5, 0.5, 0.8]), np.array([32, 32, 24])
    groups = group_landmarks(positions, direction, spacing, size)
    assert sorted(l for g in groups for l in g.landmarks) == list(range(40))
    assert len(groups) < 40
    for group in groups:
        offsets = (positions[group.landmarks] - group.centre) @ direction
        assert np.all(np.abs(offsets) <= spacing * (size - 1) / 4 + 1e-9)


def test_stage_grid_covers_an_oblique_volume():
    volume = Volume(np.zeros((20, 30, 40), np.int16), (0.7, 0.9, 1.3), (5.0, -3.0, 2.0), DIRECTIONS["oblique"])
    corners = volume.index_to_physical(np.array(list(np.ndindex(2, 2, 2))) * (np.array(volume.shape_ijk) - 1))
    for orientation in ("canonical", "native"):
        grid = stage_grid(volume, (2.0, 2.0, 2.0), orientation)
        indices = grid.physical_to_index(corners)
        assert np.all(indices > -0.5) and np.all(indices < np.array(grid.shape_ijk) - 0.5)
    np.testing.assert_array_equal(stage_grid(volume, (2.0, 2.0, 2.0), "canonical").direction, np.eye(3))


def test_intensity_map_clips_and_scales():
    mapped = IntensityMap(-1000, 2000, 0, 1).apply(np.array([-3000, -1000, 500, 2000, 9000], np.int16))
    np.testing.assert_allclose(mapped, [0, 0, 0.5, 1, 1])
    assert mapped.dtype == np.float32


@pytest.mark.parametrize("head", ["heatmap", "proposals"])
def test_real_package_runs_end_to_end(tmp_path, head):
    package = tiny_package(tmp_path / "model", head=head)
    threads = torch.get_num_threads()
    try:
        predictor = Predictor.from_model(package.path, device="cpu", threads=1)
        assert predictor.heatmap_peak == 2.0 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    volume = blob_volume(DIRECTIONS["oblique"], truth_positions()[:3])
    detection = predictor.predict(volume)
    assert detection.landmarks.names == ["L0", "L1", "L2"]
    assert np.all(np.isfinite(detection.landmarks.positions))
    assert np.all((detection.landmarks.confidence >= 0) & (detection.landmarks.confidence <= 1))
    assert (detection.model_id, detection.model_version) == ("blob-standin", "1.0.0")
    assert detection.coarse_positions.shape == (3, 3)


def test_stages_of_a_shared_weights_package_share_one_network(tmp_path):
    networks = load_stage_networks(tiny_package(tmp_path / "model").path)
    assert set(networks) == {"coarse", "fine"}
    assert networks["coarse"] is networks["fine"]


class ShiftedHeatmapNet(nn.Module):
    """A stand-in whose heatmaps lie one output voxel further along the patch's first axis."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.output_stride = net.output_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(self.net(x), 1, dims=2)


def test_a_refine_stage_starts_from_the_fine_positions_and_gives_the_final_ones():
    volume = blob_volume(DIRECTIONS["oblique"], truth_positions())
    net = BlobHeatmapNet(4, 1 / (LEVEL_STEP * 5))
    refine = {"name": "refine", "spacing_mm": [0.5, 0.5, 0.5], "patch_size": [24, 24, 24]}
    two = Predictor(net, manifest(4, "canonical", [COARSE, FINE]), device="cpu").predict(volume)
    seen = []
    three = Predictor({"coarse": net, "fine": net, "refine": ShiftedHeatmapNet(net)},
                      manifest(4, "canonical", [COARSE, FINE, refine]), device="cpu").predict(
        volume, progress=lambda *event: seen.append(event))
    np.testing.assert_array_equal(three.coarse_positions, two.coarse_positions)
    shift_mm = np.array([refine["spacing_mm"][0] * net.output_stride, 0.0, 0.0])
    np.testing.assert_allclose(three.landmarks.positions - truth_positions(), np.tile(shift_mm, (4, 1)), atol=0.3)
    np.testing.assert_allclose(three.signals["pass_shift_mm"],
                               np.linalg.norm(three.landmarks.positions - two.landmarks.positions, axis=1), atol=1e-9)
    assert {f"{stage}_{part}" for stage in ("coarse", "fine", "refine")
            for part in ("preprocessing", "network", "decoding")} | {"total"} == set(three.timings)
    steps = [step for step, _ in seen]
    assert steps.index("fine") < steps.index("refine") and seen[-1] == ("done", 1.0)
