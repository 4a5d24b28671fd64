"""The models a GUI offers, and model downloads that run beside a GUI's event loop.

`registered_models` lists the registry's models with their status; `model_from_folder` checks a
package folder the user picked (or a training run wrote); `merge_model_choices` makes the list a
GUI offers. `ModelDownload` runs `registry.download_model` in a background thread of this process
(no child process: there is no process tree to stop) behind the same job interface as the child
processes of `child_process`: a GUI timer reads `fraction` and `finished`, `cancel()` stops it at
the next chunk (the partial file is kept, so the next download resumes), `error()` and `result()`.
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


def merge_model_choices(registered: list[ModelChoice], folders: list[ModelChoice],
                        selected: str) -> tuple[list[ModelChoice], int]:
    """The registered models, then the folder models (the last one of each spec), and the index of
    `selected` among them: 0 when it is not there, -1 when there is nothing to offer."""
    by_spec = {choice.spec: choice for choice in folders}
    choices = [choice for choice in registered if choice.spec not in by_spec] + list(by_spec.values())
    specs = [choice.spec for choice in choices]
    if not choices:
        return choices, -1
    return choices, specs.index(selected) if selected in specs else 0


def add_folder_model(folders: list[ModelChoice], choice: ModelChoice) -> list[ModelChoice]:
    """`folders` with `choice` last, in place of an earlier choice of the same folder."""
    return [model for model in folders if model.spec != choice.spec] + [choice]


class _Cancelled(Exception):
    """Raised from the progress callback to stop a download."""


class ModelDownload:
    """Downloads a registered model in a background thread (see module notes)."""

    def __init__(self, spec: str, cache_dir: str | os.PathLike | None = None,
                 registry: Registry | None = None, **options) -> None:
        self.spec = spec
        self.description = f"Downloading {spec}"
        self.fraction = 0.0
        self.step = "download"
        self.path: Path | None = None
        self.cancelled = False
        self._error: str | None = None
        self._cancel = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(cache_dir, registry, options), name=f"download {spec}", daemon=True
        )
        self._thread.start()

    @property
    def finished(self) -> bool:
        return not self._thread.is_alive()

    def poll(self) -> list[dict]:
        """Nothing to collect: `fraction` is updated by the download thread itself."""
        return []

    def cancel(self) -> None:
        """Ask the download to stop; `finished` becomes true shortly after."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until finished (tests, scripts); True when it finished within `timeout`."""
        self._thread.join(timeout)
        return self.finished

    def error(self) -> str | None:
        """One sentence saying why the finished download failed or stopped; None when it succeeded."""
        if self.cancelled:
            return "The download was cancelled; the next download resumes where it stopped."
        return self._error

    def result(self) -> Path:
        """The verified model folder; raises `H3DEError` when the download failed."""
        message = self.error()
        if message is not None:
            raise H3DEError(message)
        return self.path

    def cleanup(self) -> None:
        """Stop the download if it still runs (the partial file stays for the next one)."""
        self.cancel()

    def _run(self, cache_dir, registry, options) -> None:
        try:
            self.path = download_model(self.spec, cache_dir=cache_dir, registry=registry,
                                       progress=self._progress, show_progress=False, **options)
            self.fraction = 1.0
        except _Cancelled:
            self.cancelled = True
        except H3DEError as error:
            self._error = str(error)
        except Exception as error:  # noqa: BLE001 - a background thread must report every failure
            logger.exception("Downloading %s failed", self.spec)
            self._error = f"Downloading {self.spec} failed unexpectedly ({type(error).__name__}: {error})."

    def _progress(self, done: int, total: int) -> None:
        if self._cancel.is_set():
            raise _Cancelled()
        self.fraction = done / total if total else 0.0
