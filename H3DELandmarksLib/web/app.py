"""The review app: a trame server around trame-slicer's Slicer scene, views and markups widgets.

`ReviewApp` builds the Slicer application (scene, logics), the remote-rendered slice views
(and a 3D view when asked for), the page and the `ReviewController`; ``app.server.start()``
serves it (`h3de serve` does), behind an `AccessGuard` when one is given. The
views are Slicer's own: markups points are Slicer's point widgets, so dragging a point and
placing one in the slice views work as in Slicer. The 3D view is off by default where OpenGL
is software-rendered (it is slow there); ``show_3d`` switches it at any time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re

import vtkmodules.vtkRenderingOpenGL2  # noqa: F401 - registers the OpenGL render window
from trame.app import TrameApp
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition
from vtkmodules.vtkRenderingCore import vtkRenderWindow

from ..mrml.models import registered_models
from ..registry import resolve_model
from ..registry.resolve import NOT_DOWNLOADED
from .access import AccessGuard
from .cases import CaseList
from .controller import ReviewController
from .detection import BackgroundDetector
from .ui import build_page

logger = logging.getLogger(__name__)

SLICES_LAYOUT = "slices"
SLICES_AND_3D_LAYOUT = "slices and 3D"
SOFTWARE_RENDERERS = re.compile(r"llvmpipe|softpipe|swrast|SwiftShader|Software Rasterizer", re.IGNORECASE)


def review_layouts() -> dict[str, Layout]:
    """Axial view large beside coronal and sagittal; with a 3D view, the four in a grid."""
    axial = ViewLayoutDefinition.axial_view()
    coronal = ViewLayoutDefinition.coronal_view()
    sagittal = ViewLayoutDefinition.sagittal_view()
    three_d = ViewLayoutDefinition.threed_view()
    return {
        SLICES_LAYOUT: Layout(LayoutDirection.Horizontal, [
            axial, Layout(LayoutDirection.Vertical, [coronal, sagittal]),
        ]),
        SLICES_AND_3D_LAYOUT: Layout(LayoutDirection.Horizontal, [
            Layout(LayoutDirection.Vertical, [axial, three_d]),
            Layout(LayoutDirection.Vertical, [coronal, sagittal]),
        ]),
    }


def software_rendering() -> bool:
    """True when OpenGL here is a software rasteriser (Mesa llvmpipe and the like)."""
    window = vtkRenderWindow()
    window.SetOffScreenRendering(True)
    window.SetSize(8, 8)
    window.Render()
    capabilities = window.ReportCapabilities() or ""
    window.Finalize()
    return bool(SOFTWARE_RENDERERS.search(capabilities))


def offered_models(model: str, cache_dir: str | os.PathLike | None = None):
    """(the bundled and downloaded models to offer, `model` as one of their specs when it is one)."""
    choices = [choice for choice in registered_models(cache_dir=cache_dir) if choice.status != NOT_DOWNLOADED]
    chosen = resolve_model(model, cache_dir=cache_dir)
    for choice in choices:
        if resolve_model(choice.spec, cache_dir=cache_dir) == chosen:
            return choices, choice.spec
    return choices, model


class ReviewApp(TrameApp):
    """The whole app (see module notes).

    Args:
        cases: the cases to offer.
        detector: runs detections (the model loads at the first one).
        show_3d: show the 3D view at start; None: only where OpenGL is hardware-accelerated.
        access: who may connect (None: anyone; tests that drive the controller only).
        cache_dir: the model cache, for the models the page offers.
        server: a trame server or its name (None: the default server).
    """

    def __init__(self, cases: CaseList, detector: BackgroundDetector, show_3d: bool | None = None,
                 access: AccessGuard | None = None, cache_dir: str | os.PathLike | None = None,
                 server=None) -> None:
        super().__init__(server)
        if access is not None:
            self.ctrl.on_server_bind.add(access.bind)
            self.server.add_protocol_to_configure(access.configure_protocol)
        models, model = offered_models(detector.model, cache_dir)
        detector.use_model(model)
        self.slicer_app = SlicerApp()
        self.detector = detector
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout_dict(review_layouts(), lazy_initialization=True)
        # Views made while the page is being built would be added to it twice: make them first.
        self.layout_manager.create_layout_views_if_needed(SLICES_LAYOUT)
        self.layout_manager.set_layout(SLICES_LAYOUT)
        self.controller = ReviewController(
            self.state, self.slicer_app, cases, detector, models,
            attachment=lambda data: self.server.protocol.addAttachment(data),
        )
        self.state.show_3d = not software_rendering() if show_3d is None else show_3d
        self.ui = build_page(self.server, self.controller, self.layout_manager)
        self.state.change("show_3d")(self._on_show_3d)
        if self.state.show_3d:
            self._on_show_3d(True)
        self.ctrl.on_server_ready.add(self._on_ready)
        self.ctrl.on_server_exited.add(self._on_exit)
        if len(cases):
            self.controller.open_case(0)

    def _on_show_3d(self, show_3d: bool, **_) -> None:
        self.layout_manager.set_layout(SLICES_AND_3D_LAYOUT if show_3d else SLICES_LAYOUT)
        for view in self.slicer_app.view_manager.get_slice_views():
            view.set_visible_in_3d(show_3d)
        if show_3d:
            for view in self.slicer_app.view_manager.get_threed_views():
                view.reset_view()

    def _on_ready(self, **_) -> None:
        """State pushes still under way when a tab closes fail on the closed connection: not worth a traceback."""
        loop = asyncio.get_event_loop()
        previous = loop.get_exception_handler()

        def handle(loop, context) -> None:
            if isinstance(context.get("exception"), ConnectionResetError):
                logger.debug("A message to a closed browser tab was dropped: %s", context.get("exception"))
            elif previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handle)

    def _on_exit(self, **_) -> None:
        self.detector.shutdown()
