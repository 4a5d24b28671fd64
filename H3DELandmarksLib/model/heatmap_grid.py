"""Squared distances from points to every voxel of a heatmap grid (training targets, decoding priors)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def squared_distances(centres: torch.Tensor, grid: Sequence[int],
                      voxel_size: Sequence[float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """(L, X, Y, Z) float32 squared distances from `centres` (L, 3), in voxels of the grid, to each
    voxel, measured in units of `voxel_size` (per axis; 1: voxels). NaN centres count as 0."""
    centres = torch.nan_to_num(centres.float())
    squared = torch.zeros((len(centres), *grid))
    for axis, size in enumerate(grid):
        shape = [len(centres), 1, 1, 1]
        shape[axis + 1] = size
        offsets = (torch.arange(size, dtype=torch.float32) - centres[:, axis, None]) * float(voxel_size[axis])
        squared = squared + offsets.square().reshape(shape)
    return squared
