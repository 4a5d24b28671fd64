"""Windows over a stage grid, patch groups around landmarks, and the best peak over windows.

A grid larger than the network's patch is covered by overlapping windows (at least 25% overlap).
Each window owns a core: the voxels nearer to its centre than to any neighbour's, split at the
middle of each overlap. A landmark found by a window counts first when it lies in that window's
core, so every peak is judged by the window that sees it with the most context around it, and
only one window's output is held at a time (memory stays bounded for any volume size).
Indices are (i, j, k) voxel indices of the grid.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_OVERLAP = 0.25
PATCH_MARGIN = 0.25


@dataclass(frozen=True)
class Window:
    """A window of the grid: its first voxel and the continuous index box it owns.

    Attributes:
        start: (3,) grid index of the window's first voxel; negative when the grid is smaller than
            the window (the window is then centred on the grid).
        core_low, core_high: (3,) bounds of the owned part, ``core_low <= index < core_high``.
    """

    start: np.ndarray
    core_low: np.ndarray
    core_high: np.ndarray

    def owns(self, grid_index: np.ndarray) -> np.ndarray:
        """``(N,)`` bool: which grid indices ``(N, 3)`` lie in this window's core."""
        grid_index = np.asarray(grid_index, float)
        return np.all((grid_index >= self.core_low) & (grid_index < self.core_high), axis=-1)


def axis_starts(grid: int, window: int, min_overlap: float = MIN_OVERLAP) -> list[int]:
    """First voxels of the windows covering one axis of `grid` voxels, overlapping by >= `min_overlap`."""
    if grid <= window:
        return [(grid - window) // 2]
    step = max(1, math.floor(window * (1 - min_overlap)))
    count = math.ceil((grid - window) / step) + 1
    return [round(t * (grid - window) / (count - 1)) for t in range(count)]


def plan_windows(grid_size: Sequence[int], window_size: Sequence[int],
                 min_overlap: float = MIN_OVERLAP) -> list[Window]:
    """Windows of `window_size` covering a grid of `grid_size` voxels (both (i, j, k))."""
    per_axis = []
    for grid, window in zip(grid_size, window_size):
        starts = axis_starts(int(grid), int(window), min_overlap)
        bounds = [(a + b + window - 1) / 2 for a, b in zip(starts, starts[1:])]
        lows, highs = [-math.inf, *bounds], [*bounds, math.inf]
        per_axis.append(list(zip(starts, lows, highs)))
    windows = []
    for combination in itertools.product(*per_axis):
        start, low, high = (np.array(values, dtype=float) for values in zip(*combination))
        windows.append(Window(start=start.astype(int), core_low=low, core_high=high))
    return windows


@dataclass(frozen=True)
class PatchGroup:
    """Landmarks refined together in one patch centred at `centre` (LPS mm)."""

    centre: np.ndarray
    landmarks: list[int]


def group_landmarks(positions: np.ndarray, direction: np.ndarray, spacing: Sequence[float],
                    patch_size: Sequence[int], margin: float = PATCH_MARGIN) -> list[PatchGroup]:
    """Group landmarks so that each group fits one patch with `margin` (fraction of the patch) free
    on every side; groups are grown greedily from a seed, nearest landmarks first.

    Args:
        positions: (L, 3) LPS positions.
        direction: patch axes (columns in LPS); spacing and patch_size along them.
    """
    positions = np.asarray(positions, float)
    along_axes = positions @ np.linalg.inv(np.asarray(direction, float)).T
    span = (1 - 2 * margin) * np.asarray(spacing, float) * (np.asarray(patch_size, float) - 1)
    unassigned = list(np.argsort(along_axes[:, 0], kind="stable"))
    groups = []
    while unassigned:
        seed = unassigned.pop(0)
        members = [seed]
        distances = np.linalg.norm(along_axes[unassigned] - along_axes[seed], axis=1)
        for candidate in [unassigned[i] for i in np.argsort(distances, kind="stable")]:
            trial = along_axes[members + [candidate]]
            if np.all(trial.max(axis=0) - trial.min(axis=0) <= span):
                members.append(candidate)
                unassigned.remove(candidate)
        box = along_axes[members]
        centre = np.asarray(direction, float) @ ((box.max(axis=0) + box.min(axis=0)) / 2)
        groups.append(PatchGroup(centre=centre, landmarks=sorted(int(m) for m in members)))
    return groups


class PeakSelection:
    """Per landmark, the best peak offered so far: peaks inside the offering window's core win over
    peaks outside any core; among equals the higher score wins (the first on ties)."""

    def __init__(self, n_landmarks: int) -> None:
        self.positions = np.full((n_landmarks, 3), np.nan)
        self.confidence = np.full(n_landmarks, np.nan)
        self._rank = np.full((n_landmarks, 2), -np.inf)

    def offer(self, landmarks: Sequence[int], positions: np.ndarray, confidence: np.ndarray,
              score: np.ndarray, in_core: np.ndarray) -> None:
        """Offer peaks of `landmarks` with LPS `positions`, `confidence`, `score` and core membership."""
        for row, landmark in enumerate(landmarks):
            rank = (float(bool(in_core[row])), float(score[row]))
            if rank > tuple(self._rank[landmark]):
                self._rank[landmark] = rank
                self.positions[landmark] = positions[row]
                self.confidence[landmark] = confidence[row]
