"""The cases a run processes: volume files and DICOM folders found from what a user named, and their names.

`expand_inputs` takes volume files, DICOM folders, folders of volumes (subfolders too when
recursive) and glob patterns, as `h3de detect` and `h3de serve` do. Each case gets a unique
output name: its volume stem (`volume_io.volume_stem`), prefixed by its folder's name when that
is ambiguous. `safe_case_name` makes any name (a Slicer node's) usable as a file name.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from ..errors import H3DEError
from .volume_io import volume_format, volume_stem

GLOB_CHARACTERS = "*?["
UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Case:
    """One volume to process: a file or a DICOM folder; `problem` is set when the input itself is unusable."""

    path: Path
    name: str = ""
    problem: str | None = None


def expand_inputs(inputs: list[str], recursive: bool) -> list[Case]:
    """Cases of all inputs, sorted by path, duplicates removed, with unique names.

    A folder holding volume files gives those files (and, with `recursive`, the volumes and DICOM
    series folders below it); a folder without volume files is read as a DICOM folder (its
    series with the most slices, searched in subfolders too). A glob gives what it matches; one
    matching nothing, or a folder holding nothing usable, becomes a failing case.
    """
    cases: dict[Path, Case] = {}
    for text in inputs:
        path = Path(text).expanduser()
        if path.exists():
            found = cases_at(path, recursive, explicit=True)
        elif any(character in text for character in GLOB_CHARACTERS):
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=recursive))
            found = [case for match in matches for case in cases_at(Path(match), recursive, explicit=False)]
            if not matches:
                found = [Case(path, name=text, problem=f"The pattern {text!r} matches no file or folder.")]
        else:
            found = [Case(path)]
        for case in found:
            cases.setdefault(case.path.resolve() if case.path.exists() else case.path, case)
    ordered = sorted(cases.values(), key=lambda case: str(case.path.resolve()))
    assign_names(ordered)
    return ordered


def cases_at(path: Path, recursive: bool, explicit: bool) -> list[Case]:
    """Cases for one existing path (an explicitly named file is taken whatever its extension)."""
    if path.is_file():
        return [Case(path)] if explicit or volume_format(path) else []
    files = sorted(p for p in path.iterdir() if p.is_file() and volume_format(p))
    if not recursive:
        return [Case(p) for p in files] or [Case(path)]
    found = [Case(path)] if not files and dicom_series_here(path) else [Case(p) for p in files]
    for folder in sorted(p for p in path.iterdir() if p.is_dir()):
        found += cases_at(folder, recursive, explicit=False)
    if not found and explicit:
        found = [Case(path, problem=f"Folder {path} holds no volume files or DICOM series.")]
    return found


def dicom_series_here(folder: Path) -> bool:
    """True when GDCM finds a DICOM series among the files directly in `folder` (ITK's warnings hidden)."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def assign_names(cases: list[Case]) -> None:
    """Give each case a unique output name: its own name, prefixed by its folder's name when
    that is ambiguous, numbered when still ambiguous. A pattern that matched nothing keeps the
    pattern as its name."""
    bases = [case.name if case.problem and case.name else volume_stem(case.path) for case in cases]
    for case, base in zip(cases, bases):
        case.name = f"{case.path.resolve().parent.name}_{base}" if bases.count(base) > 1 else base
    seen: dict[str, int] = {}
    for case in cases:
        seen[case.name] = seen.get(case.name, 0) + 1
        if seen[case.name] > 1:
            case.name = f"{case.name}-{seen[case.name]}"


def safe_case_name(name: str) -> str:
    """`name` made safe as a file name: runs of other characters than letters, digits, ``._-`` become ``_``."""
    safe = UNSAFE_CHARACTERS.sub("_", name).strip("._")
    if not safe:
        raise H3DEError(f"{name!r} cannot be used as a case name; give the volume a name with letters or digits.")
    return safe
