"""The H3DE Landmarks panel: detection, review by confidence, corrections, exports, training.

The panel takes its logic (scene changes), its job starter (detection, training and downloads as
background jobs with one interface, `H3DELandmarksLib.mrml.jobs.JobStarter`) and its installer
(`PackageInstaller`) as constructor arguments, so the self-test drives it with the real logic and
a stand-in starter. The library is imported inside methods: the panel opens before PyTorch and
the other packages are installed, and offers to install them.
"""

import contextlib
import logging
import os

import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.util import VTKObservationMixin

from .resources import resourcePath

POLL_INTERVAL_MS = 100
TABLE_REFRESH_DELAY_MS = 150
NEXT_FLAGGED_SHORTCUT = "Ctrl+Shift+N"
FLAGGED_TEXT_COLOR = qt.QColor(230, 120, 0)


class H3DELandmarksPanel(qt.QWidget, VTKObservationMixin):
    """The module's panel (see module notes).

    Args:
        logic: the module logic (`H3DELandmarksLogic`): parameter node and scene changes.
        installer: `unmet()` and `install()` for the Python packages.
        jobs: starts background jobs; by default `JobStarter()` once the packages are installed.
    """

    def __init__(self, logic, installer, jobs=None, parent=None):
        qt.QWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = logic
        self.installer = installer
        self.jobs = jobs
        self.job = None
        self.jobKind = None
        self.jobSubject = ""
        self.jobVolumeId = None
        self.modelChoices = []
        self.folderModels = []
        self.rows = []
        self.currentPoint = -1
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._observedLandmarks = None
        self._libraryReady = False

        layout = qt.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        uiWidget = slicer.util.loadUI(resourcePath("UI/H3DELandmarks.ui"))
        layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(POLL_INTERVAL_MS)
        self.pollTimer.timeout.connect(self.onPollTimer)
        self.tableRefreshTimer = qt.QTimer()
        self.tableRefreshTimer.setSingleShot(True)
        self.tableRefreshTimer.setInterval(TABLE_REFRESH_DELAY_MS)
        self.tableRefreshTimer.timeout.connect(self.refreshTable)
        self.ui.landmarksTable.horizontalHeader().setSectionResizeMode(qt.QHeaderView.ResizeToContents)
        self.nextFlaggedShortcut = qt.QShortcut(qt.QKeySequence(NEXT_FLAGGED_SHORTCUT), slicer.util.mainWindow())
        self.nextFlaggedShortcut.setEnabled(False)
        self.nextFlaggedShortcut.activated.connect(self.onNextFlagged)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.installDependenciesButton.clicked.connect(self.ensureDependencies)
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelSelected)
        self.ui.downloadModelButton.clicked.connect(self.onDownloadButton)
        self.ui.loadModelButton.clicked.connect(self.onLoadModelButton)
        self.ui.detectButton.clicked.connect(self.onDetectButton)
        self.ui.trainButton.clicked.connect(self.onTrainButton)
        self.ui.nextFlaggedButton.clicked.connect(self.onNextFlagged)
        self.ui.landmarksTable.cellClicked.connect(self.onLandmarkClicked)
        self.ui.lockAllButton.clicked.connect(lambda: self.setLandmarksLocked(True))
        self.ui.unlockAllButton.clicked.connect(lambda: self.setLandmarksLocked(False))
        self.ui.exportJsonButton.clicked.connect(self.onExportJsonButton)
        self.ui.exportCsvButton.clicked.connect(self.onExportCsvButton)
        self.ui.saveForTrainingButton.clicked.connect(self.onSaveForTrainingButton)

        self.initializeParameterNode()
        self.updateDependencyState()

    # Life cycle (called by the module's widget)

    def cleanup(self):
        self.setParameterNode(None)
        self.removeObservers()
        self.pollTimer.stop()
        self.tableRefreshTimer.stop()
        self.nextFlaggedShortcut.setEnabled(False)
        self.nextFlaggedShortcut.setParent(None)
        self.endJob(cancel=True)

    def enter(self):
        self.initializeParameterNode()
        self.refreshModels()
        self.nextFlaggedShortcut.setEnabled(True)

    def exit(self):
        self.nextFlaggedShortcut.setEnabled(False)
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        if self.job is not None and self.jobKind == self.kinds().DETECTION:
            self.endJob(cancel=True)
            self.showStatus(self.texts().SCENE_CLOSED.format(kind=_("detection")), error=True)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.isVisible():
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None):
        parameters = self._parameterNode
        landmarks = parameters.landmarks if parameters else None
        self.observeLandmarks(landmarks)
        if landmarks is not None and self.libraryReady():
            from H3DELandmarksLib.mrml.markups_node import update_confidence_threshold

            update_confidence_threshold(landmarks, parameters.confidenceThreshold)
        self.updateButtons()
        self.tableRefreshTimer.start()

    # Packages and models

    def libraryReady(self):
        """True once every package H3DELandmarksLib needs is installed in a suitable version."""
        self._libraryReady = self._libraryReady or not self.installer.unmet()
        return self._libraryReady

    def updateDependencyState(self):
        unmet = self.installer.unmet()
        self.ui.installDependenciesButton.visible = bool(unmet)
        if unmet:
            self.showStatus(_("H3DE Landmarks needs these Python packages: {packages}. Click the install "
                              "button to add them.").format(packages=", ".join(item.text for item in unmet)))
        else:
            self.refreshModels()
        self.updateButtons()

    def ensureDependencies(self):
        """Install what is missing after asking; True when everything is ready. Never raises."""
        if self.libraryReady():
            return True
        try:
            with slicer.util.WaitCursor():
                self.installer.install()
        except Exception as error:
            logging.exception("Installing the Python packages of H3DE Landmarks failed")
            self.updateDependencyState()
            self.showStatus(_("Installing the Python packages failed: {error} (details in the log).").format(
                error=error), error=True)
            return False
        self.updateDependencyState()
        return self.libraryReady()

    def refreshModels(self):
        if not self.libraryReady():
            return
        with self.userErrors():
            from H3DELandmarksLib.mrml.models import merge_model_choices, registered_models

            selected = self._parameterNode.model if self._parameterNode else ""
            self.modelChoices, index = merge_model_choices(registered_models(), self.folderModels, selected)
            combo = self.ui.modelComboBox
            wasBlocked = combo.blockSignals(True)
            combo.clear()
            for choice in self.modelChoices:
                combo.addItem(choice.label, choice.spec)
            combo.currentIndex = index
            combo.blockSignals(wasBlocked)
        self.onModelSelected()

    def selectedModel(self):
        index = self.ui.modelComboBox.currentIndex
        return self.modelChoices[index] if 0 <= index < len(self.modelChoices) else None

    def onModelSelected(self, index=None):
        choice = self.selectedModel()
        if self._parameterNode and choice is not None and self._parameterNode.model != choice.spec:
            self._parameterNode.model = choice.spec
        if choice is None:
            self.ui.modelStatusLabel.text = _("No model is registered; load a model package folder.")
        else:
            self.ui.modelStatusLabel.text = _("Status: {status}").format(status=choice.status)
        self.updateButtons()

    def onLoadModelButton(self):
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), _("Model package folder (holding manifest.json)"))
        if folder:
            self.addModelFolder(folder)

    def addModelFolder(self, folder):
        """Offer the model package in `folder` and select it for the next detection."""
        if not self.ensureDependencies():
            return
        with self.userErrors():
            from H3DELandmarksLib.mrml.models import add_folder_model, model_from_folder

            choice = model_from_folder(folder)
            self.folderModels = add_folder_model(self.folderModels, choice)
            self._parameterNode.model = choice.spec
            self.refreshModels()

    # Background jobs: one at a time, followed by the poll timer

    def kinds(self):
        from H3DELandmarksLib.mrml import jobs

        return jobs

    def texts(self):
        from H3DELandmarksLib.mrml import panel_state

        return panel_state

    def jobStarter(self):
        if self.jobs is None:
            from H3DELandmarksLib.mrml.jobs import JobStarter

            self.jobs = JobStarter()
        return self.jobs

    def startJob(self, kind, subject, start):
        """Start a job with `start()` unless one runs; a failure to start is shown, never raised."""
        if self.job is not None or not self.ensureDependencies():
            return
        with self.userErrors():
            self.job = start()
            self.jobKind = kind
            self.jobSubject = subject
            self.ui.detectionProgressBar.setRange(0, 100)
            self.ui.detectionProgressBar.value = 0
            self.pollTimer.start()
        self.updateButtons()

    def endJob(self, cancel=False):
        """Forget the running job (cancelled first when asked), stopping it and freeing what it holds."""
        job, self.job, self.jobKind, self.jobVolumeId = self.job, None, None, None
        if job is not None:
            if cancel:
                job.cancel()
            job.cleanup()
        self.pollTimer.stop()
        self.ui.detectionProgressBar.setRange(0, 100)
        self.updateButtons()

    def onPollTimer(self):
        if self.job is None:
            self.pollTimer.stop()
            return
        kinds = self.kinds()
        if self.jobKind == kinds.DETECTION and slicer.mrmlScene.GetNodeByID(self.jobVolumeId) is None:
            self.endJob(cancel=True)
            self.showStatus(self.texts().VOLUME_REMOVED.format(volume=self.jobSubject), error=True)
            return
        update = kinds.job_update(self.job, self.jobKind, self.jobSubject)
        bar = self.ui.detectionProgressBar
        if update.percent is None:
            bar.setRange(0, 0)
        else:
            bar.setRange(0, 100)
            bar.value = update.percent
        if not update.finished:
            self.showStatus(update.text)
            return
        job, kind, volumeId = self.job, self.jobKind, self.jobVolumeId
        try:
            if update.error is not None:
                self.showStatus(update.error, error=not job.cancelled)
            elif kind == kinds.DETECTION:
                self.finishDetection(job, volumeId)
            elif kind == kinds.DOWNLOAD:
                self.showStatus(self.texts().DOWNLOADED.format(model=job.spec))
                self.refreshModels()
            else:
                self.finishTraining(job)
        finally:
            self.endJob()

    # Detection

    def onDetectButton(self):
        if self.job is not None and self.jobKind == self.kinds().DETECTION:
            self.endJob(cancel=True)
            self.showStatus(_("Landmark detection was cancelled."))
            return
        parameters = self._parameterNode
        volume = parameters.inputVolume
        if volume is None:
            return

        def start():
            job = self.jobStarter().detection(volume, parameters.model, parameters.device)
            self.jobVolumeId = volume.GetID()
            return job

        self.startJob(self.kinds().DETECTION, volume.GetName(), start)

    def finishDetection(self, job, volumeId):
        """Put the result into the scene, on the volume the detection was started on."""
        with self.userErrors():
            result = job.result()
            panelState = self.texts()
            volume = panelState.bound_volume(slicer.mrmlScene, volumeId, self.jobSubject)
            parameters = self._parameterNode or self.logic.getParameterNode()
            node, created = self.logic.applyDetection(parameters, result, volume)
            parameters.landmarks = node
            self.showLandmarks(node, volume)
            self.showStatus(panelState.detection_message(int(result.landmarks.present.sum()), len(result.landmarks),
                                                         created))

    def showLandmarks(self, node, volume):
        """Show the landmarks in the slice and 3D views, on top of their volume."""
        node.GetDisplayNode().SetVisibility(True)
        slicer.util.setSliceViewerLayers(background=volume)

    # Downloads and training

    def onDownloadButton(self):
        if self.job is not None and self.jobKind == self.kinds().DOWNLOAD:
            self.endJob(cancel=True)
            self.showStatus(_("The download was cancelled; the next download resumes where it stopped."))
            return
        choice = self.selectedModel()
        if choice is not None:
            self.startJob(self.kinds().DOWNLOAD, choice.spec, lambda: self.jobStarter().download(choice.spec))

    def onTrainButton(self):
        if self.job is not None and self.jobKind == self.kinds().TRAINING:
            self.endJob(cancel=True)
            self.showStatus(_("Training was cancelled."))
            return
        dataset = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), _("Training dataset folder (filled by Save for training)"))
        if dataset:
            self.trainOn(dataset)

    def trainOn(self, dataset):
        """Train the selected model further on the cases in `dataset`, in the background."""
        choice = self.selectedModel()
        if choice is None or not self.ensureDependencies():
            return
        from H3DELandmarksLib.mrml.training_process import training_output_dir

        output = training_output_dir(dataset)
        device = self._parameterNode.device
        self.startJob(self.kinds().TRAINING, os.path.basename(dataset),
                      lambda: self.jobStarter().training(dataset, choice.spec, output, device))

    def finishTraining(self, job):
        """Offer the new model and select it for the next detection."""
        with self.userErrors():
            package = str(job.result())
            self.addModelFolder(package)
            if self._parameterNode.model == package:
                self.showStatus(self.texts().TRAINED.format(model=self.selectedModel().label))

    # Review

    def observeLandmarks(self, node):
        if node is self._observedLandmarks or not self.libraryReady():
            return
        from H3DELandmarksLib.mrml.review import POINT_EVENTS

        if self._observedLandmarks is not None:
            for event in POINT_EVENTS:
                self.removeObserver(self._observedLandmarks, event, self.onLandmarksModified)
        self._observedLandmarks = node
        self.currentPoint = -1
        if node is not None:
            for event in POINT_EVENTS:
                self.addObserver(node, event, self.onLandmarksModified)

    def onLandmarksModified(self, caller=None, event=None):
        self.tableRefreshTimer.start()

    def refreshTable(self):
        table = self.ui.landmarksTable
        parameters = self._parameterNode
        node = parameters.landmarks if parameters else None
        self.rows = []
        counts = None
        if node is not None and self.libraryReady():
            from H3DELandmarksLib.mrml.review import review_counts, review_rows

            self.rows = review_rows(node, parameters.confidenceThreshold, parameters.errorThreshold)
            counts = review_counts(self.rows)
        table.setRowCount(len(self.rows))
        for rowIndex, row in enumerate(self.rows):
            for column, text in enumerate(row.texts):
                item = qt.QTableWidgetItem(text)
                if row.flagged:
                    item.setForeground(qt.QBrush(FLAGGED_TEXT_COLOR))
                table.setItem(rowIndex, column, item)
        self.ui.reviewCountsLabel.text = counts.text if counts is not None else ""
        self.updateButtons()

    def onNextFlagged(self):
        """Centre the slice views on the next flagged point and select its row."""
        if not self.rows:
            return
        from H3DELandmarksLib.mrml.review import next_flagged

        index = next_flagged(self.rows, self.currentPoint)
        if index is None:
            self.showStatus(self.texts().NOTHING_FLAGGED)
            return
        self.jumpToPoint(index)
        self.ui.landmarksTable.selectRow(index)

    def jumpToPoint(self, index):
        from H3DELandmarksLib.mrml.review import jump_to

        self.currentPoint = index
        jump_to(slicer.mrmlScene, self.rows[index].review)

    def onLandmarkClicked(self, row, column):
        """Jump the slice views to a placed point; start placing an unplaced one (next click in a view)."""
        node = self._parameterNode.landmarks
        if node is None or row >= len(self.rows):
            return
        review = self.rows[row].review
        self.jumpToPoint(row)
        if review.position is not None:
            return
        node.SetControlPointPlacementStartIndex(review.index)
        markupsLogic = slicer.modules.markups.logic()
        markupsLogic.SetActiveList(node)
        markupsLogic.StartPlaceMode(False)
        self.showStatus(_("Click in a view to place {name}.").format(name=review.name))

    def setLandmarksLocked(self, locked):
        node = self._parameterNode.landmarks
        if node is not None:
            node.SetLocked(locked)

    # Exports

    def onExportJsonButton(self):
        node = self._parameterNode.landmarks
        path = self.askSavePath(_("Export landmarks"), node, ".mrk.json", _("Slicer markups (*.mrk.json)"))
        if path:
            with self.userErrors():
                from H3DELandmarksLib.mrml.export import export_mrk_json

                self.showStatus(_("Saved {path}.").format(path=export_mrk_json(node, path, overwrite=True)))

    def onExportCsvButton(self):
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

    def onSaveForTrainingButton(self):
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

    def updateButtons(self):
        parameters = self._parameterNode
        ready = self.libraryReady()
        if not ready:
            for button in (self.ui.detectButton, self.ui.downloadModelButton, self.ui.trainButton,
                           self.ui.nextFlaggedButton, self.ui.lockAllButton, self.ui.unlockAllButton,
                           self.ui.exportJsonButton, self.ui.exportCsvButton, self.ui.saveForTrainingButton):
                button.enabled = False
            return
        from H3DELandmarksLib.mrml.panel_state import PanelSituation, button_states

        states = button_states(PanelSituation(
            library_ready=ready,
            has_volume=bool(parameters and parameters.inputVolume),
            model=self.selectedModel(),
            running=self.jobKind,
            has_landmarks=bool(parameters and parameters.landmarks),
            has_flagged=any(row.flagged for row in self.rows),
        ))
        self.ui.detectButton.text = _(states.detect_text)
        self.ui.detectButton.enabled = states.detect_enabled
        self.ui.downloadModelButton.text = _(states.download_text)
        self.ui.downloadModelButton.enabled = states.download_enabled
        self.ui.trainButton.text = _(states.train_text)
        self.ui.trainButton.enabled = states.train_enabled
        self.ui.loadModelButton.enabled = states.load_model_enabled
        for control in (self.ui.inputVolumeSelector, self.ui.modelComboBox, self.ui.deviceComboBox):
            control.enabled = states.inputs_enabled
        for button in (self.ui.lockAllButton, self.ui.unlockAllButton,
                       self.ui.exportJsonButton, self.ui.exportCsvButton):
            button.enabled = states.results_enabled
        self.ui.saveForTrainingButton.enabled = states.save_for_training_enabled
        self.ui.nextFlaggedButton.enabled = states.next_flagged_enabled

    def showStatus(self, message, error=False):
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
