"""Registration of an annotated reference scan onto another scan, and its landmarks carried over.

Both scans are reduced to their main structure (the largest connected component above an
intensity threshold, dilated by `mask_dilation_mm`; for a skull, limbs and vertebrae in the field
of view are other components) at a working resolution, then registered with SimpleITK:

1. rigid start: the structures may lie in any orientation, so the 8 principal-axis matches and
   `random_rotations` random rotations about the structures' centroids are ranked by the metric
   at half the working resolution; the best `optimised_starts` are optimised over the coarse
   levels and the best metric at the working resolution is kept;
2. rigid, then affine, then (when `deformable`) a cubic B-spline (`bspline_mesh` control points
   per axis, L-BFGS-B); Mattes mutual information sampled inside the target's mask,
   multi-resolution.

ITK's L-BFGS-B (vnl_lbfgsb, netlib code translated by f2c) keeps its iteration state in static
variables, so two registrations running at once in one process corrupt each other (ITK issue
#230): registrations in parallel run in separate processes (`training.pseudo_labels`).

The result maps target points to reference points, T(p) = affine(bspline(p)), so reference
landmarks reach the target through the inverse: the affine exactly, the B-spline by Newton's
method per point. A reference landmark with no structure within 2 voxels of it in its own scan
(outside the scanned data, say) is not carried over. The target's own landmarks are never used.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .landmarks import Landmarks
from .volume import Volume

SAMPLING_SEED = 7
INVERSION_TOLERANCE_MM = 1e-4
INVERSION_ITERATIONS = 100
SUPPORT_RADIUS_VOXELS = 2
HISTOGRAM_BINS = 32


@dataclass(frozen=True)
class RegistrationSettings:
    """How two scans are registered (lengths in mm, intensities in the scans' units).

    Attributes:
        working_spacing_mm: voxel size the scans are binned to (an integer factor of the native
            spacing per axis, at least 1); None keeps the native voxels.
        threshold: lowest intensity of the structure; None takes the upper of the two Otsu
            thresholds of each scan (air, soft tissue, bone).
        mask_dilation_mm: margin around the structure kept in the image and sampled.
        bspline_mesh: B-spline control points per axis.
        sampling: fraction of the mask's voxels sampled by the metric while optimising.
        random_rotations, optimised_starts: the rigid start search (see the module notes).
        deformable: whether the B-spline follows the affine registration.
        bspline_iterations: most L-BFGS-B iterations of the B-spline per resolution level.
    """

    working_spacing_mm: float | None = None
    threshold: float | None = None
    mask_dilation_mm: float = 1.0
    bspline_mesh: int = 5
    sampling: float = 0.1
    random_rotations: int = 100
    optimised_starts: int = 4
    deformable: bool = True
    bspline_iterations: int = 30


@dataclass
class RegistrationImage:
    """One scan prepared for registration.

    Attributes:
        image: float32 working image, zero outside the mask.
        mask: the dilated structure (the region the metric samples).
        centroid: the structure's centroid (LPS mm); axes: its principal axes (columns,
            largest variance first).
        threshold: the structure's intensity threshold used.
    """

    image: sitk.Image
    mask: sitk.Image
    centroid: np.ndarray
    axes: np.ndarray
    threshold: float


@dataclass
class Registration:
    """Target-to-reference transform T(p) = affine(deformation(p)) and its final metric; the
    deformation is a B-spline (or any SimpleITK transform close to the identity), None when the
    registration stopped at the affine."""

    affine: sitk.AffineTransform
    deformation: sitk.Transform | None
    metric: float

    def to_target(self, reference_point: np.ndarray) -> np.ndarray:
        """Target point p with T(p) = `reference_point` (LPS mm), NaN if the inversion fails.

        The affine part is inverted exactly: r = affine⁻¹(reference_point); ``deformation(p) = r``
        is solved by Newton's method with a central-difference Jacobian, starting from p = r.
        """
        r = np.array(self.affine.GetInverse().TransformPoint([float(v) for v in reference_point]))
        if self.deformation is None:
            return r
        p = r.copy()
        for _ in range(INVERSION_ITERATIONS):
            residual = np.array(self.deformation.TransformPoint(p.tolist())) - r
            if np.linalg.norm(residual) < INVERSION_TOLERANCE_MM:
                return p
            p = p - np.linalg.solve(_jacobian(self.deformation, p), residual)
        return np.full(3, np.nan)


def prepare_image(volume: Volume, settings: RegistrationSettings) -> RegistrationImage:
    """The scan's working image, structure mask, centroid and principal axes."""
    image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    factors = working_factors(volume, settings.working_spacing_mm)
    if max(factors) > 1:
        image = sitk.BinShrink(image, factors)
    threshold = structure_threshold(image) if settings.threshold is None else float(settings.threshold)
    structure, mask = _structure(image, threshold, settings.mask_dilation_mm)
    centroid, axes = principal_frame(structure)
    return RegistrationImage(sitk.Mask(image, mask), mask, centroid, axes, threshold)


