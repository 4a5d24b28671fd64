"""What the review app's buttons do, and the shared state the browser shows.

`ReviewController` turns each user action into calls on the `ReviewSession` (scene), the
`CaseList` and the `BackgroundDetector`, and keeps the trame state up to date. It never touches a
widget, so tests drive it with a real Slicer scene and a trame state and no browser. A user's
error (unreadable volume, no model, nothing to export) becomes one sentence in ``error``.

State keys: ``cases`` (name, path, problem, saved), ``case_index`` (-1: none open),
``volume_open``, ``landmarks`` (rows of `ReviewSession.rows`), ``review_counts`` (placed,
flagged, moved and hand-placed points, as text), ``active_landmark``,
``placing`` (index being placed, -1: none), ``detecting``, ``progress`` (0-100),
``progress_step``, ``models`` (label, spec: the models to pick from), ``model`` (the picked
spec), ``model_label`` (the model of the last detection), ``message``, ``error``, ``replace_prompt`` (the question shown before a
save replaces review files this session did not write; "" when none), ``saved_files``,
``download_names``, ``max_upload_bytes``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from pathlib import Path

from trame.app.file_upload import ClientFile

from ..errors import DetectionCancelled, H3DEError
from .cases import CaseList, review_files, upload_too_large
from .detection import BackgroundDetector
from .review import ReviewConflict, ReviewSession

logger = logging.getLogger(__name__)

POINT_REFRESH_DELAY_S = 0.05
DOWNLOAD_KINDS = ("mrk_json", "csv")


def reports_errors(method):
    """Show a user's error (`H3DEError`) in the state instead of raising; log anything else too."""

    def report(self, error: Exception) -> None:
        if not isinstance(error, H3DEError):
            logger.exception("Unexpected error in %s", method.__name__)
            error = H3DEError(f"Unexpected error ({type(error).__name__}: {error}); the server log has details.")
        with self.state:
            self.state.error = str(error)
            self.state.message = ""

    if inspect.iscoroutinefunction(method):
        @functools.wraps(method)
        async def run_async(self, *args, **kwargs):
            try:
                return await method(self, *args, **kwargs)
            except Exception as error:  # noqa: BLE001 - every failure is shown to the user
                report(self, error)
        return run_async

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - every failure is shown to the user
            report(self, error)
    return run


def model_items(models, current: str) -> list[dict]:
    """The page's model list: label and spec of each choice, `current` first when it is not among them."""
    items = [{"label": choice.label, "spec": choice.spec} for choice in models]
    if current not in [item["spec"] for item in items]:
        items.insert(0, {"label": current, "spec": current})
    return items


