"""Training and validation patches of a stage, prepared exactly as the predictor prepares its input.

Like `inference.predictor`, a patch is resampled (linear, `clip_min` outside the volume) from the
original volume onto the stage's grid (spacing, patch size, axes from `stage_direction`), then
its intensities are mapped with the manifest's `IntensityMap`. Training patches add one random
`PatchTransform` (rotation, scaling, elastic) to that single resampling, and intensity changes.

- coarse: the patch is centred on the volume's centre, as the predictor's window is when the
  volume fits; when it does not (or a rotation pushes landmarks out) the patch moves, randomly
  where several positions keep every present landmark inside.
- a local stage (fine, refine): the patch is centred on a present landmark plus a uniform
  jitter of +/- `centre_jitter` of the patch extent per axis; every landmark inside gets its target.

A `Sample` holds the network input (X, Y, Z) = (i, j, k) and the landmarks in its voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.augmentation import (
    AugmentationSettings,
    PatchGrid,
    PatchTransform,
    augment_intensity,
    points_to_patch,
    random_transform,
    sample_patch,
)
from ..data.landmarks import Landmarks
from ..data.preprocessing import IntensityMap, stage_direction, stage_grid
from ..data.shape import similarity_fit
from ..data.volume import Volume
from .config import StageConfig

EDGE_MARGIN_VOXELS = 1.0


@dataclass(frozen=True)
class Sample:
    """One network input and its landmarks.

    Attributes:
        image: (X, Y, Z) float32 mapped intensities.
        points: (L, 3) landmark positions in input voxels (i, j, k); NaN where unknown.
        present: (L,) bool, present in the case and inside the patch.
        spacing: (3,) mm per input voxel along X, Y, Z.
        focus: the landmark the patch was centred on (local stage), else None.
        weights: (L,) training weight of each landmark: its confidence where known (a
            pseudo-label's reliability), else 1 (a hand-placed point).
    """

    image: np.ndarray
    points: np.ndarray
    present: np.ndarray
    spacing: np.ndarray
    focus: int | None = None
    weights: np.ndarray | None = None


class StageSampler:
    """Makes the patches of one stage.

    Args:
        stage: the stage's configuration.
        orientation: the manifest's orientation ("canonical" or "native").
        intensity: the manifest's intensity mapping.
        augmentation: random changes of training patches.
        mean_shape: (L, 3) mean landmark shape, for a shape-aligned stage: its patches take the
            pose of the mean shape fitted to the case's own landmarks (the predictor fits it to
            the coarse positions), before any augmentation.
    """

    def __init__(self, stage: StageConfig, orientation: str, intensity: IntensityMap,
                 augmentation: AugmentationSettings, mean_shape: np.ndarray | None = None) -> None:
        self.stage = stage
        self.orientation = stage.orientation or orientation
        self.intensity = intensity
        self.augmentation = augmentation
        if self.orientation == "shape-aligned" and mean_shape is None:
            raise ValueError("a shape-aligned stage needs the mean shape")
        self.mean_shape = mean_shape

    def training_sample(self, volume: Volume, landmarks: Landmarks, rng: np.random.Generator) -> Sample:
        """A randomly placed, augmented patch of the case."""
        grid = self._grid(volume, landmarks)
        if self.stage.local:
            focus = int(rng.choice(np.flatnonzero(landmarks.present)))
            transform = random_transform(rng, self.augmentation, landmarks.positions[focus])
            transform = transform.shifted(grid.direction @ self._jitter(rng, grid))
        else:
            focus = None
            transform = random_transform(rng, self.augmentation, self._volume_centre(volume))
            transform = self._keep_landmarks(transform, grid, volume, landmarks, rng)
        sample = self._sample(volume, landmarks, transform, grid, focus)
        image = augment_intensity(sample.image, rng, self.augmentation,
                                  self.intensity.scale_min, self.intensity.scale_max)
        return Sample(image, sample.points, sample.present, sample.spacing, focus, sample.weights)

    def validation_samples(self, volume: Volume, landmarks: Landmarks, seed: int) -> list[Sample]:
        """Fixed patches of the case: the centred one (coarse), or one per landmark centred
        near it with a jitter drawn from `seed` (local stage; the first `validation_landmarks`)."""
        grid = self._grid(volume, landmarks)
        if not self.stage.local:
            return [self._sample(volume, landmarks, PatchTransform.identity(self._volume_centre(volume)), grid, None)]
        focuses = np.flatnonzero(landmarks.present)
        if self.stage.validation_landmarks:
            focuses = focuses[:self.stage.validation_landmarks]
        samples = []
        for focus in focuses:
            rng = np.random.default_rng([seed, int(focus)])
            transform = PatchTransform.identity(landmarks.positions[focus]).shifted(
                grid.direction @ self._jitter(rng, grid))
            samples.append(self._sample(volume, landmarks, transform, grid, int(focus)))
        return samples

    def _grid(self, volume: Volume, landmarks: Landmarks) -> PatchGrid:
        if self.orientation == "shape-aligned":
            direction = similarity_fit(self.mean_shape, np.where(landmarks.present[:, None], landmarks.positions,
                                                                 np.nan)).rotation
        else:
            direction = stage_direction(volume, self.orientation)
        return PatchGrid(self.stage.patch_size, self.stage.spacing_mm, direction)

    def _jitter(self, rng: np.random.Generator, grid: PatchGrid) -> np.ndarray:
        """Offset (mm along the patch axes) of the patch centre from the landmark."""
        extent = np.asarray(grid.spacing) * np.asarray(grid.size)
        return rng.uniform(-1.0, 1.0, 3) * self.stage.centre_jitter * extent

    def _volume_centre(self, volume: Volume) -> np.ndarray:
        return volume.index_to_physical((np.asarray(volume.shape_ijk, float) - 1) / 2)

    def _keep_landmarks(self, transform: PatchTransform, grid: PatchGrid, volume: Volume,
                        landmarks: Landmarks, rng: np.random.Generator) -> PatchTransform:
        """Move the patch (randomly within the volume's excess over the patch) so that every
        present landmark stays inside when that is possible."""
        size = np.asarray(grid.size, float)
        excess = np.maximum(0, np.asarray(stage_grid(volume, grid.spacing, self.orientation).shape_ijk) - size) / 2
        low, high = -excess, excess
        inside = points_to_patch(transform, grid, landmarks.positions[landmarks.present])
        if len(inside):
            keep_low = inside.max(0) - (size - 1 - EDGE_MARGIN_VOXELS)
            keep_high = inside.min(0) - EDGE_MARGIN_VOXELS
            fits = keep_low <= keep_high
            nearest = np.where(fits, np.clip(0.0, keep_low, keep_high), (keep_low + keep_high) / 2)
            low, high = np.maximum(low, keep_low), np.minimum(high, keep_high)
            free = fits & (low <= high)
            low, high = np.where(free, low, nearest), np.where(free, high, nearest)
        shift = rng.uniform(low, high)
        return transform.shifted(grid.direction @ (shift * np.asarray(grid.spacing)))

    def _sample(self, volume: Volume, landmarks: Landmarks, transform: PatchTransform, grid: PatchGrid,
                focus: int | None) -> Sample:
        patch = sample_patch(volume, transform, grid, self.intensity.clip_min)
        points = np.full((len(landmarks), 3), np.nan)
        points[landmarks.has_position] = points_to_patch(transform, grid, landmarks.positions[landmarks.has_position])
        size = np.asarray(grid.size)
        with np.errstate(invalid="ignore"):
            inside = np.all((points >= -0.5) & (points < size - 0.5), axis=1)
        return Sample(
            image=self.intensity.apply(patch).transpose(2, 1, 0),
            points=points,
            present=landmarks.present & inside,
            spacing=np.asarray(grid.spacing, float),
            focus=focus,
            weights=np.where(np.isfinite(landmarks.confidence), landmarks.confidence, 1.0),
        )
