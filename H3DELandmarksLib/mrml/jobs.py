"""The Slicer module's background jobs: one starter, one way of following them.

`JobStarter` starts detection (`detect_process`), training (`training_process`) and model
downloads (`models`); all three have the same interface (``fraction``, ``step``, ``finished``,
``poll()``, ``cancel()``, ``error()``, ``result()``, ``cleanup()``), so the module follows any of
them with `job_update` on a timer. The self-test gives the widget a starter whose Python is a
launcher, as PythonSlicer is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import slicer

from .detect_process import DetectionRun, start_detection
from .models import ModelDownload
from .training_process import TrainingRun, start_training

DETECTION = "detection"
DOWNLOAD = "download"
TRAINING = "training"
RUNNING_TEXTS = {
    DETECTION: "Detecting landmarks in {subject}… {step}",
    DOWNLOAD: "Downloading {subject}…",
    TRAINING: "Training on the cases in {subject}… {step}",
}


class JobStarter:
    """Starts the module's background jobs; `python` runs the child processes (default: this Python)."""

    def __init__(self, python: str | None = None, **download_options) -> None:
        self.python = python
        self.download_options = download_options

    def detection(self, volume_node: slicer.vtkMRMLVolumeNode, model: str, device: str) -> DetectionRun:
        return start_detection(volume_node, model, device, python=self.python)

    def download(self, spec: str) -> ModelDownload:
        return ModelDownload(spec, **self.download_options)

    def training(self, dataset: str | Path, init_from: str, output_dir: str | Path, device: str) -> TrainingRun:
        return start_training(dataset, init_from, output_dir, device, python=self.python)


@dataclass(frozen=True)
class JobUpdate:
    """What a GUI shows about a job after one poll.

    Attributes:
        percent: progress in percent; None when the job reports none (an indeterminate bar).
        text: the status line while it runs.
        finished: the job ended; `error` is then None on success, else one sentence.
    """

    percent: int | None
    text: str
    finished: bool
    error: str | None


def job_update(job, kind: str, subject: str) -> JobUpdate:
    """Poll `job` (of `kind`, working on `subject`: a volume, model or folder name) and say what to show."""
    job.poll()
    finished = job.finished
    if finished:
        job.poll()
    percent = None if job.fraction is None else round(100 * job.fraction)
    text = RUNNING_TEXTS[kind].format(subject=subject, step=job.step).rstrip()
    return JobUpdate(percent, text, finished, job.error() if finished else None)