def transfer_landmarks(target: RegistrationImage, reference: RegistrationImage, reference_volume: Volume,
                       landmarks: Landmarks, settings: RegistrationSettings) -> tuple[np.ndarray, float]:
    """Register `reference` onto `target`; its `landmarks` in the target's space ``(N, 3)`` and the
    final metric. Landmarks without structure support (see `supported`) or whose inversion fails
    are NaN."""
    points = np.full((len(landmarks), 3), np.nan)
    usable = supported(reference_volume, landmarks, reference.threshold)
    points[usable], metric = carry_points(target, reference, landmarks.positions[usable], settings)
    return points, metric


def carry_points(target: RegistrationImage, reference: RegistrationImage, points: np.ndarray,
                 settings: RegistrationSettings) -> tuple[np.ndarray, float]:
    """Register `reference` onto `target`; the reference `points` ``(M, 3)`` in the target's space
    (NaN where the inversion fails) and the final metric."""
    registration = register(target, reference, settings)
    return np.array([registration.to_target(q) for q in points]).reshape(-1, 3), registration.metric


def use_threads(count: int) -> None:
    """Run SimpleITK on `count` threads in this process (a registration worker's start)."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(count)


def register(target: RegistrationImage, reference: RegistrationImage, settings: RegistrationSettings) -> Registration:
    """Rigid -> affine -> B-spline registration of `reference` (moving) onto `target` (fixed)."""
    fixed, moving, mask = target.image, reference.image, target.mask
    rigid = initial_rigid(target, reference, settings)
    rigid = _optimise(fixed, moving, mask, rigid, settings, shrinks=[1], iterations=200)

    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    affine = _optimise(fixed, moving, mask, affine, settings, shrinks=[4, 2, 1], iterations=200)
    if not settings.deformable:
        return Registration(affine, None, _evaluate(fixed, moving, mask, affine))

    bspline = sitk.BSplineTransformInitializer(fixed, [settings.bspline_mesh] * 3, 3)
    method = _method(mask, settings, shrinks=[2, 1])
    method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=settings.bspline_iterations,
                                maximumNumberOfCorrections=5,
                                maximumNumberOfFunctionEvaluations=4 * settings.bspline_iterations)
    method.SetMovingInitialTransform(affine)
    method.SetInitialTransform(bspline, inPlace=True)
    method.Execute(fixed, moving)
    return Registration(affine, bspline, method.GetMetricValue())


def initial_rigid(target: RegistrationImage, reference: RegistrationImage,
                  settings: RegistrationSettings) -> sitk.Euler3DTransform:
    """Best rigid start: rank candidate rotations about the centroids by the metric at half the
    working resolution, optimise the best few over the coarse levels, keep the best metric at the
    working resolution."""
    fixed, moving = sitk.BinShrink(target.image, [2] * 3), sitk.BinShrink(reference.image, [2] * 3)
    coarse_mask = sitk.Resample(target.mask, fixed, sitk.Transform(), sitk.sitkNearestNeighbor)
    candidates = []
    for rotation in candidate_rotations(target.axes, reference.axes, settings.random_rotations):
        transform = sitk.Euler3DTransform()
        transform.SetCenter(target.centroid.tolist())
        transform.SetMatrix(rotation.ravel().tolist())
        transform.SetTranslation((reference.centroid - target.centroid).tolist())
        candidates.append((_evaluate(fixed, moving, coarse_mask, transform), transform))
    candidates.sort(key=lambda candidate: candidate[0])
    best, best_metric = None, np.inf
    for _, transform in candidates[: settings.optimised_starts]:
        transform = _optimise(target.image, reference.image, target.mask, transform, settings, shrinks=[4, 2],
                              iterations=200)
        metric = _evaluate(target.image, reference.image, target.mask, transform)
        if metric < best_metric:
            best, best_metric = transform, metric
    return best


def candidate_rotations(target_axes: np.ndarray, reference_axes: np.ndarray, count: int) -> list[np.ndarray]:
    """3x3 rotations to try: the 8 proper matches of the principal axes, then `count` random ones.

    Principal axes alone are not enough: limbs and vertebrae in the field of view tilt them by
    tens of degrees. Random rotations (fixed seed) cover the rest: the rigid optimisation
    converges from about 30 degrees away.
    """
    rotations = []
    for permutation in ([0, 1, 2], [0, 2, 1]):
        for signs in itertools.product([1, -1], repeat=3):
            rotation = reference_axes @ (np.eye(3)[:, permutation] * np.array(signs)) @ target_axes.T
            if np.linalg.det(rotation) > 0:
                rotations.append(rotation)
    quaternions = np.random.default_rng(SAMPLING_SEED).normal(size=(count, 4))
    for w, x, y, z in quaternions / np.linalg.norm(quaternions, axis=1, keepdims=True):
        rotations.append(np.array([
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]))
    return rotations


def supported(volume: Volume, landmarks: Landmarks, threshold: float,
              radius: int = SUPPORT_RADIUS_VOXELS) -> np.ndarray:
    """``(N,)`` bool: the landmark is present and has structure (>= threshold) within `radius`
    voxels in `volume`."""
    result = landmarks.present.copy()
    ijk = np.rint(volume.physical_to_index(np.nan_to_num(landmarks.positions))).astype(int)
    for n, (i, j, k) in enumerate(ijk):
        block = volume.array[max(k - radius, 0): k + radius + 1, max(j - radius, 0): j + radius + 1,
                             max(i - radius, 0): i + radius + 1]
        result[n] &= bool(block.size) and float(block.max()) >= threshold
    return result


def working_factors(volume: Volume, working_spacing_mm: float | None) -> list[int]:
    """Integer binning factor per axis that brings the voxels closest to `working_spacing_mm`."""
    if working_spacing_mm is None:
        return [1, 1, 1]
    return [max(1, int(round(working_spacing_mm / float(s)))) for s in volume.spacing]


def structure_threshold(image: sitk.Image) -> float:
    """The upper of the two Otsu thresholds (air / soft tissue / bone) of `image`."""
    otsu = sitk.OtsuMultipleThresholdsImageFilter()
    otsu.SetNumberOfThresholds(1)
    otsu.SetNumberOfHistogramBins(128)
    otsu.Execute(image)
    return float(otsu.GetThresholds()[-1])


def principal_frame(binary: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Centroid (LPS mm) and principal axes (columns, largest variance first) of a binary image."""
    ijk = np.argwhere(sitk.GetArrayViewFromImage(binary))[:, ::-1].astype(float)
    grid = Volume(np.empty((1, 1, 1)), binary.GetSpacing(), binary.GetOrigin(),
                  np.array(binary.GetDirection()).reshape(3, 3))
    points = grid.index_to_physical(ijk)
    centroid = points.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov((points - centroid).T))
    return centroid, eigenvectors[:, np.argsort(eigenvalues)[::-1]]


