"""Read, validate and write volumes: NRRD, NIfTI, MetaImage files and DICOM series folders.

Everything goes through SimpleITK, so geometry is LPS millimetres with the full direction matrix.
Axis order at this boundary: `Volume.array` is ``[k, j, i]`` (as ``sitk.GetArrayFromImage``);
spacing, origin and the direction matrix's columns are in ITK ``(i, j, k)`` order.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import tempfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from ..errors import VolumeError
from .volume import Volume

logger = logging.getLogger(__name__)

FORMAT_NAMES = {
    ".nrrd": "NRRD",
    ".nhdr": "NRRD",
    ".nii": "NIfTI",
    ".nii.gz": "NIfTI",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
}
SUPPORTED = ".nrrd, .nhdr, .nii, .nii.gz, .mha, .mhd"
# Smallest |det| of the column-normalised direction matrix still accepted as non-singular.
MIN_DIRECTION_DETERMINANT = 1e-6
# ITK messages that name a precise geometry problem, and the sentence ending we give for them.
ITK_REASONS = (
    ("Zero-valued spacing", "has a zero voxel spacing"),
    ("Bad direction", "has a singular direction matrix"),
    ("size is zero", "is empty (an axis has size 0)"),
)


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series found under a folder.

    Attributes:
        uid: Series Instance UID.
        files: slice files, sorted along the slice axis by GDCM.
    """

    uid: str
    files: tuple[str, ...]


def volume_format(path: str | os.PathLike) -> str | None:
    """Format name ("NRRD", "NIfTI", "MetaImage") of a volume file name, or None if unsupported."""
    name = Path(path).name.lower()
    for suffix, format_name in FORMAT_NAMES.items():
        if name.endswith(suffix):
            return format_name
    return None


def volume_stem(path: str | os.PathLike) -> str:
    """File name without its volume extension (.nii.gz, .nrrd, ...); other names (a DICOM folder's) whole."""
    name = Path(path).name
    for suffix in sorted(FORMAT_NAMES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_volume(path: str | os.PathLike) -> Volume:
    """Read and validate a 3D scalar volume from a file or a DICOM series folder.

    A folder holding several series yields the one with the most slices (a warning names it).
    Returns a `Volume` (array ``[k, j, i]``, geometry in (i, j, k) order, LPS mm).
    Raises `VolumeError` with one sentence naming the file for every unusable input.
    """
    path = Path(path)
    if path.is_dir():
        series, _ = choose_dicom_series(path)
        return read_dicom_series(series, path)
    if not path.exists():
        raise VolumeError(f"Volume file or folder {path} does not exist.")
    format_name = volume_format(path)
    if format_name is None:
        raise VolumeError(f"{path} is not a supported volume file (use {SUPPORTED} or a DICOM folder).")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        if format_name == "NIfTI":
            _check_nifti_data_complete(path, reader)
        image = reader.Execute()
    except RuntimeError as error:
        logger.debug("SimpleITK could not read %s: %s", path, error)
        unreadable = f"cannot be read (truncated, corrupt or not a valid {format_name} file)"
        reason = _itk_reason(str(error)) or unreadable
        raise VolumeError(f"Volume file {path} {reason}.") from error
    volume = _volume_from_image(image)
    validate_volume(volume, f"file {path}")
    return volume


def find_dicom_series(folder: str | os.PathLike) -> list[DicomSeries]:
    """All DICOM series in `folder` and its subfolders (a series split over folders counts per folder)."""
    series = []
    for directory, subdirectories, _ in os.walk(folder):
        subdirectories.sort()
        with _itk_warnings_silenced():
            uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(directory)
        for uid in uids:
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(directory, uid)
            series.append(DicomSeries(uid=uid, files=tuple(files)))
    return series


def choose_dicom_series(folder: str | os.PathLike) -> tuple[DicomSeries, int]:
    """The series with the most slices under `folder`, and how many other series were ignored.

    Logs a warning naming the chosen series when there were several.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise VolumeError(f"DICOM folder {folder} does not exist.")
    series = find_dicom_series(folder)
    if not series:
        raise VolumeError(f"Folder {folder} holds no DICOM series.")
    chosen = max(series, key=lambda candidate: len(candidate.files))
    ignored = len(series) - 1
    if ignored:
        logger.warning(
            "Folder %s holds %d DICOM series; using series %s (%d slices) and ignoring %d other series.",
            folder, len(series), chosen.uid, len(chosen.files), ignored,
        )
    return chosen, ignored


def read_dicom_series(series: DicomSeries, folder: str | os.PathLike) -> Volume:
    """Read and validate one DICOM series (found under `folder`, named in errors)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(series.files))
    try:
        image = reader.Execute()
    except RuntimeError as error:
        logger.debug("SimpleITK could not read DICOM series %s: %s", series.uid, error)
        reason = _itk_reason(str(error)) or "cannot be read (corrupt or inconsistent slices)"
        raise VolumeError(f"DICOM series {series.uid} in {folder} {reason}.") from error
    volume = _volume_from_image(image)
    validate_volume(volume, f"DICOM series {series.uid} in {folder}")
    return volume


