"""Training a model on the user's cases in a child process (`h3de train --init-from`), followed by a GUI timer.

`start_training` starts ``h3de train --data DATASET --init-from MODEL --output OUT`` with this
Python (PythonSlicer inside Slicer): the model's weights are the starting point and the cases the
module saved for training (`training_export`) are the data. The command prints progress bars and
one line per epoch, not JSON, so `TrainingRun.fraction` stays None (the progress bar is
indeterminate) and `step` is the last line printed. `result()` is the new model package folder,
``OUT/package``, checked like any package a user loads.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from ..errors import H3DEError
from ..registry import read_package
from .child_process import STOP_WHEN_STDIN_CLOSES, ChildProcessJob, library_command

PACKAGE_DIR = "package"
STEP_TEXT_LENGTH = 90


def training_command(dataset: str | Path, init_from: str, output_dir: str | Path, device: str = "auto",
                     python: str | None = None) -> list[str]:
    """The command line training from `init_from` (``ID@VERSION`` or a package folder) on `dataset`."""
    return library_command("train", "--data", str(dataset), "--init-from", init_from, "--output", str(output_dir),
                           "--device", device, STOP_WHEN_STDIN_CLOSES, python=python)


def training_output_dir(dataset: str | Path, now: datetime | None = None) -> Path:
    """A new folder beside the dataset for one training run: ``DATASET-models/DATASET-YYYYmmdd-HHMMSS``
    (`h3de train` names the new model after it)."""
    dataset = Path(dataset)
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return dataset.parent / f"{dataset.name}-models" / f"{dataset.name}-{stamp}"


def start_training(dataset: str | Path, init_from: str, output_dir: str | Path, device: str = "auto",
                   python: str | None = None) -> "TrainingRun":
    """Start training in a child process; refuses a dataset folder that does not exist."""
    if not Path(dataset).is_dir():
        raise H3DEError(f"The training dataset folder {dataset} does not exist.")
    return TrainingRun(training_command(dataset, init_from, output_dir, device, python), Path(output_dir))


class TrainingRun(ChildProcessJob):
    """One running training (see module notes)."""

    description = "Training"

    def __init__(self, command: list[str], output_dir: Path) -> None:
        self.output_dir = Path(output_dir)
        super().__init__(command)

    def poll(self) -> list[dict]:
        events = super().poll()
        if self.last_line:
            self.step = self.last_line[:STEP_TEXT_LENGTH]
        return events

    def result(self) -> Path:
        """The new model package folder; raises `H3DEError` when training failed."""
        message = self.error()
        if message is not None:
            raise H3DEError(message)
        return read_package(self.output_dir / PACKAGE_DIR).path
