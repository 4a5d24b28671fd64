"""A disk cache of the cases' volumes and landmarks, so epochs never re-read the dataset.

Each case is read once from its `CaseSource` (decompressing NIfTI, reading DICOM or drawing a
phantom) and stored as a raw ``.npy`` array plus a JSON file with its geometry, its landmarks
and the source's fingerprint. Later reads memory-map the array: a patch touches only the voxels
it needs. The voxels are kept as read, because the inference resamples the original volume and
maps intensities afterwards; training patches are made the same way (see `sampling`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes, atomic_write_text
from ..data.datasets import CaseSource
from ..data.landmarks import Landmarks
from ..data.volume import Volume

CACHE_FORMAT = 1


class CaseCache:
    """Cases of `source`, cached under `directory`."""

    def __init__(self, source: CaseSource, directory: str | os.PathLike) -> None:
        self.source = source
        self.directory = Path(directory)
        self._loaded: dict[str, tuple[Volume, Landmarks]] = {}

    def get(self, case: str) -> tuple[Volume, Landmarks]:
        """The case's volume (array memory-mapped, read-only) and landmarks as read."""
        if case not in self._loaded:
            folder = self.directory / _folder_name(case)
            fingerprint = self.source.fingerprint(case)
            meta = _read_meta(folder / "case.json")
            if meta is None or meta.get("fingerprint") != fingerprint or meta.get("format") != CACHE_FORMAT:
                volume, landmarks = self.source.load(case)
                meta = _store(folder, volume, landmarks, fingerprint)
            self._loaded[case] = _open(folder, meta)
        return self._loaded[case]


def _store(folder: Path, volume: Volume, landmarks: Landmarks, fingerprint: str) -> dict:
    stream = io.BytesIO()
    np.save(stream, np.ascontiguousarray(volume.array), allow_pickle=False)
    atomic_write_bytes(folder / "volume.npy", stream.getvalue(), overwrite=True)
    meta = {
        "format": CACHE_FORMAT,
        "fingerprint": fingerprint,
        "spacing": list(volume.spacing),
        "origin": list(volume.origin),
        "direction": np.asarray(volume.direction, float).tolist(),
        "names": landmarks.names,
        "descriptions": landmarks.descriptions,
        "positions": [[None if not np.isfinite(v) else float(v) for v in row] for row in landmarks.positions],
        "present": landmarks.present.tolist(),
    }
    atomic_write_text(folder / "case.json", json.dumps(meta), overwrite=True)
    return meta


def _open(folder: Path, meta: dict) -> tuple[Volume, Landmarks]:
    array = np.load(folder / "volume.npy", mmap_mode="r", allow_pickle=False)
    volume = Volume(array, tuple(meta["spacing"]), tuple(meta["origin"]), np.array(meta["direction"], float))
    positions = np.array([[np.nan if v is None else v for v in row] for row in meta["positions"]], float)
    landmarks = Landmarks(meta["names"], positions.reshape(-1, 3), np.array(meta["present"], bool),
                          descriptions=meta["descriptions"])
    return volume, landmarks


def _read_meta(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _folder_name(case: str) -> str:
    """A file-system-safe folder name that keeps distinct cases apart."""
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", case)[:60]
    return f"{readable}-{hashlib.sha256(case.encode()).hexdigest()[:8]}"
