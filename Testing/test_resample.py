"""Resampling, reorientation and cropping keep every point at its LPS position."""

from __future__ import annotations

import numpy as np
import pytest

from builders_volumes import rotation
from H3DELandmarksLib.data.resample import (
    crop_or_pad_to_box,
    crop_to_physical_box,
    reorient_to_canonical,
    resample_patch,
    resample_to_reference,
    resample_to_spacing,
)
from H3DELandmarksLib.data.volume import Volume

OBLIQUE = rotation(0, 0.4) @ rotation(1, -0.3) @ rotation(2, 0.6)
SPACING = (1.0, 1.25, 0.8)
ORIGIN = (-12.0, 7.5, 40.0)
CENTER = np.array([-3.0, 18.0, 50.0])
SPIKE = (3, 4, 5)
SIGNED_PERMUTATIONS = {
    "identity": np.eye(3),
    "RAS": np.diag([-1.0, -1.0, 1.0]),
    "flipped i and k": np.diag([-1.0, 1.0, -1.0]),
    "permuted": np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
    "sagittal, flipped": np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
    "permuted with noise": np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) + 1e-7,
}


def grid_positions(volume: Volume) -> np.ndarray:
    """LPS position of every voxel, shaped like ``volume.array`` plus a last axis of 3."""
    k, j, i = np.indices(volume.array.shape)
    return volume.index_to_physical(np.stack([i, j, k], axis=-1))


def blob_volume(direction: np.ndarray, shape_kji=(24, 22, 20), sigma: float = 2.5) -> Volume:
    """A Gaussian blob (isotropic in mm) centred on CENTER, on a grid along `direction`."""
    template = Volume(np.zeros(shape_kji, np.float32), SPACING, ORIGIN, np.asarray(direction, float))
    center_index = np.array(template.shape_ijk) / 2 - 0.3
    origin = CENTER - template.index_to_physical_matrix[:3, :3] @ center_index
    template = Volume(template.array, SPACING, tuple(origin), template.direction)
    squared = np.sum((grid_positions(template) - CENTER) ** 2, axis=-1)
    array = (1000 * np.exp(-squared / (2 * sigma**2))).astype(np.float32)
    return Volume(array, SPACING, tuple(origin), template.direction)


def spike_volume(direction: np.ndarray, shape_kji=(7, 8, 9)) -> Volume:
    """Distinct values everywhere, one bright voxel (30000) at index SPIKE."""
    array = np.arange(np.prod(shape_kji), dtype=np.int16).reshape(shape_kji)
    array[SPIKE[::-1]] = 30000
    return Volume(array, SPACING, ORIGIN, np.asarray(direction, float))


def centroid_lps(volume: Volume) -> np.ndarray:
    """Intensity-weighted centroid (LPS) of the volume above its minimum."""
    weights = volume.array.astype(float) - volume.array.min()
    return np.tensordot(weights, grid_positions(volume), axes=3) / weights.sum()


def assert_within_half_voxel(volume: Volume, point: np.ndarray, expected: np.ndarray) -> None:
    offset = volume.physical_to_index(point) - volume.physical_to_index(expected)
    assert np.all(np.abs(offset) <= 0.5), offset


def assert_values_follow_geometry(result: Volume, source: Volume) -> None:
    """Every result voxel lies exactly on a source voxel centre and holds that voxel's value."""
    source_index = source.physical_to_index(grid_positions(result))
    rounded = np.round(source_index).astype(int)
    np.testing.assert_allclose(source_index, rounded, atol=1e-4)
    i, j, k = np.moveaxis(rounded, -1, 0)
    np.testing.assert_array_equal(result.array, source.array[k, j, i])


@pytest.mark.parametrize("interpolator", ["linear", "nearest", "bspline"])
@pytest.mark.parametrize("spacing", [2.0, (0.7, 0.9, 1.6)])
def test_resample_to_spacing_keeps_positions_and_extent(interpolator, spacing):
    volume = blob_volume(OBLIQUE)
    result = resample_to_spacing(volume, spacing, interpolator)
    new_spacing = np.broadcast_to(spacing, (3,))
    extent = np.array(volume.shape_ijk) * SPACING
    assert result.shape_ijk == tuple(np.ceil(extent / new_spacing - 1e-9).astype(int))
    np.testing.assert_allclose(result.spacing, new_spacing)
    np.testing.assert_allclose(result.direction, volume.direction, atol=1e-12)
    first_corner = -0.5 * np.ones(3)
    np.testing.assert_allclose(result.index_to_physical(first_corner), volume.index_to_physical(first_corner))
    assert_within_half_voxel(result, centroid_lps(result), CENTER)


def test_resample_voxel_types():
    volume = spike_volume(OBLIQUE)
    assert resample_to_spacing(volume, 2.0, "nearest").array.dtype == np.int16
    assert resample_to_spacing(volume, 2.0, "linear").array.dtype == np.float32


