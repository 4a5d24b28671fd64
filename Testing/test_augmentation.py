"""Augmentation moves image and points together; training patches match the predictor's input."""

import numpy as np
import pytest

from H3DELandmarksLib.data.augmentation import (
    AugmentationSettings,
    PatchGrid,
    PatchTransform,
    augment_intensity,
    points_to_patch,
    random_rotation,
    random_transform,
    sample_patch,
    transform_points,
)
from H3DELandmarksLib.data.landmarks import Landmarks
from H3DELandmarksLib.data.phantom import make_phantom
from H3DELandmarksLib.data.preprocessing import IntensityMap, extract_patch
from H3DELandmarksLib.data.shape import mean_shape
from H3DELandmarksLib.data.volume import Volume
from H3DELandmarksLib.training.config import StageConfig
from H3DELandmarksLib.training.sampling import StageSampler

OBLIQUE = np.array([[0.0, 0.6, 0.8], [1.0, 0.0, 0.0], [0.0, 0.8, -0.6]])


def blob_volume(points_ijk, shape_kji=(36, 40, 44), spacing=(1.0, 1.2, 0.9), direction=OBLIQUE):
    """A volume with a bright Gaussian blob (sigma 1.5 mm) at each point, and the points in LPS."""
    volume = Volume(np.zeros(shape_kji, np.float32), spacing, (10.0, -20.0, 5.0), direction)
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape_kji), indexing="ij")
    grid = np.stack([i, j, k], axis=-1).astype(float)
    positions = volume.index_to_physical(np.asarray(points_ijk, float))
    lps = volume.index_to_physical(grid)
    array = sum(np.exp(-np.sum((lps - p) ** 2, axis=-1) / (2 * 1.5**2)) for p in positions)
    return Volume(array.astype(np.float32), spacing, volume.origin, direction), positions


def test_identity_patch_equals_the_predictor_patch():
    volume, landmarks = make_phantom(4, size=(48, 48, 48), spacing=2.0)
    centre = landmarks.positions[0]
    grid = PatchGrid((30, 26, 34), (2.5, 2.5, 2.5))
    ours = sample_patch(volume, PatchTransform.identity(centre), grid, -1000.0)
    theirs = extract_patch(volume, centre, grid.size, grid.spacing, np.eye(3), -1000.0).array
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_blob_at_a_landmark_stays_under_the_transformed_landmark(seed):
    points_ijk = [[20.0, 18.0, 16.0], [12.5, 25.0, 20.0], [28.0, 12.0, 22.5]]
    volume, positions = blob_volume(points_ijk)
    settings = AugmentationSettings(rotation_deg=180, scale=(0.85, 1.15), anisotropy=0.1, elastic_mm=1.5)
    rng = np.random.default_rng(seed)
    transform = random_transform(rng, settings, positions.mean(0))
    grid = PatchGrid((40, 40, 40), (0.7, 0.7, 0.7))
    patch = sample_patch(volume, transform, grid, 0.0)
    inside = 0
    for point in points_to_patch(transform, grid, positions):
        nearest = np.round(point).astype(int)
        if np.any(nearest < 3) or np.any(nearest > 36):
            continue
        i, j, k = nearest
        window = patch[k - 3:k + 4, j - 3:j + 4, i - 3:i + 4]
        peak = np.unravel_index(np.argmax(window), window.shape)
        assert patch[k, j, i] > 0.8
        assert np.abs(np.array(peak) - 3).max() <= 1
        inside += 1
    assert inside >= 2


def test_points_to_patch_inverts_transform_points():
    rng = np.random.default_rng(5)
    settings = AugmentationSettings(rotation_deg=40, elastic_mm=2.0)
    transform = random_transform(rng, settings, np.array([3.0, -4.0, 10.0]))
    grid = PatchGrid((24, 28, 32), (1.5, 1.0, 1.25), OBLIQUE)
    ijk = rng.uniform(0, 24, (10, 3))
    np.testing.assert_allclose(points_to_patch(transform, grid, transform_points(transform, grid, ijk)), ijk, atol=1e-6)


def test_shifting_a_transform_moves_the_points_the_other_way():
    transform = PatchTransform.identity(np.zeros(3))
    grid = PatchGrid((10, 10, 10), (2.0, 2.0, 2.0))
    point = np.array([[1.0, 2.0, 3.0]])
    moved = points_to_patch(transform.shifted([4.0, 0.0, -2.0]), grid, point) - points_to_patch(transform, grid, point)
    np.testing.assert_allclose(moved, [[-2.0, 0.0, 1.0]])


