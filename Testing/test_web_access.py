"""`h3de serve` probed as a stranger would: a raw websocket client and plain HTTP against the real server.

One server (``h3de serve CASES`` with no ``--model``: the bundled default) serves the whole module;
the last test stops it with SIGTERM. Each test reproduces one fault found before the app had an
access guard: a client without the token or from another site drove the app, chunk headers
announcing 4 GB each were allocated, a second tab shared the first one's state, ``GET /ws`` gave a
500 with a traceback, SIGTERM took seconds, and VTK's warnings filled the log.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import requests

from builders_serve import WslinkClient, start_serve, stop_serve, wslink_chunk
from H3DELandmarksLib.cli.main import main
from H3DELandmarksLib.data.phantom import make_phantom
from H3DELandmarksLib.data.volume_io import write_volume

GIGABYTES_4 = 4 * 1024**3 - 1
MAX_UPLOAD_MB = 8
ALLOWED_GROWTH_BYTES = 200 * 1024**2

pytestmark = [pytest.mark.browser, pytest.mark.slow]
pytest.importorskip("trame_slicer", reason="h3de serve needs trame-slicer (pip install -e '.[web]')")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    write_volume(make_phantom(3, size=32, spacing=5.0)[0], root / "cases" / "alpha.nrrd")
    app = start_serve([str(root / "cases"), "--max-upload-mb", str(MAX_UPLOAD_MB), "--3d", "off"])
    yield app
    stop_serve(app)


def refused_handshake(served, **client) -> int:
    async def connect():
        async with WslinkClient(served, **client):
            return 101

    try:
        return asyncio.run(connect())
    except aiohttp.WSServerHandshakeError as error:
        return error.status


def test_the_printed_address_carries_a_random_token(served):
    assert served.url.startswith("http://127.0.0.1:") and len(served.token) >= 32
    page = requests.get(served.url, timeout=10)
    assert page.status_code == 200 and "<title>H3DE Landmarks review</title>" in page.text
    assert requests.get(served.base + "/", timeout=10).status_code == 403
    assert requests.get(served.base + "/index.html?secret=wslink-secret", timeout=10).status_code == 403


def test_a_websocket_without_the_token_or_from_another_site_is_refused(served):
    assert refused_handshake(served, origin=served.base) == 403
    assert refused_handshake(served, origin=served.base, query_token="wslink-secret") == 403
    assert refused_handshake(served, origin="http://evil.example", cookie_token=served.token) == 403
    response = requests.get(served.url, headers={"Host": f"evil.example:{served.base.rsplit(':', 1)[1]}"}, timeout=10)
    assert response.status_code == 403, "a rebound DNS name is not a loopback host"


def test_the_holder_of_the_token_gets_the_app(served):
    async def probe():
        async with WslinkClient(served, origin=served.base, cookie_token=served.token) as client:
            hello = await client.call("wslink.hello", [{"secret": "wslink-secret"}])
            state = (await client.call("trame.state.get", []))["result"]["state"]
            return hello, state

    hello, state = asyncio.run(probe())
    assert hello["result"]["clientID"]
    assert [item["name"] for item in state["cases"]] == ["alpha"]
    assert state["model"] == "phantom@1.0.0" and any(item["spec"] == "phantom@1.0.0" for item in state["models"])


def test_chunk_headers_announcing_4_gb_close_the_connection_without_allocating(served):
    async def flood():
        async with WslinkClient(served, origin=served.base, query_token=served.token, autoclose=False) as client:
            await client.call("wslink.hello", [{"secret": served.token}])
            before = served.rss_bytes()
            for message_id in range(3):
                await client.send_raw(wslink_chunk(1000 + message_id, 0, GIGABYTES_4, b"x" * 64))
            message = await client.websocket.receive(timeout=20)
            while message.type == aiohttp.WSMsgType.BINARY:
                message = await client.websocket.receive(timeout=20)
            return message, served.rss_bytes() - before

    message, growth = asyncio.run(flood())
    # The server sends close code 1009 and drops the connection; a busy client may see only the drop.
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
    assert message.type != aiohttp.WSMsgType.CLOSE or message.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    assert growth < ALLOWED_GROWTH_BYTES
    deadline = time.monotonic() + 10
    while "announced a 4294967295-byte message" not in served.output and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "announced a 4294967295-byte message" in served.output


def test_a_second_reviewer_is_refused_while_the_first_is_connected(served):
    async def two():
        async with WslinkClient(served, origin=served.base, cookie_token=served.token):
            second = await asyncio.to_thread(requests.get, served.url, timeout=20)
            try:
                async with WslinkClient(served, origin=served.base, cookie_token=served.token):
                    return second, 101
            except aiohttp.WSServerHandshakeError as error:
                return second, error.status

    page, websocket_status = asyncio.run(two())
    assert page.status_code == 409 and "already reviewing on this server" in page.text
    assert websocket_status == 409
    assert requests.get(served.url, timeout=20).status_code == 200, "free again once the first one left"


def test_get_ws_without_an_upgrade_is_a_400_without_traceback(served):
    response = requests.get(served.base + "/ws", cookies={f"h3de-serve-{served.base.rsplit(':', 1)[1]}": served.token},
                            timeout=10)
    assert response.status_code == 400 and "websocket connections only" in response.text


def test_a_host_other_than_loopback_needs_an_explicit_opt_in(capsys):
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == ("h3de: error: --host 0.0.0.0 would let other machines reach the review app; "
                     "add --allow-remote to do that on purpose.")


def test_zz_sigterm_stops_within_a_second_and_the_log_is_clean(served):
    took = stop_serve(served)
    assert served.process.returncode == 0 and took < 1.0, took
    output = served.output
    assert "Traceback" not in output and "vtkObject.cxx" not in output and "Warning:" not in output, output
