"""Atomic file writes: write to a temporary file beside the target, then rename over it; atomic folder removal.

A reader never sees a half-written file, and an existing file is only replaced when the caller
says so (a user's corrections are never overwritten silently). Temporary files and folders are
created with the permissions the umask gives (`tempfile` makes them private, 0600 / 0700, and a
rename keeps that), so colleagues and services can read results as they read any other file.
`check_writable_folder` lets a command refuse an unusable output folder before it does any work.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import H3DEError


@contextmanager
def atomic_destination(path: str | os.PathLike, overwrite: bool = False, suffix: str = ".part") -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; on success it is renamed to `path`,
    on failure removed. Refuses to replace an existing file unless `overwrite`. `suffix` lets
    writers that choose their format by extension see the right one."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise H3DEError(f"{path} already exists; pass overwrite (--overwrite) to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path, suffix)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def temporary_sibling(path: str | os.PathLike, suffix: str, directory: bool = False) -> Path:
    """Create a new empty file (or, with `directory`, folder) ``.NAME.RANDOM<suffix>`` beside
    `path` with the umask's permissions; fails rather than reuse an existing name."""
    path = Path(path)
    candidate = path.with_name(f".{path.name}.{secrets.token_hex(8)}{suffix}")
    if directory:
        os.mkdir(candidate, 0o777)
    else:
        os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return candidate


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = False) -> Path:
    """Write `data` to `path` atomically; refuse to replace an existing file unless `overwrite`."""
    with atomic_destination(path, overwrite) as temporary:
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    """Write UTF-8 `text` to `path` atomically (see `atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def remove_directory(directory: Path) -> None:
    """Delete a directory so that it disappears at once: rename it aside, then delete the renamed copy."""
    doomed = directory.with_name(f".{directory.name}.removed-{secrets.token_hex(4)}")
    os.replace(directory, doomed)
    shutil.rmtree(doomed)


def check_writable_folder(path: str | os.PathLike, option: str) -> None:
    """Raise H3DEError (one sentence naming `option`, e.g. "--out") unless `path` is a folder this
    process can create files in, or can be created as one; nothing is left behind."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise H3DEError(f"{option} {path} is a file, not a folder.")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise H3DEError(f"{option} {path} cannot be created: {existing} is a file, not a folder.")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        where = "" if existing == path else f" (in {existing})"
        raise H3DEError(f"{option} {path} is not writable{where}: {error.strerror or error}.") from None
