"""H3DE Landmarks: detect anatomical landmarks in CT volumes, review them by confidence, correct, export.

This file is the module descriptor and a thin shim (SlicerNNUnet's shape): the panel lives in
H3DELandmarksGUI/ and every decision in H3DELandmarksLib, imported lazily so that Slicer starts
fast and the module loads before PyTorch and the other Python packages are installed. Detection
and training run as background processes, so the application never freezes. It needs Slicer 5.10
or later (Python 3.10).

Self-test with a Slicer binary, from the repository root (also: Developer mode, "Reload and Test"):

    /path/to/Slicer --no-splash --testing --additional-module-paths "$PWD/H3DELandmarks" \
        --python-code "import slicer.testing; slicer.testing.runUnitTest(['$PWD/H3DELandmarks'], 'H3DELandmarks')"
"""

import logging
import os
import sys
import unittest

import qt

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

from H3DELandmarksGUI.resources import MODULE_DIR, makeLibraryImportable, resourcePath

makeLibraryImportable()

from H3DELandmarksGUI.parameters import H3DELandmarksParameterNode  # noqa: E402 - needs the library path

TESTING_DIR = os.path.join(MODULE_DIR, "Testing")
SELF_TEST_PATTERN = "*TestCase.py"
GUI_MODULES = ("resources", "parameters", "installer", "widget")


class H3DELandmarks(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("H3DE Landmarks")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = ["Markups"]
        self.parent.contributors = ["H3DE Landmarks contributors"]
        self.parent.helpText = _(
            "Detects anatomical landmarks in CT, CBCT and micro-CT volumes with H3DE-Net, flags the points "
            "whose expected error is high, shows them as points you correct by dragging, tracks how far you "
            "moved each one, exports them to markups JSON, CSV or a training dataset, and trains the model "
            "further on your corrected cases. Needs 3D Slicer 5.10 or later. "
            '<a href="https://github.com/h3de-landmarks/SlicerH3DELandmarks">Documentation</a>.'
        )
        self.parent.acknowledgementText = _(
            "H3DE-Net (hybrid 3D CNN and volumetric bi-level routing attention) is the work of its "
            "published authors; this extension re-implements it for 3D Slicer."
        )
        try:
            self.parent.icon = qt.QIcon(resourcePath("Icons/H3DELandmarks.png"))
        except FileNotFoundError:
            logging.warning("H3DE Landmarks: the module icon is missing.")


class H3DELandmarksWidget(ScriptedLoadableModuleWidget):
    """The module panel's shim: builds `H3DELandmarksPanel` with the real logic, installer and jobs."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self.panel = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = H3DELandmarksLogic()
        tooOld = pythonTooOld()
        if tooOld:
            self.layout.addWidget(qt.QLabel(tooOld))
            return
        from H3DELandmarksGUI.installer import PackageInstaller
        from H3DELandmarksGUI.widget import H3DELandmarksPanel

        self.panel = H3DELandmarksPanel(self.logic, PackageInstaller())
        self.layout.addWidget(self.panel)
        self.layout.addStretch(1)

    def cleanup(self) -> None:
        if self.panel is not None:
            self.panel.cleanup()

    def enter(self) -> None:
        if self.panel is not None:
            self.panel.enter()

    def exit(self) -> None:
        if self.panel is not None:
            self.panel.exit()

    def onReload(self) -> None:
        """Reload the panel's files too (they are not modules of their own)."""
        for name in GUI_MODULES:
            sys.modules.pop(f"H3DELandmarksGUI.{name}", None)
        ScriptedLoadableModuleWidget.onReload(self)


class H3DELandmarksLogic(ScriptedLoadableModuleLogic):
    """Adapter from the module to H3DELandmarksLib; the library holds the decisions."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        makeLibraryImportable()

    def getParameterNode(self):
        return H3DELandmarksParameterNode(super().getParameterNode())

    def applyDetection(self, parameterNode, result, volume):
        """Put a detection of `volume` into the scene without losing corrections; returns (node, created)."""
        from H3DELandmarksLib.mrml.corrections import apply_detection

        return apply_detection(
            slicer.mrmlScene, result.landmarks, result.model_id, result.model_version,
            existing=parameterNode.landmarks, update_untouched_only=parameterNode.updateUntouchedOnly,
            confidence_threshold=parameterNode.confidenceThreshold, volume_node=volume,
            name=_("{volume} landmarks").format(volume=volume.GetName()),
        )


def pythonTooOld():
    """One sentence when this Slicer's Python is too old for H3DELandmarksLib, else None."""
    from H3DELandmarksLib.requirements import python_too_old

    return python_too_old(sys.version_info)


def selfTestSkipReason():
    """Why the self-test cannot run here (old Python, packages missing), or None."""
    tooOld = pythonTooOld()
    if tooOld:
        return tooOld
    from H3DELandmarksLib.requirements import unmet_requirements

    unmet = unmet_requirements()
    if unmet:
        return _("H3DE Landmarks self-test skipped: these Python packages are missing or too old: {packages} "
                 "(install them from the module panel).").format(packages=", ".join(item.text for item in unmet))
    return None


class H3DELandmarksTest(ScriptedLoadableModuleTest):
    """Runs the test cases of Testing/ (the whole workflow through the panel, on a phantom);
    skips with a message where the packages are missing, as on the Extensions Index build machines."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        reason = selfTestSkipReason()
        if reason:
            logging.warning(reason)
            self.delayDisplay(reason)
            return
        self.runSelfTests()

    def test_H3DELandmarks(self):
        reason = selfTestSkipReason()
        if reason:
            self.skipTest(reason)
        self.runSelfTests()

    def runSelfTests(self):
        self.setUp()
        suite = unittest.defaultTestLoader.discover(TESTING_DIR, pattern=SELF_TEST_PATTERN, top_level_dir=TESTING_DIR)
        result = unittest.TextTestRunner(verbosity=2).run(suite)
        self.assertTrue(result.wasSuccessful(), f"{len(result.failures)} failures, {len(result.errors)} errors")
        self.delayDisplay(_("H3DE Landmarks self-test passed ({count} tests).").format(count=result.testsRun))
