"""The model package a training run produces: manifest.json + model.safetensors.

How the stages share one package is defined in `H3DELandmarksLib.registry.stage_weights`. The
package also carries reference patches of up to `MAX_REFERENCES` annotated training cases (spread
evenly over them), with which the predictor sharpens its positions (`data.patch_matching`). The
cap keeps matching near 1 s per scan on 2 CPU cores (0.06 s per reference on the mouse atlas);
which references are chosen matters (8-reference sets gave 0.141-0.160 mm on the atlas model's
validation cases, all 37 references 0.138 mm), and 16 halves that spread of chance.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .. import __version__
from ..data.landmarks import Landmarks
from ..data.patch_matching import LandmarkPatches, MatchSettings, landmark_patches
from ..data.volume import Volume
from ..registry import ModelPackage, write_package
from ..registry.manifest import Manifest
from ..registry.stage_weights import join_stage_state_dicts
from .config import TrainingConfig
from .data import TrainingData

MAX_REFERENCES = 16


def build_manifest(config: TrainingConfig, names: list[str], descriptions: list[str], metrics: dict,
                   data: dict, command: object, provenance: dict, mean_shape: np.ndarray | None = None,
                   patch_matching: dict | None = None) -> dict:
    """The manifest of a trained model (validated when the package is written); `mean_shape` (L, 3)
    for a model with a shape-aligned stage; `patch_matching` from `reference_patches`."""
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
        patch_matching=patch_matching,
    ).to_dict()


def reference_patches(data: TrainingData) -> tuple[dict | None, list[LandmarkPatches]]:
    """The manifest's ``patch_matching`` entry and the patches of up to `MAX_REFERENCES`
    annotated training cases (None and none when there is no annotated one)."""
    annotated = [case for case in data.train_cases if case not in data.pseudo_labels]
    return case_patches(annotated, data.case)


def case_patches(cases: Sequence[str], load: Callable[[str], tuple[Volume, Landmarks]]
                 ) -> tuple[dict | None, list[LandmarkPatches]]:
    """`reference_patches` of up to `MAX_REFERENCES` of `cases`, spread evenly over them; `load`
    gives a case's volume and its landmarks in model order."""
    if not cases:
        return None, []
    chosen = [cases[int(index)] for index in
              np.unique(np.linspace(0, len(cases) - 1, min(MAX_REFERENCES, len(cases))).round())]
    settings = MatchSettings.for_voxels(float(min(load(chosen[0])[0].spacing)))
    patches = []
    for case in chosen:
        volume, landmarks = load(case)
        patches.append(landmark_patches(volume, landmarks.located_positions, settings))
    return {**dataclasses.asdict(settings), "references": list(chosen)}, patches


def write_trained_package(directory: str | os.PathLike, manifest: dict,
                          networks: dict[str, dict[str, torch.Tensor]], overwrite: bool = False,
                          references: list[LandmarkPatches] | tuple = ()) -> ModelPackage:
    """Write the package of a trained model atomically, with the `references` its manifest names."""
    return write_package(directory, manifest, join_stage_state_dicts(networks), overwrite=overwrite,
                         references=references)
