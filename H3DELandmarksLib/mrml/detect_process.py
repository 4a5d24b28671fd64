"""Landmark detection in a child process (`h3de detect --progress json`), followed by a GUI timer.

`start_detection` writes the volume node (world geometry, uncompressed NRRD) into a private work
folder and starts the command with PythonSlicer (or this Python), which prints one JSON object per
line. The returned `DetectionRun` never blocks: `poll()` takes the progress that arrived,
`cancel()` ends the process, `error()` says in one sentence why it failed (the command's own
``h3de: error: ...`` sentence), `result()` reads the landmarks the command wrote and `cleanup()`
removes the work folder.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import slicer

from ..data.landmark_files import read_json, read_json_metadata
from ..data.landmarks import Landmarks
from ..data.volume_io import write_volume
from ..errors import H3DEError
from .training_export import training_case_name
from .volume_node import volume_from_node

logger = logging.getLogger(__name__)

PYTHON_SLICER = "PythonSlicer"
ERROR_PREFIX = "h3de: error: "
OUTPUT_FORMATS = "json"
STDERR_LINES_KEPT = 40
TERMINATE_GRACE_S = 5.0


@dataclass(frozen=True)
class DetectionResult:
    """The landmarks found and the model that found them."""

    landmarks: Landmarks
    model_id: str
    model_version: str


def python_executable() -> str:
    """PythonSlicer when running inside Slicer (it has Slicer's environment), else this Python."""
    return shutil.which(PYTHON_SLICER) or sys.executable


def library_environment() -> dict[str, str]:
    """This process's environment with the folder holding H3DELandmarksLib first on PYTHONPATH."""
    environment = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    paths = [root, *filter(None, environment.get("PYTHONPATH", "").split(os.pathsep))]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


def detection_command(input_path: str | os.PathLike, model: str, out_dir: str | os.PathLike,
                      device: str = "auto", python: str | None = None) -> list[str]:
    """The command line detecting `model`'s landmarks in one volume file."""
    return [
        python or python_executable(), "-m", "H3DELandmarksLib.cli.main", "detect", str(input_path),
        "--model", model, "--out", str(out_dir), "--format", OUTPUT_FORMATS,
        "--device", device, "--progress", "json",
    ]


def start_detection(volume_node: slicer.vtkMRMLVolumeNode, model: str, device: str = "auto",
                    python: str | None = None) -> "DetectionRun":
    """Write the node's volume into a new work folder and start detecting in a child process."""
    volume = volume_from_node(volume_node)
    case = training_case_name(volume_node.GetName())
    work_dir = Path(tempfile.mkdtemp(prefix="h3de-detect-"))
    try:
        input_path = write_volume(volume, work_dir / "input" / f"{case}.nrrd", compress=False)
        command = detection_command(input_path, model, work_dir / "output", device, python)
        return DetectionRun(command, work_dir, case)
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise


class DetectionRun:
    """One running detection (see module notes).

    Attributes:
        fraction: overall progress in [0, 1] from the last progress line.
        step: name of the step that line reported.
        cancelled: `cancel()` was called.
    """

    def __init__(self, command: list[str], work_dir: Path, case: str) -> None:
        self.work_dir = Path(work_dir)
        self.case = case
        self.fraction = 0.0
        self.step = ""
        self.cancelled = False
        self._case_error: str | None = None
        self._events: queue.Queue[dict] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES_KEPT)
        logger.info("Running %s", subprocess.list2cmdline(command))
        self._process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, encoding="utf-8", errors="replace", env=library_environment(),
        )
        self._readers = [
            threading.Thread(target=self._read_events, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def output_dir(self) -> Path:
        return self.work_dir / "output"

    @property
    def finished(self) -> bool:
        """The process ended and all its output was read."""
        return self._process.poll() is not None and not any(reader.is_alive() for reader in self._readers)

    def poll(self) -> list[dict]:
        """The JSON events printed since the last call; updates `fraction` and `step`."""
        events = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return events
            if event.get("event") == "progress":
                self.fraction = max(self.fraction, float(event.get("fraction", self.fraction)))
                self.step = str(event.get("step", self.step))
            if event.get("event") == "case_done" and event.get("error"):
                self._case_error = str(event["error"])
            events.append(event)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until finished (tests, scripts); True when it finished within `timeout`."""
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        for reader in self._readers:
            reader.join(timeout)
        return self.finished

    def cancel(self) -> None:
        """Ask the detection to stop without waiting; `finished` becomes true shortly after."""
        self.cancelled = True
        if self._process.poll() is None:
            self._process.terminate()

    def error(self) -> str | None:
        """One sentence saying why the finished detection failed; None when it succeeded."""
        if self.cancelled:
            return "Landmark detection was cancelled."
        status = self._process.returncode
        if status == 0:
            return None
        self.poll()
        if self._case_error:
            return self._case_error
        for line in reversed(self._stderr):
            if line.startswith(ERROR_PREFIX):
                return line[len(ERROR_PREFIX):].removeprefix(f"{self.case}: ")
        logger.error("Landmark detection failed:\n%s", "\n".join(self._stderr))
        return f"Landmark detection stopped with exit status {status}; the log holds the details."

    def result(self) -> DetectionResult:
        """The landmarks the finished detection wrote; raises `H3DEError` when it failed."""
        message = self.error()
        if message is not None:
            raise H3DEError(message)
        path = self.output_dir / f"{self.case}.json"
        metadata = read_json_metadata(path)
        return DetectionResult(read_json(path), str(metadata["model_id"]), str(metadata["model_version"]))

    def cleanup(self) -> None:
        """Stop the process if needed (killed after a few seconds) and delete the work folder."""
        if self._process.poll() is None:
            self.cancel()
            try:
                self._process.wait(TERMINATE_GRACE_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def _read_events(self) -> None:
        for line in self._process.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                logger.info("h3de detect: %s", line.rstrip())
                continue
            if isinstance(event, dict):
                self._events.put(event)

    def _read_stderr(self) -> None:
        for line in self._process.stderr:
            self._stderr.append(line.rstrip("\n"))
