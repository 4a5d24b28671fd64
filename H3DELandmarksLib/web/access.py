"""Who may use a served review app: the holder of this run's token, from its own page, one at a time.

- **Token.** Each run makes a random token; the address printed at start-up carries it as
  ``?secret=TOKEN`` (trame's page reads it there and takes it out of the address bar, as Jupyter
  does with its token). The first page load turns it into an HTTP-only, same-site cookie, so
  reloading the page keeps working. Every HTTP request and the websocket need one or the other.
- **Origin and Host.** A request a browser sends from another site carries that site's
  ``Origin``: anything but the page's own origin is refused, so another tab cannot drive the app.
  Served on loopback, the ``Host`` must be a loopback name too (no DNS rebinding).
- **One reviewer.** The app has one scene and one state, so it serves one browser tab at a time; a
  second one gets a page saying so (a reloaded tab waits briefly for its old connection to close).
- **Bounded messages.** wslink lets an authenticated client announce messages of up to 4 GB and
  allocates them on the first chunk; `BoundedUnChunker` caps what one client may announce (one
  upload plus room for the page's own small messages) and closes the connection beyond it.

`AccessGuard` holds all of it: `middleware` for aiohttp (wslink's web server), `protocol` for
wslink's own hooks (`validateToken`, `onConnect`).
"""

from __future__ import annotations

import asyncio
import hmac
import html
import ipaddress
import logging
import re
import secrets
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from wslink.chunking import ID_LENGTH, ID_LOCATION, MESSAGE_SIZE_LENGTH, MESSAGE_SIZE_LOCATION, UnChunker
from wslink.websocket import LinkProtocol

logger = logging.getLogger(__name__)

TOKEN_PARAMETER = "secret"
WEBSOCKET_PATH = "/ws"
INDEX_PATHS = ("/", "/index.html")
PAGE_MESSAGE_ALLOWANCE_BYTES = 16 * 1024 * 1024
RELOAD_GRACE_S = 2.0
CLOSE_TIMEOUT_S = 5.0
LOOPBACK_NAMES = ("localhost",)
TITLE_ELEMENT = re.compile(r"<title>.*?</title>", re.DOTALL)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1), bracketed or not."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class BoundedUnChunker(UnChunker):
    """wslink's un-chunker that refuses announced messages beyond `limit` bytes in all.

    `refuse` is called once, on the first chunk over the limit; from then on every chunk is
    dropped (the connection is being closed).
    """

    def __init__(self, limit: int, refuse) -> None:
        super().__init__()
        self.limit = limit
        self.refuse = refuse
        self.refused = False
        self.set_max_message_size(self.max_message_size)

    def set_max_message_size(self, size: int) -> None:
        super().set_max_message_size(min(size, self.limit))

    def process_chunk(self, chunk: bytes):
        if self.refused:
            return None
        message_id = int.from_bytes(chunk[ID_LOCATION:ID_LOCATION + ID_LENGTH], "little", signed=False)
        announced = int.from_bytes(
            chunk[MESSAGE_SIZE_LOCATION:MESSAGE_SIZE_LOCATION + MESSAGE_SIZE_LENGTH], "little", signed=False
        )
        pending = sum(len(message["content"]) for message in self.pending_messages.values())
        new = message_id not in self.pending_messages
        if announced > self.max_message_size or (new and pending + announced > self.limit):
            self.refused = True
            self.release_pending_messages()
            self.refuse(announced)
            return None
        return super().process_chunk(chunk)


class AccessProtocol(LinkProtocol):
    """wslink's hooks: a connection the middleware let in is authenticated, and gets a bounded un-chunker."""

    def __init__(self, guard: "AccessGuard") -> None:
        super().__init__()
        self.guard = guard
        self.admitted: set[str] = set()

    def onConnect(self, request, client_id: str) -> None:  # noqa: N802 - wslink's hook name
        if request.get(AccessGuard.ADMITTED_KEY):
            self.admitted.add(client_id)
        self.guard.bound_messages(client_id, request.get(AccessGuard.CLOSING_KEY, []))

    def onClose(self, client_id: str) -> None:  # noqa: N802 - wslink's hook name
        self.admitted.discard(client_id)

    async def validateToken(self, token, client_id: str) -> bool:  # noqa: N802 - wslink's hook name
        """The page's hello: its connection came in with the token (cookie), or the hello carries it."""
        return client_id in self.admitted or self.guard.token_matches(token)


