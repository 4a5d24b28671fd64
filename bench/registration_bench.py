"""Registration libraries and settings compared on atlas pairs: landmark error and CPU time.

Each reference (an annotated case) is registered onto each target with every method; the
reference's landmarks carried over are scored against the target's own landmarks (mean radial
error in mm) and the registration is timed (CPU seconds of this process, one thread, and wall
seconds). Methods:

- ``simpleitk-baseline``: `H3DELandmarksLib.data.registration` with the settings of the multi-atlas
  baseline (0.28 mm, 300 random rotations, 12 optimised starts, 100 B-spline iterations);
- ``simpleitk-fast``: the same pipeline with the default settings (`RegistrationSettings()`);
- ``simpleitk-fast-0.42``: those at 0.42 mm;
- ``elastix``: the same rigid start search, then ITK-Elastix 0.25 (rigid, affine, B-spline of the
  same control-point spacing; AdvancedMattesMutualInformation, adaptive stochastic gradient
  descent, elastix's default maps with 3 resolutions) on the masked images; its deformation field
  is inverted per point as the B-spline is. No fixed mask: with one, elastix 0.25 stops with
  "No valid voxels found to estimate the AdaptiveStochasticGradientDescent parameters" even when
  an image is registered to itself. Needs ``pip install itk-elastix``.

    python bench/registration_bench.py --data ../shared/data/mouse_ct_atlas \
        --references 129X1_SVJ_,CBA_CAJ_ --targets 129S1_SVLMJ_,AKR_J_,C57BL6_J_

Prints one row per method (mean error over the pairs, CPU and wall seconds per registration) and
each method's error and time as ratios of the baseline's, measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from H3DELandmarksLib.data.landmark_files import read_landmarks
from H3DELandmarksLib.data.registration import (
    Registration,
    RegistrationImage,
    RegistrationSettings,
    initial_rigid,
    prepare_image,
    register,
    supported,
)
from H3DELandmarksLib.data.volume_io import read_volume

BONE_THRESHOLD = 30.0
BASELINE = RegistrationSettings(threshold=BONE_THRESHOLD, random_rotations=300, optimised_starts=12,
                                bspline_iterations=100)
ELASTIX_ITERATIONS = {"rigid": 250, "affine": 250, "bspline": 500}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    fast = RegistrationSettings(threshold=BONE_THRESHOLD)
    methods = {
        "simpleitk-baseline": (BASELINE, register),
        "simpleitk-fast": (fast, register),
        "simpleitk-fast-0.42": (dataclasses.replace(fast, working_spacing_mm=0.42), register),
    }
    if not args.no_elastix:
        methods["elastix"] = (fast, register_with_elastix)
    results = {name: [] for name in methods}
    for target in args.targets.split(","):
        target_volume = read_volume(args.data / "volumes" / f"{target}.nii.gz")
        truth = read_landmarks(args.data / "landmarks" / f"{target}.mrk.json")
        for reference in args.references.split(","):
            reference_volume = read_volume(args.data / "volumes" / f"{reference}.nii.gz")
            landmarks = read_landmarks(args.data / "landmarks" / f"{reference}.mrk.json").reordered(truth.names)
            for name, (settings, method) in methods.items():
                cpu, wall = time.process_time(), time.perf_counter()
                target_image, reference_image = prepare_image(target_volume, settings), prepare_image(
                    reference_volume, settings)
                registration = method(target_image, reference_image, settings)
                usable = supported(reference_volume, landmarks, reference_image.threshold) & truth.present
                points = np.array([registration.to_target(q) for q in landmarks.positions[usable]])
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                error = float(np.nanmean(np.linalg.norm(points - truth.positions[usable], axis=1)))
                results[name].append((error, cpu, wall))
                print(f"{target} <- {reference} {name}: MRE {error:.3f} mm, {cpu:.1f} s CPU, {wall:.1f} s wall",
                      flush=True)
    base = np.mean(results["simpleitk-baseline"], axis=0)
    print(f"\n{'method':22} {'MRE mm':>7} {'CPU s':>6} {'wall s':>7} {'MRE ratio':>9} {'CPU ratio':>9}")
    for name, rows in results.items():
        mean = np.mean(rows, axis=0)
        print(f"{name:22} {mean[0]:7.3f} {mean[1]:6.1f} {mean[2]:7.1f} {mean[0] / base[0]:9.2f} {mean[1] / base[1]:9.2f}")
    return 0


def register_with_elastix(target: RegistrationImage, reference: RegistrationImage,
                          settings: RegistrationSettings) -> Registration:
    """The same rigid start, then elastix rigid, affine and B-spline on the reference resampled
    through that start."""
    import itk

    rigid = initial_rigid(target, reference, settings)
    started = sitk.Resample(reference.image, target.image, rigid, sitk.sitkLinear, 0.0)
    fixed, moving = _to_itk(target.image, np.float32), _to_itk(started, np.float32)
    parameters = itk.ParameterObject.New()
    extent = np.asarray(target.image.GetSize()) * np.asarray(target.image.GetSpacing())
    for kind in ("rigid", "affine", "bspline"):
        parameter_map = parameters.GetDefaultParameterMap(kind, 3)
        parameter_map["MaximumNumberOfIterations"] = [str(ELASTIX_ITERATIONS[kind])]
        parameter_map["WriteResultImage"] = ["false"]
        parameter_map["NumberOfResolutions"] = ["3"]
        parameter_map["AutomaticTransformInitialization"] = ["false"]
        if kind == "bspline":
            spacing = float(extent.max()) / (settings.bspline_mesh - 1)
            parameter_map["FinalGridSpacingInPhysicalUnits"] = [f"{spacing:.3f}"]
        parameters.AddParameterMap(parameter_map)
    method = itk.ElastixRegistrationMethod[itk.Image[itk.F, 3], itk.Image[itk.F, 3]].New(
        fixed_image=fixed, moving_image=moving, parameter_object=parameters, log_to_console=False)
    method.SetNumberOfThreads(1)
    method.Update()
    with tempfile.TemporaryDirectory() as folder:
        field = itk.transformix_deformation_field(moving, method.GetTransformParameterObject(),
                                                  output_directory=folder)
    displacement = sitk.GetImageFromArray(itk.array_from_image(field).astype(np.float64), isVector=True)
    displacement.CopyInformation(target.image)
    deformation = sitk.DisplacementFieldTransform(displacement)
    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    return Registration(affine, deformation, float("nan"))


def _to_itk(image: sitk.Image, dtype: type):
    import itk

    converted = itk.image_from_array(sitk.GetArrayFromImage(image).astype(dtype))
    converted.SetSpacing(image.GetSpacing())
    converted.SetOrigin(image.GetOrigin())
    converted.SetDirection(itk.matrix_from_array(np.array(image.GetDirection()).reshape(3, 3)))
    return converted


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="mouse_ct_atlas folder")
    parser.add_argument("--references", default="129X1_SVJ_,CBA_CAJ_", help="annotated cases registered")
    parser.add_argument("--targets", default="129S1_SVLMJ_,AKR_J_,C57BL6_J_", help="cases scored")
    parser.add_argument("--no-elastix", action="store_true", help="leave ITK-Elastix out")
    return parser


if __name__ == "__main__":
    sys.exit(main())