def _structure(image: sitk.Image, threshold: float, dilation_mm: float) -> tuple[sitk.Image, sitk.Image]:
    """Largest connected component at or above `threshold`, and it dilated by `dilation_mm`."""
    above = sitk.BinaryThreshold(image, threshold, 1e30, 1, 0)
    largest = sitk.RelabelComponent(sitk.ConnectedComponent(above), sortByObjectSize=True) == 1
    radius = [max(1, int(round(dilation_mm / spacing))) for spacing in image.GetSpacing()]
    return largest, sitk.BinaryDilate(largest, radius)


def _jacobian(transform: sitk.Transform, point: np.ndarray, step_mm: float = 0.01) -> np.ndarray:
    """``(3, 3)`` Jacobian of `transform` at `point` by central differences."""
    columns = []
    for axis in range(3):
        offset = np.zeros(3)
        offset[axis] = step_mm
        forward = np.array(transform.TransformPoint((point + offset).tolist()))
        backward = np.array(transform.TransformPoint((point - offset).tolist()))
        columns.append((forward - backward) / (2 * step_mm))
    return np.stack(columns, axis=1)


def _evaluate(fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image, transform: sitk.Transform) -> float:
    """The metric of `transform` over every voxel of `mask`."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricFixedMask(mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetInitialTransform(transform)
    return method.MetricEvaluate(fixed, moving)


def _optimise(fixed, moving, mask, transform, settings: RegistrationSettings, shrinks: list[int], iterations: int):
    """Optimise `transform` in place with regular-step gradient descent over `shrinks` levels."""
    method = _method(mask, settings, shrinks)
    method.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, iterations, relaxationFactor=0.7)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed, moving)
    return transform


def _method(mask: sitk.Image, settings: RegistrationSettings, shrinks: list[int]) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(settings.sampling, SAMPLING_SEED)
    method.SetMetricFixedMask(mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel(shrinks)
    method.SetSmoothingSigmasPerLevel([s / 2 for s in shrinks])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method