def test_random_rotations_are_proper_and_bounded():
    rng = np.random.default_rng(1)
    for max_deg in (10.0, 180.0):
        for _ in range(20):
            rotation = random_rotation(rng, max_deg)
            np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
            assert np.linalg.det(rotation) == pytest.approx(1.0)
            angle = np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1, 1)))
            assert angle <= max_deg + 1e-9


def test_intensity_augmentation_stays_in_range_and_is_seeded():
    array = np.linspace(0, 1, 4000, dtype=np.float32).reshape(10, 20, 20)
    settings = AugmentationSettings(contrast=(0.5, 2.0), brightness=0.3, noise=0.2)
    first = augment_intensity(array, np.random.default_rng(3), settings, 0.0, 1.0)
    again = augment_intensity(array, np.random.default_rng(3), settings, 0.0, 1.0)
    assert first.dtype == np.float32 and first.shape == array.shape
    assert first.min() >= 0.0 and first.max() <= 1.0
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, array)


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="scale"):
        AugmentationSettings(scale=(1.2, 0.8))


def phantom_sampler(name, **changes):
    stage = StageConfig(name, (3.0, 3.0, 3.0), (40, 40, 40), **changes)
    settings = AugmentationSettings(rotation_deg=30, elastic_mm=1.0)
    return StageSampler(stage, "canonical", IntensityMap(-1000, 2000, 0, 1), settings)


def test_coarse_training_patches_keep_every_present_landmark():
    volume, landmarks = make_phantom(2, size=(48, 48, 48), spacing=2.5, absent=["menton"])
    sampler = phantom_sampler("coarse")
    for seed in range(3):
        sample = sampler.training_sample(volume, landmarks, np.random.default_rng(seed))
        assert sample.image.shape == (40, 40, 40)
        assert 0.0 <= sample.image.min() and sample.image.max() <= 1.0
        np.testing.assert_array_equal(sample.present, landmarks.present)


def test_fine_patches_centre_near_their_landmark_and_validation_matches_the_predictor():
    volume, landmarks = make_phantom(3, size=(48, 48, 48), spacing=2.5)
    sampler = phantom_sampler("fine", centre_jitter=0.2)
    sample = sampler.training_sample(volume, landmarks, np.random.default_rng(0))
    offset = sample.points[sample.focus] - 19.5
    assert np.all(np.abs(offset) <= 0.2 * 40 * 1.15 + 1.0)
    validation = sampler.validation_samples(volume, landmarks, seed=7)
    assert len(validation) == landmarks.present.sum()
    first = validation[0]
    centre = landmarks.positions[first.focus] + (19.5 - first.points[first.focus]) * 3.0
    expected = extract_patch(volume, centre, (40, 40, 40), (3.0, 3.0, 3.0), np.eye(3), -1000.0)
    np.testing.assert_allclose(first.image, IntensityMap(-1000, 2000, 0, 1).apply(expected.array).transpose(2, 1, 0),
                               atol=1e-5)


def test_landmarks_without_position_stay_unknown():
    volume, landmarks = make_phantom(3, size=(40, 40, 40), spacing=3.0)
    positions = landmarks.positions.copy()
    positions[1] = np.nan
    present = landmarks.present.copy()
    present[1] = False
    partial = Landmarks(landmarks.names, positions, present)
    sample = phantom_sampler("coarse").validation_samples(volume, partial, seed=0)[0]
    assert np.isnan(sample.points[1]).all() and not sample.present[1]


def test_shape_aligned_patches_follow_the_anatomy_not_the_scanner_axes():
    volume, landmarks = make_phantom(5, size=(48, 48, 48), spacing=2.5)
    turn = random_rotation(np.random.default_rng(1), 180.0)
    centre = np.asarray(volume.index_to_physical((np.asarray(volume.shape_ijk) - 1) / 2.0))
    turned_volume = Volume(volume.array, volume.spacing, centre + turn @ (np.asarray(volume.origin) - centre),
                           turn @ np.asarray(volume.direction))
    turned_landmarks = Landmarks(landmarks.names, centre + (landmarks.positions - centre) @ turn.T, landmarks.present)
    stage = StageConfig("fine", (3.0, 3.0, 3.0), (40, 40, 40), orientation="shape-aligned")
    sampler = StageSampler(stage, "canonical", IntensityMap(-1000, 2000, 0, 1), AugmentationSettings(),
                           mean_shape([landmarks.positions]))
    for plain, turned in zip(sampler.validation_samples(volume, landmarks, seed=2),
                             sampler.validation_samples(turned_volume, turned_landmarks, seed=2)):
        np.testing.assert_allclose(turned.points, plain.points, atol=1e-6)
        np.testing.assert_allclose(turned.image, plain.image, atol=1e-4)
    with pytest.raises(ValueError, match="mean shape"):
        StageSampler(stage, "canonical", IntensityMap(-1000, 2000, 0, 1), AugmentationSettings())