@pytest.mark.parametrize("name", SIGNED_PERMUTATIONS)
def test_reorient_signed_permutation_is_exact(name):
    volume = spike_volume(SIGNED_PERMUTATIONS[name])
    result = reorient_to_canonical(volume)
    np.testing.assert_array_equal(result.direction, np.eye(3))
    assert sorted(result.shape_ijk) == sorted(volume.shape_ijk)
    assert_values_follow_geometry(result, volume)
    spike = np.argwhere(result.array == 30000)[0][::-1]
    np.testing.assert_allclose(result.index_to_physical(spike), volume.index_to_physical(SPIKE), atol=1e-4)


def test_reorient_oblique_resamples_onto_the_bounding_box():
    volume = blob_volume(OBLIQUE)
    result = reorient_to_canonical(volume)
    np.testing.assert_array_equal(result.direction, np.eye(3))
    np.testing.assert_allclose(result.spacing, [min(SPACING)] * 3)
    corners_ijk = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in volume.shape_ijk])).reshape(3, -1).T
    corners_in_result = result.physical_to_index(volume.index_to_physical(corners_ijk))
    assert np.all(corners_in_result >= -0.5 - 1e-9)
    assert np.all(corners_in_result <= np.array(result.shape_ijk) - 0.5 + 1e-9)
    assert_within_half_voxel(result, centroid_lps(result), CENTER)


def test_crop_or_pad_keeps_exact_geometry():
    volume = spike_volume(OBLIQUE)
    result = crop_or_pad_to_box(volume, origin_index=(-2, 1, 3), size=(14, 5, 6), pad_value=-7)
    assert result.shape_ijk == (14, 5, 6)
    np.testing.assert_allclose(result.origin, volume.index_to_physical((-2, 1, 3)))
    np.testing.assert_array_equal(result.direction, volume.direction)
    inside = result.array[:4, :, 2:11]
    np.testing.assert_array_equal(inside, volume.array[3:7, 1:6, 0:9])
    padded = np.ones(result.array.shape, bool)
    padded[:4, :, 2:11] = False
    assert np.all(result.array[padded] == -7)
    spike = np.argwhere(result.array == 30000)[0][::-1]
    np.testing.assert_allclose(result.index_to_physical(spike), volume.index_to_physical(SPIKE), atol=1e-9)


def test_crop_or_pad_entirely_outside_is_all_padding():
    result = crop_or_pad_to_box(spike_volume(OBLIQUE), (20, 0, 0), (3, 3, 3), pad_value=0)
    assert result.shape_ijk == (3, 3, 3) and not result.array.any()


def test_crop_to_physical_box_covers_the_box_without_interpolating():
    volume = spike_volume(np.diag([-1.0, 1.0, 1.0]))
    spike_lps = volume.index_to_physical(SPIKE)
    low, high = spike_lps - (1.4, 2.0, 0.5), spike_lps + (2.6, 1.1, 10.0)
    result = crop_to_physical_box(volume, low, high, pad_value=-1)
    assert result.shape_ijk == (5, 4, 14)
    centers = grid_positions(result)
    assert np.all(centers.min(axis=(0, 1, 2)) <= low + np.array(SPACING) / 2)
    assert np.all(centers.max(axis=(0, 1, 2)) >= high - np.array(SPACING) / 2)
    np.testing.assert_allclose(result.origin, volume.index_to_physical((0, 2, 4)))
    np.testing.assert_array_equal(result.array[:3], volume.array[4:7, 2:6, 0:5])
    assert np.all(result.array[3:] == -1)
    spike = np.argwhere(result.array == 30000)[0][::-1]
    np.testing.assert_allclose(result.index_to_physical(spike), spike_lps, atol=1e-9)


@pytest.mark.parametrize("direction", [None, rotation(2, 0.8)], ids=["canonical", "rotated"])
def test_resample_patch_is_centred_on_the_point(direction):
    volume = blob_volume(OBLIQUE)
    patch = resample_patch(volume, CENTER, size_ijk=(9, 10, 11), spacing=0.6, direction=direction)
    assert patch.shape_ijk == (9, 10, 11)
    np.testing.assert_allclose(patch.index_to_physical((4, 4.5, 5)), CENTER, atol=1e-9)
    np.testing.assert_allclose(patch.direction, np.eye(3) if direction is None else direction)
    assert_within_half_voxel(patch, centroid_lps(patch), CENTER)


def test_resample_to_reference_uses_the_reference_grid():
    volume = blob_volume(OBLIQUE)
    reference = blob_volume(rotation(1, 0.5), shape_kji=(20, 20, 20))
    result = resample_to_reference(volume, reference, "bspline")
    assert result.shape_ijk == reference.shape_ijk
    np.testing.assert_allclose(result.origin, reference.origin)
    np.testing.assert_allclose(result.direction, reference.direction, atol=1e-12)
    assert_within_half_voxel(result, centroid_lps(result), CENTER)


def test_default_value_fills_outside_and_defaults_to_the_minimum():
    volume = spike_volume(np.eye(3))
    far = np.array(ORIGIN) - 100
    assert resample_patch(volume, far, (2, 2, 2), 1.0).array.max() == volume.array.min()
    assert np.all(resample_patch(volume, far, (2, 2, 2), 1.0, default_value=-1024).array == -1024)


def test_unknown_interpolator_is_refused():
    with pytest.raises(ValueError, match="cubic"):
        resample_to_spacing(spike_volume(np.eye(3)), 2.0, "cubic")
