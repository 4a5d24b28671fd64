"""`h3de serve [VOLUME_OR_FOLDER...] [--model ID|PATH]`: review landmarks in a browser.

Starts a local web server (trame-slicer: Slicer's own scene, views and markups widgets) with
a case list (the given volumes and folders, plus uploads), slice views, detection with progress,
a landmark list, drag-to-correct, placing of absent points, and exports saved beside each case
and downloadable. The model (default: the bundled demonstration model; the page offers every
bundled or downloaded one) is checked at start and loaded at the first detection. Without a
display, OpenGL runs headless through EGL. Prints ``h3de serve: http://HOST:PORT/?secret=TOKEN``
once the server listens (``--port 0`` picks a free port): only that address opens the app (see
`H3DELandmarksLib.web.access`). Listening on anything but loopback needs ``--allow-remote``.
Runs until interrupted (Ctrl+C or SIGTERM, which stop it at once).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..atomic import check_writable_folder
from ..errors import H3DEError
from ..registry import resolve_model
from .demo import DEFAULT_MODEL
from .model_options import add_model_options, positive_int, predictor_from_args

READY_PREFIX = "h3de serve: "
SHOW_3D_CHOICES = {"auto": None, "on": True, "off": False}
DEFAULT_MAX_UPLOAD_MB = 1024


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    """Register the `serve` sub-command."""
    parser = subparsers.add_parser(
        "serve",
        help=summary,
        description="Serve the browser review app: cases, slice views, detection, corrections, exports.",
    )
    parser.add_argument("inputs", nargs="*", metavar="VOLUME_OR_FOLDER",
                        help="volume file, DICOM folder, folder of volumes, or glob pattern (quote it)")
    add_model_options(parser, default_model=DEFAULT_MODEL)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a --host other than loopback (anyone who can reach it and has the printed "
                             "address can review and write files; the connection is not encrypted)")
    parser.add_argument("--port", type=int, default=8080, metavar="N", help="port (default 8080; 0: a free one)")
    parser.add_argument("--upload-dir", type=Path, metavar="DIR",
                        help="folder for uploaded volumes and their reviews (default: a new temporary folder)")
    parser.add_argument("--max-upload-mb", type=positive_int, default=DEFAULT_MAX_UPLOAD_MB, metavar="MB",
                        help=f"largest upload, all its files together (default {DEFAULT_MAX_UPLOAD_MB} MB)")
    parser.add_argument("--recursive", action="store_true", help="also take volumes in subfolders of folders")
    parser.add_argument("--3d", dest="show_3d", choices=tuple(SHOW_3D_CHOICES), default="auto",
                        help="show the 3D view at start (auto: only with hardware-accelerated OpenGL)")
    parser.add_argument("--verbose", action="store_true", help="log VTK's warnings and each connection")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted, then end the process at once (see `exit_now`)."""
    resolve_model(args.model, cache_dir=args.cache_dir)
    if args.upload_dir is not None:
        check_writable_folder(args.upload_dir, "--upload-dir")
    use_headless_opengl_without_display()
    try:
        from ..web.access import AccessGuard
        from ..web.app import ReviewApp
        from ..web.cases import CaseList
        from ..web.detection import BackgroundDetector
        from ..web.ui import TITLE
    except ImportError as error:
        raise H3DEError(
            f"h3de serve needs the web extra ({error}); install it with: pip install 'h3de-landmarks[web]'."
        ) from None
    remote = check_host(args.host, args.allow_remote)
    if not args.verbose:
        quiet_vtk()

    max_upload_bytes = args.max_upload_mb * 1024 * 1024
    cases = CaseList(args.inputs, args.upload_dir, args.recursive, max_upload_bytes)
    access = AccessGuard(args.host, max_upload_bytes, TITLE)
    detector = BackgroundDetector(lambda model: predictor_from_args(args, model), args.model)
    app = ReviewApp(cases, detector, SHOW_3D_CHOICES[args.show_3d], access=access, cache_dir=args.cache_dir)
    server = app.server

    def ready(**_) -> None:
        if remote:
            print(f"h3de serve: warning: listening on {args.host}, reachable from other machines; "
                  "share the address below only with reviewers you trust (it is sent unencrypted).",
                  file=sys.stderr, flush=True)
        print(f"{READY_PREFIX}{access.url(args.host, server.port)}", flush=True)

    server.controller.on_server_ready.add(ready)
    # trame reads its own options from sys.argv unless TRAME_ARGS is set; h3de's are not for it.
    os.environ.setdefault("TRAME_ARGS", "")
    server.start(host=args.host, port=args.port, open_browser=False, show_connection_info=False, timeout=0)
    exit_now(0)


def check_host(host: str, allow_remote: bool) -> bool:
    """True when `host` is not loopback (allowed only with `allow_remote`); raises `H3DEError` otherwise."""
    from ..web.access import is_loopback

    if is_loopback(host):
        return False
    if not allow_remote:
        raise H3DEError(f"--host {host} would let other machines reach the review app; "
                        "add --allow-remote to do that on purpose.")
    return True


def exit_now(status: int) -> None:
    """End the process without tearing down Slicer's scene and VTK objects (seconds, nothing to save).

    Everything is written by then: saves are atomic and finished on the event loop, and a
    detection still running in the worker thread writes nothing.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def quiet_vtk() -> None:
    """Keep VTK's warnings (deprecations, render-window notes) out of the server's log."""
    from vtkmodules.vtkCommonCore import vtkLogger, vtkObject

    vtkObject.GlobalWarningDisplayOff()
    vtkLogger.SetStderrVerbosity(vtkLogger.VERBOSITY_ERROR)


def use_headless_opengl_without_display() -> None:
    """On Linux without X11 or Wayland, render through EGL (VTK would try X11 first and warn)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
