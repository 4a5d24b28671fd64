"""Fusion of several estimates of the same landmarks (one per registered reference, say).

The fused position is the per-landmark, per-coordinate median of the estimates (MALPACA's
rule); its spread is the median absolute deviation of the estimates from it, as distances in mm
(the median over estimates of |estimate - fused|). `reliability` turns a spread into a weight in
(0, 1]: 1 / (1 + (spread / scale)²), so a landmark whose estimates disagree by `scale` counts half.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .landmarks import Landmarks


@dataclass
class FusedLandmarks:
    """Fused landmarks and how far their estimates spread.

    Attributes:
        landmarks: the median positions; a landmark no estimate located has no position and
            is absent.
        spread_mm: (N,) median distance of the estimates from the median; NaN where fewer than
            two estimates located the landmark.
        estimates: (N,) how many estimates located each landmark.
    """

    landmarks: Landmarks
    spread_mm: np.ndarray
    estimates: np.ndarray


def fuse_estimates(names: Sequence[str], estimates: Sequence[np.ndarray]) -> FusedLandmarks:
    """Median of ``(N, 3)`` estimates (NaN rows: not located by that estimate) per landmark."""
    stacked = np.stack([np.asarray(points, float).reshape(len(names), 3) for points in estimates])
    located = np.isfinite(stacked).all(axis=2)
    counts = located.sum(axis=0)
    positions = np.full((len(names), 3), np.nan)
    spread = np.full(len(names), np.nan)
    for n in np.flatnonzero(counts):
        points = stacked[located[:, n], n]
        positions[n] = np.median(points, axis=0)
        if len(points) > 1:
            spread[n] = float(np.median(np.linalg.norm(points - positions[n], axis=1)))
    return FusedLandmarks(Landmarks(names=list(names), positions=positions, present=counts > 0), spread, counts)


def reliability(spread_mm: np.ndarray, scale_mm: float) -> np.ndarray:
    """Weight in (0, 1] per landmark from its spread; 1 where the spread is unknown (NaN)."""
    spread = np.asarray(spread_mm, float)
    return np.where(np.isfinite(spread), 1.0 / (1.0 + (np.nan_to_num(spread) / scale_mm) ** 2), 1.0)
