"""Turn what a user typed (a package path, "ID" or "ID@VERSION") into a package directory, offline."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelPackageError
from .cache import ModelCache
from .catalog import Registry, RegistryEntry, load_registry, parse_model_spec
from .package import MANIFEST_FILE

BUNDLED = "bundled"
CACHED = "cached"
NOT_DOWNLOADED = "not downloaded"


def model_status(entry: RegistryEntry, registry: Registry, cache: ModelCache) -> str:
    """``"bundled"``, ``"cached"`` or ``"not downloaded"``."""
    bundled = registry.bundled_path(entry)
    if bundled is not None and (bundled / MANIFEST_FILE).is_file():
        return BUNDLED
    if cache.has_package(entry.id, entry.version):
        return CACHED
    return NOT_DOWNLOADED


def package_folder(id_or_path: str | os.PathLike) -> Path | None:
    """The absolute package directory `id_or_path` names, or None when it is a model id.

    A folder holding a manifest is a package; text that looks like a path (a separator, .zip)
    but is not a package folder is an error naming what is missing.
    """
    path = Path(id_or_path).expanduser()
    if (path / MANIFEST_FILE).is_file():
        return path.resolve()
    text = str(id_or_path)
    if os.sep in text or "/" in text or path.suffix == ".zip":
        reason = f"{MANIFEST_FILE} is missing" if path.is_dir() else "it does not exist"
        raise ModelPackageError(f"{path} is not a model package directory: {reason}.")
    return None


def resolve_model(id_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                  registry: Registry | None = None) -> Path:
    """The package directory for a path, ``"ID"`` (newest version) or ``"ID@VERSION"``.

    A path to a package directory is returned made absolute. A registered model resolves to its bundled
    package, else to its verified package in the cache; nothing is downloaded (see
    `download_model`), so this works offline.
    """
    folder = package_folder(id_or_path)
    if folder is not None:
        return folder
    text = str(id_or_path)
    cache = ModelCache.at(cache_dir)
    model_id, version = parse_model_spec(text)
    if version is not None and cache.has_package(model_id, version):
        return cache.package_dir(model_id, version)
    registry = registry or load_registry()
    entry = registry.find(text)
    status = model_status(entry, registry, cache)
    if status == BUNDLED:
        return registry.bundled_path(entry)
    if status == CACHED:
        return cache.package_dir(entry.id, entry.version)
    if entry.url is None:
        raise ModelPackageError(f"The bundled model {entry.spec} is missing from {registry.bundled_path(entry)}.")
    raise ModelPackageError(f"Model {entry.spec} is not downloaded; run `h3de models download {entry.spec}`.")
