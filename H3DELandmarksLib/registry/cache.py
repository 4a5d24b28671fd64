"""The local model cache: verified archives, extracted packages and partial downloads, kept apart.

Layout under the cache root::

    packages/<id>/<version>/     extracted, verified packages (the only place models are loaded from)
    archives/<id>@<version>.zip  the verified archives they came from (for `h3de models verify`)
    partial/<id>@<version>.zip.part  unfinished downloads, resumed or discarded, never loaded
    locks/<id>@<version>.lock    lock files: one process at a time downloads, unpacks or removes a model
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from platformdirs import user_cache_dir

from ..atomic import remove_directory

CACHE_ENV = "H3DE_CACHE_DIR"
APP_NAME = "h3de-landmarks"


def default_cache_dir() -> Path:
    """$H3DE_CACHE_DIR, else the platform's per-user cache folder for H3DE Landmarks models."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    return Path(user_cache_dir(APP_NAME, appauthor=False)) / "models"


@dataclass(frozen=True)
class ModelCache:
    """Paths and housekeeping of one cache root."""

    root: Path

    @classmethod
    def at(cls, cache_dir: str | os.PathLike | None = None) -> "ModelCache":
        """The cache at `cache_dir`, or at `default_cache_dir()` when None."""
        return cls(Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir())

    def package_dir(self, model_id: str, version: str) -> Path:
        return self.root / "packages" / model_id / version

    def archive_path(self, model_id: str, version: str) -> Path:
        return self.root / "archives" / f"{model_id}@{version}.zip"

    def partial_path(self, model_id: str, version: str) -> Path:
        return self.root / "partial" / f"{model_id}@{version}.zip.part"

    def lock(self, model_id: str, version: str) -> FileLock:
        """A cross-process lock on one model's files in this cache (use it as a context manager;
        it waits for another process holding it)."""
        path = self.root / "locks" / f"{model_id}@{version}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(path)

    def has_package(self, model_id: str, version: str) -> bool:
        """True when the extracted package is in place (it only appears there once verified)."""
        return self.package_dir(model_id, version).is_dir()

    def remove(self, model_id: str, version: str) -> bool:
        """Delete the package, its archive and any partial download; True if anything was there."""
        removed = False
        with self.lock(model_id, version):
            directory = self.package_dir(model_id, version)
            if directory.exists():
                remove_directory(directory)
                removed = True
            for path in (self.archive_path(model_id, version), self.partial_path(model_id, version)):
                if path.exists():
                    path.unlink()
                    removed = True
        return removed
