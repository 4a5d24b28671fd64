"""The cases a review session offers: the volumes named on the command line, plus uploads.

Cases are found exactly as `h3de detect` finds them (`expand_inputs`: volume files, folders of
volumes, DICOM folders, globs) and named the same way at start; a case keeps its name for the
whole session (an upload named like an existing case gets its upload folder's name in front).
Each upload goes into its own numbered folder under the upload folder, so a DICOM series
uploaded as many files stays one case; it is written into a hidden folder first and renamed
into place only once it holds a volume, so a refused or failed upload leaves nothing behind.
Uploads kept in an ``--upload-dir`` from an earlier session are offered again.

A case's review is saved beside it, as ``<volume>.landmarks.mrk.json`` and
``<volume>.landmarks.csv`` in the folder holding the volume file (or the DICOM folder), where
``<volume>`` is the volume's own name without its extension (its whole file name when another
volume in that folder has the same stem): the review of a file is found again whatever the
session's other cases are.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..data.cases import Case, assign_names, expand_inputs
from ..data.volume_io import SUPPORTED, volume_stem
from ..errors import H3DEError

REVIEW_STEM_SUFFIX = ".landmarks"
UPLOAD_FOLDER_PREFIX = "upload-"
INCOMING_FOLDER_PREFIX = ".incoming-"
UPLOAD_FOLDER = re.compile(rf"^{UPLOAD_FOLDER_PREFIX}(\d+)$")
UNUSABLE_NAME_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ReviewFiles:
    """Where a case's review is saved: Slicer markups JSON and the review CSV."""

    mrk_json: Path
    csv: Path

    def fingerprint(self) -> tuple | None:
        """(size, modification time) of each file that exists; None when neither does."""
        stats = [(path.stat().st_size, path.stat().st_mtime_ns) if path.exists() else None
                 for path in (self.mrk_json, self.csv)]
        return None if stats == [None, None] else tuple(stats)


def review_files(case: Case) -> ReviewFiles:
    """The review files beside `case` (see module notes)."""
    stem = volume_stem(case.path)
    folder = case.path.parent
    if folder.is_dir() and any(other != case.path and volume_stem(other) == stem for other in folder.iterdir()):
        stem = case.path.name
    base = folder / f"{stem}{REVIEW_STEM_SUFFIX}"
    return ReviewFiles(mrk_json=base.with_name(base.name + ".mrk.json"), csv=base.with_name(base.name + ".csv"))


class CaseList:
    """The ordered cases of a session and the folder uploads go to.

    Args:
        inputs: volume files, folders and glob patterns, as `h3de detect` takes them.
        upload_dir: folder for uploaded volumes; None: a new temporary folder at the first upload.
        recursive: also take volumes in subfolders of the given folders.
        max_upload_bytes: the largest upload (all its files together).
    """

    def __init__(self, inputs: list[str], upload_dir: str | os.PathLike | None = None,
                 recursive: bool = False, max_upload_bytes: int | None = None) -> None:
        self.cases: list[Case] = expand_inputs(list(inputs), recursive) if inputs else []
        self._upload_dir = Path(upload_dir) if upload_dir is not None else None
        self.max_upload_bytes = max_upload_bytes
        if self._upload_dir is not None and self._upload_dir.is_dir():
            self.cases += [case for folder in self._upload_folders() for case in self._cases_in(folder)]
            assign_names(self.cases)

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

        Raises `H3DEError` (and writes nothing) when nothing was uploaded, a name is unusable or
        repeated, the upload is over the size limit, or the files hold no volume.
        """
        if not files:
            raise H3DEError("No file was uploaded; choose one or more volume files.")
        names = [upload_file_name(name) for name, _ in files]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise H3DEError(f"Two uploaded files are both named {repeated[0]!r}; upload them separately.")
        total = sum(len(content) for _, content in files)
        if self.max_upload_bytes is not None and total > self.max_upload_bytes:
            raise H3DEError(upload_too_large(total, self.max_upload_bytes))
        incoming = self.upload_dir / f"{INCOMING_FOLDER_PREFIX}{secrets.token_hex(8)}"
        incoming.mkdir()
        try:
            for name, (_, content) in zip(names, files):
                (incoming / name).write_bytes(content)
            if not self._cases_in(incoming):
                raise H3DEError(f"The uploaded files hold no volume ({SUPPORTED}) or DICOM series.")
            folder = self._place(incoming)
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
        added = self._cases_in(folder)
        self._name_new(added)
        self.cases.extend(added)
        return added

    def _name_new(self, added: list[Case]) -> None:
        """Name new cases without renaming any existing one."""
        taken = {case.name for case in self.cases}
        assign_names(added)
        for case in added:
            name = case.name if case.name not in taken else f"{case.path.parent.name}_{case.name}"
            number = 1
            while name in taken:
                number += 1
                name = f"{case.path.parent.name}_{case.name}-{number}"
            case.name = name
            taken.add(name)

    @staticmethod
    def _cases_in(folder: Path) -> list[Case]:
        return [case for case in expand_inputs([str(folder)], recursive=True) if case.problem is None]

    def _upload_folders(self) -> list[Path]:
        numbered = [(int(match.group(1)), path) for path in self.upload_dir.iterdir()
                    if path.is_dir() and (match := UPLOAD_FOLDER.match(path.name))]
        return [path for _, path in sorted(numbered)]

    def _place(self, incoming: Path) -> Path:
        """Rename the complete upload to the next free ``upload-N`` folder."""
        number = 1 + max((int(UPLOAD_FOLDER.match(path.name).group(1)) for path in self._upload_folders()), default=0)
        while True:
            folder = self.upload_dir / f"{UPLOAD_FOLDER_PREFIX}{number}"
            try:
                incoming.rename(folder)
                return folder
            except OSError:
                if not folder.exists():
                    raise
                number += 1


def upload_file_name(name: str) -> str:
    """The file name an upload is written under (its last path part); `H3DEError` when unusable."""
    if not isinstance(name, str) or UNUSABLE_NAME_CHARACTERS.search(name):
        raise H3DEError(f"The uploaded file name {name!r} holds control characters; rename the file.")
    safe = re.split(r"[\\/]", name)[-1]
    if not safe or safe in (".", "..") or safe.startswith(INCOMING_FOLDER_PREFIX):
        raise H3DEError(f"The uploaded file name {name!r} is not usable; rename the file.")
    return safe


def upload_too_large(size: int, limit: int) -> str:
    """The sentence for an upload over the limit."""
    return (f"The upload is {size / 2**20:.1f} MB, over this server's limit of {limit / 2**20:.0f} MB "
            "(h3de serve --max-upload-mb).")
