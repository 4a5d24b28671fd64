"""Patches and index boxes of volumes, done in physical (LPS mm) space.

Every function takes and returns a `Volume` (array ``[k, j, i]``; sizes, indices, spacing and
direction columns in ITK ``(i, j, k)`` order). A point keeps its LPS position through every
operation. `resample_patch` interpolates with SimpleITK; `crop_or_pad_to_box` copies voxels
without interpolating.

Voxel type: "nearest" keeps the input's voxel type; "linear" and "bspline" give float32
(float64 for float64 input). Points outside the input get `default_value`; None means the
input's minimum (air, for CT).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from .volume import Volume

INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "bspline": sitk.sitkBSpline,
}
# Which end (0: low, 1: high) of each axis the 8 corners of a box take.
CORNER_ENDS = np.array(list(np.ndindex(2, 2, 2)), bool)

Triple = float | Sequence[float]


def crop_or_pad_to_box(
    volume: Volume, origin_index: Sequence[int], size: Sequence[int], pad_value: float
) -> Volume:
    """Copy the index box ``[origin_index, origin_index + size)`` (i, j, k), padding outside.

    The box may extend past the volume on any side; voxels there get `pad_value`. Spacing and
    direction are kept and the origin moves to the box's first voxel, so geometry stays exact.
    """
    start = np.asarray(origin_index, int)
    size = np.asarray(size, int)
    if start.shape != (3,) or size.shape != (3,) or np.any(size < 1):
        raise ValueError(f"origin_index and size must be 3 integers, size >= 1; got {origin_index}, {size}")
    shape = np.asarray(volume.shape_ijk)
    source_start = np.clip(start, 0, shape)
    source_stop = np.clip(start + size, 0, shape)
    array = np.full(tuple(size[::-1]), pad_value, dtype=volume.array.dtype)
    if np.all(source_stop > source_start):
        target = _kji_slices(source_start - start, source_stop - start)
        array[target] = volume.array[_kji_slices(source_start, source_stop)]
    return Volume(
        array=array,
        spacing=volume.spacing,
        origin=tuple(float(o) for o in volume.index_to_physical(start)),
        direction=np.array(volume.direction, float),
    )


def resample_patch(
    volume: Volume,
    center_lps: Sequence[float],
    size_ijk: Sequence[int],
    spacing: Triple,
    direction: np.ndarray | None = None,
    interpolator: str = "linear",
    default_value: float | None = None,
) -> Volume:
    """Resample a patch of `size_ijk` voxels at `spacing` mm centred on `center_lps`.

    The patch axes follow the columns of `direction` (default identity: i → L, j → P, k → S).
    Its centre is continuous index ``(size_ijk - 1) / 2``, i.e. between two voxels on an axis
    of even size.
    """
    size = np.asarray(size_ijk, int)
    if size.shape != (3,) or np.any(size < 1):
        raise ValueError(f"size_ijk must be 3 integers >= 1, got {size_ijk}")
    patch_spacing = _positive_triple(spacing, "spacing")
    patch_direction = np.eye(3) if direction is None else np.asarray(direction, float)
    origin = np.asarray(center_lps, float) - patch_direction @ (patch_spacing * (size - 1) / 2)
    return _resample(volume, size, patch_spacing, origin, patch_direction, interpolator, default_value)


def _resample(
    volume: Volume,
    size: np.ndarray,
    spacing: np.ndarray,
    origin: np.ndarray,
    direction: np.ndarray,
    interpolator: str,
    default_value: float | None,
) -> Volume:
    """Resample onto the grid given in (i, j, k) order with SimpleITK (identity transform)."""
    if interpolator not in INTERPOLATORS:
        raise ValueError(f"Unknown interpolator {interpolator!r}; use one of {', '.join(INTERPOLATORS)}.")
    image = volume.to_sitk()
    if interpolator == "nearest":
        pixel_type = image.GetPixelID()
    elif volume.array.dtype == np.float64:
        pixel_type = sitk.sitkFloat64
    else:
        pixel_type = sitk.sitkFloat32
    fill = float(volume.array.min()) if default_value is None else float(default_value)
    resampled = sitk.Resample(
        image,
        [int(s) for s in size],
        sitk.Transform(),
        INTERPOLATORS[interpolator],
        [float(o) for o in origin],
        [float(s) for s in spacing],
        [float(d) for d in np.asarray(direction, float).ravel()],
        fill,
        pixel_type,
    )
    return Volume.from_sitk(resampled)


def _positive_triple(value: Triple, name: str) -> np.ndarray:
    triple = np.broadcast_to(np.asarray(value, float), (3,)).copy()
    if not np.all(np.isfinite(triple) & (triple > 0)):
        raise ValueError(f"{name} must be positive, got {value}")
    return triple


def _kji_slices(start_ijk: np.ndarray, stop_ijk: np.ndarray) -> tuple[slice, ...]:
    """Numpy ``[k, j, i]`` slices of the index box [start, stop) given in (i, j, k) order."""
    return tuple(slice(int(a), int(b)) for a, b in zip(start_ijk[::-1], stop_ijk[::-1]))
