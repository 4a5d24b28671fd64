"""The training configuration: one JSON file describes a whole (one-, two- or three-stage) model.

Sections (config.schema.json beside this module states every key, its type and range; unknown
keys are errors naming the key):

- ``model``: id, version, title, description, modality, license, citation, confidence_threshold.
- ``landmarks``: ``"from data"`` (names and descriptions of the first training case) or a list
  of names or of ``{"name", "description"}`` objects.
- ``architecture``: ``base`` ("default" or "reference") plus any `H3DEConfig` field; every stage
  uses this architecture (the manifest holds one), each its own weights.
- ``preprocessing``: ``orientation`` ("canonical" or "native") and ``intensity`` (clip_min,
  clip_max, scale_min, scale_max), exactly as the manifest will state them.
- ``augmentation``: `AugmentationSettings` fields; a stage may override some of them.
- ``stages``: ``coarse``, ``fine``, ``coarse`` then ``fine``, or ``coarse``, ``fine`` then
  ``refine``, see `StageConfig`; a shape-aligned stage puts the mean shape of the training
  landmarks into the manifest.
- ``data``: ``layout`` ("generic", "mmld" or "phantom"), ``root`` (or ``--data``), ``validation``
  (``fraction``, ``cases``, ``only_where``, or ``training_cases``: true to validate on the training
  cases themselves when there are too few to hold any out), ``absent`` ({case: [landmark, ...]} treated as
  absent), ``phantom`` (`PhantomDataset` fields, ``train_seeds`` and ``validation_seeds`` as
  [first, stop) ranges).
- ``seed``: seeds weights, data order, augmentation and the validation split.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.augmentation import AugmentationSettings
from ..data.shape import MIN_FIT_POINTS
from ..errors import H3DEError, ModelPackageError
from ..json_document import read_json_document
from ..model.config import H3DEConfig, default_config, reference_config
from ..registry.manifest import LOCAL_STAGES, STAGE_SEQUENCES, Manifest, validate_manifest
from ..registry.schema import first_problem
from .targets import HeatmapTarget

LOSSES = {"adaptive_wing": "gaussian", "weighted_mse": "gaussian", "hnm": "reference", "proposals": None}
BASES = {"default": default_config, "reference": reference_config}
FROM_DATA = "from data"
NETWORK_DEPTH_STRIDE = 32
INFERENCE_ONLY_STAGE_KEYS = ("passes", "shape_prior_mm", "tta_rotations", "tta_degrees")
CONFIG_SCHEMA = Path(__file__).resolve().parent / "config.schema.json"


class TrainingConfigError(H3DEError):
    """The training configuration file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class StageConfig:
    """One stage: its grid, its optimisation and its target.

    Attributes:
        name: "coarse" (whole volume at `spacing_mm`, crops of `patch_size` when larger), or a
            local stage: "fine" (patches centred near a landmark; at inference on the coarse
            positions) or "refine" (the same, at inference on the fine positions: a finer grid
            for the fine stage's residual error).
        spacing_mm, patch_size: the stage's grid, as the manifest states it (i, j, k).
        epochs: most epochs; `patience` epochs without a lower validation loss stop earlier.
        samples_per_epoch: training patches per epoch (0: one per training case, or
            `patches_per_case` per case for a local stage).
        patches_per_case: local-stage patches per case and epoch when samples_per_epoch is 0.
        batch_size, lr, weight_decay, warmup_epochs, min_lr_fraction, gradient_clip: AdamW with
            linear warm-up then cosine decay to lr x min_lr_fraction.
        loss: "adaptive_wing", "weighted_mse", "hnm" (published) or "proposals" (proposal head).
        sigma: Gaussian target width, voxels of the output map.
        radius: published target radius R, voxels of the output map.
        centre_jitter: local stage: the patch centre lies uniformly within +/- this fraction of
            the patch extent of the landmark along each axis (inference centres a patch on a
            group of the previous stage's positions kept in its middle half, plus that stage's
            error).
        validation_landmarks: local stage: landmarks per validation case (0: all).
        augmentation: overrides of the model's augmentation settings for this stage.
        orientation: the stage's patch axes when not the model's orientation; "shape-aligned"
            (local stage): the axes of the training landmarks' mean shape fitted to each case.
        passes: local stage: patches run this many times at inference, each pass centred on the
            previous pass's positions.
        shape_prior_mm: shape-aligned stage: width of the Gaussian prior around each landmark's
            fitted position under which the predictor chooses its peak.
        tta_rotations, tta_degrees: local stage: test-time rotations of the last pass (count and
            tilt); the positions are their median.

    `passes`, `shape_prior_mm` and the test-time rotations only tell the predictor how to run the stage: they go into the
    manifest but leave training alone, so they are not part of the configuration's digest (a
    finished run resumed with new values writes its package again with them).
    """

    name: str
    spacing_mm: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    epochs: int = 50
    samples_per_epoch: int = 0
    patches_per_case: int = 4
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_fraction: float = 0.01
    gradient_clip: float = 1.0
    patience: int = 15
    loss: str = "adaptive_wing"
    sigma: float = 2.0
    radius: float = 10.0
    centre_jitter: float = 0.3
    validation_landmarks: int = 0
    augmentation: dict | None = None
    orientation: str | None = None
    passes: int = 1
    shape_prior_mm: float | None = None
    tta_rotations: int = 0
    tta_degrees: float = 6.0

    def manifest_entry(self) -> dict:
        """The stage as the manifest's ``preprocessing.stages`` lists it."""
        entry = {"name": self.name, "spacing_mm": list(self.spacing_mm), "patch_size": list(self.patch_size)}
        if self.orientation is not None:
            entry["orientation"] = self.orientation
        if self.passes != 1:
            entry["passes"] = self.passes
        if self.shape_prior_mm is not None:
            entry["shape_prior_mm"] = self.shape_prior_mm
        if self.tta_rotations:
            entry.update(tta_rotations=self.tta_rotations, tta_degrees=self.tta_degrees)
        return entry

    @property
    def local(self) -> bool:
        """Whether the stage works in patches centred near landmarks (fine, refine)."""
        return self.name in LOCAL_STAGES

    @property
    def heatmap_target(self) -> HeatmapTarget | None:
        """The heatmap target of this stage's loss (None for the proposal head)."""
        kind = LOSSES[self.loss]
        return None if kind is None else HeatmapTarget(kind, self.sigma, self.radius)


