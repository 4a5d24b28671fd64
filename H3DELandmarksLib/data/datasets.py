"""Training and validation datasets: where the cases are, their landmarks, their splits.

Three sources share one small interface (`CaseSource`):

- `GenericDataset`: one volume file per case (``<case>.nii.gz``, ``.nrrd``, ...) in the root or in
  ``root/volumes``, and its landmark file (``<case>.mrk.json``, ``.fcsv``, ``.csv`` or ``.json``)
  beside it or in ``root/landmarks``. An optional ``root/cases.csv`` (column ``case``, any other
  columns are per-case notes) lists the cases; a ``split`` column with ``train``, ``validation``
  or ``test`` fixes a case's split. A volume without a landmark file is an unannotated case: it
  is not among `cases()` but among `unannotated_cases()` (few-shot training pseudo-labels it),
  and `load` gives it an empty landmark set.
- `MMLDDataset`: the published MMLD layout (``<case>_volume.nrrd``, ``_label.npy``,
  ``_spacing.npy``), with the same optional ``cases.csv``.
- `PhantomDataset`: procedural head phantoms drawn by `make_phantom`, one per seed.

Landmark names must match across cases (`match_landmarks` names the case and the point).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from ..checksums import sha256_of
from ..errors import LandmarkFileError, VolumeError
from .landmark_files import read_landmarks
from .landmark_files.common import read_text
from .landmark_files.mmld import mmld_case_paths, read_mmld_case
from .landmarks import Landmarks
from .phantom import PHANTOM_LANDMARK_NAMES, make_phantom
from .volume import Volume
from .volume_io import read_volume, volume_format, volume_stem

CASES_FILE = "cases.csv"
LANDMARK_SUFFIXES = (".mrk.json", ".fcsv", ".csv", ".json")
SPLITS = ("train", "validation", "test")


class CaseSource(Protocol):
    """The cases of one dataset."""

    def cases(self) -> list[str]:
        """Case names, sorted."""

    def notes(self, case: str) -> dict[str, str]:
        """Free per-case notes (the row of cases.csv); may hold a ``split``."""

    def load(self, case: str) -> tuple[Volume, Landmarks]:
        """The case's volume and landmarks (LPS mm)."""

    def fingerprint(self, case: str) -> str:
        """A hex digest that changes whenever the case's data changes."""

    def describe(self) -> dict:
        """JSON-ready provenance of the dataset (layout, root, parameters)."""


class _FileDataset:
    """Shared part of the file-based layouts: cases.csv notes and file fingerprints."""

    layout = ""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise VolumeError(f"Dataset folder {self.root} does not exist.")
        self._notes = read_cases_file(self.root / CASES_FILE)
        self._fingerprints: dict[str, str] = {}

    def cases(self) -> list[str]:
        return sorted(self._files)

    def notes(self, case: str) -> dict[str, str]:
        return dict(self._notes.get(case, {}))

    def fingerprint(self, case: str) -> str:
        if case not in self._fingerprints:
            digest = hashlib.sha256()
            for path in self._case_files(case):
                digest.update(path.name.encode())
                digest.update(sha256_of(path).encode())
            self._fingerprints[case] = digest.hexdigest()
        return self._fingerprints[case]

    def describe(self) -> dict:
        """Layout and the dataset folder's name (not its local path)."""
        return {"layout": self.layout, "root": self.root.name}

    def _case_files(self, case: str) -> tuple[Path, ...]:
        return self._files[case]

    def _listed_or_found(self, found: dict[str, tuple[Path, ...]], what: str) -> dict[str, tuple[Path, ...]]:
        """Restrict to the cases listed in cases.csv (each must exist), when there is one."""
        if not self._notes:
            if not found:
                raise VolumeError(f"Dataset folder {self.root} holds no {what}.")
            return found
        missing = [case for case in self._notes if case not in found]
        if missing:
            raise VolumeError(
                f"{self.root / CASES_FILE} lists case {missing[0]!r}, but {self.root} has no {what} for it.")
        return {case: found[case] for case in self._notes}


