"""One case of the MMLD dataset layout used by the published H3DE-Net.

A case ``<case>`` is three files in one folder: ``<case>_volume.nrrd``, ``<case>_label.npy``
(N x 3 voxel coordinates, 14 landmarks L0, La..Lf, R0, Ra..Rf in the published data) and
``<case>_spacing.npy`` (the voxel size). The authors read the NRRD with the array indexed in the
file's own axis order, so the label columns are the ITK voxel indices (i, j, k), converted to LPS
here through the volume's full geometry (direction matrix included). An absent landmark has
coordinates whose mean is below -100; this module writes -1000 for it, so the layout keeps no
best guess, confidence or description.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from ...atomic import atomic_write_bytes
from ...errors import LandmarkFileError
from ..landmarks import Landmarks
from ..volume import Volume
from ..volume_io import read_volume, write_volume

KIND = "MMLD label"
MMLD_LANDMARK_NAMES = ["L0", *[f"L{c}" for c in "abcdef"], "R0", *[f"R{c}" for c in "abcdef"]]
ABSENT_MEAN_BELOW = -100.0
ABSENT_COORDINATE = -1000.0
SPACING_RELATIVE_TOLERANCE = 1e-3


def mmld_case_paths(folder: str | os.PathLike, case: str) -> tuple[Path, Path, Path]:
    """Paths of a case's volume, label and spacing files."""
    folder = Path(folder)
    return folder / f"{case}_volume.nrrd", folder / f"{case}_label.npy", folder / f"{case}_spacing.npy"


def read_mmld_case(
    folder: str | os.PathLike, case: str, names: list[str] | None = None
) -> tuple[Volume, Landmarks]:
    """Read one MMLD case as a volume and LPS landmarks (`names` default to the 14 MMLD names)."""
    volume_path, label_path, spacing_path = mmld_case_paths(folder, case)
    volume = read_volume(volume_path)
    labels = _load_array(label_path)
    if labels.ndim != 2 or labels.shape[1] != 3 or not np.issubdtype(labels.dtype, np.number):
        raise LandmarkFileError(
            f"{label_path} is not a valid {KIND} file: it holds a {labels.shape} array, not N x 3 numbers."
        )
    if not np.all(np.isfinite(labels)):
        raise LandmarkFileError(f"{label_path} is not a valid {KIND} file: it holds non-finite coordinates.")
    names = list(MMLD_LANDMARK_NAMES if names is None else names)
    if len(names) != len(labels):
        raise LandmarkFileError(f"{label_path} holds {len(labels)} landmarks; {len(names)} names were given.")
    _check_spacing(spacing_path, volume_path, volume)

    present = labels.mean(axis=1) >= ABSENT_MEAN_BELOW
    positions = np.full((len(labels), 3), np.nan)
    positions[present] = volume.index_to_physical(labels[present].astype(float))
    return volume, Landmarks(names=names, positions=positions, present=present)


def write_mmld_case(
    folder: str | os.PathLike, case: str, volume: Volume, landmarks: Landmarks, overwrite: bool = False
) -> None:
    """Write one MMLD case; absent landmarks get -1000 coordinates (their best guesses are dropped)."""
    paths = mmld_case_paths(folder, case)
    existing = [str(path) for path in paths if path.exists()]
    if existing and not overwrite:
        listed = ", ".join(existing)
        raise LandmarkFileError(f"{listed} already exist(s); pass overwrite (--overwrite) to replace them.")
    volume_path, label_path, spacing_path = paths
    labels = np.full((len(landmarks), 3), ABSENT_COORDINATE)
    labels[landmarks.present] = volume.physical_to_index(landmarks.positions[landmarks.present])
    write_volume(volume, volume_path, overwrite=overwrite)
    atomic_write_bytes(label_path, _npy_bytes(labels), overwrite=overwrite)
    atomic_write_bytes(spacing_path, _npy_bytes(np.asarray(volume.spacing, float)), overwrite=overwrite)


def _check_spacing(spacing_path: Path, volume_path: Path, volume: Volume) -> None:
    """Raise unless the spacing file agrees with the NRRD's spacing to 1e-3 relative."""
    spacing = _load_array(spacing_path).astype(float).ravel()
    if spacing.shape != (3,):
        raise LandmarkFileError(
            f"{spacing_path} is not a valid MMLD spacing file: it holds {spacing.size} values, not 3."
        )
    if not np.allclose(spacing, volume.spacing, rtol=SPACING_RELATIVE_TOLERANCE, atol=0.0):
        raise LandmarkFileError(
            f"{spacing_path} gives the spacing {_triple(spacing)} mm but {volume_path} has "
            f"{_triple(volume.spacing)} mm; they must agree to 0.1 %."
        )


def _load_array(path: Path) -> np.ndarray:
    """A numpy array file (no pickles); errors name the file."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise LandmarkFileError(f"MMLD file {path} does not exist.") from None
    except (OSError, ValueError):
        raise LandmarkFileError(f"{path} is not a readable numpy array (.npy) file.") from None


def _npy_bytes(array: np.ndarray) -> bytes:
    """The ``.npy`` file content of `array`."""
    stream = io.BytesIO()
    np.save(stream, array, allow_pickle=False)
    return stream.getvalue()


def _triple(values) -> str:
    return " x ".join(f"{float(value):g}" for value in values)
