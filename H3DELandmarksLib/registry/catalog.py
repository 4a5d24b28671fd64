"""The model registry (Resources/Models/models.json): which models exist and how to get them.

``{"models": [{id, version, title, url, sha256, size, bundled}]}``; ``bundled`` is a package
directory relative to the registry file's folder (inside it: no absolute path, no ``..``), or null
when the model is only downloadable.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..errors import ModelPackageError
from ..json_document import read_json_document
from .schema import first_problem

REGISTRY_ENV = "H3DE_REGISTRY"
REGISTRY_SCHEMA = "registry.schema.json"
MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")


def default_registry_path() -> Path:
    """$H3DE_REGISTRY, else Resources/Models/models.json beside the H3DELandmarksLib folder."""
    override = os.environ.get(REGISTRY_ENV)
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parents[2] / "Resources" / "Models" / "models.json"


def version_key(version: str) -> tuple:
    """Sort key of a semantic version: 1.10.0 > 1.9.0 and 1.0.0 > 1.0.0-rc.1."""
    major, minor, patch, prerelease = SEMVER.match(version).groups()
    identifiers = tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                        for part in (prerelease or "").split(".") if part)
    return int(major), int(minor), int(patch), prerelease is None, identifiers


def is_prerelease(version: str) -> bool:
    """True for versions such as 1.0.0-rc.1."""
    return SEMVER.match(version).group(4) is not None


def parse_model_spec(spec: str) -> tuple[str, str | None]:
    """``"ID@VERSION"`` → ``(ID, VERSION)``; ``"ID"`` → ``(ID, None)``; anything else is an error."""
    model_id, at, version = spec.partition("@")
    if not MODEL_ID.match(model_id) or (at and not SEMVER.match(version)):
        raise ModelPackageError(
            f"{spec!r} is neither a model package directory nor a model id (\"ID\" or \"ID@VERSION\")."
        )
    return model_id, version or None


@dataclass(frozen=True)
class RegistryEntry:
    """One downloadable and/or bundled model version."""

    id: str
    version: str
    title: str
    url: str | None
    sha256: str | None
    size: int | None
    bundled: str | None

    @property
    def spec(self) -> str:
        return f"{self.id}@{self.version}"


@dataclass(frozen=True)
class Registry:
    """The parsed registry file; entries keep the file's order."""

    path: Path
    entries: tuple[RegistryEntry, ...]

    def find(self, spec: str) -> RegistryEntry:
        """The entry for ``"ID@VERSION"``; for ``"ID"`` the newest release (pre-releases only if no release)."""
        model_id, version = parse_model_spec(spec)
        versions = [entry for entry in self.entries if entry.id == model_id]
        if not versions:
            raise ModelPackageError(f"Unknown model {model_id!r}; `h3de models list` shows the available models.")
        if version is None:
            return max(versions, key=lambda entry: (not is_prerelease(entry.version), version_key(entry.version)))
        for entry in versions:
            if entry.version == version:
                return entry
        available = ", ".join(entry.version for entry in versions)
        raise ModelPackageError(f"Model {model_id!r} has no version {version}; available: {available}.")

    def bundled_path(self, entry: RegistryEntry) -> Path | None:
        """The shipped package directory of `entry`, or None when it is not bundled."""
        return self.path.parent / entry.bundled if entry.bundled else None


def load_registry(path: str | os.PathLike | None = None) -> Registry:
    """Read and validate the registry file (default: `default_registry_path()`)."""
    path = Path(path) if path is not None else default_registry_path()
    data = read_json_document(path, ModelPackageError, "The model registry",
                              missing_hint=f"; set {REGISTRY_ENV} to a models.json")
    problem = first_problem(data, REGISTRY_SCHEMA, str(path))
    if problem:
        raise ModelPackageError(problem)
    entries = tuple(RegistryEntry(**item) for item in data["models"])
    _check_entries(entries, path)
    return Registry(path=path, entries=entries)


def _check_entries(entries: tuple[RegistryEntry, ...], path: Path) -> None:
    seen = set()
    for index, entry in enumerate(entries):
        where = f"{path}: models[{index}]"
        if entry.spec in seen:
            raise ModelPackageError(f"{where} repeats {entry.spec}.")
        seen.add(entry.spec)
        download_facts = (entry.url, entry.sha256, entry.size)
        if None in download_facts and any(fact is not None for fact in download_facts):
            raise ModelPackageError(f"{where} ({entry.spec}) needs url, sha256 and size together.")
        if entry.url is None and entry.bundled is None:
            raise ModelPackageError(f"{where} ({entry.spec}) needs url, sha256 and size, or a bundled package.")
        if entry.bundled is not None and _leaves_folder(entry.bundled):
            raise ModelPackageError(f"{where} ({entry.spec}) has the bundled path {entry.bundled!r}, which leaves "
                                    f"the registry folder {path.parent}.")


def _leaves_folder(relative: str) -> bool:
    """True for a path that is absolute or climbs with ``..`` (read as POSIX and as Windows path)."""
    return any(parsed.is_absolute() or parsed.drive or ".." in parsed.parts
               for parsed in (PurePosixPath(relative), PureWindowsPath(relative)))
