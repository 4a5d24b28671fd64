"""The cases a review session offers: the volumes named on the command line, plus uploads.

Cases are found exactly as `h3de detect` finds them (`expand_inputs`: volume files, folders of
volumes, DICOM folders, globs) and named the same way. Each upload goes into its own numbered
folder under the upload folder, so a DICOM series uploaded as many files stays one case. A
case's review is saved beside it, as ``<case>.landmarks.mrk.json`` and ``<case>.landmarks.csv``
in the folder holding the volume file (or the DICOM folder).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..data.cases import Case, assign_names, expand_inputs
from ..data.volume_io import SUPPORTED
from ..errors import H3DEError

REVIEW_STEM_SUFFIX = ".landmarks"
UPLOAD_FOLDER_PREFIX = "upload-"


@dataclass(frozen=True)
class ReviewFiles:
    """Where a case's review is saved: Slicer markups JSON and the review CSV."""

    mrk_json: Path
    csv: Path


def review_files(case: Case) -> ReviewFiles:
    """The review files beside `case` (see module notes)."""
    stem = case.path.parent / f"{case.name}{REVIEW_STEM_SUFFIX}"
    return ReviewFiles(mrk_json=stem.with_name(stem.name + ".mrk.json"), csv=stem.with_name(stem.name + ".csv"))


class CaseList:
    """The ordered cases of a session and the folder uploads go to.

    Args:
        inputs: volume files, folders and glob patterns, as `h3de detect` takes them.
        upload_dir: folder for uploaded volumes; None: a new temporary folder at the first upload.
        recursive: also take volumes in subfolders of the given folders.
    """

    def __init__(self, inputs: list[str], upload_dir: str | os.PathLike | None = None,
                 recursive: bool = False) -> None:
        self.cases: list[Case] = expand_inputs(list(inputs), recursive) if inputs else []
        self._upload_dir = Path(upload_dir) if upload_dir is not None else None

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> Case:
        return self.cases[index]

    @property
    def upload_dir(self) -> Path:
        """The upload folder (created when first asked for)."""
        if self._upload_dir is None:
            self._upload_dir = Path(tempfile.mkdtemp(prefix="h3de-serve-uploads-"))
        self._upload_dir.mkdir(parents=True, exist_ok=True)
        return self._upload_dir

    def add_upload(self, files: list[tuple[str, bytes]]) -> list[Case]:
        """Write uploaded `(file name, content)` pairs into a new upload folder; returns the new cases.

        Raises `H3DEError` when nothing was uploaded or the files hold no volume.
        """
        if not files:
            raise H3DEError("No file was uploaded; choose one or more volume files.")
        folder = self._new_upload_folder()
        for name, content in files:
            safe_name = Path(name).name
            if not safe_name or safe_name in (".", ".."):
                raise H3DEError(f"The uploaded file name {name!r} is not usable; rename the file.")
            (folder / safe_name).write_bytes(content)
        added = [case for case in expand_inputs([str(folder)], recursive=True) if case.problem is None]
        if not added:
            raise H3DEError(f"The uploaded files hold no volume ({SUPPORTED}) or DICOM series.")
        self.cases.extend(added)
        assign_names(self.cases)
        return added

    def _new_upload_folder(self) -> Path:
        root = self.upload_dir
        number = 1 + sum(1 for path in root.iterdir() if path.name.startswith(UPLOAD_FOLDER_PREFIX))
        while (root / f"{UPLOAD_FOLDER_PREFIX}{number}").exists():
            number += 1
        folder = root / f"{UPLOAD_FOLDER_PREFIX}{number}"
        folder.mkdir()
        return folder
