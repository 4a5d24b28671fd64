"""The Python packages H3DELandmarksLib needs, checked by installed version without importing them.

`requirements.txt` beside this file is the one list: pyproject.toml reads it as the package's
dependencies and the Slicer module checks and installs from it. Only the standard library and
`packaging` (shipped with pip, and with Slicer) are used, so this module imports before any of the
requirements is installed, in every Python the module can meet (3.9 included, to say why not).
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

REQUIREMENTS_FILE = Path(__file__).with_name("requirements.txt")
TORCH = "torch"
MINIMUM_PYTHON = (3, 10)
MINIMUM_SLICER = "5.10"


@dataclass(frozen=True)
class UnmetRequirement:
    """A requirement and the version installed (None when the package is not installed)."""

    requirement: Requirement
    installed: str | None

    @property
    def text(self) -> str:
        found = "not installed" if self.installed is None else f"{self.installed} installed"
        return f"{self.requirement} ({found})"


def requirements(path: str | Path = REQUIREMENTS_FILE) -> list[Requirement]:
    """The requirements listed in `path` (comments and blank lines skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [Requirement(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def unmet_requirements(wanted: list[Requirement] | None = None) -> list[UnmetRequirement]:
    """The requirements whose package is missing or of a version outside the specifier."""
    unmet = []
    for requirement in requirements() if wanted is None else wanted:
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            unmet.append(UnmetRequirement(requirement, None))
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            unmet.append(UnmetRequirement(requirement, installed))
    return unmet


def python_too_old(version_info: tuple[int, ...]) -> str | None:
    """One sentence when the library cannot run on this Python (Slicer before 5.10), else None."""
    if tuple(version_info[:2]) >= MINIMUM_PYTHON:
        return None
    wanted = ".".join(map(str, MINIMUM_PYTHON))
    found = ".".join(map(str, version_info[:3]))
    return (f"H3DE Landmarks needs Python {wanted} or later (3D Slicer {MINIMUM_SLICER} or later); "
            f"this one has Python {found}.")
