"""H3DE Landmarks: detect anatomical landmarks in CT volumes, correct them by dragging, export them.

This module is Qt wiring only: every decision lives in H3DELandmarksLib (``H3DELandmarksLib.mrml``
bridges the scene), imported lazily inside methods so that Slicer starts fast and the module loads
before PyTorch and the other Python packages are installed; it offers to install them on first use.
Detection runs ``h3de detect`` in a background process, so the application never freezes.

Self-test with a Slicer binary, from the repository root (also: Developer mode, "Reload and Test"):

    /path/to/Slicer --no-splash --testing --additional-module-paths "$PWD/H3DELandmarks" \
        --python-code "import slicer.testing; slicer.testing.runUnitTest(['$PWD/H3DELandmarks'], 'H3DELandmarks')"
"""

import contextlib
import importlib.util
import logging
import math
import os
import sys
import tempfile
from typing import Annotated, Optional

import qt
import vtk

import slicer
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
# Installed, the library and Resources/ sit beside this file; in the source tree, one level up.
SEARCH_ROOTS = (MODULE_DIR, os.path.dirname(MODULE_DIR))
TORCH_REQUIREMENT = "torch>=2.1"
# (requirement, import name) of the other packages H3DELandmarksLib needs.
REQUIREMENTS = (
    ("numpy>=1.24", "numpy"),
    ("scipy>=1.9", "scipy"),
    ("SimpleITK>=2.3", "SimpleITK"),
    ("requests>=2.28", "requests"),
    ("safetensors>=0.4", "safetensors"),
    ("tqdm>=4.60", "tqdm"),
    ("jsonschema>=4.17", "jsonschema"),
)
DEVICES = ["auto", "cpu", "cuda"]
POLL_INTERVAL_MS = 100
TABLE_REFRESH_DELAY_MS = 150
LOW_CONFIDENCE_TEXT_COLOR = qt.QColor(230, 120, 0)
OBSERVED_POINT_EVENTS = (
    vtk.vtkCommand.ModifiedEvent,
    slicer.vtkMRMLMarkupsNode.PointModifiedEvent,
    slicer.vtkMRMLMarkupsNode.PointAddedEvent,
    slicer.vtkMRMLMarkupsNode.PointRemovedEvent,
    slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
    slicer.vtkMRMLMarkupsNode.PointPositionUndefinedEvent,
)


def resourcePath(relativePath):
    """Absolute path of a file under Resources/ (installed layout or source tree)."""
    for root in SEARCH_ROOTS:
        path = os.path.join(root, "Resources", relativePath)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"H3DE Landmarks resource {relativePath} is missing.")


def makeLibraryImportable():
    """Put the folder holding H3DELandmarksLib on sys.path (the source tree needs it)."""
    for root in SEARCH_ROOTS:
        if os.path.isdir(os.path.join(root, "H3DELandmarksLib")):
            if root not in sys.path:
                sys.path.insert(0, root)
            return


def missingPackages():
    """Requirements of H3DELandmarksLib whose package cannot be imported."""
    wanted = [(TORCH_REQUIREMENT, "torch"), *REQUIREMENTS]
    return [requirement for requirement, name in wanted if importlib.util.find_spec(name) is None]


def installPackages(requirements, requester):
    """Install `requirements` after the user agrees; False when the user declines."""
    try:
        from slicer.packaging import pip_ensure
    except ImportError:
        pip_ensure = None
    if pip_ensure is not None:
        try:
            pip_ensure(list(requirements), requester=requester)
        except RuntimeError:
            return False
        return True
    question = _("{requester} needs these Python packages: {packages}. Install them now? "
                 "This can take several minutes.").format(requester=requester, packages=", ".join(requirements))
    if not slicer.util.confirmOkCancelDisplay(question):
        return False
    slicer.util.pip_install(" ".join(requirements))
    return True


def installTorch():
    """Install PyTorch through the PyTorch extension when it is there, else with pip; False if declined."""
    try:
        import PyTorchUtils
    except ImportError:
        return installPackages([TORCH_REQUIREMENT], _("H3DE Landmarks"))
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True, torchVersionRequirement=">=2.1")
    return torch is not None


