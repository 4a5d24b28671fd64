"""The models a GUI offers, and model downloads that run beside a GUI's event loop.

`registered_models` lists the registry's models with their status; `model_from_folder` checks a
package folder the user picked. `ModelDownload` runs `registry.download_model` in a background
thread: a GUI timer reads its `fraction` and `finished`, and `cancel()` stops it at the next chunk
(the partial file is kept, so the next download resumes).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import H3DEError
from ..registry import ModelCache, Registry, download_model, load_registry, model_status, read_package
from ..registry.resolve import NOT_DOWNLOADED

FROM_FOLDER = "from folder"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelChoice:
    """One model a user can pick.

    Attributes:
        label: text to show.
        spec: what `h3de detect --model` takes: ``"ID@VERSION"`` or a package folder.
        status: "bundled", "cached", "not downloaded" or "from folder".
    """

    label: str
    spec: str
    status: str

    @property
    def needs_download(self) -> bool:
        return self.status == NOT_DOWNLOADED


def registered_models(
    registry: Registry | None = None, cache_dir: str | os.PathLike | None = None
) -> list[ModelChoice]:
    """Every registered model version, in registry order, with its status."""
    registry = registry or load_registry()
    cache = ModelCache.at(cache_dir)
    return [
        ModelChoice(f"{entry.title} ({entry.spec})", entry.spec, model_status(entry, registry, cache))
        for entry in registry.entries
    ]


def model_from_folder(folder: str | os.PathLike) -> ModelChoice:
    """A model package folder as a choice; raises `ModelPackageError` when it is not a valid package."""
    package = read_package(Path(folder))
    title = package.manifest.get("title", package.id)
    return ModelChoice(f"{title} ({package.id}@{package.version}, {FROM_FOLDER})", str(package.path), FROM_FOLDER)


class _Cancelled(Exception):
    """Raised from the progress callback to stop a download."""


class ModelDownload:
    """Downloads a registered model in a background thread (see module notes)."""

    def __init__(self, spec: str, cache_dir: str | os.PathLike | None = None,
                 registry: Registry | None = None, **options) -> None:
        self.spec = spec
        self.fraction = 0.0
        self.path: Path | None = None
        self.error: str | None = None
        self.cancelled = False
        self._cancel = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(cache_dir, registry, options), name=f"download {spec}", daemon=True
        )
        self._thread.start()

    @property
    def finished(self) -> bool:
        return not self._thread.is_alive()

    def cancel(self) -> None:
        """Ask the download to stop; `finished` becomes true shortly after."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until finished (tests, scripts); True when it finished within `timeout`."""
        self._thread.join(timeout)
        return self.finished

    def _run(self, cache_dir, registry, options) -> None:
        try:
            self.path = download_model(self.spec, cache_dir=cache_dir, registry=registry,
                                       progress=self._progress, show_progress=False, **options)
            self.fraction = 1.0
        except _Cancelled:
            self.cancelled = True
        except H3DEError as error:
            self.error = str(error)
        except Exception as error:  # noqa: BLE001 - a background thread must report every failure
            logger.exception("Downloading %s failed", self.spec)
            self.error = f"Downloading {self.spec} failed unexpectedly ({type(error).__name__}: {error})."

    def _progress(self, done: int, total: int) -> None:
        if self._cancel.is_set():
            raise _Cancelled()
        self.fraction = done / total if total else 0.0
