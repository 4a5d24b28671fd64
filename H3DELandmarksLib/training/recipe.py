"""A training recipe derived from the data, so `h3de train --data DIR` needs no configuration file.

What the annotated cases of a dataset say, and what each becomes:

- voxel size (median over cases) → the fine stage's spacing: the native voxel size, or a quarter
  of the coarse spacing when that is coarser, so a 48-voxel fine patch always sees 12 coarse
  voxels around the coarse guess;
- spread of the landmarks (the largest distance between two landmarks of one case) → the coarse
  spacing: a 48-voxel coarse window spans 1.6 times that spread;
- how differently the cases lie (the rotation between each case's landmarks and the first
  case's, after a similarity fit) → the rotation augmentation: full rotations when the cases lie
  in arbitrary orientations (> 30°), otherwise a little more than the widest rotation seen;
- enough landmarks for a shape fit → a shape-aligned fine stage with the landmarks' mean shape;
- intensities (0.5th and 99.5th percentiles of a few cases) → the intensity window;
- the number of cases and the time budget → epochs: the sample counts that trained the shipped
  mouse model, capped by what fits in `max_minutes` at a measured cost per training patch. The
  coarse stage is served first (up to half the budget): the fine stage's patches lie where the
  coarse stage finds the landmarks, so a fine stage trained beside an unconverged coarse one is
  wasted (the first 5-shot mouse run: coarse 5.4 mm after 53 epochs, 4.9 mm in the end).

The recipe is a plain training configuration (see `config`): a recipe file given with it
overrides any part of it (`merge_recipe`), and it is written beside the run and into the manifest.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..data.landmarks import Landmarks
from ..data.shape import MIN_FIT_POINTS, similarity_fit
from ..data.volume import Volume
from .config import FROM_DATA, TrainingConfigError
from .data import pseudo_labelled_validation_count

PATCH_VOXELS = 48
COARSE_FIELD_FACTOR = 1.6
FINE_PER_COARSE = 4
ARBITRARY_POSE_DEG = 30.0
MIN_ROTATION_DEG = 15.0
INTENSITY_CASES = 5
INTENSITY_PERCENTILES = (0.5, 99.5)
COARSE_TARGET_SAMPLES = 4800
FINE_TARGET_SAMPLES = 18000
FINE_PATCHES_PER_CASE = 8
COARSE_EPOCHS = (30, 600)
FINE_EPOCHS = (15, 300)
# Wall seconds per training patch on 2 CPU threads, each epoch's validation included: measured on
# the mouse atlas with 48³ patches, the 2-core machine otherwise idle (coarse 8.5 s per epoch of 34
# patches, fine 66 s per epoch of 272); other jobs on the machine made it 0.33 s.
CPU_SECONDS_PER_SAMPLE = 0.25
BUDGET_SHARE = 0.9
COARSE_BUDGET_SHARE = 0.5
MIN_VALIDATION_CASES = 4
VALIDATION_FRACTION = 0.2
ARCHITECTURE = {
    "base": "default",
    "embed_dims": [16, 32, 64, 128],
    "qk_dims": [16, 32, 64, 128],
    "depths": [1, 2, 2, 1],
    "decoder_dims": [64, 32, 16, 16],
    "skip_dims": [16],
}


@dataclass(frozen=True)
class DataSummary:
    """What the recipe is derived from (all lengths in mm).

    Attributes:
        cases: the cases that train or validate, in dataset order.
        pseudo_labelled: how many of `cases` are unannotated scans of a few-shot run (their
            pseudo-labels train; the validation cases are drawn from them).
        voxel_mm: median voxel size.
        landmark_count: landmarks per case.
        spread_mm: largest distance between two present landmarks of one case.
        extent_mm: median over cases of the volume's largest physical side.
        pose_spread_deg: largest rotation between a case's landmarks and the first case's.
        intensity: (low, high) percentiles of the sampled voxels.
    """

    cases: list[str]
    voxel_mm: float
    landmark_count: int
    spread_mm: float
    extent_mm: float
    pose_spread_deg: float | None
    intensity: tuple[float, float]
    pseudo_labelled: int = 0


def summarize_data(load: Callable[[str], tuple[Volume, Landmarks]], cases: list[str]) -> DataSummary:
    """Summarise the annotated `cases`, each read with `load` (intensities from the first few)."""
    if not cases:
        raise TrainingConfigError("The dataset has no annotated case (no volume with a landmark file).")
    voxels, spreads, extents, shapes, samples = [], [], [], [], []
    for number, case in enumerate(cases):
        volume, landmarks = load(case)
        voxels.append(float(np.median(volume.spacing)))
        extents.append(float(np.max(np.array(volume.array.shape[::-1]) * np.array(volume.spacing))))
        points = landmarks.positions[landmarks.present]
        if len(points) > 1:
            spreads.append(float(np.max(np.linalg.norm(points[:, None] - points[None], axis=-1))))
        shapes.append(landmarks.located_positions)
        if number < INTENSITY_CASES:
            samples.append(np.asarray(volume.array, np.float32).ravel()[:: max(1, volume.array.size // 200_000)])
    low, high = np.percentile(np.concatenate(samples), INTENSITY_PERCENTILES)
    return DataSummary(
        cases=list(cases),
        voxel_mm=float(np.median(voxels)),
        landmark_count=len(shapes[0]),
        spread_mm=max(spreads) if spreads else 0.0,
        extent_mm=float(np.median(extents)),
        pose_spread_deg=_pose_spread(shapes),
        intensity=(float(low), float(high)),
    )


def derive_recipe(summary: DataSummary, model_id: str, max_minutes: float | None = None) -> dict:
    """The training configuration for data like `summary` (see module notes); with a single
    landmark, the volumes' extent stands in for the landmarks' spread."""
    field_mm = COARSE_FIELD_FACTOR * (summary.spread_mm or summary.extent_mm)
    coarse = _round(max(field_mm / PATCH_VOXELS, 2 * summary.voxel_mm))
    fine = _round(max(summary.voxel_mm, coarse / FINE_PER_COARSE))
    validation = _validation(len(summary.cases))
    train_count = _train_count(len(summary.cases), summary.pseudo_labelled, validation)
    coarse_epochs, fine_epochs = _epochs(train_count, max_minutes)
    shape_aligned = summary.landmark_count >= MIN_FIT_POINTS
    pose = summary.pose_spread_deg
    rotation = 180.0 if pose is None or pose > ARBITRARY_POSE_DEG else max(MIN_ROTATION_DEG, round(1.5 * pose))
    fine_stage = {
        "name": "fine", "spacing_mm": [fine] * 3, "patch_size": [PATCH_VOXELS] * 3,
        "epochs": fine_epochs, "patches_per_case": FINE_PATCHES_PER_CASE, "batch_size": 8, "lr": 0.002,
        "weight_decay": 0.05, "warmup_epochs": max(1, fine_epochs // 35), "patience": max(10, fine_epochs // 3),
        "loss": "adaptive_wing", "sigma": 2.0, "centre_jitter": 0.3,
        "validation_landmarks": min(15, summary.landmark_count),
    }
    if shape_aligned:
        fine_stage.update({"orientation": "shape-aligned", "passes": 2, "augmentation": {"rotation_deg": 12},
                           "shape_prior_mm": _round(2.5 * coarse)})
    low, high = summary.intensity
    return {
        "model": {
            "id": model_id,
            "version": "1.0.0",
            "title": f"{model_id}: {summary.landmark_count} landmarks",
            "description": (f"Trained with a recipe derived from {len(summary.cases)} annotated cases "
                            f"(voxels {summary.voxel_mm:.3g} mm, landmark spread {summary.spread_mm:.3g} mm)."),
            "modality": "CT",
            "license": "unspecified",
            "confidence_threshold": 0.3,
        },
        "landmarks": FROM_DATA,
        "architecture": dict(ARCHITECTURE),
        "preprocessing": {
            "orientation": "canonical",
            "intensity": {"clip_min": _round(low), "clip_max": _round(high if high > low else low + 1.0),
                          "scale_min": 0, "scale_max": 1},
        },
        "augmentation": {"rotation_deg": rotation, "scale": [0.9, 1.1], "anisotropy": 0.05,
                         "elastic_mm": _round(2 * summary.voxel_mm), "contrast": [0.8, 1.2], "brightness": 0.05,
                         "gamma": [0.8, 1.25], "noise": 0.03},
        "stages": [
            {"name": "coarse", "spacing_mm": [coarse] * 3, "patch_size": [PATCH_VOXELS] * 3,
             "epochs": coarse_epochs, "batch_size": 4, "lr": 0.002, "weight_decay": 0.05,
             "warmup_epochs": max(1, coarse_epochs // 30), "patience": max(10, coarse_epochs // 4),
             "loss": "adaptive_wing", "sigma": 1.5},
            fine_stage,
        ],
        "data": {"layout": "generic", "validation": validation},
        "seed": 0,
    }


def merge_recipe(recipe: dict, overrides: dict) -> dict:
    """`recipe` with every part that `overrides` gives replaced: objects merge key by key,
    stages merge by name, anything else is replaced whole."""
    merged = dict(recipe)
    for key, value in overrides.items():
        if key == "stages" and isinstance(value, list) and isinstance(recipe.get(key), list):
            merged[key] = _merge_stages(recipe[key], value)
        elif isinstance(value, dict) and isinstance(recipe.get(key), dict):
            merged[key] = merge_recipe(recipe[key], value)
        else:
            merged[key] = value
    return merged


def model_id_for(folder_name: str) -> str:
    """A model id from an output folder's name (lower case, letters, digits and dashes)."""
    text = re.sub(r"[^a-z0-9]+", "-", folder_name.lower()).strip("-")
    return text or "my-model"


