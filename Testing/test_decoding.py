"""Output decoders recover known positions."""

import numpy as np
import torch

from H3DELandmarksLib.model.decoding import decode_heatmaps, decode_proposals, voxel_of


def gaussian_heatmaps(centres, grid, sigmas, peak=1.0, background=0.0):
    axes = torch.meshgrid(*(torch.arange(s, dtype=torch.float64) for s in grid), indexing="ij")
    maps = []
    for centre, sigma in zip(centres, sigmas):
        d2 = sum((a - c) ** 2 for a, c in zip(axes, centre))
        maps.append(peak * torch.exp(-d2 / (2 * sigma**2)) + background)
    return torch.stack(maps).float()


def test_heatmap_decoding_is_sub_voxel_accurate_on_gaussians():
    rng = np.random.default_rng(0)
    grid = (40, 36, 30)
    centres = rng.uniform(5, 25, size=(20, 3))
    sigmas = rng.uniform(1.0, 6.0, size=20)
    coords, confidence = decode_heatmaps(gaussian_heatmaps(centres, grid, sigmas, peak=2.0), peak_value=2.0)
    error = np.linalg.norm(coords.numpy() - centres, axis=1)
    assert error.max() < 0.1, error
    assert confidence.min() > 0.9


def test_heatmap_decoding_with_reference_style_negative_background_and_stride():
    centres = np.array([[10.3, 12.7, 8.45], [20.5, 5.25, 15.9]])
    maps = gaussian_heatmaps(centres, (32, 24, 24), [3.0, 4.0], peak=3.0, background=-1.0)
    coords, confidence = decode_heatmaps(maps, stride=2, peak_value=2.0)
    assert np.linalg.norm(coords.numpy() / 2 - centres, axis=1).max() < 0.1
    assert confidence.min() > 0.95


def test_low_peak_gives_low_confidence():
    maps = gaussian_heatmaps([[5.0, 5.0, 5.0]], (12, 12, 12), [2.0], peak=0.2)
    _, confidence = decode_heatmaps(maps, peak_value=1.0)
    assert abs(confidence.item() - 0.2) < 1e-5


def test_peak_weights_choose_the_peak_but_not_its_position_or_confidence():
    true, look_alike = [8.3, 10.6, 9.2], [22.0, 10.0, 9.0]
    alone = gaussian_heatmaps([true], (32, 20, 20), [2.0], peak=0.7)
    maps = alone + gaussian_heatmaps([look_alike], (32, 20, 20), [2.0], peak=0.9)
    coords, confidence = decode_heatmaps(maps)
    assert np.linalg.norm(coords.numpy()[0] - look_alike) < 0.1
    axes = torch.meshgrid(*(torch.arange(s, dtype=torch.float32) for s in (32, 20, 20)), indexing="ij")
    prior = torch.exp(-sum((a - c) ** 2 for a, c in zip(axes, [10.0, 10.0, 10.0])) / (2 * 4.0**2))[None]
    coords, confidence = decode_heatmaps(maps, peak_weights=prior)
    assert np.linalg.norm(coords.numpy()[0] - true) < 0.1
    assert abs(confidence.item() - decode_heatmaps(alone)[1].item()) < 1e-3


def test_proposal_decoding_returns_the_medoid_of_top_proposals():
    grid, radii = (8, 8, 4), (0.5, 0.75, 1.0, 1.25)
    proposals = torch.full((*grid, len(radii), 3 + 2), -10.0)
    target = np.array([13.0, 17.0, 6.0])
    agreeing = 0
    for cell in np.ndindex(*grid):
        for anchor in (2, 3):
            fraction = (target / 4 - np.array(cell)) / radii[anchor]
            if np.abs(fraction).max() < 0.99 and agreeing < 10:
                proposals[cell][anchor, :3] = torch.atanh(torch.tensor(fraction, dtype=torch.float32))
                proposals[cell][anchor, 3] = 5.0
                agreeing += 1
    assert agreeing == 10
    for cell in [(0, 0, 0), (7, 7, 3), (0, 7, 0), (7, 0, 3), (4, 0, 0)]:
        proposals[cell][0, 3] = 6.0
    proposals[1, 1, 1, 0, 4] = 3.0
    coords, confidence = decode_proposals(proposals, radii)
    assert np.linalg.norm(coords[0].numpy() - target) < 1e-3
    assert abs(confidence[0].item() - torch.sigmoid(torch.tensor(6.0)).item()) < 1e-6
    assert abs(confidence[1].item() - torch.sigmoid(torch.tensor(3.0)).item()) < 1e-6


def test_flat_indices_map_to_their_voxels_on_an_uneven_grid():
    grid = [5, 7, 3]
    index = torch.arange(5 * 7 * 3)
    expected = np.stack(np.unravel_index(index.numpy(), grid), axis=1)
    np.testing.assert_array_equal(voxel_of(index, grid).numpy(), expected)