class GenericDataset(_FileDataset):
    """One volume file and one landmark file per case (see module notes); volumes without a
    landmark file are the unannotated cases."""

    layout = "generic"

    def __init__(self, root: str | os.PathLike) -> None:
        super().__init__(root)
        volume_folder = self.root / "volumes" if (self.root / "volumes").is_dir() else self.root
        found = {}
        for path in sorted(volume_folder.iterdir()):
            if path.is_file() and volume_format(path) is not None:
                landmark_path = self._landmark_file(path)
                found[volume_stem(path)] = (path,) if landmark_path is None else (path, landmark_path)
        listed = self._listed_or_found(found, "volume")
        self._files = {case: files for case, files in listed.items() if len(files) == 2}
        self._unannotated = {case: files for case, files in listed.items() if len(files) == 1}

    def unannotated_cases(self) -> list[str]:
        """Cases with a volume but no landmark file, sorted."""
        return sorted(self._unannotated)

    def load(self, case: str) -> tuple[Volume, Landmarks]:
        """The case's volume and landmarks; an unannotated case has no landmarks (an empty set)."""
        if case in self._unannotated:
            return read_volume(self._unannotated[case][0]), Landmarks(names=[], positions=np.empty((0, 3)))
        volume_path, landmark_path = self._files[case]
        return read_volume(volume_path), read_landmarks(landmark_path)

    def load_landmarks(self, case: str) -> Landmarks:
        """The case's landmarks alone (its volume is not read)."""
        return read_landmarks(self._files[case][1])

    def _case_files(self, case: str) -> tuple[Path, ...]:
        return self._unannotated[case] if case in self._unannotated else self._files[case]

    def _landmark_file(self, volume_path: Path) -> Path | None:
        case = volume_stem(volume_path)
        folders = [volume_path.parent, self.root / "landmarks"]
        candidates = [folder / f"{case}{suffix}" for folder in folders for suffix in LANDMARK_SUFFIXES]
        existing = list(dict.fromkeys(path for path in candidates if path.is_file() and path != volume_path))
        if len(existing) > 1:
            raise LandmarkFileError(
                f"Case {case!r} has several landmark files ({', '.join(str(path) for path in existing)}); keep one."
            )
        return existing[0] if existing else None


class MMLDDataset(_FileDataset):
    """The MMLD layout of the published work: ``<case>_volume.nrrd`` + ``_label.npy`` + ``_spacing.npy``."""

    layout = "mmld"

    def __init__(self, root: str | os.PathLike) -> None:
        super().__init__(root)
        found = {}
        for path in sorted(self.root.glob("*_volume.nrrd")):
            case = path.name[: -len("_volume.nrrd")]
            found[case] = mmld_case_paths(self.root, case)
        self._files = self._listed_or_found(found, "MMLD case (<case>_volume.nrrd)")

    def load(self, case: str) -> tuple[Volume, Landmarks]:
        return read_mmld_case(self.root, case)


@dataclass(frozen=True)
class PhantomDataset:
    """Head phantoms from `make_phantom`, case ``phantom-<seed>`` for each seed.

    Each seed also draws the voxel size (uniform in `spacing_mm`) and which landmarks are absent
    (each with `absent_probability`), so the same seed always gives the same case.
    """

    seeds: tuple[int, ...]
    size: tuple[int, int, int] = (96, 96, 96)
    spacing_mm: tuple[float, float] = (1.5, 1.5)
    absent_probability: float = 0.0
    noise_hu: float = 20.0

    def cases(self) -> list[str]:
        return [f"phantom-{seed}" for seed in self.seeds]

    def notes(self, case: str) -> dict[str, str]:
        return {}

    def fingerprint(self, case: str) -> str:
        return hashlib.sha256(json.dumps([self.describe(), case]).encode()).hexdigest()

    def describe(self) -> dict:
        return {
            "layout": "phantom",
            "seeds": list(self.seeds),
            "size": list(self.size),
            "spacing_mm": list(self.spacing_mm),
            "absent_probability": self.absent_probability,
            "noise_hu": self.noise_hu,
        }

    def load(self, case: str) -> tuple[Volume, Landmarks]:
        seed = int(case.rsplit("-", 1)[1])
        rng = np.random.default_rng([seed, 1])
        spacing = float(rng.uniform(*self.spacing_mm))
        absent = [name for name in PHANTOM_LANDMARK_NAMES if rng.uniform() < self.absent_probability]
        return make_phantom(seed, size=self.size, spacing=spacing, absent=absent, noise_hu=self.noise_hu)


