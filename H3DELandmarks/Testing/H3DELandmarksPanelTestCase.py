"""The H3DE Landmarks panel driven inside Slicer: real logic, real scene, real `h3de detect`.

The panel gets the module's logic, a stand-in installer (nothing to install, or an install that
fails) and a job starter whose Python is a launcher that, like PythonSlicer, runs the real Python
as its own child. A small random-weight model is detected on a phantom; the tests check the
results, corrections, review flags, exports, cancel (the launcher's child ends too), the volume
being removed mid-run, and the inputs being locked while a job runs.
"""

import os
import shutil
import sys
import tempfile
import unittest

import qt

import slicer

from H3DELandmarks import H3DELandmarksLogic
from H3DELandmarksGUI.widget import H3DELandmarksPanel

JOB_TIMEOUT_MS = 180000
CHILD_PID_VARIABLE = "H3DE_TEST_CHILD_PID"


class StandInInstaller:
    """An installer with nothing to install, or whose install fails with `failure`."""

    def __init__(self, failure=None, unmet=()):
        self.failure = failure
        self._unmet = list(unmet)
        self.installs = 0

    def unmet(self):
        return self._unmet

    def install(self):
        self.installs += 1
        if self.failure is not None:
            raise self.failure
        return True


def writeLauncher(folder):
    """A stand-in for PythonSlicer: runs the real Python as its child and writes the child's pid."""
    launcher = os.path.join(folder, "PythonSlicer")
    with open(launcher, "w", encoding="utf-8") as stream:
        stream.write(f"#!{sys.executable}\n"
                     "import os, subprocess, sys\n"
                     f"child = subprocess.Popen([{sys.executable!r}, *sys.argv[1:]])\n"
                     f"open(os.environ[{CHILD_PID_VARIABLE!r}], 'w').write(str(child.pid))\n"
                     "sys.exit(child.wait())\n")
    os.chmod(launcher, 0o755)
    return launcher


def writeRandomModel(folder, names):
    """A small H3DE-Net package with random weights (the workflow, not accuracy, is tested)."""
    import torch

    from H3DELandmarksLib.model.config import default_config
    from H3DELandmarksLib.model.network import H3DENet
    from H3DELandmarksLib.registry import Manifest, write_package

    config = default_config(len(names), embed_dims=(8, 16, 32, 64), qk_dims=(8, 16, 32, 64),
                            depths=(1, 1, 1, 1), decoder_dims=(32, 16, 16, 8), skip_dims=(8,))
    torch.manual_seed(0)
    manifest = Manifest(
        id="phantom-random",
        version="0.0.1",
        title="Random weights (self-test)",
        description="Untrained network for testing the workflow only.",
        modality="synthetic CT",
        config=config,
        landmark_names=names,
        intensity={"clip_min": -1000, "clip_max": 2000, "scale_min": -1000, "scale_max": 2000},
        stages=[{"name": "coarse", "spacing_mm": [4.0, 4.0, 4.0], "patch_size": [64, 64, 64]}],
        confidence_threshold=0.0,
        command="none",
        license="CC0-1.0",
        created="2025-01-01T00:00:00Z",
    )
    write_package(folder, manifest.to_dict(), H3DENet(config).state_dict())
    return folder


