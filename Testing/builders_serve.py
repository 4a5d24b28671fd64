"""`h3de serve` as its own process, and a raw wslink client to probe it the way a stranger would.

`start_serve` runs ``h3de serve --port 0`` (headless EGL rendering) and reads the address it
prints; `stop_serve` stops it by its process id. `WslinkClient` speaks wslink's framing by hand
(each binary message: a 12-byte header of message id, offset and total size, then msgpack), so
tests can send what no browser would: a wrong ``Origin``, no token, chunk headers announcing 4 GB.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import msgpack
import pytest

from H3DELandmarksLib.cli.serve import READY_PREFIX

SERVER_START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0


@dataclass
class ServedApp:
    """A running `h3de serve`: its process, the printed address and its output so far."""

    process: subprocess.Popen
    url: str
    log: collections.deque
    reader: threading.Thread

    @property
    def base(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def token(self) -> str:
        return parse_qs(urlsplit(self.url).query)["secret"][0]

    @property
    def output(self) -> str:
        return "".join(self.log)

    def rss_bytes(self) -> int:
        """The server's resident memory."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("VmRSS not found")


def start_serve(arguments: list[str]) -> ServedApp:
    """Start ``h3de serve --port 0 ARGUMENTS`` and wait for its address."""
    command = [sys.executable, "-m", "H3DELandmarksLib.cli.main", "serve", "--port", "0", "--device", "cpu",
               *arguments]
    environment = dict(os.environ, VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               text=True, env=environment)
    log: collections.deque = collections.deque(maxlen=400)
    reader = threading.Thread(target=lambda: log.extend(process.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        for line in list(log):
            if line.startswith(READY_PREFIX):
                return ServedApp(process, line[len(READY_PREFIX):].strip(), log, reader)
        if process.poll() is not None:
            break
        time.sleep(0.1)
    stop_serve(ServedApp(process, "", log, reader))
    pytest.fail(f"h3de serve did not start (exit status {process.poll()}):\n{''.join(log)}", pytrace=False)


def stop_serve(app: ServedApp) -> float:
    """Send SIGTERM and wait for the process to end; returns the seconds it took (killed after 10 s)."""
    started = time.monotonic()
    if app.process.poll() is None:
        app.process.send_signal(signal.SIGTERM)
        try:
            app.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            app.process.kill()
            app.process.wait()
    took = time.monotonic() - started
    app.reader.join(5)
    return took


def wslink_chunk(message_id: int, offset: int, total: int, content: bytes) -> bytes:
    """One wslink chunk: little-endian uint32 id, offset and total size, then the content."""
    return b"".join(value.to_bytes(4, "little") for value in (message_id, offset, total)) + content


class WslinkClient:
    """A websocket client that speaks wslink's messages (see module notes); use inside ``async with``."""

    def __init__(self, app: ServedApp, origin: str | None = None, cookie_token: str | None = None,
                 query_token: str | None = None, autoclose: bool = True) -> None:
        self.app = app
        self.autoclose = autoclose
        self.origin = origin
        self.cookie_token = cookie_token
        self.query_token = query_token
        self._next_id = 1

    async def __aenter__(self) -> "WslinkClient":
        import aiohttp

        headers = {"Origin": self.origin} if self.origin else {}
        if self.cookie_token:
            port = urlsplit(self.app.url).port
            headers["Cookie"] = f"h3de-serve-{port}={self.cookie_token}"
        url = self.app.base.replace("http", "ws", 1) + "/ws"
        if self.query_token:
            url += f"?secret={self.query_token}"
        self.session = aiohttp.ClientSession()
        try:
            self.websocket = await self.session.ws_connect(url, headers=headers, max_msg_size=0,
                                                        autoclose=self.autoclose)
        except BaseException:
            await self.session.close()
            raise
        return self

    async def __aexit__(self, *_) -> None:
        await self.websocket.close()
        await self.session.close()

    async def send_raw(self, data: bytes) -> None:
        await self.websocket.send_bytes(data)

    async def call(self, method: str, args: list, timeout_s: float = 20.0) -> dict:
        """Send an RPC and return wslink's reply to it (``result`` or ``error``)."""
        rpc_id = f"rpc:c0:{self._next_id}" if method != "wslink.hello" else f"system:c0:{self._next_id}"
        self._next_id += 1
        payload = msgpack.packb({"wslink": "1.0", "id": rpc_id, "method": method, "args": args, "kwargs": {}})
        await self.send_raw(wslink_chunk(self._next_id, 0, len(payload), payload))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = await self.websocket.receive(timeout=deadline - time.monotonic())
            if message.type.name != "BINARY":
                raise ConnectionError(f"the server sent {message.type.name} ({message.extra})")
            reply = msgpack.unpackb(message.data[12:])
            if reply.get("id") == rpc_id:
                return reply
        raise TimeoutError(f"no reply to {method}")
