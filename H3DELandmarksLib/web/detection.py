"""Landmark detection beside the server's event loop: one worker thread, the model loaded once.

The predictor is made by `load(model)` at the first detection (reading a model takes seconds, and a
server that never detects never needs it) and reused for every case after that, until
`use_model` names another model. The event loop
awaits `detect` while the network runs in the worker thread; `progress(step, fraction)` is called
from that thread, and `cancel()` stops the detection at the predictor's next window or patch.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..data.volume import Volume
from ..inference import Predictor
from ..inference.predictor import Detection, ProgressCallback


class BackgroundDetector:
    """Runs one detection at a time in a worker thread (see module notes)."""

    def __init__(self, load: Callable[[str], Predictor], model: str) -> None:
        self._load = load
        self.model = model
        self._predictor: Predictor | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="h3de-detect")
        self._cancel = threading.Event()

    @property
    def predictor(self) -> Predictor | None:
        """The loaded predictor, None before the first detection."""
        return self._predictor

    async def detect(self, volume: Volume, progress: ProgressCallback | None = None) -> Detection:
        """Detect the model's landmarks in `volume` without blocking the event loop.

        Raises what the model loading or the predictor raises (`H3DEError` for a user's error,
        `DetectionCancelled` after `cancel()`).
        """
        self._cancel.clear()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, volume, progress)

    def use_model(self, model: str) -> None:
        """Detect with `model` (an id, ``ID@VERSION`` or a package folder) from the next detection on."""
        if model != self.model:
            self.model = model
            self._predictor = None

    def cancel(self) -> None:
        """Ask the running detection to stop."""
        self._cancel.set()

    def shutdown(self) -> None:
        """Cancel any detection and let the worker thread end."""
        self.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _run(self, volume: Volume, progress: ProgressCallback | None) -> Detection:
        if self._predictor is None:
            if progress is not None:
                progress("loading model", 0.0)
            self._predictor = self._load(self.model)
        return self._predictor.predict(volume, progress=progress, cancel=self._cancel)
