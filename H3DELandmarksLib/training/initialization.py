"""Fine-tuning: a training run that starts from a model package instead of random weights.

The run keeps the model's recipe (architecture, preprocessing, stages, augmentation), its
landmark set and its mean shape (the fine stage's patch pose is defined by it), trains on the
new data with a shorter, gentler schedule, and starts every stage from that stage's weights.
`drop` removes landmarks the new data does not have: their output channels leave the head.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from ..registry import read_package
from ..registry.stage_weights import split_stage_state_dicts
from .config import StageConfig, TrainingConfigError

FINE_TUNING_EPOCH_FRACTION = 1 / 3
FINE_TUNING_LR_FACTOR = 0.3
PER_LANDMARK_KEYS = ("final_conv.weight", "final_conv.bias")


@dataclass(frozen=True)
class InitialModel:
    """What a fine-tuning run takes from a model package.

    Attributes:
        spec: "id@version" of the package.
        recipe: the package's training configuration, as it was trained.
        names, descriptions: its landmark set (after any dropped landmarks).
        mean_shape: (L, 3) its mean shape, or None when it has no shape-aligned stage.
        networks: each stage's weights, by stage name.
    """

    spec: str
    recipe: dict
    names: list[str]
    descriptions: list[str]
    mean_shape: np.ndarray | None
    networks: dict[str, dict[str, torch.Tensor]]


def load_initial_model(package_dir: str | os.PathLike, data_names: set[str] | None = None,
                       drop: bool = False) -> InitialModel:
    """The package at `package_dir` ready to start a run on data whose every case has the
    landmarks `data_names`; a model landmark the data lacks is an error unless `drop`."""
    package = read_package(package_dir)
    manifest = package.manifest
    spec = f"{package.id}@{package.version}"
    recipe = manifest.get("training", {}).get("recipe")
    if not isinstance(recipe, dict) or "stages" not in recipe:
        raise TrainingConfigError(
            f"Model {spec} has no training recipe (an imported checkpoint?); train from it with a recipe file.")
    names = package.landmark_names
    keep = list(range(len(names)))
    missing = [name for name in names if data_names is not None and name not in data_names]
    if missing and not drop:
        raise TrainingConfigError(
            f"The training data lacks landmark {missing[0]!r} of model {spec} ({len(missing)} missing in all); "
            "annotate it or pass --drop-landmarks to train a model without it.")
    if missing:
        if package.config.head != "heatmap":
            raise TrainingConfigError(f"Landmarks can only be dropped from a heatmap-head model; {spec} has "
                                      f"a {package.config.head!r} head.")
        keep = [index for index, name in enumerate(names) if name not in missing]
        if not keep:
            raise TrainingConfigError(f"The training data has none of the landmarks of model {spec}.")
    networks = split_stage_state_dicts(manifest, package.state_dict(), str(package.path))
    shape = manifest["preprocessing"].get("mean_shape")
    mean_shape = None if shape is None else np.array([[math.nan] * 3 if row is None else row for row in shape])
    return InitialModel(
        spec=spec,
        recipe=copy.deepcopy(recipe),
        names=[names[index] for index in keep],
        descriptions=[package.landmark_descriptions[index] for index in keep],
        mean_shape=None if mean_shape is None else mean_shape[keep],
        networks={stage: _kept_channels(state, keep) for stage, state in networks.items()},
    )


def fine_tuning_recipe(initial: InitialModel, data_section: dict, model_id: str) -> dict:
    """The model's recipe retargeted to new data: its landmark set, fewer epochs, a lower rate."""
    recipe = copy.deepcopy(initial.recipe)
    recipe["model"] = {**recipe["model"], "id": model_id,
                       "description": f"{recipe['model'].get('description', '')} Fine-tuned from {initial.spec}."
                       .strip()}
    recipe["landmarks"] = [{"name": name, **({"description": text} if text else {})}
                           for name, text in zip(initial.names, initial.descriptions)]
    recipe["data"] = data_section
    recipe["stages"] = [fine_tuning_stage(stage) for stage in recipe["stages"]]
    return recipe


def fine_tuning_stage(stage: dict) -> dict:
    """A stage's schedule for training on from trained weights: a third of its epochs at 0.3 of
    its learning rate, one warm-up epoch."""
    epochs = max(1, round(stage.get("epochs", StageConfig.epochs) * FINE_TUNING_EPOCH_FRACTION))
    return {**stage, "epochs": epochs, "lr": stage.get("lr", StageConfig.lr) * FINE_TUNING_LR_FACTOR,
            "warmup_epochs": 1, "patience": min(stage.get("patience", StageConfig.patience), max(5, epochs // 2))}


def _kept_channels(state: dict[str, torch.Tensor], keep: list[int]) -> dict[str, torch.Tensor]:
    """`state` with only the output channels `keep` of the per-landmark head tensors."""
    return {key: value[keep].clone() if key in PER_LANDMARK_KEYS else value for key, value in state.items()}
