"""The model package a training run produces: manifest.json + model.safetensors.

How the stages share one package is defined in `H3DELandmarksLib.registry.stage_weights`.
"""

from __future__ import annotations

import os
import platform

import numpy as np
import torch

from .. import __version__
from ..registry import ModelPackage, write_package
from ..registry.manifest import Manifest
from ..registry.stage_weights import join_stage_state_dicts
from .config import TrainingConfig


def build_manifest(config: TrainingConfig, names: list[str], descriptions: list[str], metrics: dict,
                   data: dict, command: object, provenance: dict, mean_shape: np.ndarray | None = None) -> dict:
    """The manifest of a trained model (validated when the package is written); `mean_shape` (L, 3)
    for a model with a shape-aligned stage."""
    model = config.model
    return Manifest(
        id=model["id"],
        version=model["version"],
        title=model["title"],
        description=model["description"],
        modality=model["modality"],
        config=config.network_config(len(names)),
        landmark_names=names,
        landmark_descriptions=descriptions,
        orientation=config.preprocessing["orientation"],
        intensity=config.preprocessing["intensity"],
        stages=[stage.manifest_entry() for stage in config.stages],
        mean_shape=mean_shape,
        confidence_threshold=model["confidence_threshold"],
        heatmap_peak=config.heatmap_peak,
        provenance={
            "library": f"h3de-landmarks {__version__}",
            "torch": torch.__version__,
            "python": platform.python_version(),
            "config_sha256": config.sha256,
            **provenance,
        },
        data=data,
        recipe=config.raw,
        command=command,
        metrics=metrics,
        license=model["license"],
        citation=model["citation"],
    ).to_dict()


def write_trained_package(directory: str | os.PathLike, manifest: dict,
                          networks: dict[str, dict[str, torch.Tensor]], overwrite: bool = False) -> ModelPackage:
    """Write the package of a trained model atomically."""
    return write_package(directory, manifest, join_stage_state_dicts(networks), overwrite=overwrite)
