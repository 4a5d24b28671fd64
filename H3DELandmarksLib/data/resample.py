"""Resampling, reorientation and cropping of volumes, done in physical (LPS mm) space.

Every function takes and returns a `Volume` (array ``[k, j, i]``; sizes, indices, spacing and
direction columns in ITK ``(i, j, k)`` order). A point keeps its LPS position through every
operation. Interpolation uses SimpleITK; `crop_or_pad_to_box`, `crop_to_physical_box` and the
reorientation of axis-aligned volumes copy voxels without interpolating.

Voxel type: "nearest" keeps the input's voxel type; "linear" and "bspline" give float32
(float64 for float64 input). Points outside the input get `default_value`; None means the
input's minimum (air, for CT).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from .volume import Volume

INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "bspline": sitk.sitkBSpline,
}
# Largest deviation from 0/±1 of a direction matrix still treated as a signed permutation.
PERMUTATION_TOLERANCE = 1e-5
# Which end (0: low, 1: high) of each axis the 8 corners of a box take.
CORNER_ENDS = np.array(list(np.ndindex(2, 2, 2)), bool)

Triple = float | Sequence[float]


def resample_to_spacing(
    volume: Volume,
    spacing: Triple,
    interpolator: str = "linear",
    default_value: float | None = None,
) -> Volume:
    """Resample to a new spacing (mm, scalar or (i, j, k)) over the same region and direction.

    The new grid starts at the same outer voxel edge as the input; its size along each axis is
    ``ceil(size * old_spacing / new_spacing)``.
    """
    new_spacing = _positive_triple(spacing, "spacing")
    old_spacing = np.asarray(volume.spacing, float)
    extent = old_spacing * np.asarray(volume.shape_ijk)
    size = np.maximum(1, np.ceil(extent / new_spacing - 1e-9)).astype(int)
    direction = np.asarray(volume.direction, float)
    origin = np.asarray(volume.origin, float) + direction @ ((new_spacing - old_spacing) / 2)
    return _resample(volume, size, new_spacing, origin, direction, interpolator, default_value)


def reorient_to_canonical(
    volume: Volume, interpolator: str = "linear", default_value: float | None = None
) -> Volume:
    """Return the volume on an identity-direction grid (i → L, j → P, k → S), same region.

    When the direction matrix is a signed permutation (axis-aligned volume, e.g. RAS or
    sagittal), voxels are only permuted and flipped: values are exact and the spacing follows
    its axis. An oblique volume is resampled with `interpolator` onto the axis-aligned grid
    covering its bounding box, with the smallest input spacing on every axis.
    """
    direction = np.asarray(volume.direction, float)
    rounded = np.round(direction)
    is_signed_permutation = (
        np.max(np.abs(direction - rounded)) < PERMUTATION_TOLERANCE
        and np.array_equal(np.abs(rounded).sum(axis=0), np.ones(3))
        and np.array_equal(np.abs(rounded).sum(axis=1), np.ones(3))
    )
    if is_signed_permutation:
        oriented = Volume.from_sitk(sitk.DICOMOrient(volume.to_sitk(), "LPS"))
        return dataclasses.replace(oriented, direction=np.eye(3))
    spacing = np.full(3, min(volume.spacing))
    corners = volume.index_to_physical(_box_corners(volume.shape_ijk))
    low, high = corners.min(axis=0), corners.max(axis=0)
    size = np.maximum(1, np.ceil((high - low) / spacing - 1e-9)).astype(int)
    return _resample(volume, size, spacing, low + spacing / 2, np.eye(3), interpolator, default_value)


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


def crop_to_physical_box(
    volume: Volume, lps_min: Sequence[float], lps_max: Sequence[float], pad_value: float
) -> Volume:
    """Crop (or pad) to the voxels of the volume's own grid touching the LPS box [lps_min, lps_max].

    No interpolation: the result is the smallest index box whose voxels cover the physical box
    (for an oblique volume, the index box around the physical box's eight corners).
    """
    low, high = np.asarray(lps_min, float), np.asarray(lps_max, float)
    if low.shape != (3,) or high.shape != (3,) or np.any(high < low):
        raise ValueError(f"lps_min must be <= lps_max, 3 values each, got {lps_min}, {lps_max}")
    indices = volume.physical_to_index(np.where(CORNER_ENDS, high, low))
    first = np.floor(indices.min(axis=0) + 0.5).astype(int)
    last = np.ceil(indices.max(axis=0) - 0.5).astype(int)
    return crop_or_pad_to_box(volume, first, last - first + 1, pad_value)


def resample_to_reference(
    volume: Volume,
    reference: Volume,
    interpolator: str = "linear",
    default_value: float | None = None,
) -> Volume:
    """Resample `volume` onto the grid (size, spacing, origin, direction) of `reference`."""
    return _resample(
        volume,
        np.asarray(reference.shape_ijk),
        np.asarray(reference.spacing, float),
        np.asarray(reference.origin, float),
        np.asarray(reference.direction, float),
        interpolator,
        default_value,
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


def _box_corners(size_ijk: Sequence[int]) -> np.ndarray:
    """The 8 outer voxel-edge corners of a grid, as continuous (i, j, k) indices."""
    return np.where(CORNER_ENDS, np.asarray(size_ijk, float) - 0.5, -0.5)


def _kji_slices(start_ijk: np.ndarray, stop_ijk: np.ndarray) -> tuple[slice, ...]:
    """Numpy ``[k, j, i]`` slices of the index box [start, stop) given in (i, j, k) order."""
    return tuple(slice(int(a), int(b)) for a, b in zip(start_ijk[::-1], stop_ijk[::-1]))