@dataclass(frozen=True)
class TrainingConfig:
    """A parsed, checked training configuration; `raw` is the JSON object as read."""

    raw: dict
    model: dict
    landmarks: list[dict] | None
    architecture: dict
    preprocessing: dict
    augmentation: dict
    stages: tuple[StageConfig, ...]
    data: dict
    seed: int

    @property
    def sha256(self) -> str:
        """Digest of the configuration without its inference-only stage settings (a resumed run
        must use the same one)."""
        training = copy.deepcopy(self.raw)
        for stage in training.get("stages", []):
            for key in INFERENCE_ONLY_STAGE_KEYS:
                stage.pop(key, None)
        return hashlib.sha256(json.dumps(training, sort_keys=True).encode()).hexdigest()

    def network_config(self, n_landmarks: int) -> H3DEConfig:
        """The architecture of every stage's network."""
        settings = {key: tuple(value) if isinstance(value, list) else value
                    for key, value in self.architecture.items() if key != "base"}
        return BASES[self.architecture.get("base", "default")](n_landmarks=n_landmarks, **settings)

    def stage_augmentation(self, stage: StageConfig) -> AugmentationSettings:
        """The model's augmentation settings with the stage's overrides."""
        merged = {**self.augmentation, **(stage.augmentation or {})}
        return AugmentationSettings(**{key: tuple(value) if isinstance(value, list) else value
                                       for key, value in merged.items()})

    @property
    def shape_aligned(self) -> bool:
        """Whether a stage needs the mean shape of the training landmarks."""
        return any(stage.orientation == "shape-aligned" for stage in self.stages)

    @property
    def heatmap_peak(self) -> float | None:
        targets = [stage.heatmap_target for stage in self.stages]
        return None if targets[0] is None else targets[0].peak


def load_training_config(path: str | os.PathLike) -> TrainingConfig:
    """Read and check a training configuration file; raises TrainingConfigError."""
    raw = read_json_document(path, TrainingConfigError, "Training configuration")
    return parse_training_config(raw, str(path))


