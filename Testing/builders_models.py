"""Model manifests, weights and packages for registry, download and detection tests."""

from __future__ import annotations

import torch

from builders_blobs import manifest
from H3DELandmarksLib.model.config import default_config
from H3DELandmarksLib.model.network import H3DENet
from H3DELandmarksLib.registry import Manifest, write_package


def valid_manifest(model_id: str = "test-skull", version: str = "1.0.0") -> dict:
    """A small, valid two-landmark manifest."""
    return Manifest(
        id=model_id,
        version=version,
        title="Test skull landmarks",
        description="Two landmarks for tests.",
        modality="synthetic CT",
        config=default_config(n_landmarks=2),
        landmark_names=["A", "B"],
        landmark_descriptions=["first", "second"],
        intensity={"clip_min": -1000, "clip_max": 2000, "scale_min": -1000, "scale_max": 2000},
        stages=[
            {"name": "coarse", "spacing_mm": [2.0, 2.0, 2.0], "patch_size": [64, 64, 64]},
            {"name": "fine", "spacing_mm": [0.5, 0.5, 0.5], "patch_size": [32, 32, 32]},
        ],
        confidence_threshold=0.3,
        provenance={"repository": "tests"},
        data={"cases": 3},
        recipe={"epochs": 1},
        command="h3de train --config tests.json",
        metrics={"mean_radial_error_mm": 1.25},
        license="CC-BY-4.0",
        created="2025-01-31T12:00:00Z",
    ).to_dict()


def small_state_dict() -> dict[str, torch.Tensor]:
    """A tiny state dict: float32 and float16 weights and an int64 BatchNorm counter."""
    generator = torch.Generator().manual_seed(0)
    return {
        "encoder.weight": torch.randn(4, 3, generator=generator),
        "encoder.bias": torch.zeros(4),
        "head.weight": torch.randn(2, 4, generator=generator).half(),
        "norm.num_batches_tracked": torch.tensor(7),
    }


TWO_STAGES = [
    {"name": "coarse", "spacing_mm": [3.0, 3.0, 3.0], "patch_size": [40, 40, 40]},
    {"name": "fine", "spacing_mm": [1.5, 1.5, 1.5], "patch_size": [40, 40, 40]},
]


def tiny_package(path, n_landmarks=3, head="heatmap", stages=TWO_STAGES):
    """A model package with a tiny default-configuration network and random weights."""
    config = default_config(n_landmarks, head=head, embed_dims=(16, 32, 64, 128), qk_dims=(16, 32, 64, 128))
    torch.manual_seed(0)
    package_manifest = manifest(n_landmarks, "canonical", stages, head=head)
    package_manifest["architecture"] = config.to_dict()
    package_manifest["heatmap_peak"] = 2.0
    return write_package(path, package_manifest, H3DENet(config).state_dict())
