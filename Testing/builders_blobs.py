"""Ball volumes with known landmark positions, and image-computed stand-in networks that find them.

Landmark l is a bright ball of intensity level 100 * (l + 1) at a known LPS position; the stand-in
networks compute their output from the image alone: channel l responds to voxels near level l.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from torch import nn

from H3DELandmarksLib.data.volume import Volume
from H3DELandmarksLib.inference import Predictor
from H3DELandmarksLib.model.config import default_config
from H3DELandmarksLib.registry import Manifest

LEVEL_STEP = 100.0
BALL_RADIUS_MM = 4.0
EDGE_MM = 1.5
SPACING = (0.9, 1.2, 1.6)
CENTRE_LPS = np.array([10.0, -20.0, 30.0])
TRUTH_OFFSETS = np.array([[-11.0, -9.0, 6.0], [9.5, -6.5, -9.0], [-4.0, 10.5, -7.5], [8.0, 8.5, 10.0]])


def rotation(axis, degrees) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    return Rotation.from_rotvec(axis * degrees, degrees=True).as_matrix()


DIRECTIONS = {
    "identity": np.eye(3),
    "flipped": np.diag([-1.0, 1.0, -1.0]),
    "permuted": np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
    "oblique": rotation([1.0, 2.0, 3.0], 25.0),
}


def levels(n_landmarks: int) -> np.ndarray:
    return LEVEL_STEP * (np.arange(n_landmarks) + 1)


def blob_volume(direction: np.ndarray, truth: np.ndarray, shown=None, extent_mm: float = 44.0) -> Volume:
    """Balls of level 100 * (l + 1) at LPS `truth` (only those in `shown`) on a zero background."""
    shown = range(len(truth)) if shown is None else shown
    spacing = np.asarray(SPACING)
    size = np.ceil(extent_mm / spacing).astype(int)
    origin = CENTRE_LPS - direction @ (spacing * (size - 1) / 2)
    geometry = Volume(np.zeros(size[::-1], np.float32), tuple(spacing), tuple(origin), direction)
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    lps = geometry.index_to_physical(np.stack([i, j, k], axis=-1).astype(float))
    array = np.zeros(size[::-1], np.float32)
    for landmark in shown:
        distance = np.linalg.norm(lps - truth[landmark], axis=-1)
        array += levels(len(truth))[landmark] * np.clip((BALL_RADIUS_MM - distance) / EDGE_MM + 0.5, 0, 1)
    return Volume(array.astype(np.int16), geometry.spacing, geometry.origin, direction)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, X, Y, Z) along X, Y and Z, zero outside (banded matrix products)."""
    for axis in (2, 3, 4):
        positions = torch.arange(x.shape[axis], dtype=x.dtype)
        weights = torch.exp(-(positions[:, None] - positions[None, :]) ** 2 / (2 * sigma**2))
        weights = weights / (sigma * math.sqrt(2 * math.pi))
        x = (x.movedim(axis, -1) @ weights).movedim(-1, axis)
    return x


class LevelResponse(nn.Module):
    """Per channel: how close each voxel is to that channel's level, blurred (from the image only)."""

    def __init__(self, n_landmarks: int, scale: float, sigma: float) -> None:
        super().__init__()
        self.register_buffer("levels", torch.tensor(levels(n_landmarks) * scale, dtype=torch.float32))
        self.width = LEVEL_STEP * scale / 2
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, X, Y, Z) -> (B, L, X, Y, Z)."""
        near = torch.relu(1 - (x - self.levels[None, :, None, None, None]).abs() / self.width)
        return gaussian_blur(near, self.sigma)


class BlobHeatmapNet(nn.Module):
    """Heatmap stand-in: the level response sampled at the output stride (map voxel o = input s*o)."""

    def __init__(self, n_landmarks: int, scale: float, stride: int = 2, sigma: float = 2.0) -> None:
        super().__init__()
        self.response = LevelResponse(n_landmarks, scale, sigma)
        self.output_stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.output_stride
        return self.response(x)[:, :, ::s, ::s, ::s]


def manifest(n_landmarks: int, orientation: str, stages: list[dict], head: str = "heatmap",
             threshold: float = 0.3) -> dict:
    """A valid manifest for the stand-in networks; intensities map [0, 100 (L + 1)] onto [0, 1]."""
    return Manifest(
        id="blob-standin",
        version="1.0.0",
        title="Stand-in",
        description="Image-computed stand-in network for geometry tests.",
        modality="synthetic",
        config=default_config(n_landmarks, head=head),
        landmark_names=[f"L{l}" for l in range(n_landmarks)],
        landmark_descriptions=[f"ball of level {int(v)}" for v in levels(n_landmarks)],
        orientation=orientation,
        intensity={"clip_min": 0.0, "clip_max": LEVEL_STEP * (n_landmarks + 1), "scale_min": 0.0, "scale_max": 1.0},
        stages=stages,
        confidence_threshold=threshold,
        command="none",
        license="CC0-1.0",
        created="2025-01-01T00:00:00Z",
    ).to_dict()


COARSE = {"name": "coarse", "spacing_mm": [2.5, 2.5, 2.5], "patch_size": [32, 32, 32]}
COARSE_TILED = {"name": "coarse", "spacing_mm": [2.5, 2.5, 2.5], "patch_size": [12, 12, 12]}
FINE = {"name": "fine", "spacing_mm": [1.0, 1.0, 1.0], "patch_size": [24, 24, 24]}


def heatmap_predictor(stages, orientation="canonical", n_landmarks=4, threshold=0.3) -> Predictor:
    net = BlobHeatmapNet(n_landmarks, 1 / (LEVEL_STEP * (n_landmarks + 1)))
    return Predictor(net, manifest(n_landmarks, orientation, stages, threshold=threshold), device="cpu")


def truth_positions() -> np.ndarray:
    return CENTRE_LPS + TRUTH_OFFSETS


def voxel_errors(volume: Volume, detected: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Largest per-axis error of each landmark, in voxels of `volume`."""
    return np.abs(volume.physical_to_index(detected) - volume.physical_to_index(truth)).max(axis=1)
