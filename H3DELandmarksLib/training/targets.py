"""Training targets for both heads, built from landmark positions in input voxels.

Positions are continuous (i, j, k) = (X, Y, Z) indices of the network input; a heatmap at output
stride s has voxel o at input voxel s * o, so a landmark sits at ``position / s`` on the map.
Every radius and sigma is in voxels of the output map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.heatmap_grid import squared_distances

HEATMAP_KINDS = ("reference", "gaussian")


@dataclass(frozen=True)
class HeatmapTarget:
    """Shape of the heatmap target.

    "reference" is the published target: ``2 exp(-d^2 / (0.2 R^2))`` within distance `radius`
    of the landmark, -1 elsewhere and everywhere for an absent landmark (peak 2).
    "gaussian" is ``exp(-d^2 / (2 sigma^2))``, 0 for an absent landmark (peak 1).
    """

    kind: str = "gaussian"
    sigma: float = 2.0
    radius: float = 10.0

    def __post_init__(self) -> None:
        if self.kind not in HEATMAP_KINDS:
            raise ValueError(f"heatmap target kind must be one of {HEATMAP_KINDS}, not {self.kind!r}")
        if self.sigma <= 0 or self.radius <= 0:
            raise ValueError("sigma and radius must be positive")

    @property
    def peak(self) -> float:
        """Value at the landmark (the manifest's heatmap_peak)."""
        return 2.0 if self.kind == "reference" else 1.0

    @property
    def background(self) -> float:
        return -1.0 if self.kind == "reference" else 0.0


def heatmap_targets(points: torch.Tensor, present: torch.Tensor, grid: tuple[int, int, int], stride: int,
                    target: HeatmapTarget) -> torch.Tensor:
    """Targets (L, X, Y, Z) on an output grid of `grid` voxels.

    Args:
        points: (L, 3) landmark positions in input voxels (rows of absent landmarks are ignored).
        present: (L,) bool.
    """
    squared = squared_distances(points.float() / stride, grid)
    if target.kind == "reference":
        values = 2.0 * torch.exp(-squared / (0.2 * target.radius**2))
        values = torch.where(squared <= target.radius**2, values, torch.tensor(-1.0))
    else:
        values = torch.exp(-squared / (2.0 * target.sigma**2))
    values = torch.where(present.reshape(-1, 1, 1, 1), values, torch.tensor(target.background))
    return values.expand(len(points), *grid).contiguous()


@dataclass(frozen=True)
class ProposalTargets:
    """Assignments of landmarks to (cell, anchor) pairs of the proposal head.

    Attributes:
        cells: (M, 3) long cell indices of the assigned pairs.
        anchors: (M,) long anchor indices.
        landmarks: (M,) long landmark indices.
        offsets: (M, 3) target for tanh(offset): (landmark / stride - cell) / radius, in (-1, 1).
        absent: (K,) long indices of landmarks absent from the sample.
    """

    cells: torch.Tensor
    anchors: torch.Tensor
    landmarks: torch.Tensor
    offsets: torch.Tensor
    absent: torch.Tensor


def proposal_targets(points: torch.Tensor, present: torch.Tensor, grid: tuple[int, int, int],
                     anchor_radii: tuple[float, ...], stride: int = 4) -> ProposalTargets:
    """Every (cell, anchor) whose radius covers a present landmark along each axis
    (``|landmark / stride - cell| < radius``) is assigned to it, as in the published head."""
    cells, anchors, landmarks, offsets = [], [], [], []
    limits = torch.tensor(grid)
    for index in torch.nonzero(present).flatten().tolist():
        centre = points[index].double() / stride
        for anchor, radius in enumerate(anchor_radii):
            low = torch.clamp(torch.floor(centre - radius).long() + 1, min=0)
            high = torch.minimum(torch.ceil(centre + radius).long() - 1, limits - 1)
            if torch.any(high < low):
                continue
            ranges = [torch.arange(int(a), int(b) + 1) for a, b in zip(low, high)]
            candidates = torch.cartesian_prod(*ranges).reshape(-1, 3)
            fraction = (centre - candidates) / radius
            inside = torch.all(fraction.abs() < 1, dim=1)
            count = int(inside.sum())
            cells.append(candidates[inside])
            offsets.append(fraction[inside].float())
            anchors.append(torch.full((count,), anchor))
            landmarks.append(torch.full((count,), index))
    absent = torch.nonzero(~present).flatten()
    if not cells:
        return ProposalTargets(torch.zeros((0, 3), dtype=torch.long), torch.zeros(0, dtype=torch.long),
                               torch.zeros(0, dtype=torch.long), torch.zeros((0, 3)), absent)
    return ProposalTargets(torch.cat(cells), torch.cat(anchors), torch.cat(landmarks), torch.cat(offsets), absent)
