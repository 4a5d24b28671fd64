"""Losses of both heads.

Heatmap head:
- ``hnm``: the published hard-negative-mining loss on the "reference" target, SmoothL1 on the
  in-sphere voxels plus SmoothL1 on as many hard negatives. The published code takes the top-k
  of the predictions restricted to the negatives and then uses those indices (positions in the
  negative subset) on the full heatmap, so its "hard negatives" are arbitrary voxels; here the
  indices are positions in the full map (`hard_negative_indices`). An absent landmark has no
  positives; it gets as many hard negatives as a whole sphere holds (the published code takes one).
- ``adaptive_wing`` (the project's default) and ``weighted_mse``: the "gaussian" target (peak 1)
  with the foreground (target > 0.2, dilated by one voxel) weighted up.

A heatmap loss takes optional per-landmark weights (B, L), the landmarks' training weights (1 for
an annotated point, a pseudo-label's reliability otherwise): each (case, landmark) map counts in
proportion to its weight. Proposal head (``proposals``): the published loss, with the hard-negative pool and the
background regulariser as described at `proposal_loss`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .targets import ProposalTargets

FOREGROUND_THRESHOLD = 0.2


def hard_negative_indices(scores: torch.Tensor, positive: torch.Tensor, k: int) -> torch.Tensor:
    """Indices into the full last axis of the `k` highest `scores` where `positive` is False.

    Args:
        scores: (..., N) predictions; positive: (..., N) bool; k at most the number of negatives.
    """
    return scores.masked_fill(positive, -math.inf).topk(k, dim=-1).indices


def hnm_heatmap_loss(prediction: torch.Tensor, target: torch.Tensor, radius: float,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
    """Published hard-negative-mining loss, index bug fixed; (B, L, X, Y, Z) each.

    Per (case, landmark): mean SmoothL1 over the voxels with target >= 0 (the sphere), plus mean
    SmoothL1 towards the target over the same number of the highest-scoring negative voxels; the
    result is the mean over cases and landmarks.
    """
    prediction = prediction.float().flatten(2)
    target = target.float().flatten(2)
    positive = target >= 0
    positives = positive.sum(-1)
    negatives = (~positive).sum(-1)
    count = torch.where(positives > 0, positives, torch.full_like(positives, sphere_voxels(radius)))
    count = torch.minimum(count, negatives)
    positive_loss = torch.where(positive, F.smooth_l1_loss(prediction, target, reduction="none"), 0.0).sum(-1)
    positive_loss = positive_loss / positives.clamp(min=1)
    largest = int(count.max())
    chosen = hard_negative_indices(prediction, positive, largest)
    ranked = torch.arange(largest, device=prediction.device) < count[..., None]
    negative_loss = F.smooth_l1_loss(prediction.gather(-1, chosen), target.gather(-1, chosen), reduction="none")
    negative_loss = torch.where(ranked, negative_loss, 0.0).sum(-1) / count.clamp(min=1)
    return _weighted(positive_loss + negative_loss, weights).mean()


def sphere_voxels(radius: float) -> int:
    """Number of grid points within `radius` of a grid point."""
    reach = int(math.floor(radius))
    axis = torch.arange(-reach, reach + 1, dtype=torch.float32)
    squared = axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2
    return int((squared <= radius**2).sum())


def adaptive_wing_loss(prediction: torch.Tensor, target: torch.Tensor, alpha: float = 2.1, omega: float = 14.0,
                       epsilon: float = 1.0, theta: float = 0.5, foreground_weight: float = 10.0,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """Adaptive wing loss (Wang et al., ICCV 2019) with its weighted foreground; (B, L, X, Y, Z).

    Near the landmark (target near 1) small errors keep a large gradient, which sharpens the
    peaks; on the background (target 0) it behaves like |error|^2.1, so faint noise costs little.
    The gradient is computed with the loss in one elementwise pass (`_AdaptiveWing`).
    """
    dtype = torch.promote_types(prediction.dtype, torch.float32)
    target = target.to(dtype)
    scale = _weighted(foreground_weights(target, foreground_weight), weights)
    return _AdaptiveWing.apply(prediction.to(dtype), target, scale, (alpha, omega, epsilon, theta))


class _AdaptiveWing(torch.autograd.Function):
    """mean(scale * AWing(prediction, target)) and its gradient with respect to the prediction.

    Autograd through the formula keeps about ten full-size intermediates and evaluates tensor
    powers again backwards; this forward computes the derivative alongside the loss instead.
    """

    @staticmethod
    def forward(ctx, prediction: torch.Tensor, target: torch.Tensor, scale: torch.Tensor,
                constants: tuple[float, float, float, float]) -> torch.Tensor:
        alpha, omega, epsilon, theta = constants
        difference = prediction - target
        error = difference.abs()
        power = alpha - target
        ratio = theta / epsilon
        ratio_power = ratio**power
        slope = omega / (1 + ratio_power) * power * (ratio_power / ratio) / epsilon
        near = error < theta
        relative = error / epsilon
        relative_power_less_one = relative ** (power - 1)
        relative_power = relative_power_less_one * relative
        loss = torch.where(near, omega * torch.log1p(relative_power),
                           slope * error - (theta * slope - omega * torch.log1p(ratio_power)))
        count = loss.numel()
        if ctx.needs_input_grad[0]:
            derivative = torch.where(near, omega * power * relative_power_less_one / (epsilon * (1 + relative_power)),
                                     slope)
            ctx.save_for_backward(derivative * torch.sign(difference) * scale / count)
        return (loss * scale).sum() / count

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (gradient,) = ctx.saved_tensors
        return gradient * grad_output, None, None, None


def weighted_mse_loss(prediction: torch.Tensor, target: torch.Tensor, foreground_weight: float = 10.0,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error with the foreground weighted up; (B, L, X, Y, Z)."""
    squared = (prediction.float() - target.float()).square()
    return _weighted(squared * foreground_weights(target.float(), foreground_weight), weights).mean()


