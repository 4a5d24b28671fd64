"""Turn network outputs into landmark coordinates (input voxel units, X/Y/Z = i/j/k) and confidences."""

from __future__ import annotations

import torch
import torch.nn.functional as F

PROPOSAL_TOPK = 15


def decode_heatmaps(heatmaps: torch.Tensor, stride: int = 1, peak_value: float = 1.0,
                    peak_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-voxel peak of each heatmap.

    The peak is the arg-max refined per axis by a parabola through the logarithm of the three
    values around it (exact for Gaussian peaks; plain values where they are not positive).

    Args:
        heatmaps: (L, X, Y, Z) raw network output at `stride`.
        stride: output stride; map voxel o corresponds to input voxel stride * o.
        peak_value: value the training target takes at a landmark; confidence = peak / peak_value,
            clipped to [0, 1].
        peak_weights: (L, X, Y, Z) non-negative prior weights: the peak is the local maximum of
            the heatmap reached by climbing from the arg-max of its positive part times the
            weight; its position and confidence come from the heatmap alone.
    Returns:
        coordinates (L, 3) in input voxels and confidences (L,).
    """
    heatmaps = heatmaps.float()
    n, *grid = heatmaps.shape
    flat = heatmaps.reshape(n, -1)
    if peak_weights is None:
        peak, index = flat.max(1)
    else:
        index = _climb_to_local_maximum(heatmaps, (flat.clamp(min=0) * peak_weights.reshape(n, -1).to(flat)).argmax(1))
        peak = flat.gather(1, index[:, None])[:, 0]
    centre = voxel_of(index, grid)
    offsets = []
    rows = torch.arange(n, device=heatmaps.device)
    for axis in range(3):
        step = torch.zeros(3, dtype=torch.long, device=heatmaps.device)
        step[axis] = 1
        below = (centre - step).clamp(min=0)
        above = torch.minimum(centre + step, torch.tensor(grid, device=heatmaps.device) - 1)
        values = [heatmaps[rows, p[:, 0], p[:, 1], p[:, 2]] for p in (below, centre, above)]
        interior = (centre[:, axis] > 0) & (centre[:, axis] < grid[axis] - 1)
        offsets.append(torch.where(interior, parabola_vertex(*values), torch.zeros_like(peak)))
    coordinates = (centre.float() + torch.stack(offsets, dim=1)) * stride
    confidence = (peak / peak_value).clamp(0.0, 1.0)
    return coordinates, confidence


def voxel_of(index: torch.Tensor, grid: list[int]) -> torch.Tensor:
    """(L, 3) voxel of each flat C-order index (L,) into a 3D `grid`. (`torch.unravel_index`
    does the same but imports sympy on its first call: about a second of every detection.)"""
    strides = torch.tensor([grid[1] * grid[2], grid[2], 1], device=index.device)
    return index[:, None] // strides % torch.tensor(grid, device=index.device)


def _climb_to_local_maximum(heatmaps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Flat voxel indices (L,) moved uphill, one 26-neighbourhood step at a time, from `index` to a
    local maximum of each (L, X, Y, Z) heatmap."""
    n = heatmaps.shape[0]
    _, uphill = F.max_pool3d(heatmaps[:, None], 3, stride=1, padding=1, return_indices=True)
    uphill = uphill.reshape(n, -1)
    for _ in range(sum(heatmaps.shape[1:])):
        step = uphill.gather(1, index[:, None])[:, 0]
        if torch.equal(step, index):
            break
        index = step
    return index


def parabola_vertex(left: torch.Tensor, middle: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Offset in (-0.5, 0.5) of the vertex of the parabola through (-1, l), (0, m), (1, r), fitted
    to log values where all three are positive (Gaussian-exact) and to the values otherwise."""
    positive = (left > 0) & (middle > 0) & (right > 0)
    tiny = torch.finfo(middle.dtype).tiny
    logs = [torch.log(v.clamp(min=tiny)) for v in (left, middle, right)]
    l, m, r = (torch.where(positive, lg, v) for lg, v in zip(logs, (left, middle, right)))
    curvature = l - 2 * m + r
    offset = 0.5 * (l - r) / torch.where(curvature < 0, curvature, torch.full_like(curvature, -1.0))
    return torch.where(curvature < 0, offset, torch.zeros_like(offset)).clamp(-0.5, 0.5)


def decode_proposals(proposals: torch.Tensor, anchor_radii: tuple[float, ...], stride: int = 4,
                     topk: int = PROPOSAL_TOPK) -> tuple[torch.Tensor, torch.Tensor]:
    """Landmarks from the anchor-based head, as the published decoding does it.

    For each landmark the `topk` highest-scoring (cell, anchor) pairs each propose
    (cell + tanh(offset) * radius) * stride; the answer is their medoid (the proposal with the
    smallest summed distance to the others).

    Args:
        proposals: (X, Y, Z, A, 3 + L) for one case.
        anchor_radii: radius of each anchor, in cells.
    Returns:
        coordinates (L, 3) in input voxels and confidences (L,) = sigmoid of the best logit.
    """
    proposals = proposals.float()
    gx, gy, gz, anchors, channels = proposals.shape
    n_landmarks = channels - 3
    radii = torch.tensor(anchor_radii, dtype=proposals.dtype, device=proposals.device)
    cells = torch.stack(torch.meshgrid(*(torch.arange(s, device=proposals.device) for s in (gx, gy, gz)),
                                       indexing="ij"), dim=-1).to(proposals.dtype)
    positions = (cells[:, :, :, None, :] + torch.tanh(proposals[..., :3]) * radii[:, None]) * stride
    positions = positions.reshape(-1, 3)
    logits = proposals[..., 3:].reshape(-1, n_landmarks).T
    best, chosen = torch.topk(logits, k=min(topk, logits.shape[1]), dim=1)
    candidates = positions[chosen]
    distances = torch.cdist(candidates, candidates).sum(-1)
    medoid = distances.argmin(1)
    coordinates = candidates[torch.arange(n_landmarks, device=proposals.device), medoid]
    return coordinates, torch.sigmoid(best[:, 0])
