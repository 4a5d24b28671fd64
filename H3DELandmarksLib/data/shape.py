"""A mean landmark shape and its robust similarity fit to detected points.

A model trained on anatomy in any orientation stores the mean shape of its training landmarks
(generalised Procrustes: rotation and translation removed, sizes kept, centred on the origin).
Fitted to the coarse positions of a scan, it tells the scan's pose: the rotation turns the fine
stage's patches to the pose the fine network was trained in, and the fitted points stand in for
coarse positions that disagree with the rest of the skull (outliers). Points are (L, 3) in mm;
rows of NaN are unknown and ignored.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

PROCRUSTES_ITERATIONS = 10
ROBUST_ITERATIONS = 10
OUTLIER_FACTOR = 2.5
MIN_FIT_POINTS = 4


@dataclass(frozen=True)
class ShapeFit:
    """``x = scale * rotation @ p + translation`` maps model-frame points p into the scan.

    Attributes:
        rotation: (3, 3) proper rotation; its columns are the model frame's axes in the scan.
        scale, translation: isotropic scale and (3,) translation (mm).
        inliers: (L,) bool, the points the final fit used.
        residuals: (L,) mm between each fitted model point and the point it was fitted to
            (NaN where that point is unknown).
    """

    rotation: np.ndarray
    scale: float
    translation: np.ndarray
    inliers: np.ndarray
    residuals: np.ndarray

    def apply(self, model_points: np.ndarray) -> np.ndarray:
        """Model-frame points mapped into the scan."""
        return self.scale * np.asarray(model_points, float) @ self.rotation.T + self.translation


def similarity_fit(model_points: np.ndarray, points: np.ndarray, weights: np.ndarray | None = None,
                   with_scale: bool = True) -> ShapeFit:
    """Weighted least-squares similarity (or rigid) transform of `model_points` onto `points`.

    Rows where either point set is NaN or the weight is not positive are left out.
    """
    model_points, points = np.asarray(model_points, float), np.asarray(points, float)
    weights = np.ones(len(points)) if weights is None else np.asarray(weights, float)
    used = np.all(np.isfinite(model_points), 1) & np.all(np.isfinite(points), 1) & (weights > 0)
    if used.sum() < MIN_FIT_POINTS:
        raise ValueError(f"a shape fit needs at least {MIN_FIT_POINTS} known points, not {int(used.sum())}")
    w = weights[used] / weights[used].sum()
    model_centre = w @ model_points[used]
    centre = w @ points[used]
    model_offsets, offsets = model_points[used] - model_centre, points[used] - centre
    rotation = Rotation.align_vectors(offsets, model_offsets, weights=w)[0].as_matrix()
    rotated = model_offsets @ rotation.T
    scale = float(w @ np.sum(rotated * offsets, 1) / (w @ np.sum(rotated * rotated, 1))) if with_scale else 1.0
    translation = centre - scale * rotation @ model_centre
    fitted = scale * model_points @ rotation.T + translation
    return ShapeFit(rotation, scale, translation, used, np.linalg.norm(fitted - points, axis=1))


def robust_shape_fit(model_points: np.ndarray, points: np.ndarray, weights: np.ndarray | None = None) -> ShapeFit:
    """`similarity_fit` that drops outliers: refits on the points whose residual is at most
    OUTLIER_FACTOR x the median residual until the inlier set stops changing."""
    points = np.asarray(points, float)
    weights = np.ones(len(points)) if weights is None else np.clip(np.nan_to_num(np.asarray(weights, float)), 1e-6, None)
    fit = similarity_fit(model_points, points, weights)
    for _ in range(ROBUST_ITERATIONS):
        known = np.isfinite(fit.residuals)
        inliers = known & (fit.residuals <= OUTLIER_FACTOR * np.median(fit.residuals[known]))
        if inliers.sum() < MIN_FIT_POINTS or np.array_equal(inliers, fit.inliers):
            break
        fit = similarity_fit(model_points, points, np.where(inliers, weights, 0.0))
    return fit


def mean_shape(shapes: Sequence[np.ndarray]) -> np.ndarray:
    """Generalised Procrustes mean (rigid, sizes kept) of landmark sets (L, 3), centred on the
    origin; a landmark unknown in every set stays NaN."""
    shapes = [np.asarray(shape, float) for shape in shapes]
    if not shapes:
        raise ValueError("a mean shape needs at least one landmark set")
    mean = shapes[0] - np.nanmean(shapes[0], axis=0)
    for _ in range(PROCRUSTES_ITERATIONS):
        aligned = np.stack([similarity_fit(shape, mean, with_scale=False).apply(shape) for shape in shapes])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(aligned, axis=0)
        mean = mean - np.nanmean(mean, axis=0)
    return mean
