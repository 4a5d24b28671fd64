"""The one file checksum: hex sha256, read in chunks (files, zip members, any binary stream)."""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO

CHUNK_BYTES = 1 << 20


def sha256_of(source: str | os.PathLike | BinaryIO) -> str:
    """Hex sha256 of the file at a path, or of what is left to read in an open binary stream."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as stream:
            return sha256_of(stream)
    digest = hashlib.sha256()
    while chunk := source.read(CHUNK_BYTES):
        digest.update(chunk)
    return digest.hexdigest()
