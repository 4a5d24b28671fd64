"""The review app: a trame server around trame-slicer's Slicer scene, views and markups widgets.

`ReviewApp` builds the Slicer application (scene, logics), the remote-rendered slice views
(and a 3D view when asked for), the page and the `ReviewController`; ``app.server.start()``
serves it (`h3de serve` does). The
views are Slicer's own: markups points are Slicer's point widgets, so dragging a point and
placing one in the slice views work as in Slicer. The 3D view is off by default where OpenGL
is software-rendered (it is slow there); ``show_3d`` switches it at any time.
"""

from __future__ import annotations

import re

import vtkmodules.vtkRenderingOpenGL2  # noqa: F401 - registers the OpenGL render window
from trame.app import TrameApp
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition
from vtkmodules.vtkRenderingCore import vtkRenderWindow

from .cases import CaseList
from .controller import ReviewController
from .detection import BackgroundDetector
from .ui import build_page

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


class ReviewApp(TrameApp):
    """The whole app (see module notes).

    Args:
        cases: the cases to offer.
        detector: runs detections (the model loads at the first one).
        model_label: the model as the user named it, shown until it is loaded.
        show_3d: show the 3D view at start; None: only where OpenGL is hardware-accelerated.
        server: a trame server or its name (None: the default server).
    """

    def __init__(self, cases: CaseList, detector: BackgroundDetector, model_label: str,
                 show_3d: bool | None = None, server=None) -> None:
        super().__init__(server)
        self.slicer_app = SlicerApp()
        self.detector = detector
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout_dict(review_layouts(), lazy_initialization=True)
        # Views made while the page is being built would be added to it twice: make them first.
        self.layout_manager.create_layout_views_if_needed(SLICES_LAYOUT)
        self.layout_manager.set_layout(SLICES_LAYOUT)
        self.controller = ReviewController(
            self.state, self.slicer_app, cases, detector, model_label,
            attachment=lambda data: self.server.protocol.addAttachment(data),
        )
        self.state.show_3d = not software_rendering() if show_3d is None else show_3d
        self.ui = build_page(self.server, self.controller, self.layout_manager)
        self.state.change("show_3d")(self._on_show_3d)
        if self.state.show_3d:
            self._on_show_3d(True)
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

    def _on_exit(self, **_) -> None:
        self.detector.shutdown()