def processEnded(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return False


class H3DELandmarksPanelTestCase(unittest.TestCase):
    def setUp(self):
        from H3DELandmarksLib.data.phantom import make_phantom
        from H3DELandmarksLib.mrml.jobs import JobStarter
        from H3DELandmarksLib.mrml.volume_node import volume_to_node

        slicer.mrmlScene.Clear()
        self.work = tempfile.mkdtemp(prefix="H3DELandmarksTest-")
        self.pidFile = os.path.join(self.work, "child.pid")
        os.environ[CHILD_PID_VARIABLE] = self.pidFile
        volume, self.truth = make_phantom(7, size=(48, 44, 40), spacing=(2.0, 2.2, 2.5), direction="random")
        self.volumeNode = volume_to_node(volume, slicer.mrmlScene, "phantom")
        self.volumeNode.CreateDefaultDisplayNodes()
        python = writeLauncher(self.work) if os.name == "posix" else None
        self.installer = StandInInstaller()
        self.panel = H3DELandmarksPanel(H3DELandmarksLogic(), self.installer, JobStarter(python=python))
        self.panel.addModelFolder(writeRandomModel(os.path.join(self.work, "model"), self.truth.names))
        self.parameters = self.panel._parameterNode
        self.parameters.inputVolume = self.volumeNode
        self.parameters.device = "cpu"

    def tearDown(self):
        self.panel.cleanup()
        os.environ.pop(CHILD_PID_VARIABLE, None)
        shutil.rmtree(self.work, ignore_errors=True)

    def waitForJob(self):
        timer = qt.QElapsedTimer()
        timer.start()
        while self.panel.job is not None:
            self.assertLess(timer.elapsed(), JOB_TIMEOUT_MS, "the background job did not finish")
            slicer.app.processEvents()
            qt.QThread.msleep(20)
        slicer.app.processEvents()
        self.panel.refreshTable()

    def waitForChild(self):
        timer = qt.QElapsedTimer()
        timer.start()
        while not (os.path.exists(self.pidFile) and open(self.pidFile).read()):
            self.assertLess(timer.elapsed(), 20000, "the launcher did not start its child")
            qt.QThread.msleep(20)
        return int(open(self.pidFile).read())

    def test_detection_review_corrections_and_exports(self):
        import numpy as np

        from H3DELandmarksLib.data.landmark_files import read_landmarks
        from H3DELandmarksLib.mrml.corrections import MOVED, review_points
        from H3DELandmarksLib.mrml.export import export_csv, export_mrk_json
        from H3DELandmarksLib.mrml.markups_node import MODEL_ID_ATTRIBUTE, landmarks_from_node
        from H3DELandmarksLib.mrml.volume_node import lps_to_ras

        self.panel.ui.detectButton.click()
        self.assertEqual(self.panel.ui.detectButton.text, "Cancel")
        self.assertFalse(self.panel.ui.inputVolumeSelector.enabled)
        self.assertFalse(self.panel.ui.trainButton.enabled)
        self.waitForJob()
        self.assertTrue(self.panel.ui.inputVolumeSelector.enabled)
        landmarks = self.parameters.landmarks
        self.assertIsNotNone(landmarks, self.panel.ui.statusLabel.text)
        self.assertEqual(landmarks.GetNumberOfControlPoints(), len(self.truth))
        self.assertEqual(landmarks.GetAttribute(MODEL_ID_ATTRIBUTE), "phantom-random")
        self.assertEqual(self.panel.ui.landmarksTable.rowCount, len(self.truth))
        self.assertIn("placed", self.panel.ui.reviewCountsLabel.text)

        self.parameters.errorThreshold = 0.0
        self.panel.refreshTable()
        flagged = [row.index for row in self.panel.rows if row.flagged]
        if flagged:
            self.panel.ui.nextFlaggedButton.click()
            self.assertEqual(self.panel.currentPoint, flagged[0])

        first = next(review for review in review_points(landmarks, 0.5) if review.position is not None)
        landmarks.SetNthControlPointPositionWorld(first.index, *lps_to_ras(first.position + [3.0, 4.0, 0.0]))
        self.assertEqual(review_points(landmarks, 0.5)[first.index].status, MOVED)

        self.panel.ui.detectButton.click()
        self.waitForJob()
        self.assertIsNot(self.parameters.landmarks, landmarks, "a corrected node must never be overwritten")
        self.assertEqual(review_points(landmarks, 0.5)[first.index].status, MOVED)

        expected = landmarks_from_node(landmarks)
        for path in (export_mrk_json(landmarks, os.path.join(self.work, "l.mrk.json")),
                     export_csv(landmarks, os.path.join(self.work, "l.csv"))):
            reloaded = read_landmarks(path)
            self.assertEqual(reloaded.names, expected.names)
            np.testing.assert_allclose(reloaded.positions, expected.positions, atol=1e-6)

    @unittest.skipUnless(os.name == "posix", "the launcher stand-in is a POSIX script")
    def test_cancel_ends_the_python_behind_the_launcher(self):
        self.panel.ui.detectButton.click()
        child = self.waitForChild()
        self.panel.ui.detectButton.click()
        self.assertIsNone(self.panel.job)
        timer = qt.QElapsedTimer()
        timer.start()
        while not processEnded(child):
            self.assertLess(timer.elapsed(), 5000, "the detection went on after cancel")
            qt.QThread.msleep(20)
        self.assertEqual(self.panel.ui.detectButton.text, "Detect landmarks")
        self.assertIsNone(self.parameters.landmarks)

    def test_removing_the_volume_mid_run_cancels_with_one_message(self):
        from H3DELandmarksLib.mrml.panel_state import VOLUME_REMOVED

        self.panel.ui.detectButton.click()
        self.assertIsNotNone(self.panel.job)
        slicer.mrmlScene.RemoveNode(self.volumeNode)
        self.waitForJob()
        self.assertEqual(self.panel.ui.statusLabel.text, VOLUME_REMOVED.format(volume="phantom"))
        self.assertIsNone(self.parameters.landmarks)

    def test_a_failed_install_is_shown_not_raised(self):
        from H3DELandmarksLib.requirements import unmet_requirements

        from packaging.requirements import Requirement

        unmet = unmet_requirements([Requirement("h3de-no-such-package>=1")])
        installer = StandInInstaller(failure=RuntimeError("pip exited with status 1"), unmet=unmet)
        panel = H3DELandmarksPanel(H3DELandmarksLogic(), installer)
        try:
            self.assertFalse(panel.ensureDependencies())
            self.assertEqual(installer.installs, 1)
            self.assertIn("pip exited with status 1", panel.ui.statusLabel.text)
            self.assertFalse(panel.ui.detectButton.enabled)
        finally:
            panel.cleanup()
