"""The predictor's whole geometric chain (orientation, resampling, windows, patches, decoding) is exact.

Each landmark l is a bright ball whose intensity level, 100 * (l + 1), says which landmark it is,
placed at a known LPS position in volumes with flipped, permuted and oblique direction matrices and
anisotropic spacing. The stand-in networks compute their output from the image alone (they never
see the positions): channel l responds to voxels near level l, blurred by a Gaussian, output at the
network's stride. Every detected position must lie within 0.5 voxel (of the volume's own spacing)
of the truth.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from builders_blobs import (
    CENTRE_LPS,
    COARSE,
    COARSE_TILED,
    DIRECTIONS,
    FINE,
    LEVEL_STEP,
    BlobHeatmapNet,
    LevelResponse,
    blob_volume,
    heatmap_predictor,
    manifest,
    rotation,
    truth_positions,
    voxel_errors,
)
from H3DELandmarksLib.inference import Predictor
from H3DELandmarksLib.model.config import default_config


class BlobProposalNet(nn.Module):
    """Proposal-head stand-in: per stride-4 cell, a Newton step on the log response of the channel
    strongest there gives the shared offset; class logits grow with each channel's response."""

    output_stride = 4

    def __init__(self, n_landmarks: int, scale: float, anchor_radii, sigma: float = 3.0) -> None:
        super().__init__()
        self.response = LevelResponse(n_landmarks, scale, sigma)
        self.register_buffer("radii", torch.tensor(anchor_radii, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        response = self.response(x)
        log_response = torch.log(response.clamp(min=1e-30))
        cells = response[:, :, ::4, ::4, ::4]
        strongest = cells.argmax(1, keepdim=True)
        steps = []
        for axis in range(3):
            ahead = torch.roll(log_response, -1, dims=2 + axis)
            behind = torch.roll(log_response, 1, dims=2 + axis)
            slope = (ahead - behind) / 2
            curvature = (ahead - 2 * log_response + behind).clamp(max=-1e-6)
            step = (-slope / curvature)[:, :, ::4, ::4, ::4]
            steps.append(torch.gather(step, 1, strongest)[:, 0])
        offset_cells = torch.stack(steps, dim=-1).nan_to_num(0.0).clamp(-8, 8) / 4  # (B, X, Y, Z, 3)
        fraction = offset_cells[..., None, :] / self.radii[:, None]  # (B, X, Y, Z, A, 3)
        reachable = fraction.abs().amax(-1) < 0.98
        offsets = torch.atanh(fraction.clamp(-0.98, 0.98))
        logits = 40 * (cells.permute(0, 2, 3, 4, 1) - 0.08)  # (B, X, Y, Z, L)
        logits = logits[..., None, :] - 50 * (~reachable)[..., None].float()
        return torch.cat([offsets, logits], dim=-1)


FINE_WINDOWS = {"name": "fine", "spacing_mm": [1.0, 1.0, 1.0], "patch_size": [32, 32, 32]}
STAGE_SETS = {"coarse+fine": [COARSE, FINE], "tiled coarse+fine": [COARSE_TILED, FINE], "fine only": [FINE_WINDOWS]}


@pytest.mark.parametrize("direction_name", DIRECTIONS)
@pytest.mark.parametrize("orientation", ["canonical", "native"])
@pytest.mark.parametrize("stage_set", STAGE_SETS)
def test_heatmap_positions_within_half_a_voxel(direction_name, orientation, stage_set):
    truth = truth_positions()
    volume = blob_volume(DIRECTIONS[direction_name], truth)
    steps = []
    detection = heatmap_predictor(STAGE_SETS[stage_set], orientation).predict(
        volume, progress=lambda step, fraction: steps.append(step))
    errors = voxel_errors(volume, detection.landmarks.positions, truth)
    assert errors.max() < 0.5, errors
    assert detection.landmarks.present.all(), detection.landmarks.confidence
    windows = steps.count(STAGE_SETS[stage_set][0]["name"])
    assert windows > 1 if stage_set != "coarse+fine" else windows == 1
    if len(STAGE_SETS[stage_set]) == 2:
        coarse_errors = np.linalg.norm(detection.coarse_positions - truth, axis=1)
        assert coarse_errors.max() < 2.5, coarse_errors
    else:
        assert detection.coarse_positions is None


@pytest.mark.parametrize("direction_name", ["permuted", "oblique"])
@pytest.mark.parametrize("orientation", ["canonical", "native"])
def test_proposal_head_positions_within_half_a_voxel(direction_name, orientation):
    truth = truth_positions()
    volume = blob_volume(DIRECTIONS[direction_name], truth)
    n = len(truth)
    config = default_config(n, head="proposals")
    net = BlobProposalNet(n, 1 / (LEVEL_STEP * (n + 1)), config.anchor_radii)
    fine = {"name": "fine", "spacing_mm": [1.0, 1.0, 1.0], "patch_size": [32, 32, 32]}
    predictor = Predictor(net, manifest(n, orientation, [COARSE, fine], head="proposals"), device="cpu")
    detection = predictor.predict(volume)
    errors = voxel_errors(volume, detection.landmarks.positions, truth)
    assert errors.max() < 0.5, errors
    assert detection.landmarks.present.all()


def test_a_missing_ball_is_reported_absent_with_a_best_guess():
    truth = truth_positions()
    volume = blob_volume(DIRECTIONS["oblique"], truth, shown=[0, 1, 2])
    detection = heatmap_predictor([COARSE, FINE]).predict(volume)
    landmarks = detection.landmarks
    np.testing.assert_array_equal(landmarks.present, [True, True, True, False])
    assert landmarks.confidence[3] < 0.3 <= landmarks.confidence[:3].min()
    assert np.all(np.isfinite(landmarks.positions[3]))
    assert voxel_errors(volume, landmarks.positions[:3], truth[:3]).max() < 0.5


class ShiftedChannelNet(nn.Module):
    """A heatmap stand-in whose channel `channel` answers `shift` output voxels away along X: instead
    of at its ball (a misplaced peak), or also there, `look_alike_gain` times stronger (a
    look-alike such as a structure's mirror image)."""

    def __init__(self, net: nn.Module, channel: int, shift: int, look_alike_gain: float | None = None) -> None:
        super().__init__()
        self.net, self.channel, self.shift, self.look_alike_gain = net, channel, shift, look_alike_gain
        self.output_stride = net.output_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.net(x).clone()
        shifted = torch.roll(output[:, self.channel], self.shift, dims=1)
        if self.look_alike_gain is None:
            output[:, self.channel] = shifted
        else:
            output[:, self.channel] += self.look_alike_gain * shifted
        return output


SIX_OFFSETS = np.array([[-12.0, -8.0, 5.0], [10.0, -7.0, -9.0], [-5.0, 11.0, -8.0], [9.0, 9.0, 10.0],
                        [1.0, -12.0, -11.0], [-11.0, 6.0, 11.0]])


@pytest.mark.parametrize("aligned", [True, False])
def test_shape_aligned_fine_stage_restarts_a_coarse_outlier_from_the_fitted_shape(aligned):
    truth = CENTRE_LPS + SIX_OFFSETS
    volume = blob_volume(DIRECTIONS["oblique"], truth)
    scale = 1 / (LEVEL_STEP * 7)
    fine = {"name": "fine", "spacing_mm": [1.0, 1.0, 1.0], "patch_size": [16, 16, 16]}
    if aligned:
        fine.update(orientation="shape-aligned", passes=2)
    stages = manifest(6, "canonical", [COARSE, fine])
    model_frame = rotation([2.0, -1.0, 1.0], 70.0)
    stages["preprocessing"]["mean_shape"] = ((truth - truth.mean(0)) @ model_frame).tolist()
    networks = {"coarse": ShiftedChannelNet(BlobHeatmapNet(6, scale), channel=2, shift=3),
                "fine": BlobHeatmapNet(6, scale)}
    detection = Predictor(networks, stages, device="cpu").predict(volume)
    assert np.linalg.norm(detection.coarse_positions[2] - truth[2]) > 12
    errors = voxel_errors(volume, detection.landmarks.positions, truth)
    if aligned:
        assert errors.max() < 0.5, errors
    else:
        assert errors[2] > 5 and np.delete(errors, 2).max() < 0.5, errors


@pytest.mark.parametrize("prior_mm", [None, 2.0])
def test_shape_prior_picks_the_peak_where_the_shape_expects_it(prior_mm):
    truth = CENTRE_LPS + SIX_OFFSETS
    volume = blob_volume(DIRECTIONS["permuted"], truth)
    scale = 1 / (LEVEL_STEP * 7)
    fine = {"name": "fine", "spacing_mm": [1.0, 1.0, 1.0], "patch_size": [24, 24, 24],
            "orientation": "shape-aligned", "passes": 2}
    if prior_mm is not None:
        fine["shape_prior_mm"] = prior_mm
    stages = manifest(6, "canonical", [COARSE, fine])
    stages["preprocessing"]["mean_shape"] = ((truth - truth.mean(0)) @ rotation([0.0, 1.0, 1.0], 40.0)).tolist()
    look_alike = ShiftedChannelNet(BlobHeatmapNet(6, scale), channel=4, shift=5, look_alike_gain=1.5)
    networks = {"coarse": BlobHeatmapNet(6, scale), "fine": look_alike}
    detection = Predictor(networks, stages, device="cpu").predict(volume)
    errors = np.linalg.norm(detection.landmarks.positions - truth, axis=1)
    if prior_mm is None:
        assert 9.0 < errors[4] < 11.0 and np.delete(errors, 4).max() < 0.5, errors
    else:
        assert errors.max() < 0.5, errors