def validate_volume(volume: Volume, source: str) -> None:
    """Raise `VolumeError` unless `volume` is a usable 3D scalar volume.

    `source` names where it came from in the message ("file /data/ct.nrrd", "node 'CT'").
    Checks: 3 dimensions, one component per voxel, real numeric voxels, no empty or single-slice
    axis, finite voxels, finite positive spacing, finite origin, non-singular direction matrix.
    """
    array = np.asarray(volume.array)
    dimensions = len(volume.spacing)
    if dimensions == 2 or array.ndim == 2:
        raise VolumeError(f"Volume {source} is a 2D image; a 3D volume is needed.")
    if dimensions != 3:
        raise VolumeError(f"Volume {source} has {dimensions} dimensions; a 3D volume is needed.")
    if array.ndim == 4:
        raise VolumeError(
            f"Volume {source} has {array.shape[-1]} components per voxel (vector or colour data); "
            "a single-component (scalar) volume is needed."
        )
    if array.ndim != 3:
        raise VolumeError(f"Volume {source} has a {array.ndim}-dimensional voxel array; 3 are needed.")
    size_ijk = array.shape[::-1]
    if 0 in size_ijk:
        raise VolumeError(f"Volume {source} is empty (size {_triple(size_ijk)} voxels along i, j, k).")
    if 1 in size_ijk:
        raise VolumeError(
            f"Volume {source} is a single slice (size {_triple(size_ijk)} along i, j, k); "
            "a 3D volume is needed."
        )
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise VolumeError(f"Volume {source} has {array.dtype} voxels; real numbers are needed.")
    if not (np.isfinite(array.min()) and np.isfinite(array.max())):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise VolumeError(f"Volume {source} has {bad} non-finite voxel values (NaN or infinity).")
    spacing = np.asarray(volume.spacing, float)
    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
        raise VolumeError(
            f"Volume {source} has spacing {_triple(spacing)} mm; every spacing must be positive."
        )
    if not np.all(np.isfinite(volume.origin)):
        raise VolumeError(f"Volume {source} has a non-finite origin ({', '.join(map(str, volume.origin))}).")
    direction = np.asarray(volume.direction, float)
    if direction.shape != (3, 3) or not _direction_is_invertible(direction):
        raise VolumeError(f"Volume {source} has a singular direction matrix; its axes must be independent.")


def write_volume(
    volume: Volume, path: str | os.PathLike, overwrite: bool = False, compress: bool = True
) -> Path:
    """Write `volume` to a NRRD, NIfTI or MetaImage file atomically; returns the path.

    The file (and the data file of a detached header, .nhdr/.mhd) is written into a temporary
    folder beside `path`, then renamed into place, data file first, header last. An existing file
    is only replaced when `overwrite` is true.
    """
    path = Path(path)
    if volume_format(path) is None:
        raise VolumeError(f"Cannot write {path}: use one of {SUPPORTED}.")
    _refuse_existing(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    except OSError as error:
        raise VolumeError(f"Cannot write volume file {path} ({error.strerror}).") from error
    try:
        try:
            sitk.WriteImage(volume.to_sitk(), str(staging / path.name), compress)
        except RuntimeError as error:
            logger.debug("SimpleITK could not write %s: %s", path, error)
            raise VolumeError(f"Cannot write volume file {path} (disk full or not writable?).") from error
        data_files = sorted(name for name in os.listdir(staging) if name != path.name)
        for name in data_files:
            _refuse_existing(path.parent / name, overwrite)
        for name in [*data_files, path.name]:
            os.replace(staging / name, path.parent / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise VolumeError(f"{path} already exists; pass overwrite (--overwrite) to replace it.")


def _volume_from_image(image: sitk.Image) -> Volume:
    """A Volume of any dimension or component count, so that `validate_volume` can judge it."""
    dimension = image.GetDimension()
    return Volume(
        array=sitk.GetArrayFromImage(image),
        spacing=tuple(float(s) for s in image.GetSpacing()),
        origin=tuple(float(o) for o in image.GetOrigin()),
        direction=np.array(image.GetDirection(), float).reshape(dimension, dimension),
    )


def _check_nifti_data_complete(path: Path, reader: sitk.ImageFileReader) -> None:
    """Raise RuntimeError if a NIfTI file holds fewer voxel bytes than its header promises.

    ITK silently fills the missing part of a truncated NIfTI file with zeros, hence this check;
    a .nii.gz file is decompressed once more to count its bytes and verify its checksum.
    """
    dimensions = int(reader.GetMetaData("dim[0]"))
    voxels = np.prod([int(reader.GetMetaData(f"dim[{axis}]")) for axis in range(1, dimensions + 1)])
    voxel_bytes = int(voxels) * int(reader.GetMetaData("bitpix")) // 8
    expected = int(float(reader.GetMetaData("vox_offset"))) + voxel_bytes
    if path.name.lower().endswith(".gz"):
        try:
            available = _gzip_content_length(path)
        except (OSError, EOFError, zlib.error) as error:
            raise RuntimeError(f"broken gzip stream: {error}") from error
    else:
        available = path.stat().st_size
    if available < expected:
        raise RuntimeError(f"{available} bytes of NIfTI data, {expected} expected")


def _gzip_content_length(path: Path) -> int:
    total = 0
    with gzip.open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            total += len(chunk)
    return total


def _itk_reason(message: str) -> str | None:
    for marker, reason in ITK_REASONS:
        if marker in message:
            return reason
    return None


def _direction_is_invertible(direction: np.ndarray) -> bool:
    if not np.all(np.isfinite(direction)):
        return False
    lengths = np.linalg.norm(direction, axis=0)
    if np.any(lengths == 0):
        return False
    return abs(np.linalg.det(direction / lengths)) > MIN_DIRECTION_DETERMINANT


def _triple(values) -> str:
    return " x ".join(f"{value:g}" for value in values)


@contextmanager
def _itk_warnings_silenced() -> Iterator[None]:
    """Hide ITK's console warnings (e.g. GDCM's "No Series were found") for the enclosed calls."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
