"""`h3de serve [VOLUME_OR_FOLDER...] --model ID|PATH`: review landmarks in a browser.

Starts a local web server (trame-slicer: Slicer's own scene, views and markups widgets) with
a case list (the given volumes and folders, plus uploads), slice views, detection with progress,
a landmark list, drag-to-correct, placing of absent points, and exports saved beside each case
and downloadable. The model is checked at start and loaded at the first detection. Without a
display, OpenGL runs headless through EGL. Prints ``h3de serve: http://HOST:PORT/`` once the
server listens (``--port 0`` picks a free port); runs until interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import H3DEError
from ..registry import resolve_model
from .model_options import add_model_options, predictor_from_args

READY_PREFIX = "h3de serve: "
SHOW_3D_CHOICES = {"auto": None, "on": True, "off": False}


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    """Register the `serve` sub-command."""
    parser = subparsers.add_parser(
        "serve",
        help=summary,
        description="Serve the browser review app: cases, slice views, detection, corrections, exports.",
    )
    parser.add_argument("inputs", nargs="*", metavar="VOLUME_OR_FOLDER",
                        help="volume file, DICOM folder, folder of volumes, or glob pattern (quote it)")
    add_model_options(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8080, metavar="N", help="port (default 8080; 0: a free one)")
    parser.add_argument("--upload-dir", type=Path, metavar="DIR",
                        help="folder for uploaded volumes and their reviews (default: a new temporary folder)")
    parser.add_argument("--recursive", action="store_true", help="also take volumes in subfolders of folders")
    parser.add_argument("--3d", dest="show_3d", choices=tuple(SHOW_3D_CHOICES), default="auto",
                        help="show the 3D view at start (auto: only with hardware-accelerated OpenGL)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; returns 0."""
    resolve_model(args.model, cache_dir=args.cache_dir)
    use_headless_opengl_without_display()
    try:
        from ..web.app import ReviewApp
        from ..web.cases import CaseList
        from ..web.detection import BackgroundDetector
    except ImportError as error:
        raise H3DEError(
            f"h3de serve needs the web extra ({error}); install it with: pip install 'h3de-landmarks[web]'."
        ) from None

    cases = CaseList(args.inputs, args.upload_dir, args.recursive)
    app = ReviewApp(cases, BackgroundDetector(lambda: predictor_from_args(args)), args.model, SHOW_3D_CHOICES[args.show_3d])
    server = app.server
    server.controller.on_server_ready.add(
        lambda **_: print(f"{READY_PREFIX}http://{args.host}:{server.port}/", flush=True)
    )
    # trame reads its own options from sys.argv unless TRAME_ARGS is set; h3de's are not for it.
    os.environ.setdefault("TRAME_ARGS", "")
    server.start(host=args.host, port=args.port, open_browser=False, show_connection_info=False, timeout=0)
    return 0


def use_headless_opengl_without_display() -> None:
    """On Linux without X11 or Wayland, render through EGL (VTK would try X11 first and warn)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
