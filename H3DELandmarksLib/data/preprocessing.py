"""Preprocessing per the model manifest: the grid a stage works on, patches on it, intensities.

Orientation "canonical" puts a stage's grid on the LPS axes (identity direction; oblique,
flipped and permuted volumes are resampled onto it); "native" keeps the volume's own axes. Either
way a grid's geometry is a `Volume` and every patch comes from `resample_patch`, so every position
maps back to LPS through `Volume.index_to_physical`. Arrays are ``[k, j, i]``; geometry (i, j, k).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .resample import CORNER_ENDS, crop_or_pad_to_box, resample_patch
from .volume import Volume

ORIENTATIONS = ("canonical", "native")


@dataclass(frozen=True)
class IntensityMap:
    """Clip voxel values to [clip_min, clip_max], then map that range linearly onto [scale_min, scale_max]."""

    clip_min: float
    clip_max: float
    scale_min: float
    scale_max: float

    @classmethod
    def from_manifest(cls, intensity: dict) -> "IntensityMap":
        """From a manifest's ``preprocessing.intensity`` object."""
        return cls(*(float(intensity[key]) for key in ("clip_min", "clip_max", "scale_min", "scale_max")))

    def apply(self, array: np.ndarray) -> np.ndarray:
        """The mapped values as float32 (same shape)."""
        clipped = np.clip(np.asarray(array, np.float32), self.clip_min, self.clip_max)
        gain = (self.scale_max - self.scale_min) / (self.clip_max - self.clip_min)
        return ((clipped - self.clip_min) * np.float32(gain) + np.float32(self.scale_min)).astype(np.float32)


def stage_direction(volume: Volume, orientation: str) -> np.ndarray:
    """Axes (3x3, columns i, j, k in LPS) of the grids a stage uses for `volume`."""
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, not {orientation!r}")
    return np.eye(3) if orientation == "canonical" else np.asarray(volume.direction, float)


def stage_grid(volume: Volume, spacing: Sequence[float], orientation: str) -> Volume:
    """Geometry of the grid at `spacing` (mm, i, j, k) covering all of `volume`.

    The grid is centred on the volume's centre, its axes follow `stage_direction`, and its size
    covers the volume's physical extent along those axes (for an oblique volume on canonical
    axes, its bounding box). Only the geometry is meant: the array is a read-only zero view.
    """
    spacing = np.asarray(spacing, float)
    direction = stage_direction(volume, orientation)
    centre = volume.index_to_physical((np.asarray(volume.shape_ijk, float) - 1) / 2)
    corners = volume.index_to_physical(np.where(CORNER_ENDS, np.asarray(volume.shape_ijk) - 0.5, -0.5))
    along_axes = (corners - centre) @ np.linalg.inv(direction).T
    extent = along_axes.max(axis=0) - along_axes.min(axis=0)
    size = np.maximum(1, np.ceil(extent / spacing - 1e-6)).astype(int)
    origin = centre - direction @ (spacing * (size - 1) / 2)
    return Volume(
        array=np.broadcast_to(np.float32(0), tuple(size[::-1])),
        spacing=tuple(float(s) for s in spacing),
        origin=tuple(float(o) for o in origin),
        direction=direction,
    )


def grid_window_centre(grid: Volume, start_ijk: Sequence[int], size_ijk: Sequence[int]) -> np.ndarray:
    """LPS centre of the window of `grid` whose first voxel is `start_ijk` (may lie outside the grid)."""
    return grid.index_to_physical(np.asarray(start_ijk, float) + (np.asarray(size_ijk, float) - 1) / 2)


def extract_patch(volume: Volume, centre_lps: Sequence[float], size_ijk: Sequence[int],
                  spacing: Sequence[float], direction: np.ndarray, fill: float) -> Volume:
    """`resample_patch` (linear, `fill` outside the volume) reading only the voxels it needs.

    The volume is first cut to the index box around the patch (one voxel of margin for the
    interpolation, never past the volume's edge), so a small patch of a large volume costs little;
    the values are those of resampling the whole volume.
    """
    size = np.asarray(size_ijk, int)
    spacing = np.asarray(spacing, float)
    direction = np.asarray(direction, float)
    half = np.where(CORNER_ENDS, 0.5, -0.5) * (spacing * size)
    corners = np.asarray(centre_lps, float) + half @ direction.T
    indices = volume.physical_to_index(corners)
    last_voxel = np.asarray(volume.shape_ijk) - 1
    first = np.clip(np.floor(indices.min(axis=0)).astype(int) - 1, 0, last_voxel)
    last = np.clip(np.ceil(indices.max(axis=0)).astype(int) + 1, first, last_voxel)
    source = crop_or_pad_to_box(volume, first, last - first + 1, pad_value=0)
    return resample_patch(source, centre_lps, size, spacing, direction, "linear", default_value=fill)