def _merge_stages(stages: list, overrides: list) -> list:
    by_name = {stage.get("name"): stage for stage in stages if isinstance(stage, dict)}
    merged = []
    for override in overrides:
        base = by_name.get(override.get("name")) if isinstance(override, dict) else None
        merged.append(merge_recipe(base, override) if base is not None else override)
    return merged


def _validation(annotated: int) -> dict:
    """A held-out fraction when there are enough annotated cases; otherwise the training cases
    themselves are validated on (early stopping then watches the training cases: no held-out
    error is measured)."""
    if annotated >= MIN_VALIDATION_CASES:
        return {"fraction": VALIDATION_FRACTION}
    return {"training_cases": True}


def _train_count(cases: int, pseudo_labelled: int, validation: dict) -> int:
    """How many of `cases` train under `validation` (the split of `data.TrainingData`)."""
    if pseudo_labelled:
        return cases - pseudo_labelled_validation_count(pseudo_labelled, validation.get("fraction", 0.0))
    if validation.get("training_cases"):
        return cases
    return cases - max(1, round(validation["fraction"] * cases))


def _epochs(train_count: int, max_minutes: float | None) -> tuple[int, int]:
    """Coarse and fine epochs for the target sample counts, cut to what fits in `max_minutes`:
    the coarse stage's first (at most `COARSE_BUDGET_SHARE` of the budget), the fine stage's in
    what is left."""
    coarse = _clamp(COARSE_TARGET_SAMPLES / train_count, COARSE_EPOCHS)
    fine_patches = train_count * FINE_PATCHES_PER_CASE
    fine = _clamp(FINE_TARGET_SAMPLES / fine_patches, FINE_EPOCHS)
    if max_minutes is None:
        return coarse, fine
    budget = BUDGET_SHARE * 60.0 * max_minutes / CPU_SECONDS_PER_SAMPLE
    coarse = min(coarse, math.floor(COARSE_BUDGET_SHARE * budget / train_count))
    fine = min(fine, math.floor((budget - coarse * train_count) / fine_patches))
    return max(1, coarse), max(1, fine)


def _clamp(value: float, bounds: tuple[int, int]) -> int:
    return int(min(max(round(value), bounds[0]), bounds[1]))


def _pose_spread(shapes: list[np.ndarray]) -> float | None:
    """Largest rotation (degrees) between the first shape and any other; None when unknown."""
    if len(shapes) < 2:
        return None
    angles = []
    for shape in shapes[1:]:
        try:
            fit = similarity_fit(shapes[0], shape)
        except ValueError:
            return None
        angles.append(math.degrees(math.acos(np.clip((np.trace(fit.rotation) - 1) / 2, -1.0, 1.0))))
    return max(angles)


def _round(value: float) -> float:
    """`value` to 2 significant digits (recipes stay readable)."""
    if value == 0 or not math.isfinite(value):
        return 0.0
    return float(f"{value:.2g}")
