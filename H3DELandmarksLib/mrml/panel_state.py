"""What the Slicer module's panel enables and says, decided without Qt.

`button_states` turns the panel's situation (packages ready, a volume and a model chosen, which job
runs, landmarks present) into every button's text and enabled state; the messages shown after a
job and when its volume or scene goes away are here too. `bound_volume` finds the volume a
detection was started on, by the node ID taken at start, however the selector changed since.
"""

from __future__ import annotations

from dataclasses import dataclass

import slicer

from ..errors import H3DEError
from .jobs import DETECTION, DOWNLOAD, TRAINING
from .models import ModelChoice

VOLUME_REMOVED = "The volume {volume} was removed while its landmarks were being detected; the result was discarded."
SCENE_CLOSED = "The scene was closed, so the running {kind} was cancelled."
DETECTED = "Found {present} of {total} landmarks."
UPDATED = "Updated the landmarks you had not corrected; found {present} of {total}."
DOWNLOADED = "Model {model} is ready."
TRAINED = "Training finished; the new model {model} is selected for the next detection."
NO_MODEL = "No model is registered; load a model package folder."
NOTHING_FLAGGED = "No point is flagged: every point is within the error threshold or already corrected."


@dataclass(frozen=True)
class PanelSituation:
    """What the buttons depend on."""

    library_ready: bool
    has_volume: bool
    model: ModelChoice | None
    running: str | None
    has_landmarks: bool
    has_flagged: bool = False


@dataclass(frozen=True)
class ButtonStates:
    """Text and enabled state of the panel's controls."""

    detect_text: str
    detect_enabled: bool
    download_text: str
    download_enabled: bool
    train_text: str
    train_enabled: bool
    load_model_enabled: bool
    inputs_enabled: bool
    results_enabled: bool
    save_for_training_enabled: bool
    next_flagged_enabled: bool


def button_states(situation: PanelSituation) -> ButtonStates:
    """One job at a time: its own button cancels it, the others and the inputs wait for it."""
    running = situation.running
    idle = running is None
    model = situation.model
    usable_model = situation.library_ready and model is not None and not model.needs_download
    results = situation.library_ready and situation.has_landmarks
    return ButtonStates(
        detect_text="Cancel" if running == DETECTION else "Detect landmarks",
        detect_enabled=running == DETECTION or (idle and usable_model and situation.has_volume),
        download_text="Cancel download" if running == DOWNLOAD else "Download",
        download_enabled=running == DOWNLOAD or (idle and situation.library_ready and model is not None
                                                 and model.needs_download),
        train_text="Cancel training" if running == TRAINING else "Train on my cases…",
        train_enabled=running == TRAINING or (idle and usable_model),
        load_model_enabled=idle,
        inputs_enabled=idle,
        results_enabled=results,
        save_for_training_enabled=results and situation.has_volume and running != TRAINING,
        next_flagged_enabled=results and situation.has_flagged,
    )


def bound_volume(scene: slicer.vtkMRMLScene, node_id: str, name: str) -> slicer.vtkMRMLVolumeNode:
    """The volume node `node_id` of `scene`; raises `H3DEError` (`VOLUME_REMOVED`) when it is gone."""
    node = scene.GetNodeByID(node_id) if node_id else None
    if node is None or not node.IsA("vtkMRMLVolumeNode"):
        raise H3DEError(VOLUME_REMOVED.format(volume=name))
    return node


def detection_message(present: int, total: int, created: bool) -> str:
    """The status after a detection entered the scene (in a new node, or updating the untouched points)."""
    return (DETECTED if created else UPDATED).format(present=present, total=total)