def _weighted(loss: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """`loss` (B, L, ...) times per-(case, landmark) `weights` (B, L); unchanged without weights."""
    if weights is None:
        return loss
    return loss * weights.to(loss.device, loss.dtype).reshape(*weights.shape, *([1] * (loss.dim() - 2)))


def foreground_weights(target: torch.Tensor, weight: float) -> torch.Tensor:
    """1 on the background, 1 + `weight` where the target exceeds 0.2 or touches such a voxel
    (a 3x3x3 neighbour; the dilation runs axis by axis, which `F.max_pool3d` does far slower)."""
    dilated = target > FOREGROUND_THRESHOLD
    for dim in (-3, -2, -1):
        grown = dilated.clone()
        size = dilated.shape[dim]
        grown.narrow(dim, 1, size - 1).logical_or_(dilated.narrow(dim, 0, size - 1))
        grown.narrow(dim, 0, size - 1).logical_or_(dilated.narrow(dim, 1, size - 1))
        dilated = grown
    return 1.0 + weight * dilated.to(target.dtype)


def proposal_loss(prediction: torch.Tensor, targets: list[ProposalTargets], hard_negatives: int = 256,
                  hard_weight: float = 0.2, background_weight: float = 0.001) -> torch.Tensor:
    """Published proposal-head loss; `prediction` is (B, X, Y, Z, A, 3 + L), one target per case.

    Terms: BCE-with-logits towards 1 on the landmark's class at each assigned (cell, anchor);
    BCE towards 0 on the other classes there, divided by L - 1; for each landmark absent from a
    case, BCE towards 0 on the `hard_negatives` x A highest logits of its class in that case
    (the published code pools that many per absent landmark over the batch), times
    `hard_weight`; `background_weight` x BCE towards 0 on every class logit (the published code
    also pulls the offset channels, which only biases the offsets); SmoothL1 between tanh of
    the predicted offsets and the target offsets.
    """
    prediction = prediction.float()
    n_anchors, n_landmarks = prediction.shape[-2], prediction.shape[-1] - 3
    logits = prediction[..., 3:]
    rows, labels, offsets, hard = [], [], [], []
    for case, target in enumerate(targets):
        cells = target.cells.to(prediction.device)
        rows.append(prediction[case, cells[:, 0], cells[:, 1], cells[:, 2], target.anchors.to(prediction.device)])
        labels.append(target.landmarks.to(prediction.device))
        offsets.append(target.offsets.to(prediction.device))
        for landmark in target.absent.tolist():
            scores = logits[case, ..., landmark].reshape(-1)
            hard.append(scores.topk(min(hard_negatives * n_anchors, scores.numel())).values)
    loss = background_weight * F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
    rows, labels, offsets = torch.cat(rows), torch.cat(labels), torch.cat(offsets)
    if len(rows):
        classes = rows[:, 3:]
        is_label = F.one_hot(labels, n_landmarks).bool()
        loss = loss + F.binary_cross_entropy_with_logits(classes[is_label], torch.ones(len(rows), device=rows.device))
        if n_landmarks > 1:
            others = classes[~is_label]
            loss = loss + F.binary_cross_entropy_with_logits(others, torch.zeros_like(others)) / (n_landmarks - 1)
        loss = loss + F.smooth_l1_loss(torch.tanh(rows[:, :3]), offsets)
    if hard:
        hard = torch.cat(hard)
        loss = loss + hard_weight * F.binary_cross_entropy_with_logits(hard, torch.zeros_like(hard))
    return loss