class AccessGuard:
    """The access rules of a served app (see module notes).

    Args:
        host: the address the server listens on.
        max_upload_bytes: the largest upload (all files of one upload together).
        title: the page's title, put into trame's page before it is served.
        token: the run's token (default: a new random one).
    """

    ADMITTED_KEY = web.RequestKey("h3de_admitted", bool)
    CLOSING_KEY = web.RequestKey("h3de_closing", list)

    def __init__(self, host: str, max_upload_bytes: int, title: str, token: str | None = None) -> None:
        self.host = host
        self.loopback = is_loopback(host)
        self.max_upload_bytes = max_upload_bytes
        self.title = title
        self.token = token or secrets.token_urlsafe(32)
        self.protocol = AccessProtocol(self)
        self.reviewers = 0
        self._handlers = []
        self._index_html: str | None = None

    def url(self, host: str, port: int) -> str:
        """The address to open: the page with this run's token."""
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/?{urlencode({TOKEN_PARAMETER: self.token})}"

    def token_matches(self, token) -> bool:
        return isinstance(token, str) and hmac.compare_digest(token.encode(), self.token.encode())

    # wiring: trame's on_server_bind gives wslink's web server before it starts
    def bind(self, wslink_server) -> None:
        """Add the middleware to wslink's aiohttp application and read trame's page."""
        wslink_server.app.middlewares.append(self.middleware)
        # wslink keeps its websocket handlers (which own each connection's un-chunker) here only.
        self._handlers = list(getattr(wslink_server, "_ws_handlers", []))
        content = wslink_server.config.get("static", {}).get("/")
        if content:
            page = (Path(content) / "index.html").read_text(encoding="utf-8")
            self._index_html = TITLE_ELEMENT.sub(f"<title>{html.escape(self.title)}</title>", page, count=1)

    def configure_protocol(self, server_protocol) -> None:
        """trame's add_protocol_to_configure hook: register the wslink hooks."""
        server_protocol.registerLinkProtocol(self.protocol)

    @property
    def max_message_bytes(self) -> int:
        return self.max_upload_bytes + PAGE_MESSAGE_ALLOWANCE_BYTES

    def bound_messages(self, client_id: str, closing: list) -> None:
        """Give connection `client_id` a `BoundedUnChunker` in place of wslink's.

        The close it starts on refusal goes into `closing`, for the middleware to finish before
        the connection is torn down (else the client may see no close frame).
        """
        for handler in self._handlers:
            websocket = handler.connections.get(client_id)
            if websocket is None or client_id not in handler.unchunkers:
                continue

            def refuse(announced: int, websocket=websocket) -> None:
                logger.warning("Closed a connection that announced a %d-byte message (limit %d bytes).",
                               announced, self.max_message_bytes)
                closing.append(asyncio.ensure_future(websocket.close(code=aiohttp.WSCloseCode.MESSAGE_TOO_BIG,
                                                                     message=b"Message too large")))

            handler.unchunkers[client_id] = BoundedUnChunker(self.max_message_bytes, refuse)

    # HTTP
    def _has_token(self, request: web.Request) -> tuple[bool, bool]:
        """(allowed, came in the address)."""
        if self.token_matches(request.query.get(TOKEN_PARAMETER)):
            return True, True
        return self.token_matches(request.cookies.get(self.cookie_name(request))), False

    @staticmethod
    def cookie_name(request: web.Request) -> str:
        return f"h3de-serve-{request.url.port}"

    def _refusal(self, status: int, sentence: str) -> web.Response:
        logger.info("Refused %s", sentence)
        return web.Response(status=status, content_type="text/html", text=(
            f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(self.title)}"
            f"</title></head><body style=\"font-family: sans-serif; margin: 3em;\"><h1>{html.escape(self.title)}"
            f"</h1><p>{html.escape(sentence)}</p></body></html>"
        ))

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        if self.loopback and not is_loopback(request.url.host or ""):
            return self._refusal(403, f"This server answers only at a loopback address, not {request.host}.")
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{request.host}":
            return self._refusal(403, f"Requests from another site ({origin}) are not accepted.")
        allowed, in_address = self._has_token(request)
        if not allowed:
            return self._refusal(403, "Open the address h3de serve printed when it started: "
                                      "it carries this run's access token.")
        if request.path == WEBSOCKET_PATH:
            return await self._websocket(request, handler)
        if request.path in INDEX_PATHS:
            response = await self._index(request)
        else:
            response = await handler(request)
        if in_address:
            response.set_cookie(self.cookie_name(request), self.token, httponly=True, samesite="Strict",
                                path="/")
        return response

    async def _websocket(self, request: web.Request, handler):
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return self._refusal(400, "This address takes websocket connections only.")
        if self.reviewers:
            return self._refusal(409, "Another browser tab is already reviewing on this server.")
        request[self.ADMITTED_KEY] = True
        request[self.CLOSING_KEY] = closing = []
        self.reviewers += 1
        try:
            return await handler(request)
        finally:
            if closing:
                await asyncio.wait(closing, timeout=CLOSE_TIMEOUT_S)
            self.reviewers -= 1

    async def _index(self, request: web.Request) -> web.Response:
        waited = 0.0
        while self.reviewers and waited < RELOAD_GRACE_S:
            await asyncio.sleep(0.1)
            waited += 0.1
        if self.reviewers:
            return self._refusal(409, "Another browser tab or browser is already reviewing on this server, "
                                      "and the app serves one reviewer at a time (one scene, one set of files). "
                                      "Close it there and reload this page, or start another h3de serve "
                                      "with its own --port.")
        if request.path == "/":
            query = urlencode({key: value for key, value in request.query.items() if key != TOKEN_PARAMETER})
            return web.Response(status=302, headers={"Location": "index.html" + (f"?{query}" if query else "")})
        return web.Response(text=self._index_html or "", content_type="text/html",
                            headers={"Cache-Control": "no-store"})