def parse_training_config(raw: dict, source: str = "training configuration") -> TrainingConfig:
    """Check a training configuration object against the schema, then the rules across its
    sections; errors are one sentence naming `source` and the offending key."""
    problem = first_problem(raw, CONFIG_SCHEMA, source)
    if problem:
        raise TrainingConfigError(problem)
    landmarks = raw.get("landmarks", FROM_DATA)
    config = TrainingConfig(
        raw=copy.deepcopy(raw),
        model={"description": "", "citation": None, "confidence_threshold": 0.5, **raw["model"]},
        landmarks=None if landmarks == FROM_DATA else [
            {"name": item} if isinstance(item, str) else dict(item) for item in landmarks],
        architecture=dict(raw["architecture"]),
        preprocessing=dict(raw["preprocessing"]),
        augmentation=dict(raw.get("augmentation", {})),
        stages=tuple(_stage(stage, source, index) for index, stage in enumerate(raw["stages"])),
        data=raw["data"],
        seed=int(raw.get("seed", 0)),
    )
    _check_consistency(config, source)
    return config


def _stage(stage: dict, source: str, index: int) -> StageConfig:
    """The schema-checked stage `stage` with its grid as triples; its patch must suit the network."""
    values = dict(stage)
    for key, kind in (("spacing_mm", float), ("patch_size", int)):
        triple = values[key] if isinstance(values[key], list) else [values[key]] * 3
        values[key] = tuple(kind(value) for value in triple)
    config = StageConfig(**values)
    deepest = [_downsampled(size, 5) for size in config.patch_size]
    if deepest[0] * deepest[1] * deepest[2] < 2:
        raise TrainingConfigError(
            f"{source}: stages[{index}].patch_size {list(config.patch_size)} is too small to train on; the deepest "
            f"features (1/{NETWORK_DEPTH_STRIDE}) need at least two voxels, so one axis must exceed "
            f"{NETWORK_DEPTH_STRIDE}."
        )
    return config


def _check_consistency(config: TrainingConfig, source: str) -> None:
    if tuple(stage.name for stage in config.stages) not in STAGE_SEQUENCES:
        raise TrainingConfigError(f"{source}: stages must be a coarse stage, a fine stage, coarse then fine, or "
                                  "coarse, fine then refine (a refine stage starts from the fine positions).")
    try:
        network = config.network_config(MIN_FIT_POINTS)
        for stage in config.stages:
            config.stage_augmentation(stage)
    except (TypeError, ValueError, ModelPackageError) as error:
        raise TrainingConfigError(f"{source}: the architecture or augmentation is invalid ({error}).") from None
    for stage in config.stages:
        if (stage.loss == "proposals") != (network.head == "proposals"):
            raise TrainingConfigError(
                f"{source}: stage {stage.name!r} uses loss {stage.loss!r} but the architecture's head is "
                f"{network.head!r}; the proposal head needs loss \"proposals\" and the heatmap head a heatmap loss."
            )
    peaks = {stage.heatmap_target.peak for stage in config.stages if stage.heatmap_target is not None}
    if len(peaks) > 1:
        raise TrainingConfigError(
            f"{source}: the stages' losses give heatmaps of different peaks; the manifest holds one heatmap_peak, "
            "so use the published hnm loss in every stage or a Gaussian loss in every stage."
        )
    probe = Manifest(
        id=config.model["id"], version=config.model["version"], title=config.model["title"],
        description=config.model["description"], modality=config.model["modality"], config=network,
        landmark_names=[f"probe {number}" for number in range(MIN_FIT_POINTS)], intensity={},
        stages=[stage.manifest_entry() for stage in config.stages],
        mean_shape=np.zeros((MIN_FIT_POINTS, 3)) if config.shape_aligned else None,
        confidence_threshold=config.model["confidence_threshold"], license=config.model["license"],
    ).to_dict()
    # The preprocessing section goes into the manifest as written, so the schema judges it as it is.
    probe["preprocessing"] = {**config.preprocessing, **{key: value for key, value in probe["preprocessing"].items()
                                                          if key in ("stages", "mean_shape")}}
    try:
        validate_manifest(probe, source=f"{source} (as a manifest)")
    except ModelPackageError as error:
        raise TrainingConfigError(str(error)) from None


def _downsampled(size: int, times: int) -> int:
    for _ in range(times):
        size = (size + 1) // 2
    return size
