"""The NumPy B-spline displacement is SimpleITK's, at points, on a patch grid and in resampling."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from H3DELandmarksLib.data.elastic import BSplineDisplacement, cubic_weights

SIZE = (20, 16, 12)
SPACING = (0.5, 0.7, 0.6)
ORIGIN = (3.0, -4.0, 8.0)
DIRECTION = Rotation.from_rotvec([0.4, -0.2, 0.3]).as_matrix()


def random_bspline(seed: int, direction: np.ndarray = DIRECTION) -> sitk.BSplineTransform:
    reference = sitk.Image(list(SIZE), sitk.sitkFloat32)
    reference.SetSpacing(SPACING)
    reference.SetOrigin(ORIGIN)
    reference.SetDirection([float(d) for d in direction.ravel()])
    bspline = sitk.BSplineTransformInitializer(reference, [2, 3, 2], 3)
    rng = np.random.default_rng(seed)
    bspline.SetParameters([float(c) for c in rng.normal(0.0, 1.0, bspline.GetNumberOfParameters())])
    return bspline


def sitk_displacements(bspline: sitk.BSplineTransform, points: np.ndarray) -> np.ndarray:
    return np.array([np.asarray(bspline.TransformPoint([float(p) for p in point])) - point for point in points])


def grid_points(indices: np.ndarray, direction: np.ndarray = DIRECTION) -> np.ndarray:
    return np.asarray(ORIGIN) + (indices * np.asarray(SPACING)) @ direction.T


def test_cubic_weights_sum_to_one_and_match_the_basis():
    fractions = np.linspace(0.0, 0.999, 7)
    weights = cubic_weights(fractions)
    np.testing.assert_allclose(weights.sum(-1), 1.0)
    np.testing.assert_allclose(weights[0], [1 / 6, 4 / 6, 1 / 6, 0.0])


@pytest.mark.parametrize("seed", [0, 1])
def test_displacement_at_points_is_sitks_inside_and_outside_the_domain(seed):
    bspline = random_bspline(seed)
    rng = np.random.default_rng(seed + 10)
    inside = grid_points(rng.uniform(-0.5, np.asarray(SIZE) - 0.5, (200, 3)))
    outside = grid_points(np.array([[-40.0, 0.0, 0.0], [0.0, 60.0, 0.0], [5.0, 5.0, 90.0]]))
    points = np.concatenate([inside, outside])
    np.testing.assert_allclose(BSplineDisplacement(bspline).at_points(points), sitk_displacements(bspline, points),
                               atol=1e-9)
    assert np.all(BSplineDisplacement(bspline).at_points(outside) == 0)


@pytest.mark.parametrize("seed", range(4))
def test_displacement_on_the_patch_grid_is_sitks_at_every_voxel(seed):
    """Arbitrary patch axes, which SimpleITK's initializer gives the control grid permuted and
    flipped (seeds 1 to 3)."""
    direction = Rotation.random(random_state=seed).as_matrix()
    bspline = random_bspline(seed, direction)
    field = BSplineDisplacement(bspline).on_grid(ORIGIN, SPACING, SIZE, direction)
    assert field.shape == (SIZE[2], SIZE[1], SIZE[0], 3)
    indices = np.stack(np.meshgrid(*(np.arange(n) for n in SIZE), indexing="ij"), -1).reshape(-1, 3)
    expected = sitk_displacements(bspline, grid_points(indices, direction))
    np.testing.assert_allclose(field[indices[:, 2], indices[:, 1], indices[:, 0]], expected, atol=1e-6)


def test_a_grid_with_other_axes_is_refused():
    with pytest.raises(ValueError, match="axes"):
        BSplineDisplacement(random_bspline(0)).on_grid(ORIGIN, SPACING, SIZE, DIRECTION @ Rotation.from_rotvec(
            [0.0, 0.0, 0.3]).as_matrix())


@pytest.mark.parametrize("seed", [1, 3])
def test_resampling_through_the_field_equals_resampling_through_the_bspline(seed):
    direction = Rotation.random(random_state=seed).as_matrix()
    bspline = random_bspline(seed, direction)
    rng = np.random.default_rng(4)
    source = sitk.GetImageFromArray(rng.uniform(0, 100, (30, 34, 38)).astype(np.float32))
    source.SetOrigin([-4.0, -12.0, 0.0])
    source.SetSpacing([0.6, 0.5, 0.55])
    field = BSplineDisplacement(bspline).field_transform(ORIGIN, SPACING, SIZE, direction)

    def resample(transform: sitk.Transform) -> np.ndarray:
        image = sitk.Resample(source, list(SIZE), transform, sitk.sitkLinear, ORIGIN, SPACING,
                              [float(d) for d in direction.ravel()], -1.0,
                              sitk.sitkFloat32)
        return sitk.GetArrayFromImage(image)

    np.testing.assert_allclose(resample(field), resample(bspline), atol=1e-3)
