"""The Slicer panel's decisions, made in the library and checked with the real slicer-core scene.

Button states for every job and situation, the model list (registered, folder and trained models,
the selection kept), the volume a detection was bound to at start, the follow-up of any job
through one interface, the training command and its result, and the version check of the
packages the module installs.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from H3DELandmarksLib.errors import H3DEError
from H3DELandmarksLib.requirements import (
    python_too_old,
    requirements,
    unmet_requirements,
)

slicer = pytest.importorskip("slicer")

from H3DELandmarksLib.mrml.jobs import DETECTION, DOWNLOAD, TRAINING, job_update  # noqa: E402 - needs slicer
from H3DELandmarksLib.mrml.models import ModelChoice, add_folder_model, merge_model_choices  # noqa: E402
from H3DELandmarksLib.mrml.panel_state import (  # noqa: E402
    VOLUME_REMOVED,
    PanelSituation,
    bound_volume,
    button_states,
    detection_message,
)
from H3DELandmarksLib.mrml.training_process import (  # noqa: E402
    TrainingRun,
    start_training,
    training_command,
    training_output_dir,
)

READY = ModelChoice("Skull (skull@1.0.0)", "skull@1.0.0", "bundled")
REMOTE = ModelChoice("Spine (spine@2.0.0)", "spine@2.0.0", "not downloaded")


def situation(**changes) -> PanelSituation:
    values = dict(library_ready=True, has_volume=True, model=READY, running=None, has_landmarks=True,
                  has_flagged=True)
    values.update(changes)
    return PanelSituation(**values)


def test_idle_with_a_volume_and_a_usable_model_everything_is_enabled():
    states = button_states(situation())
    assert (states.detect_text, states.download_text, states.train_text) == (
        "Detect landmarks", "Download", "Train on my cases…")
    assert states.detect_enabled and states.train_enabled and not states.download_enabled
    assert states.inputs_enabled and states.load_model_enabled and states.results_enabled
    assert states.save_for_training_enabled and states.next_flagged_enabled


@pytest.mark.parametrize("kind, text_field, text", [
    (DETECTION, "detect_text", "Cancel"),
    (DOWNLOAD, "download_text", "Cancel download"),
    (TRAINING, "train_text", "Cancel training"),
])
def test_a_running_job_locks_the_inputs_and_only_its_own_button_cancels_it(kind, text_field, text):
    model = REMOTE if kind == DOWNLOAD else READY
    states = button_states(situation(running=kind, model=model))
    assert getattr(states, text_field) == text
    enabled = {"detection": states.detect_enabled, "download": states.download_enabled,
               "training": states.train_enabled}
    assert enabled == {name: name == kind for name in enabled}
    assert not states.inputs_enabled and not states.load_model_enabled


def test_a_model_to_download_offers_only_the_download():
    states = button_states(situation(model=REMOTE))
    assert states.download_enabled and not states.detect_enabled and not states.train_enabled


def test_nothing_runs_before_the_packages_are_installed_or_without_a_volume():
    missing = button_states(situation(library_ready=False))
    assert not (missing.detect_enabled or missing.download_enabled or missing.train_enabled or missing.results_enabled)
    no_volume = button_states(situation(has_volume=False))
    assert not no_volume.detect_enabled and not no_volume.save_for_training_enabled and no_volume.train_enabled
    nothing_flagged = button_states(situation(has_flagged=False))
    assert not nothing_flagged.next_flagged_enabled


def test_the_model_list_keeps_the_selection_and_puts_folder_models_after_registered_ones():
    folder = ModelChoice("Mine (mine@0.1.0, from folder)", "/models/mine", "from folder")
    trained = ModelChoice("Mine (mine@0.2.0, from folder)", "/runs/1/package", "from folder")
    folders = add_folder_model(add_folder_model([folder], trained), folder)
    assert [choice.spec for choice in folders] == ["/runs/1/package", "/models/mine"]
    choices, index = merge_model_choices([READY, REMOTE], folders, "/runs/1/package")
    assert [choice.spec for choice in choices] == ["skull@1.0.0", "spine@2.0.0", "/runs/1/package", "/models/mine"]
    assert index == 2
    assert merge_model_choices([READY], [], "gone@1.0.0") == ([READY], 0)
    assert merge_model_choices([], [], "") == ([], -1)


def test_the_detection_result_goes_to_the_volume_bound_at_start():
    scene = slicer.vtkMRMLScene()
    first = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "first")
    scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "second")
    assert bound_volume(scene, first.GetID(), "first") is first
    scene.RemoveNode(first)
    with pytest.raises(H3DEError) as removed:
        bound_volume(scene, first.GetID(), "first")
    assert str(removed.value) == VOLUME_REMOVED.format(volume="first")


def test_detection_messages():
    assert detection_message(17, 18, created=True) == "Found 17 of 18 landmarks."
    assert detection_message(17, 18, created=False) == \
        "Updated the landmarks you had not corrected; found 17 of 18."


def follow(job, kind: str, subject: str, seconds: float = 60.0):
    deadline = time.monotonic() + seconds
    while True:
        update = job_update(job, kind, subject)
        if update.finished:
            return update
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.05)


def test_training_runs_the_train_command_from_the_model_with_indeterminate_progress(tmp_path):
    dataset = tmp_path / "cases"
    dataset.mkdir()
    output = training_output_dir(dataset, datetime(2026, 1, 2, 3, 4, 5))
    assert output == tmp_path / "cases-models" / "cases-20260102-030405"
    command = training_command(dataset, "skull@1.0.0", output, "cpu")
    assert command[:3] == [sys.executable, "-m", "H3DELandmarksLib.cli.main"]
    assert command[3:] == ["train", "--data", str(dataset), "--init-from", "skull@1.0.0", "--output", str(output),
                           "--device", "cpu", "--stop-when-stdin-closes"]
    with pytest.raises(H3DEError, match="does not exist"):
        start_training(tmp_path / "missing", "skull@1.0.0", output)


def stand_in_training(output: Path, fails: bool = False) -> list[str]:
    """A command that prints epoch lines as `h3de train` does and writes a package (or fails)."""
    script = (
        "import sys\n"
        "print('coarse epoch 1/2: train loss 0.5', flush=True)\n"
        "print('coarse epoch 2/2: train loss 0.25', flush=True)\n"
        + ("print('h3de: error: The dataset holds no case.', file=sys.stderr); sys.exit(2)\n" if fails else
           f"from builders_models import tiny_package\ntiny_package({str(output / 'package')!r})\n")
    )
    return [sys.executable, "-c", script]


def test_a_training_job_is_followed_like_any_job_and_gives_the_new_package(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    run = TrainingRun(stand_in_training(tmp_path), tmp_path)
    update = follow(run, TRAINING, "cases")
    assert update.percent is None and update.error is None
    assert update.text == "Training on the cases in cases… coarse epoch 2/2: train loss 0.25"
    assert run.result() == tmp_path / "package"
    run.cleanup()
    failed = TrainingRun(stand_in_training(tmp_path / "failed", fails=True), tmp_path / "failed")
    assert follow(failed, TRAINING, "cases").error == "The dataset holds no case."
    with pytest.raises(H3DEError, match="holds no case"):
        failed.result()
    failed.cleanup()


def test_the_packages_are_checked_by_version():
    listed = {requirement.name for requirement in requirements()}
    assert {"torch", "numpy", "SimpleITK", "scipy"} <= listed
    assert unmet_requirements() == []
    unmet = unmet_requirements([Requirement("numpy>=999"), Requirement("h3de-no-such-package>=1"),
                                Requirement("pytest>=1")])
    assert [item.requirement.name for item in unmet] == ["numpy", "h3de-no-such-package"]
    assert unmet[0].text.startswith("numpy>=999 (") and unmet[0].text.endswith(" installed)")
    assert unmet[1].text == "h3de-no-such-package>=1 (not installed)"


def test_python_3_9_is_refused_in_one_sentence():
    assert python_too_old((3, 10, 0)) is None and python_too_old((3, 12, 4)) is None
    assert python_too_old((3, 9, 10)) == ("H3DE Landmarks needs Python 3.10 or later (3D Slicer 5.10 or later); "
                                          "this one has Python 3.9.10.")



def test_the_commands_the_module_starts_accept_the_stdin_guard(tmp_path):
    from H3DELandmarksLib.cli.main import build_parser
    from H3DELandmarksLib.mrml.detect_process import detection_command

    for command in (training_command(tmp_path, "skull@1.0.0", tmp_path / "out"),
                    detection_command(tmp_path / "in.nrrd", "skull@1.0.0", tmp_path / "out")):
        arguments = command[3:]
        assert build_parser(arguments[0]).parse_args(arguments).stop_when_stdin_closes


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")
def test_a_background_command_leads_its_own_process_group_and_writes_utf8(tmp_path):
    from H3DELandmarksLib.mrml.child_process import start_process

    process = start_process([sys.executable, "-c",
                             "import os, sys; print(os.getpgid(0), os.getpid(), sys.stdout.encoding, 'é')"])
    output, _ = process.communicate(timeout=30)
    group, pid, encoding, text = output.split()
    assert group == pid == str(process.pid) and encoding.lower() in ("utf-8", "utf8") and text == "é"
