""""Save for training": a corrected case into the dataset layout that `h3de train` reads.

The layout is `data.datasets.GenericDataset`'s::

    <dataset>/volumes/<case>.nrrd
    <dataset>/landmarks/<case>.mrk.json
    <dataset>/cases.csv            (optional; when present, the case is added to it)

The volume is written with its world geometry (linear transforms hardened, as detection saw it)
and the landmarks as the user left them, through Slicer's markups writer. A case name that
would be ambiguous in the dataset (another volume or landmark file of the same case) is refused.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import slicer

from ..atomic import atomic_write_text
from ..data.cases import safe_case_name
from ..data.datasets import CASES_FILE, LANDMARK_SUFFIXES, read_cases_file
from ..data.landmark_files.common import read_text
from ..data.volume_io import FORMAT_NAMES, volume_format, write_volume
from ..errors import H3DEError
from .export import export_mrk_json
from .volume_node import volume_from_node

VOLUME_FOLDER = "volumes"
LANDMARK_FOLDER = "landmarks"
VOLUME_SUFFIX = ".nrrd"
LANDMARK_SUFFIX = ".mrk.json"


@dataclass(frozen=True)
class TrainingCase:
    """The files of one saved case."""

    case: str
    volume_path: Path
    landmarks_path: Path


def training_case_paths(dataset: str | os.PathLike, case: str) -> TrainingCase:
    """Where `case` goes in `dataset`."""
    dataset = Path(dataset)
    return TrainingCase(
        case=case,
        volume_path=dataset / VOLUME_FOLDER / f"{case}{VOLUME_SUFFIX}",
        landmarks_path=dataset / LANDMARK_FOLDER / f"{case}{LANDMARK_SUFFIX}",
    )


def training_case_exists(dataset: str | os.PathLike, case: str) -> bool:
    """True when `dataset` already holds this case's volume or landmark file."""
    paths = training_case_paths(dataset, case)
    return paths.volume_path.exists() or paths.landmarks_path.exists()


def save_for_training(
    volume_node: slicer.vtkMRMLVolumeNode,
    landmarks_node: slicer.vtkMRMLMarkupsFiducialNode,
    dataset: str | os.PathLike,
    case: str | None = None,
    overwrite: bool = False,
) -> TrainingCase:
    """Write the volume and the corrected landmarks as one training case; returns its files.

    `case` defaults to the volume node's name made file-safe. An existing case is only replaced
    with `overwrite`.
    """
    dataset = Path(dataset)
    case = safe_case_name(volume_node.GetName() if case is None else case)
    _check_layout(dataset, case)
    paths = training_case_paths(dataset, case)
    if not overwrite and training_case_exists(dataset, case):
        raise H3DEError(f"Case {case!r} already exists in {dataset}; choose overwrite to replace it.")
    write_volume(volume_from_node(volume_node), paths.volume_path, overwrite=overwrite)
    export_mrk_json(landmarks_node, paths.landmarks_path, overwrite=overwrite)
    _list_case(dataset / CASES_FILE, case)
    return paths


def _check_layout(dataset: Path, case: str) -> None:
    """Refuse folders where the new files would be hidden or ambiguous for the dataset reader."""
    if dataset.is_dir() and not (dataset / VOLUME_FOLDER).is_dir():
        loose = [path.name for path in dataset.iterdir() if path.is_file() and volume_format(path)]
        if loose:
            raise H3DEError(
                f"{dataset} holds volumes at its top level ({loose[0]}); choose an empty folder or a "
                f"dataset with {VOLUME_FOLDER}/ and {LANDMARK_FOLDER}/ subfolders."
            )
    ours = training_case_paths(dataset, case)
    others = [dataset / VOLUME_FOLDER / f"{case}{suffix}" for suffix in FORMAT_NAMES]
    others += [dataset / folder / f"{case}{suffix}"
               for folder in (VOLUME_FOLDER, LANDMARK_FOLDER) for suffix in LANDMARK_SUFFIXES]
    clashing = [path for path in others if path.exists() and path not in (ours.volume_path, ours.landmarks_path)]
    if clashing:
        raise H3DEError(
            f"Case {case!r} already has the file {clashing[0]} in {dataset}; remove it or choose another case name."
        )


def _list_case(cases_file: Path, case: str) -> None:
    """Add `case` to an existing cases.csv (other columns empty); nothing when there is none."""
    if not cases_file.is_file() or case in read_cases_file(cases_file):
        return
    text = read_text(cases_file)
    header = next(csv.reader(io.StringIO(text)))
    row = io.StringIO()
    csv.writer(row, lineterminator="\n").writerow([case if column.strip() == "case" else "" for column in header])
    separator = "" if text.endswith("\n") else "\n"
    atomic_write_text(cases_file, text + separator + row.getvalue(), overwrite=True)