def installDependencies():
    """Install whatever H3DELandmarksLib is missing, asking first; True when all is available."""
    if importlib.util.find_spec("torch") is None and not installTorch():
        return False
    others = [requirement for requirement in missingPackages() if requirement != TORCH_REQUIREMENT]
    if others and not installPackages(others, _("H3DE Landmarks")):
        return False
    importlib.invalidate_caches()
    return not missingPackages()


#
# H3DELandmarks
#


class H3DELandmarks(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("H3DE Landmarks")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = ["Markups"]
        self.parent.contributors = ["H3DE Landmarks contributors"]
        self.parent.helpText = _(
            "Detects anatomical landmarks in CT, CBCT and micro-CT volumes with H3DE-Net, shows them as "
            "points you correct by dragging, tracks how far you moved each one, and exports them to "
            "markups JSON, CSV or a training dataset. "
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


#
# Parameter node
#


@parameterNodeWrapper
class H3DELandmarksParameterNode:
    """The module's settings, stored in the scene.

    inputVolume - volume to detect landmarks in.
    model - "ID@VERSION" of a registered model, or a model package folder.
    device - "auto", "cpu" or "cuda".
    confidenceThreshold - points below it are shown as low confidence.
    updateUntouchedOnly - re-detecting into corrected landmarks updates only untouched points.
    landmarks - the point list holding the detected landmarks.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    model: str = ""
    device: Annotated[str, Choice(DEVICES)] = "auto"
    confidenceThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    updateUntouchedOnly: bool = False
    landmarks: vtkMRMLMarkupsFiducialNode


#
# H3DELandmarksWidget
#


class H3DELandmarksWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._observedLandmarks = None
        self.detection = None
        self.download = None
        self.modelChoices = []
        self.folderModels = []
        self.reviews = []
        self._libraryReady = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(resourcePath("UI/H3DELandmarks.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = H3DELandmarksLogic()

        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(POLL_INTERVAL_MS)
        self.pollTimer.timeout.connect(self.onPollTimer)
        self.tableRefreshTimer = qt.QTimer()
        self.tableRefreshTimer.setSingleShot(True)
        self.tableRefreshTimer.setInterval(TABLE_REFRESH_DELAY_MS)
        self.tableRefreshTimer.timeout.connect(self.refreshTable)
        self.ui.landmarksTable.horizontalHeader().setSectionResizeMode(qt.QHeaderView.ResizeToContents)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.installDependenciesButton.clicked.connect(self.onInstallDependenciesButton)
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelSelected)
        self.ui.downloadModelButton.clicked.connect(self.onDownloadButton)
        self.ui.loadModelButton.clicked.connect(self.onLoadModelButton)
        self.ui.detectButton.clicked.connect(self.onDetectButton)
        self.ui.landmarksTable.cellClicked.connect(self.onLandmarkClicked)
        self.ui.lockAllButton.clicked.connect(lambda: self.setLandmarksLocked(True))
        self.ui.unlockAllButton.clicked.connect(lambda: self.setLandmarksLocked(False))
        self.ui.exportJsonButton.clicked.connect(self.onExportJsonButton)
        self.ui.exportCsvButton.clicked.connect(self.onExportCsvButton)
        self.ui.saveForTrainingButton.clicked.connect(self.onSaveForTrainingButton)

        self.initializeParameterNode()
        self.updateDependencyState()

    def cleanup(self) -> None:
        self.removeObservers()
        self.pollTimer.stop()
        self.tableRefreshTimer.stop()
        if self.detection is not None:
            self.detection.cleanup()
        if self.download is not None:
            self.download.cancel()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.refreshModels()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[H3DELandmarksParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        parameters = self._parameterNode
        landmarks = parameters.landmarks if parameters else None
        self.observeLandmarks(landmarks)
        if landmarks is not None and self.libraryReady():
            from H3DELandmarksLib.mrml.markups_node import update_confidence_threshold

            update_confidence_threshold(landmarks, parameters.confidenceThreshold)
        self.updateButtons()
        self.tableRefreshTimer.start()

    # Dependencies and models

    def libraryReady(self):
        """True once every package H3DELandmarksLib needs can be imported (remembered once true)."""
        self._libraryReady = self._libraryReady or not missingPackages()
        return self._libraryReady

    def updateDependencyState(self) -> None:
        missing = missingPackages()
        self.ui.installDependenciesButton.visible = bool(missing)
        if missing:
            self.showStatus(_("H3DE Landmarks needs these Python packages: {packages}. "
                              "Click the install button to add them.").format(packages=", ".join(missing)))
        else:
            self.refreshModels()
        self.updateButtons()

    def ensureDependencies(self):
        if self.libraryReady():
            return True
        with slicer.util.tryWithErrorDisplay(_("Installing the Python packages failed."), waitCursor=True):
            installDependencies()
        self.updateDependencyState()
        return self.libraryReady()

    def onInstallDependenciesButton(self) -> None:
        self.ensureDependencies()

    def refreshModels(self) -> None:
        if not self.libraryReady():
            return
        with self.userErrors():
            from H3DELandmarksLib.mrml.models import registered_models

            self.modelChoices = registered_models() + self.folderModels
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for choice in self.modelChoices:
            combo.addItem(choice.label, choice.spec)
        selected = combo.findData(self._parameterNode.model) if self._parameterNode else -1
        combo.currentIndex = selected if selected >= 0 else 0
        combo.blockSignals(wasBlocked)
        self.onModelSelected()

    def selectedModel(self):
        index = self.ui.modelComboBox.currentIndex
        return self.modelChoices[index] if 0 <= index < len(self.modelChoices) else None

    def onModelSelected(self, index=None) -> None:
        choice = self.selectedModel()
        if self._parameterNode and choice is not None and self._parameterNode.model != choice.spec:
            self._parameterNode.model = choice.spec
        if choice is None:
            self.ui.modelStatusLabel.text = _("No model is registered; load a model package folder.")
        else:
            self.ui.modelStatusLabel.text = _("Status: {status}").format(status=choice.status)
        self.updateButtons()

    def onLoadModelButton(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), _("Model package folder (holding manifest.json)"))
        if folder:
            self.addModelFolder(folder)

    def addModelFolder(self, folder) -> None:
        """Offer the model package in `folder` and select it."""
        if not self.ensureDependencies():
            return
        with self.userErrors():
            from H3DELandmarksLib.mrml.models import model_from_folder

            choice = model_from_folder(folder)
            self.folderModels = [model for model in self.folderModels if model.spec != choice.spec] + [choice]
            self._parameterNode.model = choice.spec
            self.refreshModels()

    def onDownloadButton(self) -> None:
        if self.download is not None:
            self.download.cancel()
            return
        choice = self.selectedModel()
        if choice is None or not self.ensureDependencies():
            return
        with self.userErrors():
            from H3DELandmarksLib.mrml.models import ModelDownload

            self.download = ModelDownload(choice.spec)
            self.ui.downloadModelButton.text = _("Cancel download")
            self.showStatus(_("Downloading {model}…").format(model=choice.spec))
            self.pollTimer.start()
        self.updateButtons()

    def followDownload(self) -> None:
        download = self.download
        self.ui.detectionProgressBar.value = int(100 * download.fraction)
        if not download.finished:
            return
        self.download = None
        self.ui.downloadModelButton.text = _("Download")
        if download.cancelled:
            self.showStatus(_("The download was cancelled; the next download resumes where it stopped."))
        elif download.error:
            self.showStatus(download.error, error=True)
        else:
            self.showStatus(_("Model {model} is ready.").format(model=download.spec))
        self.refreshModels()

    # Detection

    def onDetectButton(self) -> None:
        if self.detection is not None:
            self.detection.cancel()
            return
        if not self.ensureDependencies():
            return
        parameters = self._parameterNode
        with self.userErrors():
            from H3DELandmarksLib.mrml.detect_process import start_detection

            self.detection = start_detection(parameters.inputVolume, parameters.model, parameters.device)
            self.ui.detectionProgressBar.value = 0
            self.showStatus(_("Detecting landmarks in {volume}…").format(volume=parameters.inputVolume.GetName()))
            self.pollTimer.start()
        self.updateButtons()

    def onPollTimer(self) -> None:
        if self.download is not None:
            self.followDownload()
        if self.detection is not None:
            self.followDetection()
        if self.download is None and self.detection is None:
            self.pollTimer.stop()
        self.updateButtons()

    def followDetection(self) -> None:
        detection = self.detection
        detection.poll()
        self.ui.detectionProgressBar.value = int(100 * detection.fraction)
        if not detection.finished:
            return
        detection.poll()
        self.detection = None
        parameters = self.logic.getParameterNode()
        try:
            with self.userErrors():
                result = detection.result()
                node, created = self.logic.applyDetection(parameters, result)
                parameters.landmarks = node
                self.showLandmarks(node, parameters.inputVolume)
                message = _("Found {present} of {total} landmarks.") if created else _(
                    "Updated the landmarks you had not corrected; found {present} of {total}.")
                self.showStatus(message.format(present=int(result.landmarks.present.sum()),
                                               total=len(result.landmarks)))
        finally:
            detection.cleanup()

    def showLandmarks(self, node, volume) -> None:
        """Show the landmarks in the slice and 3D views, on top of their volume."""
        node.GetDisplayNode().SetVisibility(True)
        if volume is not None:
            slicer.util.setSliceViewerLayers(background=volume)

    # Results

    def observeLandmarks(self, node) -> None:
        if node is self._observedLandmarks:
            return
        if self._observedLandmarks is not None:
            for event in OBSERVED_POINT_EVENTS:
                self.removeObserver(self._observedLandmarks, event, self.onLandmarksModified)
        self._observedLandmarks = node
        if node is not None:
            for event in OBSERVED_POINT_EVENTS:
                self.addObserver(node, event, self.onLandmarksModified)

    def onLandmarksModified(self, caller=None, event=None) -> None:
        self.tableRefreshTimer.start()

    def refreshTable(self) -> None:
        table = self.ui.landmarksTable
        node = self._parameterNode.landmarks if self._parameterNode else None
        self.reviews = []
        if node is not None and self.libraryReady():
            from H3DELandmarksLib.mrml.corrections import review_points

            self.reviews = review_points(node, self._parameterNode.confidenceThreshold)
        table.setRowCount(len(self.reviews))
        for row, review in enumerate(self.reviews):
            confidence = "" if math.isnan(review.confidence) else f"{review.confidence:.2f}"
            moved = "" if math.isnan(review.displacement_mm) else f"{review.displacement_mm:.1f}"
            status = review.status + (_(" (low confidence)") if review.low_confidence else "")
            for column, text in enumerate((review.name, confidence, status, moved)):
                item = qt.QTableWidgetItem(text)
                if review.low_confidence:
                    item.setForeground(qt.QBrush(LOW_CONFIDENCE_TEXT_COLOR))
                table.setItem(row, column, item)

    def onLandmarkClicked(self, row, column) -> None:
        """Jump the slice views to a placed point; start placing an unplaced one (next click in a view)."""
        node = self._parameterNode.landmarks
        if node is None or row >= len(self.reviews):
            return
        index = self.reviews[row].index
        markupsLogic = slicer.modules.markups.logic()
        if self.reviews[row].position is not None:
            markupsLogic.JumpSlicesToNthPointInMarkup(node.GetID(), index, True)
            return
        node.UnsetNthControlPointPosition(index)
        node.SetControlPointPlacementStartIndex(index)
        markupsLogic.SetActiveList(node)
        markupsLogic.StartPlaceMode(False)
        self.showStatus(_("Click in a view to place {name}.").format(name=self.reviews[row].name))

    def setLandmarksLocked(self, locked) -> None:
        node = self._parameterNode.landmarks
        if node is not None:
            node.SetLocked(locked)

    def onExportJsonButton(self) -> None:
        node = self._parameterNode.landmarks
        path = self.askSavePath(_("Export landmarks"), node, ".mrk.json", _("Slicer markups (*.mrk.json)"))
        if path:
            with self.userErrors():
                from H3DELandmarksLib.mrml.export import export_mrk_json

                self.showStatus(_("Saved {path}.").format(path=export_mrk_json(node, path, overwrite=True)))

    def onExportCsvButton(self) -> None:
        node = self._parameterNode.landmarks
        path = self.askSavePath(_("Export landmark table"), node, ".csv", _("CSV table (*.csv)"))
        if path:
            with self.userErrors():
                from H3DELandmarksLib.mrml.export import export_csv

                self.showStatus(_("Saved {path}.").format(path=export_csv(node, path, overwrite=True)))

    def askSavePath(self, title, node, suffix, fileFilter):
        """A file name from a save dialog (which asks before replacing a file), or ""."""
        from H3DELandmarksLib.mrml.export import case_name

        suggested = os.path.join(qt.QDir.homePath(), case_name(node) + suffix)
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), title, suggested, fileFilter)
        if path and not path.endswith(suffix):
            path += suffix
        return path

    def onSaveForTrainingButton(self) -> None:
        parameters = self._parameterNode
        dataset = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Training dataset folder"))
        if not dataset:
            return
        with self.userErrors():
            from H3DELandmarksLib.data.cases import safe_case_name
            from H3DELandmarksLib.mrml.training_export import save_for_training, training_case_exists

            case = safe_case_name(parameters.inputVolume.GetName())
            overwrite = training_case_exists(dataset, case)
            if overwrite and not slicer.util.confirmOkCancelDisplay(
                    _("Case {case} is already in {dataset}. Replace it?").format(case=case, dataset=dataset)):
                return
            saved = save_for_training(parameters.inputVolume, parameters.landmarks, dataset, case, overwrite)
            self.showStatus(_("Saved case {case} in {dataset}.").format(case=saved.case, dataset=dataset))

    # Helpers

    def updateButtons(self) -> None:
        parameters = self._parameterNode
        ready = self.libraryReady()
        choice = self.selectedModel()
        running = self.detection is not None
        self.ui.detectButton.text = _("Cancel") if running else _("Detect landmarks")
        self.ui.detectButton.enabled = running or bool(
            parameters and parameters.inputVolume and parameters.model and ready
            and choice is not None and not choice.needs_download and self.download is None)
        self.ui.downloadModelButton.enabled = self.download is not None or bool(
            ready and choice is not None and choice.needs_download and not running)
        self.ui.loadModelButton.enabled = not running
        hasLandmarks = bool(parameters and parameters.landmarks and ready)
        for button in (self.ui.lockAllButton, self.ui.unlockAllButton,
                       self.ui.exportJsonButton, self.ui.exportCsvButton):
            button.enabled = hasLandmarks
        self.ui.saveForTrainingButton.enabled = hasLandmarks and bool(parameters.inputVolume)

    def showStatus(self, message, error=False) -> None:
        self.ui.statusLabel.text = message
        self.ui.statusLabel.setStyleSheet("color: #c0392b;" if error else "")

    @contextlib.contextmanager
    def userErrors(self):
        """Show an error a user can cause as its one sentence; log anything else in full."""
        try:
            yield
        except Exception as error:
            from H3DELandmarksLib.errors import H3DEError

            if isinstance(error, H3DEError):
                self.showStatus(str(error), error=True)
            else:
                logging.exception("H3DE Landmarks failed")
                self.showStatus(_("Unexpected error: {error} (details in the log).").format(error=error), error=True)


#
# H3DELandmarksLogic
#


class H3DELandmarksLogic(ScriptedLoadableModuleLogic):
    """Adapter from the module to H3DELandmarksLib; the library holds the decisions."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        makeLibraryImportable()

    def getParameterNode(self):
        return H3DELandmarksParameterNode(super().getParameterNode())

    def applyDetection(self, parameterNode, result):
        """Put a detection result into the scene without losing corrections; returns (node, created)."""
        from H3DELandmarksLib.mrml.corrections import apply_detection

        volume = parameterNode.inputVolume
        return apply_detection(
            slicer.mrmlScene, result.landmarks, result.model_id, result.model_version,
            existing=parameterNode.landmarks, update_untouched_only=parameterNode.updateUntouchedOnly,
            confidence_threshold=parameterNode.confidenceThreshold, volume_node=volume,
            name=_("{volume} landmarks").format(volume=volume.GetName()),
        )


#
# H3DELandmarksTest
#


class H3DELandmarksTest(ScriptedLoadableModuleTest):
    """The whole workflow on a phantom, through the module's widget: detection in a background
    process with a small random-weight model, corrections, exports, save for training."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_H3DELandmarks_workflow()

    def test_H3DELandmarks_workflow(self):
        makeLibraryImportable()
        self.assertEqual(missingPackages(), [], "Install the Python packages H3DE Landmarks needs first.")
        import numpy as np

        from H3DELandmarksLib.data.landmark_files import read_landmarks
        from H3DELandmarksLib.data.phantom import make_phantom
        from H3DELandmarksLib.mrml.corrections import MOVED, review_points
        from H3DELandmarksLib.mrml.markups_node import MODEL_ID_ATTRIBUTE, landmarks_from_node
        from H3DELandmarksLib.mrml.volume_node import lps_to_ras, volume_to_node

        work = tempfile.mkdtemp(prefix="H3DELandmarksTest-")
        volume, truth = make_phantom(7, size=(48, 44, 40), spacing=(2.0, 2.2, 2.5), direction="random")
        volumeNode = volume_to_node(volume, slicer.mrmlScene, "phantom")
        volumeNode.CreateDefaultDisplayNodes()
        self.delayDisplay("Phantom loaded")

        slicer.util.selectModule("H3DELandmarks")
        widget = slicer.util.getModuleWidget("H3DELandmarks")
        widget.addModelFolder(self.writeRandomModel(os.path.join(work, "model"), truth.names))
        parameters = widget._parameterNode
        parameters.inputVolume = volumeNode
        parameters.device = "cpu"
        widget.ui.detectButton.click()
        self.assertEqual(widget.ui.detectButton.text, "Cancel")
        self.waitForDetection(widget)
        landmarks = parameters.landmarks
        self.assertIsNotNone(landmarks, widget.ui.statusLabel.text)
        self.assertEqual(landmarks.GetNumberOfControlPoints(), len(truth))
        self.assertEqual(landmarks.GetAttribute(MODEL_ID_ATTRIBUTE), "phantom-random")
        self.delayDisplay("Landmarks detected")

        first = next(review for review in review_points(landmarks, 0.5) if review.position is not None)
        landmarks.SetNthControlPointPositionWorld(first.index, *lps_to_ras(first.position + [3.0, 4.0, 0.0]))
        moved = review_points(landmarks, 0.5)[first.index]
        self.assertEqual(moved.status, MOVED)
        self.assertAlmostEqual(moved.displacement_mm, 5.0, places=6)

        widget.ui.detectButton.click()
        self.waitForDetection(widget)
        self.assertIsNot(parameters.landmarks, landmarks, "a corrected node must never be overwritten")
        self.assertEqual(review_points(landmarks, 0.5)[first.index].status, MOVED)
        self.delayDisplay("Corrections kept on re-detection")

        from H3DELandmarksLib.mrml.export import export_csv, export_mrk_json
        from H3DELandmarksLib.mrml.training_export import save_for_training

        expected = landmarks_from_node(landmarks)
        for path in (export_mrk_json(landmarks, os.path.join(work, "l.mrk.json")),
                     export_csv(landmarks, os.path.join(work, "l.csv"))):
            reloaded = read_landmarks(path)
            self.assertEqual(reloaded.names, expected.names)
            np.testing.assert_allclose(reloaded.positions, expected.positions, atol=1e-6)
        saved = save_for_training(volumeNode, landmarks, os.path.join(work, "dataset"))
        self.assertTrue(os.path.isfile(saved.volume_path) and os.path.isfile(saved.landmarks_path))
        self.delayDisplay("Test passed")

    def waitForDetection(self, widget):
        """Let the event loop run (progress timer included) until the background detection ends."""
        while widget.detection is not None:
            slicer.app.processEvents()
            qt.QThread.msleep(20)

    def writeRandomModel(self, folder, names):
        """A small H3DE-Net package with random weights (the workflow, not accuracy, is tested)."""
        import torch

        from H3DELandmarksLib.model.config import default_config
        from H3DELandmarksLib.model.network import H3DENet
        from H3DELandmarksLib.registry import SCHEMA_VERSION, write_package

        config = default_config(len(names), embed_dims=(8, 16, 32, 64), qk_dims=(8, 16, 32, 64),
                                depths=(1, 1, 1, 1), decoder_dims=(32, 16, 16, 8), skip_dims=(8,))
        torch.manual_seed(0)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "id": "phantom-random",
            "version": "0.0.1",
            "title": "Random weights (self-test)",
            "description": "Untrained network for testing the workflow only.",
            "modality": "synthetic CT",
            "architecture": config.to_dict(),
            "landmarks": [{"name": name} for name in names],
            "preprocessing": {
                "orientation": "canonical",
                "intensity": {"clip_min": -1000, "clip_max": 2000, "scale_min": -1000, "scale_max": 2000},
                "stages": [{"name": "coarse", "spacing_mm": [4.0, 4.0, 4.0], "patch_size": [64, 64, 64]}],
            },
            "confidence_threshold": 0.0,
            "training": {"provenance": {}, "data": {}, "recipe": {}, "command": "none", "metrics": {}},
            "license": "CC0-1.0",
            "created": "2025-01-01T00:00:00Z",
        }
        write_package(folder, manifest, H3DENet(config).state_dict())
        return folder
