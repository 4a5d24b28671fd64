"""Patch matching: estimates near a landmark move onto it, within bounds, from shipped blocks."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter

from H3DELandmarksLib.data.patch_matching import (
    MatchSettings,
    landmark_patches,
    match_patches,
    sample_volume,
    target_regions,
)
from H3DELandmarksLib.data.volume import Volume

SPACING = 0.5


def textured_volume(seed: int = 0, size: int = 48) -> Volume:
    """Smooth random texture (features a few voxels wide), tilted axes."""
    array = gaussian_filter(np.random.default_rng(seed).normal(size=(size,) * 3), 1.5).astype(np.float32) * 100
    angle = np.deg2rad(20)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return Volume(array, (SPACING,) * 3, (3.0, -2.0, 1.0), direction)


def moved_copy(volume: Volume, matrix: np.ndarray, translation: np.ndarray) -> tuple[Volume, callable]:
    """`volume` resampled so that reference point p lies at ``matrix @ p + translation`` in the copy,
    and that map."""
    forward = sitk.AffineTransform(3)
    forward.SetMatrix(np.linalg.inv(matrix).ravel().tolist())
    forward.SetTranslation((-np.linalg.inv(matrix) @ translation).tolist())
    image = volume.to_sitk()
    moved = sitk.Resample(image, image, forward, sitk.sitkBSpline, 0.0, sitk.sitkFloat32)
    return Volume.from_sitk(moved), lambda p: p @ matrix.T + translation


def interior_points(volume: Volume, count: int, seed: int = 1) -> np.ndarray:
    ijk = np.random.default_rng(seed).uniform(16, 32, size=(count, 3))
    return volume.index_to_physical(ijk)


@pytest.mark.parametrize("matrix", [np.eye(3), np.array([[1.04, 0.03, 0], [-0.03, 0.98, 0.02], [0, 0, 1.02]])])
def test_estimates_a_voxel_off_move_onto_the_landmarks(matrix):
    """Registration errors are locally coherent: a shared offset of about a voxel, plus noise."""
    reference = textured_volume()
    landmarks = interior_points(reference, 12)
    target, to_target = moved_copy(reference, matrix, np.array([0.23, -0.31, 0.17]))
    truth = to_target(landmarks)
    offsets = np.array([0.4, -0.3, 0.35]) + np.random.default_rng(2).uniform(-0.1, 0.1, size=truth.shape)
    settings = MatchSettings.for_voxels(SPACING)
    moved, scores = match_patches(landmark_patches(reference, landmarks, settings), target, truth + offsets, settings)
    before = np.linalg.norm(offsets, axis=1)
    after = np.linalg.norm(moved - truth, axis=1)
    assert np.median(after) < 0.2 * SPACING < np.median(before) / 5
    assert np.all(after < before)
    assert np.all(scores > 0.9)


def test_moves_never_exceed_the_search_and_far_estimates_do_not_jump():
    reference = textured_volume()
    landmarks = interior_points(reference, 10)
    settings = MatchSettings.for_voxels(SPACING)
    far = landmarks + np.array([3.0, 0.0, 0.0])
    moved, _ = match_patches(landmark_patches(reference, landmarks, settings), reference, far, settings)
    assert np.all(np.abs(moved - far) <= settings.search_mm + 1e-9)


def test_absent_landmarks_and_flat_templates_are_left_unmatched():
    reference = textured_volume()
    landmarks = interior_points(reference, 8)
    landmarks[2] = np.nan
    flat = Volume(np.full((48,) * 3, 7.0, np.float32), (SPACING,) * 3, (0.0, 0.0, 0.0), np.eye(3))
    settings = MatchSettings.for_voxels(SPACING)
    estimates = landmarks + 0.2
    moved, scores = match_patches(landmark_patches(reference, landmarks, settings), reference, estimates, settings)
    assert np.isnan(moved[2]).all() and np.isnan(scores[2])
    assert np.isfinite(scores[[0, 1, 3]]).all()
    flat_points = interior_points(flat, 8)
    moved, scores = match_patches(landmark_patches(flat, flat_points, settings), reference, flat_points, settings)
    assert np.isnan(scores).all()
    np.testing.assert_array_equal(moved, flat_points)


def test_too_few_landmark_pairs_fix_no_local_map():
    reference = textured_volume()
    landmarks = interior_points(reference, 3)
    settings = MatchSettings.for_voxels(SPACING)
    moved, scores = match_patches(landmark_patches(reference, landmarks, settings), reference, landmarks + 0.2,
                                  settings)
    np.testing.assert_array_equal(moved, landmarks + 0.2)
    assert np.isnan(scores).all()


def test_blocks_hold_the_scans_own_samples_even_at_its_border():
    reference = textured_volume()
    settings = MatchSettings.for_voxels(SPACING)
    corner = reference.index_to_physical(np.array([[1.0, 2.0, 46.0]]))
    points = np.vstack([interior_points(reference, 4), corner])
    patches = landmark_patches(reference, points, settings)
    offsets = np.random.default_rng(3).uniform(-1, 1, size=(50, 3)) * settings.half_size_mm
    samples = patches.sample(np.arange(len(points)), points[:, None] + offsets)
    for n, point in enumerate(points):
        np.testing.assert_allclose(samples[n], sample_volume(reference, point + offsets), atol=1e-3)


def test_regions_sampled_once_serve_every_reference_alike():
    reference = textured_volume()
    landmarks = interior_points(reference, 8)
    settings = MatchSettings.for_voxels(SPACING)
    target, to_target = moved_copy(reference, np.eye(3), np.array([0.2, 0.1, -0.15]))
    estimates = to_target(landmarks) + 0.3
    regions = target_regions(target, estimates, settings)
    patches = landmark_patches(reference, landmarks, settings)
    alone = match_patches(patches, target, estimates, settings)
    shared = match_patches(patches, target, estimates, settings, regions)
    np.testing.assert_array_equal(alone[0], shared[0])
    np.testing.assert_array_equal(alone[1], shared[1])
    assert np.isfinite(alone[1]).all()
