"""Multi-atlas registration baseline for landmark detection (the field's classic method).

For each target scan, every atlas (another annotated scan of the dataset) is registered to it with
SimpleITK, on skull-only images (the largest connected bone component, dilated 1 mm; limbs and
vertebrae in the field of view are other components):

1. rigid start: skulls lie in arbitrary orientations, so 8 principal-axis matches and 300 random
   rotations about the skulls' centroids are ranked by the metric at half the working
   resolution; the best 12 are optimised over the coarse levels and the best metric is kept;
2. rigid, then affine, then cubic B-spline (5 x 5 x 5 control mesh, L-BFGS-B), Mattes mutual
   information sampled inside the target's skull mask, multi-resolution.

Registration gives T mapping target (fixed) points to atlas (moving) points,
T(p) = affine(bspline(p)), so atlas landmarks reach the target through the inverse: the affine
exactly, the B-spline by Newton's method per point. The prediction is the per-landmark,
per-coordinate median of the transferred points. The target's own landmarks are never used.

An atlas landmark with no bone within 2 voxels in its own scan (KK.HlJ_ landmark 28, outside the
scanned data) is not used. Leave-one-out: atlases are the other cases, exact ones first, in
cases.csv order (--atlases K takes the first K). Writes ``<case>.mrk.json`` per target and
``timing.csv`` (case, seconds, ...) into --out, for

    h3de evaluate --predictions OUT --truth DATA/landmarks --out REPORT

Development run (measured: 1.5-1.7 min per scan, one thread, MRE 0.23 mm on 2 scans):

    python bench/atlas_baseline.py --data ../shared/data/mouse_ct_atlas --out atlas_dev \
        --cases 129X1_SVJ_,C57BL6_J_ --atlases 3

Full leave-one-out on the 22 exact cases, the 42 other cases as atlases (~30 s per atlas and
CPU core at --shrink 2, so ~1.5 min per scan with 16 workers):

    python bench/atlas_baseline.py --data ../shared/data/mouse_ct_atlas --out atlas_loo \
        --cases exact --workers 16
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from H3DELandmarksLib.atomic import atomic_write_text
from H3DELandmarksLib.data.landmark_files import read_landmarks, write_landmarks
from H3DELandmarksLib.data.landmarks import Landmarks
from H3DELandmarksLib.data.volume import Volume
from H3DELandmarksLib.data.volume_io import read_volume

SAMPLING_SEED = 7
INVERSION_TOLERANCE_MM = 1e-4
INVERSION_ITERATIONS = 100


@dataclass(frozen=True)
class Settings:
    """Registration settings (intensities in the scans' units, lengths in mm)."""

    shrink: int = 2
    bone_threshold: float = 30.0
    mask_dilation_mm: float = 1.0
    bspline_mesh: int = 5
    sampling: float = 0.1
    random_rotations: int = 300
    optimised_starts: int = 12


@dataclass
class Scan:
    """One annotated case: native volume, working image (skull only), skull mask, landmarks and
    the skull's centroid and principal axes."""

    case: str
    volume: Volume
    image: sitk.Image
    mask: sitk.Image
    landmarks: Landmarks
    centroid: np.ndarray
    axes: np.ndarray


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = Settings(shrink=args.shrink, bspline_mesh=args.mesh, sampling=args.sampling)
    kinds = _case_kinds(args.data / "cases.csv")
    targets = _targets(kinds, args.cases)
    pool = [case for case, kind in kinds.items() if kind == "exact"] + [
        case for case, kind in kinds.items() if kind != "exact"
    ]
    timing = []
    with ProcessPoolExecutor(args.workers, initializer=_set_threads, initargs=(args.threads,)) as workers:
        for target in targets:
            start = time.perf_counter()
            atlases = [case for case in pool if case != target][: args.atlases]
            jobs = [(args.data, target, atlas, settings) for atlas in atlases]
            transferred = []
            for atlas, (points, metric) in zip(atlases, workers.map(transfer_job, jobs)):
                transferred.append(points)
                unused = int(np.isnan(points[:, 0]).sum())
                print(f"  {target} <- {atlas}: metric {metric:.4f}, {unused} landmarks not transferred", flush=True)
            names = read_landmarks(args.data / "landmarks" / f"{atlases[0]}.mrk.json").names
            predicted = median_landmarks(names, transferred)
            write_landmarks(args.out / f"{target}.mrk.json", predicted, overwrite=args.overwrite)
            seconds = time.perf_counter() - start
            print(f"{target}: {seconds / 60:.1f} min with {len(atlases)} atlases", flush=True)
            timing.append({"case": target, "seconds": round(seconds, 1), "atlases": len(atlases),
                           "shrink": settings.shrink, "workers": args.workers, "threads": args.threads})
            _write_timing(args.out / "timing.csv", timing)
    return 0


def transfer_job(job: tuple[Path, str, str, Settings]) -> tuple[np.ndarray, float]:
    """`transfer_landmarks` for (data folder, target case, atlas case, settings)."""
    data, target, atlas, settings = job
    return transfer_landmarks(_scan(data, target, settings), _scan(data, atlas, settings), settings)


def transfer_landmarks(target: Scan, atlas: Scan, settings: Settings) -> tuple[np.ndarray, float]:
    """Register `atlas` to `target`; its landmarks in the target's space ``(N, 3)`` and the metric.

    Atlas landmarks without bone support (see `supported`) or whose inversion fails are NaN.
    The target's own landmarks are never used.
    """
    affine, bspline, metric = register(target, atlas, settings)
    points = np.full((len(atlas.landmarks), 3), np.nan)
    usable = supported(atlas.volume, atlas.landmarks, settings.bone_threshold)
    points[usable] = [invert_point(affine, bspline, q) for q in atlas.landmarks.positions[usable]]
    return points, metric


def median_landmarks(names: list[str], transferred: list[np.ndarray]) -> Landmarks:
    """Per-landmark, per-coordinate median of the transferred points (all atlases)."""
    stacked = np.stack(transferred)
    located = np.isfinite(stacked).all(axis=2).any(axis=0)
    positions = np.full((len(names), 3), np.nan)
    positions[located] = np.nanmedian(stacked[:, located], axis=0)
    return Landmarks(names=names, positions=positions, present=located)


def register(target: Scan, atlas: Scan, settings: Settings):
    """Rigid -> affine -> B-spline registration; (affine, bspline, final metric).

    The full transform maps a target point p to ``affine(bspline(p))`` in the atlas.
    """
    fixed, moving, mask = target.image, atlas.image, target.mask
    rigid = initial_rigid(target, atlas, mask, settings)
    rigid = _run(fixed, moving, mask, rigid, settings, shrinks=[1], iterations=200)

    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    affine = _run(fixed, moving, mask, affine, settings, shrinks=[4, 2, 1], iterations=200)

    mesh = [settings.bspline_mesh] * 3
    bspline = sitk.BSplineTransformInitializer(fixed, mesh, 3)
    method = _method(mask, settings, shrinks=[2, 1])
    method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=100,
                                maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=400)
    method.SetMovingInitialTransform(affine)
    method.SetInitialTransform(bspline, inPlace=True)
    method.Execute(fixed, moving)
    return affine, bspline, method.GetMetricValue()


