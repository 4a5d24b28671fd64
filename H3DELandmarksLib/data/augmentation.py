"""Augmentation that fits 3D anatomy, applied to image and points alike.

A training patch is a grid of `size` voxels (i, j, k) at `spacing` mm whose axes follow L, P, S,
centred on a physical point c of the source volume. One random `PatchTransform` per sample maps
patch point p to the source point ``T(p) = c + M (p + d(p) - c)``: M is a rotation times a
scaling, d a smooth cubic B-spline displacement (the elastic part, a SimpleITK B-spline
transform evaluated by `data.elastic`) defined over the patch. The image is resampled through T
in one interpolation (SimpleITK, d as a field on the patch's voxels); a landmark x goes the other way,
``p + d(p) = c + M^-1 (x - c)``, solved by fixed-point iteration (d is small and smooth; about
ten steps at the mouse recipe's 0.3 mm). With the identity transform the patch is exactly
`resample_patch(volume, c, size, spacing)`.

Intensity changes (contrast, brightness, gamma, noise) act on the already mapped intensities and
stay inside the mapped range.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from .elastic import BSplineDisplacement
from .resample import crop_or_pad_to_box
from .volume import Volume

ELASTIC_MESH = 2  # B-spline mesh cells per axis over the patch (control points: mesh + 3)
INVERSE_ITERATIONS = 30
INVERSE_TOLERANCE_MM = 1e-9  # the fixed-point iteration stops once no point moves more
CORNERS = np.array(list(np.ndindex(2, 2, 2)), float)


@dataclass(frozen=True)
class AugmentationSettings:
    """Ranges of the random changes; zero or (1, 1) ranges switch a change off.

    Attributes:
        rotation_deg: largest rotation angle about a random axis; 180 or more draws rotations
            uniformly over all orientations (scans in any orientation).
        scale: range of the isotropic scale factor (a patch voxel covers scale x spacing mm).
        anisotropy: largest relative per-axis deviation from the isotropic scale.
        elastic_mm: standard deviation of the elastic control-point displacements (mm).
        contrast: range of the factor applied around the patch mean.
        brightness: largest shift, as a fraction of the mapped intensity range.
        gamma: range of the gamma exponent on the range-normalised intensities.
        noise: largest standard deviation of Gaussian noise, as a fraction of the range.
    """

    rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.9, 1.1)
    anisotropy: float = 0.05
    elastic_mm: float = 0.0
    contrast: tuple[float, float] = (0.85, 1.15)
    brightness: float = 0.05
    gamma: tuple[float, float] = (0.8, 1.25)
    noise: float = 0.02

    def __post_init__(self) -> None:
        problems = []
        if self.rotation_deg < 0 or self.anisotropy < 0 or self.elastic_mm < 0:
            problems.append("rotation_deg, anisotropy and elastic_mm must not be negative")
        for name in ("scale", "contrast", "gamma"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                problems.append(f"{name} must be a range [low, high] with 0 < low <= high")
        if self.brightness < 0 or self.noise < 0:
            problems.append("brightness and noise must not be negative")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class PatchTransform:
    """``T(p) = centre + matrix @ (p + d(p) - centre)``; `elastic` holds d as B-spline coefficients.

    Attributes:
        centre: LPS point the patch is centred on (mm).
        matrix: 3x3 linear part (rotation times scaling) in LPS.
        elastic: 3 x (ELASTIC_MESH + 3)^3 B-spline displacement coefficients in mm (SimpleITK's
            parameter order), or None.
    """

    centre: np.ndarray
    matrix: np.ndarray
    elastic: np.ndarray | None = None

    @classmethod
    def identity(cls, centre) -> "PatchTransform":
        return cls(np.asarray(centre, float), np.eye(3))

    def shifted(self, offset_mm) -> "PatchTransform":
        """The same transform with the patch moved by `offset_mm` along its own axes."""
        return PatchTransform(self.centre + self.matrix @ np.asarray(offset_mm, float), self.matrix, self.elastic)


@dataclass(frozen=True)
class PatchGrid:
    """Size and spacing (mm) of a patch along its axes i, j, k, whose LPS directions are the
    columns of `direction` (identity: canonical orientation)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def origin(self, centre) -> np.ndarray:
        """LPS position of the first voxel of the patch centred on `centre`."""
        return np.asarray(centre, float) - self.direction @ (np.asarray(self.spacing) * (np.asarray(self.size) - 1) / 2)

    def index_to_point(self, centre, ijk: np.ndarray) -> np.ndarray:
        return self.origin(centre) + (np.asarray(ijk, float) * np.asarray(self.spacing)) @ self.direction.T

    def point_to_index(self, centre, points: np.ndarray) -> np.ndarray:
        offsets = np.asarray(points, float) - self.origin(centre)
        return offsets @ np.linalg.inv(self.direction).T / np.asarray(self.spacing)


def random_transform(rng: np.random.Generator, settings: AugmentationSettings, centre) -> PatchTransform:
    """Draw rotation, scaling and elastic displacement for one sample."""
    rotation = random_rotation(rng, settings.rotation_deg)
    scale = np.exp(rng.uniform(*np.log(settings.scale)))
    scales = scale * (1 + rng.uniform(-settings.anisotropy, settings.anisotropy, 3))
    elastic = None
    if settings.elastic_mm > 0:
        points = ELASTIC_MESH + 3
        elastic = rng.normal(0.0, settings.elastic_mm, (3, points, points, points))
    return PatchTransform(np.asarray(centre, float), rotation @ np.diag(scales), elastic)


