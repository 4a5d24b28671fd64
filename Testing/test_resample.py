"""Patches and index boxes keep every point at its LPS position."""

from __future__ import annotations

import numpy as np
import pytest

from builders_volumes import rotation
from H3DELandmarksLib.data.resample import crop_or_pad_to_box, resample_patch
from H3DELandmarksLib.data.volume import Volume

OBLIQUE = rotation(0, 0.4) @ rotation(1, -0.3) @ rotation(2, 0.6)
SPACING = (1.0, 1.25, 0.8)
ORIGIN = (-12.0, 7.5, 40.0)
CENTER = np.array([-3.0, 18.0, 50.0])
SPIKE = (3, 4, 5)


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


def test_resample_voxel_types():
    volume = spike_volume(OBLIQUE)
    assert resample_patch(volume, CENTER, (4, 4, 4), 2.0, interpolator="nearest").array.dtype == np.int16
    assert resample_patch(volume, CENTER, (4, 4, 4), 2.0, interpolator="linear").array.dtype == np.float32


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


@pytest.mark.parametrize("direction", [None, rotation(2, 0.8)], ids=["canonical", "rotated"])
def test_resample_patch_is_centred_on_the_point(direction):
    volume = blob_volume(OBLIQUE)
    patch = resample_patch(volume, CENTER, size_ijk=(9, 10, 11), spacing=0.6, direction=direction)
    assert patch.shape_ijk == (9, 10, 11)
    np.testing.assert_allclose(patch.index_to_physical((4, 4.5, 5)), CENTER, atol=1e-9)
    np.testing.assert_allclose(patch.direction, np.eye(3) if direction is None else direction)
    assert_within_half_voxel(patch, centroid_lps(patch), CENTER)


def test_default_value_fills_outside_and_defaults_to_the_minimum():
    volume = spike_volume(np.eye(3))
    far = np.array(ORIGIN) - 100
    assert resample_patch(volume, far, (2, 2, 2), 1.0).array.max() == volume.array.min()
    assert np.all(resample_patch(volume, far, (2, 2, 2), 1.0, default_value=-1024).array == -1024)


def test_unknown_interpolator_is_refused():
    with pytest.raises(ValueError, match="cubic"):
        resample_patch(spike_volume(np.eye(3)), CENTER, (2, 2, 2), 2.0, interpolator="cubic")