def invert_point(affine: sitk.Transform, bspline: sitk.BSplineTransform, atlas_point: np.ndarray) -> np.ndarray:
    """Target point p with ``affine(bspline(p)) = atlas_point``, NaN if none is found.

    The affine part is inverted exactly: r = affine⁻¹(atlas_point); ``bspline(p) = r`` is solved
    by Newton's method with a central-difference Jacobian, starting from p = r.
    """
    r = np.array(affine.GetInverse().TransformPoint([float(v) for v in atlas_point]))
    p = r.copy()
    for _ in range(INVERSION_ITERATIONS):
        residual = np.array(bspline.TransformPoint(p.tolist())) - r
        if np.linalg.norm(residual) < INVERSION_TOLERANCE_MM:
            return p
        p = p - np.linalg.solve(_jacobian(bspline, p), residual)
    return np.full(3, np.nan)


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


def supported(volume: Volume, landmarks: Landmarks, threshold: float, radius: int = 2) -> np.ndarray:
    """``(N,)`` bool: the landmark is present and has bone (>= threshold) within `radius` voxels."""
    result = landmarks.present.copy()
    ijk = np.rint(volume.physical_to_index(np.nan_to_num(landmarks.positions))).astype(int)
    for n, (i, j, k) in enumerate(ijk):
        block = volume.array[max(k - radius, 0): k + radius + 1, max(j - radius, 0): j + radius + 1,
                             max(i - radius, 0): i + radius + 1]
        result[n] &= bool(block.size) and float(block.max()) >= threshold
    return result


def skull(image: sitk.Image, settings: Settings) -> tuple[sitk.Image, sitk.Image]:
    """The skull: largest connected bone (>= threshold) component, and it dilated by
    `mask_dilation_mm` (the region kept in the image and sampled by the metric). Limbs and
    vertebrae in the field of view are separate components and are left out."""
    bone = sitk.BinaryThreshold(image, settings.bone_threshold, 1e9, 1, 0)
    largest = sitk.RelabelComponent(sitk.ConnectedComponent(bone), sortByObjectSize=True) == 1
    radius = max(1, int(round(settings.mask_dilation_mm / image.GetSpacing()[0])))
    return largest, sitk.BinaryDilate(largest, [radius] * 3)


