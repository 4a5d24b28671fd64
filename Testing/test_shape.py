"""The mean shape and its similarity fits: known poses are recovered, outliers are dropped."""

import numpy as np
import pytest

from H3DELandmarksLib.data.shape import mean_shape, robust_shape_fit, similarity_fit
from builders_blobs import rotation

SHAPE = np.random.default_rng(7).normal(0.0, 6.0, (20, 3))


def posed(points, degrees, scale=1.0, shift=(3.0, -40.0, 12.0)):
    return scale * points @ rotation([1.0, -2.0, 0.5], degrees).T + np.asarray(shift)


@pytest.mark.parametrize("degrees", [0.0, 75.0, 179.0])
def test_similarity_fit_recovers_a_known_pose(degrees):
    fit = similarity_fit(SHAPE, posed(SHAPE, degrees, scale=1.1))
    np.testing.assert_allclose(fit.rotation, rotation([1.0, -2.0, 0.5], degrees), atol=1e-9)
    assert fit.scale == pytest.approx(1.1)
    np.testing.assert_allclose(fit.translation, [3.0, -40.0, 12.0], atol=1e-9)
    assert fit.residuals.max() < 1e-9 and np.linalg.det(fit.rotation) == pytest.approx(1.0)
    assert similarity_fit(SHAPE, posed(SHAPE, degrees, scale=1.1), with_scale=False).scale == 1.0


def test_robust_fit_drops_outliers_and_unknown_points():
    target = posed(SHAPE, 120.0, scale=0.9)
    target[[2, 7, 11]] += [[12.0, 0.0, 0.0], [0.0, -9.0, 4.0], [6.0, 6.0, 6.0]]
    target[5] = np.nan
    fit = robust_shape_fit(SHAPE, target, np.full(20, 0.5))
    np.testing.assert_allclose(fit.rotation, rotation([1.0, -2.0, 0.5], 120.0), atol=1e-9)
    assert fit.scale == pytest.approx(0.9)
    assert set(np.flatnonzero(~fit.inliers)) == {2, 5, 7, 11}
    assert np.isnan(fit.residuals[5]) and fit.residuals[2] > 10
    plain = similarity_fit(SHAPE, target)
    assert np.abs(plain.rotation - fit.rotation).max() > 1e-3


def test_mean_shape_of_posed_noisy_copies_is_the_shape():
    rng = np.random.default_rng(3)
    copies = [posed(SHAPE + rng.normal(0, 0.05, SHAPE.shape), angle, shift=rng.normal(0, 20, 3))
              for angle in (0.0, 40.0, 100.0, 170.0)]
    copies[1][4] = np.nan
    mean = mean_shape(copies)
    np.testing.assert_allclose(np.nanmean(mean, axis=0), 0.0, atol=1e-9)
    assert similarity_fit(mean, SHAPE, with_scale=False).residuals.max() < 0.1
    lost = [points.copy() for points in copies]
    for points in lost:
        points[9] = np.nan
    assert np.isnan(mean_shape(lost)[9]).all()


def test_a_fit_needs_four_known_points():
    target = posed(SHAPE, 10.0)
    target[3:] = np.nan
    with pytest.raises(ValueError, match="at least 4"):
        similarity_fit(SHAPE, target)
    with pytest.raises(ValueError, match="at least one"):
        mean_shape([])