def random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A rotation by at most `max_deg` about a uniformly random axis; uniform over all
    rotations when `max_deg` is 180 or more."""
    if max_deg >= 180:
        return Rotation.random(random_state=rng).as_matrix()
    axis = _unit(rng.normal(size=3))
    angle = np.radians(rng.uniform(-max_deg, max_deg))
    return Rotation.from_rotvec(angle * axis).as_matrix()


def sample_patch(volume: Volume, transform: PatchTransform, grid: PatchGrid, pad_value: float) -> np.ndarray:
    """The patch ``[k, j, i]`` (float32) of `volume` through `transform`; outside gets `pad_value`.

    Only the index box of `volume` the patch can reach (one voxel of margin, never past the
    volume's edge, as `data.preprocessing.extract_patch` does) is copied before resampling.
    """
    rigid = PatchTransform(transform.centre, transform.matrix)
    footprint = transform_points(rigid, grid, CORNERS * (np.asarray(grid.size) - 1))
    reach = np.zeros(3)
    if transform.elastic is not None:
        # A B-spline displacement never exceeds its largest coefficient.
        reach = np.max(np.abs(transform.elastic)) * np.abs(transform.matrix).sum(1)
    low, high = footprint.min(0) - reach, footprint.max(0) + reach
    indices = volume.physical_to_index(np.where(CORNERS.astype(bool), high, low))
    last_voxel = np.asarray(volume.shape_ijk) - 1
    first = np.clip(np.floor(indices.min(0)).astype(int) - 1, 0, last_voxel)
    last = np.clip(np.ceil(indices.max(0)).astype(int) + 1, first, last_voxel)
    source = crop_or_pad_to_box(volume, first, last - first + 1, pad_value=0)
    patch = sitk.Resample(
        source.to_sitk(), [int(s) for s in grid.size], _sitk_transform(transform, grid), sitk.sitkLinear,
        [float(o) for o in grid.origin(transform.centre)], [float(s) for s in grid.spacing],
        [float(d) for d in grid.direction.ravel()], float(pad_value), sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(patch)


def points_to_patch(transform: PatchTransform, grid: PatchGrid, points_lps: np.ndarray) -> np.ndarray:
    """Continuous patch indices (i, j, k) of LPS points (rows of NaN stay NaN)."""
    points_lps = np.asarray(points_lps, float).reshape(-1, 3)
    target = transform.centre + (points_lps - transform.centre) @ np.linalg.inv(transform.matrix).T
    patch_points = target.copy()
    if transform.elastic is not None:
        displacement = BSplineDisplacement(_bspline(transform, grid))
        finite = np.all(np.isfinite(target), axis=1)
        points = target[finite]
        for _ in range(INVERSE_ITERATIONS):
            previous, points = points, target[finite] - displacement.at_points(points)
            if not len(points) or np.max(np.abs(points - previous)) < INVERSE_TOLERANCE_MM:
                break
        patch_points[finite] = points
    return grid.point_to_index(transform.centre, patch_points)


def transform_points(transform: PatchTransform, grid: PatchGrid, patch_ijk: np.ndarray) -> np.ndarray:
    """LPS source points of continuous patch indices (i, j, k)."""
    patch_ijk = np.asarray(patch_ijk, float).reshape(-1, 3)
    points = grid.index_to_point(transform.centre, patch_ijk)
    if transform.elastic is not None:
        points = points + BSplineDisplacement(_bspline(transform, grid)).at_points(points)
    return transform.centre + (points - transform.centre) @ transform.matrix.T


def augment_intensity(array: np.ndarray, rng: np.random.Generator, settings: AugmentationSettings,
                      low: float, high: float) -> np.ndarray:
    """Random contrast, brightness, gamma and noise on mapped intensities in [low, high]."""
    span = high - low
    values = array.astype(np.float32)
    mean = float(values.mean())
    values = mean + (values - mean) * rng.uniform(*settings.contrast)
    values = values + span * rng.uniform(-settings.brightness, settings.brightness)
    normalised = np.clip((values - low) / span, 0.0, 1.0)
    values = low + span * normalised ** rng.uniform(*settings.gamma)
    noise = rng.uniform(0.0, settings.noise) * span
    values = values + rng.normal(0.0, 1.0, values.shape).astype(np.float32) * noise
    return np.clip(values, low, high).astype(np.float32)


def _sitk_transform(transform: PatchTransform, grid: PatchGrid) -> sitk.Transform:
    affine = sitk.AffineTransform(3)
    affine.SetMatrix([float(m) for m in transform.matrix.ravel()])
    affine.SetCenter([float(c) for c in transform.centre])
    if transform.elastic is None:
        return affine
    origin = grid.origin(transform.centre)
    elastic = BSplineDisplacement(_bspline(transform, grid)).field_transform(origin, grid.spacing, grid.size,
                                                                              grid.direction)
    return sitk.CompositeTransform([affine, elastic])


def _bspline(transform: PatchTransform, grid: PatchGrid) -> sitk.BSplineTransform:
    """The displacement d as a SimpleITK B-spline over the patch domain."""
    reference = sitk.Image([int(s) for s in grid.size], sitk.sitkFloat32)
    reference.SetSpacing([float(s) for s in grid.spacing])
    reference.SetOrigin([float(o) for o in grid.origin(transform.centre)])
    reference.SetDirection([float(d) for d in grid.direction.ravel()])
    bspline = sitk.BSplineTransformInitializer(reference, [ELASTIC_MESH] * 3, 3)
    bspline.SetParameters([float(c) for c in transform.elastic.ravel()])
    return bspline


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)
