"""Landmark detection in a child process (`h3de detect --progress json`), followed by a GUI timer.

`start_detection` writes the volume node (world geometry, uncompressed NRRD) into a private work
folder and starts the command with this Python (PythonSlicer inside Slicer), which prints one JSON
object per line (`progress_events`). The returned `DetectionRun` is a `ChildProcessJob`: it never
blocks, `cancel()` ends the whole process tree, `error()` says in one sentence why it failed (the
command's own ``h3de: error: ...`` sentence), `result()` reads the landmarks the command wrote
and `cleanup()` also removes the work folder.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import slicer

from ..data.cases import safe_case_name
from ..data.landmark_files import read_json, read_json_metadata
from ..data.landmarks import Landmarks
from ..data.volume_io import write_volume
from ..errors import H3DEError
from ..progress_events import CASE_DONE
from .child_process import STOP_WHEN_STDIN_CLOSES, ChildProcessJob, library_command
from .volume_node import volume_from_node

OUTPUT_FORMATS = "json"


@dataclass(frozen=True)
class DetectionResult:
    """The landmarks found and the model that found them."""

    landmarks: Landmarks
    model_id: str
    model_version: str


def detection_command(input_path: str | Path, model: str, out_dir: str | Path,
                      device: str = "auto", python: str | None = None) -> list[str]:
    """The command line detecting `model`'s landmarks in one volume file."""
    return library_command(
        "detect", str(input_path), "--model", model, "--out", str(out_dir), "--format", OUTPUT_FORMATS,
        "--device", device, "--progress", "json", STOP_WHEN_STDIN_CLOSES, python=python,
    )


def start_detection(volume_node: slicer.vtkMRMLVolumeNode, model: str, device: str = "auto",
                    python: str | None = None) -> "DetectionRun":
    """Write the node's volume into a new work folder and start detecting in a child process."""
    volume = volume_from_node(volume_node)
    case = safe_case_name(volume_node.GetName())
    work_dir = Path(tempfile.mkdtemp(prefix="h3de-detect-"))
    try:
        input_path = write_volume(volume, work_dir / "input" / f"{case}.nrrd", compress=False)
        command = detection_command(input_path, model, work_dir / "output", device, python)
        return DetectionRun(command, work_dir, case)
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise


class DetectionRun(ChildProcessJob):
    """One running detection (see module notes); `fraction` starts at 0."""

    description = "Landmark detection"

    def __init__(self, command: list[str], work_dir: Path, case: str) -> None:
        self.work_dir = Path(work_dir)
        self.case = case
        self._case_error: str | None = None
        super().__init__(command)
        self.fraction = 0.0

    @property
    def output_dir(self) -> Path:
        return self.work_dir / "output"

    def on_event(self, event: dict) -> None:
        super().on_event(event)
        if event["event"] == CASE_DONE and event.get("error"):
            self._case_error = str(event["error"])

    def reported_error(self) -> str | None:
        if self._case_error:
            return self._case_error
        reported = super().reported_error()
        return reported.removeprefix(f"{self.case}: ") if reported else None

    def result(self) -> DetectionResult:
        """The landmarks the finished detection wrote; raises `H3DEError` when it failed."""
        message = self.error()
        if message is not None:
            raise H3DEError(message)
        path = self.output_dir / f"{self.case}.json"
        metadata = read_json_metadata(path)
        return DetectionResult(read_json(path), str(metadata["model_id"]), str(metadata["model_version"]))

    def cleanup(self) -> None:
        """Stop the process tree if needed and delete the work folder."""
        super().cleanup()
        shutil.rmtree(self.work_dir, ignore_errors=True)
