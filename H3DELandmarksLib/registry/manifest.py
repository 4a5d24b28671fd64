"""The model manifest (manifest.json): the typed `Manifest` every writer builds it from, schema
validation, and the checks a schema cannot express."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from ..data.shape import MIN_FIT_POINTS
from ..errors import ModelPackageError
from ..json_document import read_json_document
from ..model.config import H3DEConfig
from .schema import first_problem, sentence

MANIFEST_SCHEMA = "manifest.schema.json"
SCHEMA_VERSION = 1
MEAN_SHAPE_DECIMALS = 4
# Bounds on what a manifest may ask to allocate: weights (the published network has 24.5 million)
# and voxels per network input (the largest benchmarked input is 256 x 256 x 128).
MAX_PARAMETERS = 1_000_000_000
MAX_PATCH_VOXELS = 256 ** 3
# A model's stages: one stage run over the whole volume, or a coarse stage over the whole volume
# and then local stages, each in patches centred on the positions of the stage before it.
STAGE_SEQUENCES = (("coarse",), ("fine",), ("coarse", "fine"), ("coarse", "fine", "refine"))
LOCAL_STAGES = ("fine", "refine")


@dataclass(frozen=True)
class Manifest:
    """What a model package states about its model; `to_dict()` is its manifest.json document.

    Attributes:
        id, version, title, description, modality: the model's identity (version: semantic).
        config: the architecture every stage's network has.
        landmark_names, landmark_descriptions: the landmark set, in output order (empty
            descriptions are left out of the document).
        stages: ``preprocessing.stages`` entries (name, spacing_mm, patch_size, options).
        intensity: clip_min, clip_max, scale_min, scale_max.
        orientation: "canonical" or "native".
        mean_shape: (L, 3) LPS mean shape for a shape-aligned stage (non-finite rows: unknown).
        confidence_threshold, heatmap_peak, uncertainty: how detections are decoded and scored.
        provenance, data, recipe, command, metrics: the ``training`` section.
        license, citation, created (ISO 8601; default: now).
    """

    id: str
    version: str
    title: str
    config: H3DEConfig
    landmark_names: Sequence[str]
    stages: Sequence[Mapping]
    intensity: Mapping[str, float]
    orientation: str = "canonical"
    landmark_descriptions: Sequence[str] = ()
    description: str = ""
    modality: str = "CT"
    mean_shape: np.ndarray | None = None
    confidence_threshold: float = 0.5
    heatmap_peak: float | None = None
    uncertainty: Mapping | None = None
    patch_matching: Mapping | None = None
    provenance: Mapping = field(default_factory=dict)
    data: Mapping = field(default_factory=dict)
    recipe: Mapping = field(default_factory=dict)
    command: object = ""
    metrics: Mapping = field(default_factory=dict)
    license: str = "unknown"
    citation: str | None = None
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))

    def to_dict(self) -> dict:
        """The manifest.json document (`validate_manifest` checks it; `write_package` does)."""
        descriptions = list(self.landmark_descriptions) or [""] * len(self.landmark_names)
        preprocessing = {
            "orientation": self.orientation,
            "intensity": dict(self.intensity),
            "stages": [dict(stage) for stage in self.stages],
        }
        if self.mean_shape is not None:
            preprocessing["mean_shape"] = [
                [round(float(value), MEAN_SHAPE_DECIMALS) for value in point] if np.all(np.isfinite(point)) else None
                for point in np.asarray(self.mean_shape, float)
            ]
        document = {
            "schema_version": SCHEMA_VERSION,
            "id": self.id,
            "version": self.version,
            "title": self.title,
            "description": self.description,
            "modality": self.modality,
            "architecture": self.config.to_dict(),
            "landmarks": [{"name": name, **({"description": text} if text else {})}
                          for name, text in zip(self.landmark_names, descriptions, strict=True)],
            "preprocessing": preprocessing,
            "confidence_threshold": self.confidence_threshold,
            "training": {"provenance": dict(self.provenance), "data": dict(self.data), "recipe": dict(self.recipe),
                         "command": self.command, "metrics": dict(self.metrics)},
            "license": self.license,
            "created": self.created,
        }
        optional = {"heatmap_peak": self.heatmap_peak, "citation": self.citation,
                    "uncertainty": None if self.uncertainty is None else dict(self.uncertainty),
                    "patch_matching": None if self.patch_matching is None else dict(self.patch_matching)}
        document.update({key: value for key, value in optional.items() if value is not None})
        return document


def read_manifest(path: str | os.PathLike) -> dict:
    """Read and validate a manifest.json file; raises ModelPackageError naming the first problem."""
    manifest = read_json_document(path, ModelPackageError, "Model manifest")
    validate_manifest(manifest, source=str(path))
    return manifest


def validate_manifest(manifest: object, source: str = "manifest.json") -> None:
    """Raise ModelPackageError with one sentence naming the first problem of `manifest`, if any."""
    problem = first_problem(manifest, MANIFEST_SCHEMA, source) or _semantic_problem(manifest, source)
    if problem:
        raise ModelPackageError(problem)


def _semantic_problem(manifest: dict, source: str) -> str | None:
    for check in (_architecture_problem, _landmarks_problem, _intensity_problem, _stages_problem,
                  _uncertainty_problem, _created_problem):
        problem = check(manifest)
        if problem:
            return sentence(source, problem)
    return None


def _architecture_problem(manifest: dict) -> tuple[str, str] | None:
    try:
        config = H3DEConfig.from_dict(manifest["architecture"])
    except ModelPackageError as error:
        message = str(error).rstrip(".")
        return "architecture", f"is invalid: {message[:1].lower()}{message[1:]}"
    except (TypeError, ValueError) as error:
        return "architecture", f"has a value of the wrong type ({error})"
    weights = config.approximate_parameters
    if weights > MAX_PARAMETERS:
        return "architecture", (f"asks for about {weights / 1e6:,.0f} million weights ({4 * weights / 1e9:,.0f} GB "
                                f"in float32); at most {MAX_PARAMETERS / 1e6:,.0f} million are accepted")
    return None


def _landmarks_problem(manifest: dict) -> tuple[str, str] | None:
    landmarks = manifest["landmarks"]
    expected = manifest["architecture"]["n_landmarks"]
    if len(landmarks) != expected:
        entries = f"{len(landmarks)} entr{'y' if len(landmarks) == 1 else 'ies'}"
        return "landmarks", f"has {entries} but architecture.n_landmarks is {expected}"
    first_index = {}
    for index, landmark in enumerate(landmarks):
        name = landmark["name"]
        if name in first_index:
            return f"landmarks[{index}].name", f"{json.dumps(name)} repeats landmarks[{first_index[name]}].name"
        first_index[name] = index
    return None


def _intensity_problem(manifest: dict) -> tuple[str, str] | None:
    intensity = manifest["preprocessing"]["intensity"]
    for low, high in (("clip_min", "clip_max"), ("scale_min", "scale_max")):
        if not intensity[high] > intensity[low]:
            return f"preprocessing.intensity.{high}", f"must be greater than {low}"
    return None


def _stages_problem(manifest: dict) -> tuple[str, str] | None:
    preprocessing = manifest["preprocessing"]
    stages = preprocessing["stages"]
    problem = _stage_order_problem([stage["name"] for stage in stages])
    if problem:
        return "preprocessing.stages", problem
    for index, stage in enumerate(stages):
        where = f"preprocessing.stages[{index}]"
        voxels = math.prod(stage["patch_size"])
        if voxels > MAX_PATCH_VOXELS:
            return f"{where}.patch_size", (f"asks for {voxels:,} voxels per network input; at most "
                                           f"{MAX_PATCH_VOXELS:,} (256 × 256 × 256) are accepted")
        if stage.get("orientation") == "shape-aligned" and stage["name"] not in LOCAL_STAGES:
            return f"{where}.orientation", "may be shape-aligned only for the fine stage or the refine stage"
        for key in ("passes", "tta_rotations", "tta_degrees"):
            if key in stage and stage["name"] not in LOCAL_STAGES:
                return f"{where}.{key}", "applies only to the fine stage or the refine stage"
        if "shape_prior_mm" in stage and stage.get("orientation") != "shape-aligned":
            return f"{where}.shape_prior_mm", "applies only to a shape-aligned stage"
        if "shape_prior_mm" in stage and manifest["architecture"].get("head", "heatmap") != "heatmap":
            return f"{where}.shape_prior_mm", "applies only to the heatmap head"
    shape = preprocessing.get("mean_shape")
    if any(stage.get("orientation") == "shape-aligned" for stage in stages) and shape is None:
        return "preprocessing.mean_shape", "is needed by the shape-aligned stage"
    if shape is not None:
        if len(shape) != len(manifest["landmarks"]):
            return "preprocessing.mean_shape", (f"has {len(shape)} points for {len(manifest['landmarks'])} "
                                                "landmarks")
        if sum(point is not None for point in shape) < MIN_FIT_POINTS:
            return "preprocessing.mean_shape", f"needs at least {MIN_FIT_POINTS} points"
    return None


def _stage_order_problem(names: list[str]) -> str | None:
    """What is wrong with the order of the stages `names`, if anything (see STAGE_SEQUENCES)."""
    if tuple(names) in STAGE_SEQUENCES:
        return None
    if "refine" in names and names[:names.index("refine")] != ["coarse", "fine"]:
        return "has a refine stage without a coarse and a fine stage before it (it starts from the fine positions)"
    if len(names) == 2:
        return "must list the coarse stage first and the fine stage second"
    return "must list the coarse stage first, the fine stage second and the refine stage third"


def _uncertainty_problem(manifest: dict) -> tuple[str, str] | None:
    uncertainty = manifest.get("uncertainty")
    if uncertainty is None:
        return None
    if len(manifest["preprocessing"]["stages"]) < 2:
        return "uncertainty", "needs a fine stage after the coarse one (its signals come from the last stage)"
    expected = len(uncertainty["features"]) + 1
    if len(uncertainty["coefficients"]) != expected:
        return "uncertainty.coefficients", f"must hold {expected} numbers (an intercept and one per feature)"
    return None


def _created_problem(manifest: dict) -> tuple[str, str] | None:
    created = manifest["created"]
    try:
        datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return "created", f"must be an ISO 8601 time such as 2025-01-31T12:00:00Z, not {json.dumps(created)}"
    return None
