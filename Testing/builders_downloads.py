"""A local HTTP server's request handler and routes, and model registries that point at it."""

from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from H3DELandmarksLib.registry import load_registry

MODEL_ID = "test-skull"


class Handler(BaseHTTPRequestHandler):
    """Serves `server.routes[path](handler, attempt)`; logs every request's path and Range header."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        attempt = sum(1 for logged in self.server.log if logged["path"] == self.path)
        self.server.log.append({"path": self.path, "range": self.headers.get("Range")})
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
        else:
            route(self, attempt)


def serve(payload: bytes, ranges: bool = True, cut_at: int | None = None):
    """A route sending `payload` (206 for Range requests if `ranges`), closing after `cut_at` bytes."""

    def route(handler: Handler, attempt: int) -> None:
        match = re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range") or "")
        start = int(match.group(1)) if ranges and match else 0
        handler.send_response(206 if start else 200)
        handler.send_header("Content-Length", str(len(payload) - start))
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        handler.end_headers()
        body = payload[start:]
        handler.wfile.write(body if cut_at is None else body[:cut_at])
        handler.wfile.flush()
        handler.close_connection = True

    return route


def make_registry(tmp_path: Path, server, path: str, sha256: str, size: int):
    registry_file = tmp_path / "models.json"
    entry = {"id": MODEL_ID, "version": "1.0.0", "title": "Test skull", "bundled": None,
             "url": f"http://127.0.0.1:{server.server_port}{path}", "sha256": sha256, "size": size}
    registry_file.write_text(json.dumps({"models": [entry]}), encoding="utf-8")
    return load_registry(registry_file)
