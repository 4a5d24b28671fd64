"""Atomic file writes: write to a temporary file beside the target, then rename over it.

A reader never sees a half-written file, and an existing file is only replaced when the caller
says so (a user's corrections are never overwritten silently).
"""

from __future__ import annotations

import os
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
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
