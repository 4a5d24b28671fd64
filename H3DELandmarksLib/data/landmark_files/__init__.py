"""Landmark files: read and write `Landmarks` in Slicer's and the project's formats.

`read_landmarks` / `write_landmarks` choose the format from the file name:

- ``.mrk.json``: 3D Slicer markups (`mrk_json`); a ``.json`` file holding a ``markups`` list too.
- ``.fcsv``: Slicer's older markups CSV (`fcsv`).
- ``.csv``: the project's CSV table (`csv_table`).
- ``.json``: the project's plain JSON export with free metadata (`json_table`).

The MMLD dataset layout of the published H3DE-Net (a volume and two arrays per case) has its own
pair of functions in `mmld`. Every file is LPS millimetres once read; bad files raise
`LandmarkFileError` naming the file; writes are atomic and refuse to replace a file unless told.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ...errors import LandmarkFileError
from ..landmarks import Landmarks
from ..volume import Volume
from .common import read_text
from .csv_table import read_csv, write_csv
from .fcsv import read_fcsv, write_fcsv
from .json_table import read_json, read_json_metadata, write_json
from .mmld import MMLD_LANDMARK_NAMES, read_mmld_case, write_mmld_case
from .mrk_json import is_markups_document, read_mrk_json, write_mrk_json

__all__ = [
    "MMLD_LANDMARK_NAMES",
    "read_csv",
    "read_fcsv",
    "read_json",
    "read_json_metadata",
    "read_landmarks",
    "read_mmld_case",
    "read_mrk_json",
    "write_csv",
    "write_fcsv",
    "write_json",
    "write_landmarks",
    "write_mmld_case",
    "write_mrk_json",
]

SUPPORTED = ".mrk.json, .fcsv, .csv or .json"


def read_landmarks(path: str | os.PathLike, markup_index: int | str | None = None) -> Landmarks:
    """Read a landmark file of any supported format (chosen by its extension).

    Args:
        path: the file.
        markup_index: for Slicer markups files holding several markups, which one: its position
            (int) or name (str); None takes the first point list. Refused for other formats.
    """
    file_format = _format(path, reading=True)
    if file_format == "markups":
        return read_mrk_json(path, markup_index)
    if markup_index is not None:
        raise LandmarkFileError(f"{path} is not a Slicer markups file, so no markup can be chosen in it.")
    readers = {"fcsv": read_fcsv, "csv": read_csv, "json": read_json}
    return readers[file_format](path)


def write_landmarks(
    path: str | os.PathLike,
    landmarks: Landmarks,
    volume: Volume | None = None,
    metadata: dict | None = None,
    overwrite: bool = False,
) -> None:
    """Write `landmarks` in the format chosen by the extension of `path`.

    `volume` adds voxel indices to CSV and JSON files. `metadata` goes whole into a JSON file; a
    CSV file takes its "model_id" and "model_version"; Slicer files have no place for it.
    """
    metadata = metadata or {}
    file_format = _format(path, reading=False)
    if file_format == "markups":
        write_mrk_json(path, landmarks, overwrite=overwrite)
    elif file_format == "fcsv":
        write_fcsv(path, landmarks, overwrite=overwrite)
    elif file_format == "csv":
        model_id, model_version = metadata.get("model_id"), metadata.get("model_version")
        write_csv(path, landmarks, volume, model_id, model_version, overwrite=overwrite)
    else:
        write_json(path, landmarks, volume, metadata, overwrite=overwrite)


def _format(path: str | os.PathLike, reading: bool) -> str:
    """"markups", "fcsv", "csv" or "json" from the file name (and, to read .json, its content)."""
    name = Path(path).name.lower()
    if name.endswith(".mrk.json"):
        return "markups"
    if name.endswith(".fcsv"):
        return "fcsv"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".json"):
        return "markups" if reading and _holds_markups(path) else "json"
    raise LandmarkFileError(f"{path} has no landmark file extension; use {SUPPORTED}.")


def _holds_markups(path: str | os.PathLike) -> bool:
    """True when a .json file is a Slicer markups document (Slicer also reads and writes .json)."""
    try:
        return is_markups_document(json.loads(read_text(path)))
    except (json.JSONDecodeError, RecursionError):
        return False