class ReviewController:
    """The review app's actions (see module notes).

    Args:
        state: the trame server state.
        slicer_app: trame-slicer's `SlicerApp` (scene, markups logic, display manager).
        cases: the session's cases.
        detector: runs detections (with `detector.model` until the user picks another).
        models: the `ModelChoice`s to offer (the detector's model is added when missing).
        attachment: turns bytes into a download the browser can fetch (the server protocol's
            ``addAttachment``); None where nothing is served (tests).
    """

    def __init__(self, state, slicer_app, cases: CaseList, detector: BackgroundDetector, models=(),
                 attachment=None) -> None:
        self.state = state
        self.slicer_app = slicer_app
        self.cases = cases
        self.detector = detector
        self.attachment = attachment
        self.session = ReviewSession(slicer_app.scene, slicer_app.markups_logic, self._points_changed)
        self._refresh_pending = False
        self._detection: asyncio.Future | None = None
        state.update({
            "cases": [],
            "case_index": -1,
            "volume_open": False,
            "landmarks": [],
            "review_counts": "",
            "active_landmark": -1,
            "placing": -1,
            "detecting": False,
            "progress": 0,
            "progress_step": "",
            "models": model_items(models, detector.model),
            "model": detector.model,
            "model_label": "",
            "message": "",
            "error": "",
            "replace_prompt": "",
            "saved_files": [],
            "download_names": {},
            "max_upload_bytes": cases.max_upload_bytes or 0,
        })
        self._show_cases()

    def _show_cases(self) -> None:
        self.state.cases = [
            {
                "index": index,
                "name": case.name,
                "path": str(case.path),
                "problem": case.problem or "",
                "saved": review_files(case).mrk_json.exists(),
            }
            for index, case in enumerate(self.cases)
        ]

    @reports_errors
    def open_case(self, index: int) -> None:
        """Show case `index` in the views (its landmarks too when it was detected before)."""
        if self.state.detecting:
            raise H3DEError("Wait for the detection to finish, or cancel it, before changing case.")
        if not 0 <= index < len(self.cases):
            raise H3DEError(f"There is no case number {index + 1}.")
        case = self.cases[index]
        volume_node = self.session.open(case)
        display = self.slicer_app.display_manager
        display.show_volume_in_slice_background(volume_node)
        display.show_volume_in_slice_foreground(None)
        display.reset_views()
        files = review_files(case)
        with self.state:
            self.state.case_index = index
            self.state.volume_open = True
            self.state.active_landmark = -1
            self.state.placing = -1
            self.state.error = ""
            self.state.message = f"Opened {case.name}."
            self.state.saved_files = []
            self.state.download_names = {"mrk_json": files.mrk_json.name, "csv": files.csv.name}
            self.state.replace_prompt = ""
            if self.session.review_problem:
                self.state.error = self.session.review_problem
            elif self.session.landmarks_node is not None:
                self.state.message = f"Opened {case.name} with its saved review."
            self._refresh_rows()

    def next_case(self) -> None:
        """Open the case after the open one (the first when none is open); nothing after the last."""
        if self.state.case_index + 1 < len(self.cases):
            self.open_case(self.state.case_index + 1)

    def previous_case(self) -> None:
        """Open the case before the open one; nothing before the first."""
        if self.state.case_index > 0:
            self.open_case(self.state.case_index - 1)

    @reports_errors
    def upload(self, files: list[dict]) -> None:
        """Add uploaded files (trame file dicts: name, content) as cases and open the first new one."""
        uploaded = [ClientFile(item) for item in files or []]
        added = self.cases.add_upload([(item.name, item.content or b"") for item in uploaded])
        self._show_cases()
        self.open_case(self.cases.cases.index(added[0]))

    @reports_errors
    def upload_refused(self, size: int) -> None:
        """The page did not send an upload of `size` bytes: it is over the limit."""
        raise H3DEError(upload_too_large(int(size), self.cases.max_upload_bytes or 0))

    @reports_errors
    def choose_model(self, spec: str) -> None:
        """Detect with the model `spec` (one of ``models``) from the next detection on."""
        if self.state.detecting:
            raise H3DEError("Wait for the detection to finish, or cancel it, before changing the model.")
        if spec not in [item["spec"] for item in self.state.models]:
            raise H3DEError(f"{spec!r} is not one of the models offered.")
        self.detector.use_model(spec)
        with self.state:
            self.state.model = spec
            self.state.error = ""
            self.state.message = f"The next detection uses {spec}."

    def start_detection(self) -> None:
        """The Detect button: run `detect` as a task, so the page's next messages (Cancel, a closed
        tab) are read while the network runs."""
        if self._detection is None or self._detection.done():
            self._detection = asyncio.ensure_future(self.detect())

    @reports_errors
    async def detect(self) -> None:
        """Detect landmarks in the open case in the background; corrected points are kept."""
        if self.state.detecting:
            return
        volume = self.session.detection_input()
        loop = asyncio.get_running_loop()

        def progress(step: str, fraction: float) -> None:
            loop.call_soon_threadsafe(self._show_progress, step, fraction)

        with self.state:
            self.state.detecting = True
            self.state.progress = 0
            self.state.progress_step = "starting"
            self.state.error = ""
            self.state.message = ""
        try:
            detection = await self.detector.detect(volume, progress)
        except DetectionCancelled as cancelled:
            with self.state:
                self.state.message = str(cancelled)
            return
        finally:
            with self.state:
                self.state.detecting = False
        self.session.apply(detection, self.detector.predictor.confidence_threshold)
        present = int(detection.landmarks.present.sum())
        with self.state:
            self.state.model_label = f"{detection.model_id}@{detection.model_version}"
            self.state.progress = 100
            self.state.message = (f"Found {present} of {len(detection.landmarks)} landmarks "
                                  f"in {detection.timings.get('total', 0.0):.1f} s.")
            self._refresh_rows()

    def _show_progress(self, step: str, fraction: float) -> None:
        with self.state:
            self.state.progress = round(100 * fraction)
            self.state.progress_step = step

    def cancel_detection(self) -> None:
        """Stop the running detection."""
        self.detector.cancel()

    @reports_errors
    def jump(self, index: int) -> None:
        """Select landmark `index` and centre the slice views on it."""
        self.session.jump_to(index)
        with self.state:
            self.state.active_landmark = index

    @reports_errors
    def next_flagged(self) -> None:
        """Select the flagged point after the selected one and centre the slice views on it."""
        index = self.session.next_flagged(self.state.active_landmark)
        if index is None:
            with self.state:
                self.state.message = "No point is flagged."
            return
        self.jump(index)

    @reports_errors
    def place(self, index: int) -> None:
        """Show the model's guess for landmark `index`; the next click in a slice view places it."""
        self.session.start_placing(index)
        self.session.jump_to(index)
        with self.state:
            self.state.placing = index
            self.state.active_landmark = index
            self.state.error = ""
            self.state.message = f"Click in a slice view to place {self.state.landmarks[index]['name']}."

    def stop_placing(self) -> None:
        """Leave place mode without placing."""
        self.session.stop_placing()
        with self.state:
            self.state.placing = -1
            self.state.message = ""

    @reports_errors
    def mark_absent(self, index: int) -> None:
        """The landmark `index` is not in this volume."""
        self.session.mark_absent(index)

    @reports_errors
    def save(self, replace: bool = False) -> list[Path] | None:
        """Write the review files beside the case; returns their paths.

        When that would replace files this session did not write, nothing is written and
        ``replace_prompt`` asks; the page's Replace button saves again with `replace`.
        """
        try:
            files = self.session.save(replace=bool(replace))
        except ReviewConflict as conflict:
            with self.state:
                self.state.replace_prompt = str(conflict)
                self.state.message = ""
            return None
        paths = [files.mrk_json, files.csv]
        with self.state:
            self.state.replace_prompt = ""
            self.state.saved_files = [str(path) for path in paths]
            self.state.error = ""
            self.state.message = f"Saved beside the case: {files.mrk_json.name}, {files.csv.name}."
            self._show_cases()
        return paths

    def keep_saved_review(self) -> None:
        """The user chose not to replace the files beside the case."""
        with self.state:
            self.state.replace_prompt = ""
            self.state.message = "Nothing was saved; the files beside the case are unchanged."

    @reports_errors
    def download(self, kind: str):
        """Hand the open case's review as one file (`DOWNLOAD_KINDS`) to the browser (nothing is saved)."""
        if kind not in DOWNLOAD_KINDS:
            raise H3DEError(f"Unknown export {kind!r}; choose one of {', '.join(DOWNLOAD_KINDS)}.")
        data = self.session.export_bytes(kind)
        return self.attachment(data) if self.attachment is not None else data

    def _points_changed(self) -> None:
        """Refresh the landmark list soon (a drag changes a point many times a second)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            with self.state:
                self._refresh_rows()
            return
        if not self._refresh_pending:
            self._refresh_pending = True
            loop.call_later(POINT_REFRESH_DELAY_S, self._refresh_rows_now)

    def _refresh_rows_now(self) -> None:
        self._refresh_pending = False
        with self.state:
            self._refresh_rows()

    def _refresh_rows(self) -> None:
        rows = self.session.rows()
        self.state.landmarks = rows
        self.state.review_counts = self.session.counts_text()
        placing = self.state.placing
        if placing >= 0 and (placing >= len(rows) or rows[placing]["placed"]):
            self.state.placing = -1
            self.state.message = ""
