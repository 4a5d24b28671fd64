"""Check that an installed model is intact: archive checksum, extracted files, manifest, weights."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from ..checksums import sha256_of
from ..errors import ModelPackageError
from .cache import ModelCache
from .catalog import Registry, load_registry
from .package import PACKAGE_FILES, check_package
from .resolve import BUNDLED, NOT_DOWNLOADED, model_status


def verify_model(spec: str, cache_dir: str | os.PathLike | None = None,
                 registry: Registry | None = None) -> list[str]:
    """Problems of the bundled or cached model ``"ID"`` / ``"ID@VERSION"``; empty when it is intact.

    A cached model's archive is re-hashed against the registry and each extracted file compared
    with its archive member; every model's manifest and weights header are checked.
    """
    registry = registry or load_registry()
    entry = registry.find(spec)
    cache = ModelCache.at(cache_dir)
    status = model_status(entry, registry, cache)
    if status == NOT_DOWNLOADED:
        raise ModelPackageError(f"Model {entry.spec} is not downloaded; run `h3de models download {entry.spec}`.")
    if status == BUNDLED:
        directory = registry.bundled_path(entry)
        problems = []
    else:
        directory = cache.package_dir(entry.id, entry.version)
        problems = _archive_problems(cache, entry.id, entry.version, entry.sha256, directory)
    try:
        package = check_package(directory)
    except ModelPackageError as error:
        problems.append(str(error))
    else:
        found = f"{package.id}@{package.version}"
        if found != entry.spec:
            problems.append(f"{directory} holds the model {found}, not {entry.spec} as the registry says.")
    return problems


def _archive_problems(cache: ModelCache, model_id: str, version: str, sha256: str | None,
                      directory: Path) -> list[str]:
    archive = cache.archive_path(model_id, version)
    if not archive.is_file():
        return [f"{archive} is missing, so the package files cannot be compared with the download."]
    actual = sha256_of(archive)
    if sha256 is not None and actual != sha256:
        return [f"{archive} has sha256 {actual[:12]}…, the registry expects {sha256[:12]}…."]
    problems = []
    with zipfile.ZipFile(archive) as opened:
        for name in PACKAGE_FILES:
            path = directory / name
            if not path.is_file():
                problems.append(f"{path} is missing.")
            elif sha256_of(path) != _member_sha256(opened, name):
                problems.append(f"{path} differs from the downloaded archive.")
    return problems


def _member_sha256(archive: zipfile.ZipFile, name: str) -> str:
    with archive.open(name) as member:
        return sha256_of(member)
