"""Refuse volumes a model cannot make sense of before any memory is spent on them.

A model's first stage looks at `spacing_mm * patch_size` millimetres at a time (its field of
view) and is meant to see a whole specimen in one or a few windows. A volume far larger than that
(typically micrometres written as millimetres: 141 mm voxels) would plan millions of windows; one
far smaller (a 2 x 2 x 2 volume) holds nothing the model can recognise; a volume holding one value
everywhere has no structure at all. Each is refused with one sentence saying why, instead of
running out of memory or reporting every landmark absent.
"""

from __future__ import annotations

import numpy as np

from ..data.volume import Volume
from ..errors import VolumeError

# A volume may be up to this many times larger (or smaller) than the first stage's field of view.
EXTENT_FACTOR = 16.0


def check_volume_fits_model(volume: Volume, stage: dict, model_id: str) -> None:
    """Raise `VolumeError` when `volume` is constant or its extent is implausible for the model
    whose first stage is `stage` (a manifest stage: spacing_mm, patch_size)."""
    extent = np.asarray(volume.shape_ijk, float) * np.asarray(volume.spacing, float)
    view = np.asarray(stage["spacing_mm"], float) * np.asarray(stage["patch_size"], float)
    largest, widest_view = float(extent.max()), float(view.max())
    measured = (f"The volume measures {_triple(extent)} mm ({_triple(volume.shape_ijk)} voxels of "
                f"{_triple(volume.spacing)} mm)")
    looks_at = f"model {model_id} looks at {_triple(view)} mm at a time"
    if largest > EXTENT_FACTOR * widest_view:
        raise VolumeError(f"{measured}, far more than {looks_at} and takes volumes up to "
                          f"{EXTENT_FACTOR * widest_view:g} mm across; check the voxel spacing "
                          "(micrometres written as millimetres?).")
    if largest < widest_view / EXTENT_FACTOR:
        raise VolumeError(f"{measured}, far less than {looks_at} and needs volumes at least "
                          f"{widest_view / EXTENT_FACTOR:g} mm across; check the voxel spacing and the crop.")
    array = np.asarray(volume.array)
    low, high = array.min(), array.max()
    if low == high:
        raise VolumeError(f"The volume holds the value {float(low):g} in every voxel, so it shows no structure "
                          "to find landmarks in.")


def _triple(values) -> str:
    return " × ".join(f"{float(value):.4g}" for value in values)
