"""`h3de info PATH...`: print each volume's size, geometry (LPS) and intensity range.

It takes what `h3de detect` takes: volume files, DICOM folders, folders of volumes (subfolders
too with --recursive) and glob patterns. For a DICOM folder it also names the series read (the
one with the most slices). A volume that cannot be read gets one line on stderr; the others are
still shown and the exit status is 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..data.cases import expand_inputs
from ..data.volume import Volume
from ..data.volume_io import SUPPORTED, choose_dicom_series, read_dicom_series, read_volume
from ..errors import VolumeError
from ..progress_events import ERROR_PREFIX


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    """Register the `info` sub-command."""
    parser = subparsers.add_parser(
        "info",
        help=summary,
        description="Show the size, spacing, origin, direction (LPS) and intensity range of volumes.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help=f"volume file ({SUPPORTED}), DICOM folder, folder of volumes, or glob pattern (quote it)")
    parser.add_argument("--recursive", action="store_true", help="also take volumes in subfolders of folders")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Describe every path; returns 2 if any could not be read, else 0."""
    status = 0
    for case in expand_inputs(args.paths, args.recursive):
        try:
            if case.problem:
                raise VolumeError(case.problem)
            print(describe(case.path))
        except VolumeError as error:
            print(f"{ERROR_PREFIX}{error}", file=sys.stderr)
            status = 2
    return status


def describe(path: Path) -> str:
    """Multi-line description of the volume at `path` (file or DICOM folder)."""
    series_line = None
    if path.is_dir():
        series, ignored = choose_dicom_series(path)
        volume = read_dicom_series(series, path)
        series_line = f"{series.uid} ({len(series.files)} slices; {ignored} other series ignored)"
    else:
        volume = read_volume(path)
    lines = [str(path), *_geometry_lines(volume)]
    if series_line:
        lines.append(f"  DICOM series:       {series_line}")
    return "\n".join(lines)


def _geometry_lines(volume: Volume) -> list[str]:
    direction = np.asarray(volume.direction, float)
    orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(direction.ravel().tolist())
    i, j, k = volume.shape_ijk
    return [
        f"  size (i, j, k):     {i} x {j} x {k} voxels",
        f"  spacing (mm):       {_numbers(volume.spacing)}",
        f"  origin (LPS mm):    {_numbers(volume.origin)}",
        f"  axis i (LPS):       {_numbers(direction[:, 0])}",
        f"  axis j (LPS):       {_numbers(direction[:, 1])}",
        f"  axis k (LPS):       {_numbers(direction[:, 2])}",
        f"  orientation:        {orientation} (closest; i, j, k point to these sides)",
        f"  intensity range:    {volume.array.min():g} to {volume.array.max():g} ({volume.array.dtype})",
    ]


def _numbers(values) -> str:
    """Comma-separated values at 6 significant digits (-0 and rounding noise shown as 0)."""
    return ", ".join(f"{round(float(value), 6) + 0.0:.6g}" for value in values)