def read_cases_file(path: Path) -> dict[str, dict[str, str]]:
    """Rows of an optional cases.csv by case name ({} when there is no such file)."""
    if not path.is_file():
        return {}
    try:
        rows = list(csv.DictReader(io.StringIO(read_text(path))))
    except csv.Error as error:
        raise VolumeError(f"{path} cannot be read as CSV ({error}).") from None
    if not rows or "case" not in rows[0]:
        raise VolumeError(f"{path} needs a 'case' column naming each case.")
    notes = {}
    for number, row in enumerate(rows, start=2):
        case = (row.pop("case") or "").strip()
        if not case:
            raise VolumeError(f"{path} line {number} has no case name.")
        if case in notes:
            raise VolumeError(f"{path} lists case {case!r} twice.")
        split = (row.get("split") or "").strip()
        if split and split not in SPLITS:
            raise VolumeError(f"{path} line {number} has split {split!r}; use one of {', '.join(SPLITS)}.")
        notes[case] = {key: (value or "").strip() for key, value in row.items() if key is not None}
    return notes


def match_landmarks(landmarks: Landmarks, names: Sequence[str], case: str) -> Landmarks:
    """`landmarks` in the order of `names`; a missing or extra point is an error naming the case."""
    missing = [name for name in names if name not in landmarks.names]
    if missing:
        raise LandmarkFileError(
            f"Case {case!r} has no landmark {missing[0]!r}; every case needs the same landmarks "
            f"({len(names)}: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})."
        )
    extra = [name for name in landmarks.names if name not in names]
    if extra:
        raise LandmarkFileError(
            f"Case {case!r} has a landmark {extra[0]!r} that the model's landmark set does not have."
        )
    return landmarks.reordered(list(names))


def mark_absent(landmarks: Landmarks, names: Sequence[str], case: str) -> Landmarks:
    """A copy with `names` marked absent (their positions kept as guesses)."""
    marked = landmarks.copy()
    for name in names:
        if name not in marked.names:
            raise LandmarkFileError(f"Case {case!r} has no landmark {name!r} to mark absent.")
        marked.present[marked.names.index(name)] = False
    return marked


def split_cases(
    source: CaseSource,
    seed: int,
    fraction: float = 0.0,
    cases: Sequence[str] = (),
    only_where: dict[str, str] | None = None,
) -> tuple[list[str], list[str]]:
    """Training and validation case names.

    A ``split`` note (cases.csv) decides first (``test`` cases are left out of both). Then
    `cases` names validation cases explicitly; otherwise a seeded random `fraction` of the
    remaining cases (at least one when the fraction is positive) is drawn among those whose notes
    match `only_where` (e.g. ``{"landmarks": "exact"}``).
    """
    available = source.cases()
    unknown = [case for case in cases if case not in available]
    if unknown:
        raise VolumeError(f"Validation case {unknown[0]!r} is not in the dataset.")
    fixed = {case: source.notes(case).get("split", "") for case in available}
    free = [case for case in available if not fixed[case]]
    validation = [case for case in available if fixed[case] == "validation" or case in cases]
    if not cases and fraction > 0:
        eligible = [case for case in free if _matches(source.notes(case), only_where or {})]
        count = min(len(eligible), max(1, round(fraction * len(eligible))))
        chosen = np.random.default_rng(seed).permutation(len(eligible))[:count]
        validation += [eligible[index] for index in sorted(chosen)]
    train = [case for case in available if case not in validation and fixed[case] != "test"]
    if not train:
        raise VolumeError("No training cases are left after the validation split.")
    return train, sorted(validation)


def _matches(notes: dict[str, str], where: dict[str, str]) -> bool:
    return all(notes.get(column) == value for column, value in where.items())