def principal_frame(bone: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Centroid (LPS mm) and principal axes (columns, largest variance first) of a binary image."""
    ijk = np.argwhere(sitk.GetArrayViewFromImage(bone))[:, ::-1].astype(float)
    grid = Volume(np.empty((1, 1, 1)), bone.GetSpacing(), bone.GetOrigin(), np.array(bone.GetDirection()).reshape(3, 3))
    points = grid.index_to_physical(ijk)
    centroid = points.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov((points - centroid).T))
    return centroid, eigenvectors[:, np.argsort(eigenvalues)[::-1]]


def candidate_rotations(target: Scan, atlas: Scan, count: int) -> list[np.ndarray]:
    """3x3 rotations to try: the 8 proper matches of the bones' principal axes, then `count` random.

    Principal axes alone are not enough: limbs and vertebrae in the field of view tilt them by
    tens of degrees. Random rotations (fixed seed) cover the rest: the rigid optimisation
    converges from about 30 degrees away.
    """
    rotations = []
    for permutation in ([0, 1, 2], [0, 2, 1]):
        for signs in itertools.product([1, -1], repeat=3):
            rotation = atlas.axes @ (np.eye(3)[:, permutation] * np.array(signs)) @ target.axes.T
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


def initial_rigid(target: Scan, atlas: Scan, mask: sitk.Image, settings: Settings) -> sitk.Euler3DTransform:
    """Best rigid start: rank candidate rotations about the bone centroids by the metric at half
    the working resolution, optimise the best few over the coarse levels, keep the best metric
    at the working resolution."""
    fixed, moving = sitk.BinShrink(target.image, [2] * 3), sitk.BinShrink(atlas.image, [2] * 3)
    coarse = _evaluator(sitk.Resample(mask, fixed, sitk.Transform(), sitk.sitkNearestNeighbor))
    candidates = []
    for rotation in candidate_rotations(target, atlas, settings.random_rotations):
        transform = sitk.Euler3DTransform()
        transform.SetCenter(target.centroid.tolist())
        transform.SetMatrix(rotation.ravel().tolist())
        transform.SetTranslation((atlas.centroid - target.centroid).tolist())
        coarse.SetInitialTransform(transform)
        candidates.append((coarse.MetricEvaluate(fixed, moving), transform))
    candidates.sort(key=lambda candidate: candidate[0])
    fine = _evaluator(mask)
    best, best_metric = None, np.inf
    for _, transform in candidates[: settings.optimised_starts]:
        transform = _run(target.image, atlas.image, mask, transform, settings, shrinks=[4, 2], iterations=200)
        fine.SetInitialTransform(transform)
        metric = fine.MetricEvaluate(target.image, atlas.image)
        if metric < best_metric:
            best, best_metric = transform, metric
    return best


def _evaluator(mask: sitk.Image) -> sitk.ImageRegistrationMethod:
    """A registration method used only to evaluate the metric over every voxel of `mask`."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricFixedMask(mask)
    method.SetInterpolator(sitk.sitkLinear)
    return method


def _run(fixed, moving, mask, transform, settings: Settings, shrinks: list[int], iterations: int):
    """Optimise `transform` in place with regular-step gradient descent over `shrinks` levels."""
    method = _method(mask, settings, shrinks)
    method.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, iterations, relaxationFactor=0.7)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed, moving)
    return transform


def _method(mask: sitk.Image, settings: Settings, shrinks: list[int]) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(settings.sampling, SAMPLING_SEED)
    method.SetMetricFixedMask(mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel(shrinks)
    method.SetSmoothingSigmasPerLevel([s / 2 for s in shrinks])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


def _set_threads(threads: int) -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _scan(data: Path, case: str, settings: Settings) -> Scan:
    volume = read_volume(data / "volumes" / f"{case}.nii.gz")
    image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    if settings.shrink > 1:
        image = sitk.BinShrink(image, [settings.shrink] * 3)
    bone, mask = skull(image, settings)
    centroid, axes = principal_frame(bone)
    landmarks = read_landmarks(data / "landmarks" / f"{case}.mrk.json")
    return Scan(case, volume, sitk.Mask(image, mask), mask, landmarks, centroid, axes)


def _case_kinds(path: Path) -> dict[str, str]:
    """case -> "exact" / "refined" from cases.csv."""
    with path.open(newline="", encoding="utf-8") as stream:
        return {row["case"]: row["landmarks"] for row in csv.DictReader(stream)}


def _targets(kinds: dict[str, str], selection: str) -> list[str]:
    items = [item.strip() for item in selection.split(",") if item.strip()]
    targets = [case for case in kinds if case in items or kinds[case] in items]
    if not targets:
        raise SystemExit(f"No case matches --cases {selection!r}.")
    return targets


def _write_timing(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue(), overwrite=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="mouse_ct_atlas folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for <case>.mrk.json and timing.csv")
    parser.add_argument("--cases", default="exact", help="target cases: names or 'exact' (default)")
    parser.add_argument("--atlases", type=int, help="use at most K atlases per target (default: all others)")
    parser.add_argument("--shrink", type=int, default=2, help="working resolution: native spacing x this")
    parser.add_argument("--mesh", type=int, default=5, help="B-spline control mesh size per axis")
    parser.add_argument("--sampling", type=float, default=0.1, help="fraction of mask voxels sampled")
    parser.add_argument("--workers", type=int, default=1, help="atlases registered in parallel processes")
    parser.add_argument("--threads", type=int, default=1, help="ITK threads per worker")
    parser.add_argument("--overwrite", action="store_true", help="replace existing predictions")
    return parser


if __name__ == "__main__":
    sys.exit(main())
