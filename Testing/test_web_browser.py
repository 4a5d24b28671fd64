"""End to end in a real browser: Debian's chromium, driven by Playwright, against `h3de serve`.

The server runs as its own process (``h3de serve --port 0``, headless EGL rendering) on a CT
phantom folder, with a small random-weight model whose output biases make two landmarks present
and the third absent, wherever the weights put them. The browser uploads a second phantom, goes
back to the first, detects, drags one point and places the absent one in the axial view,
downloads both exports and saves. A second browser context meanwhile gets the page saying the app
already has a reviewer; closing the first tab logs nothing. Each step waits on the server's shared state and on freshly rendered view
images; mouse gestures are retried when a frame arrives late. Assertions: the corrections are in
the server's state with the right screen-to-LPS directions, the downloads equal the files saved
beside the case and hold the same LPS positions, labels and review statuses, the page has the
app's title, the server's log holds no traceback, and the page made no request outside the
server (offline-safe).

Prerequisites (CI installs them): the Python packages ``playwright`` and ``trame-slicer`` (the
test is skipped without them, as are the other tests of optional extras) and the Debian packages
``chromium libegl1 libgl1-mesa-dri`` (the test fails without them). Marked ``browser``:
``pytest -m "not browser"`` leaves it out.
"""

from __future__ import annotations

import csv
import ctypes.util
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from builders_blobs import manifest
from builders_serve import ServedApp, start_serve, stop_serve
from H3DELandmarksLib.data.phantom import make_phantom
from H3DELandmarksLib.data.volume_io import write_volume
from H3DELandmarksLib.model.config import default_config
from H3DELandmarksLib.model.network import H3DENet
from H3DELandmarksLib.registry import write_package

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
VIEWPORT = {"width": 1400, "height": 900}
DETECTION_TIMEOUT_S = 120.0
STEP_TIMEOUT_S = 30.0
GESTURE_TIMEOUT_S = 10.0
GESTURE_ATTEMPTS = 3
SLICE_VIEWS = 3
AXIAL = 0  # the first view of the layout
DRAG_PX = (60, 40)  # right, down
PLACE_PX = (-40, -24)  # left, up, from the view centre
OUTPUT_BIAS = [4.0, 4.0, -100.0]  # heatmap offsets: confidence 1, 1 and 0

pytestmark = [pytest.mark.browser, pytest.mark.slow]
pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (pip install -e '.[test]')")
pytest.importorskip("trame_slicer", reason="the browser test needs trame-slicer (pip install -e '.[web]')")


@dataclass
class Server:
    url: str
    root: Path
    app: ServedApp


def require_prerequisites() -> None:
    missing = []
    if not Path(CHROMIUM).is_file():
        missing.append(f"chromium at {CHROMIUM} (apt-get install chromium)")
    if ctypes.util.find_library("EGL") is None:
        missing.append("libEGL (apt-get install libegl1 libgl1-mesa-dri)")
    if missing:
        pytest.fail("The browser test needs " + "; ".join(missing) + ".", pytrace=False)


def biased_package(path: Path) -> Path:
    """A tiny random-weight model for CT intensities whose last layer's biases set each landmark's confidence."""
    stages = [{"name": "coarse", "spacing_mm": [4.0] * 3, "patch_size": [40] * 3},
              {"name": "fine", "spacing_mm": [2.0] * 3, "patch_size": [40] * 3}]
    config = default_config(len(OUTPUT_BIAS), embed_dims=(16, 32, 64, 128), qk_dims=(16, 32, 64, 128))
    package_manifest = manifest(len(OUTPUT_BIAS), "canonical", stages, threshold=0.5)
    package_manifest["architecture"] = config.to_dict()
    package_manifest["preprocessing"]["intensity"] = {"clip_min": -1000.0, "clip_max": 2000.0,
                                                      "scale_min": 0.0, "scale_max": 1.0}
    package_manifest["heatmap_peak"] = 1.0
    torch.manual_seed(0)
    state = H3DENet(config).state_dict()
    state["final_conv.bias"] = torch.tensor(OUTPUT_BIAS)
    return write_package(path, package_manifest, state).path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_prerequisites()
    root = tmp_path_factory.mktemp("web")
    model = biased_package(root / "model")
    write_volume(make_phantom(3, size=64, spacing=2.5)[0], root / "cases" / "alpha.nrrd")
    write_volume(make_phantom(4, size=64, spacing=2.5)[0], root / "to-upload" / "beta.nrrd")
    app = start_serve([str(root / "cases"), "--model", str(model), "--upload-dir", str(root / "uploads"),
                       "--3d", "off"])
    try:
        yield Server(app.url, root, app)
    finally:
        stop_serve(app)


# Shared state and rendered images, read in the page.
RENDERED = """(count) => {
    const images = Array.from(document.querySelectorAll('img.image-display-area'));
    if (images.length !== count) return false;
    return images.every((image) => {
        const box = image.getBoundingClientRect();
        if (!image.complete || Math.abs(image.naturalWidth - Math.round(box.width)) > 1
            || Math.abs(image.naturalHeight - Math.round(box.height)) > 1) return false;
        const canvas = document.createElement('canvas');
        canvas.width = 64; canvas.height = 64;
        const context = canvas.getContext('2d');
        context.drawImage(image, 0, 0, 64, 64);
        const pixels = context.getImageData(0, 0, 64, 64).data;
        let low = 255, high = 0;
        for (let i = 0; i < pixels.length; i += 4) {
            low = Math.min(low, pixels[i]); high = Math.max(high, pixels[i]);
        }
        return high - low > 40;
    });
}"""
FRAME = "(view) => document.querySelectorAll('img.image-display-area')[view].src"


def read_state(page, key: str):
    return page.evaluate("(key) => window.trame.state.get(key)", key)


def wait_for_state(page, condition: str, timeout_s: float = STEP_TIMEOUT_S) -> None:
    """Wait until the JavaScript `condition` on the shared state ``s`` holds."""
    page.wait_for_function(f"() => {{ const s = window.trame.state; return {condition}; }}",
                           timeout=timeout_s * 1000)


def act_and_wait_for_frame(page, view: int, action, timeout_s: float = STEP_TIMEOUT_S) -> None:
    """Run `action`, then wait for a new image of `view` and for every view to be rendered."""
    before = page.evaluate(FRAME, view)
    action()
    page.wait_for_function(f"(before) => ({FRAME})({view}) !== before", arg=before, timeout=timeout_s * 1000)
    page.wait_for_function(RENDERED, arg=SLICE_VIEWS, timeout=timeout_s * 1000)


def view_centre(page, view: int) -> tuple[float, float]:
    box = page.locator("img.image-display-area").nth(view).bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def hover(page, x: float, y: float) -> None:
    """Approach (x, y) in small steps, so the point widget under it becomes active."""
    for step in range(8, -1, -1):
        page.mouse.move(x - 2 * step, y - 2 * step)
        time.sleep(0.04)
    time.sleep(0.3)


def drag(page, start: tuple[float, float], offset: tuple[float, float]) -> None:
    hover(page, *start)
    page.mouse.down()
    time.sleep(0.2)
    for step in range(1, 16):
        page.mouse.move(start[0] + offset[0] * step / 15, start[1] + offset[1] * step / 15)
        time.sleep(0.04)
    time.sleep(0.3)
    page.mouse.up()


def retried(gesture, done: str, what: str, page) -> None:
    """Run `gesture` until the state condition `done` holds (a late frame can swallow a gesture)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(GESTURE_ATTEMPTS):
        try:
            gesture()
            wait_for_state(page, done, GESTURE_TIMEOUT_S)
            return
        except PlaywrightTimeout:
            continue
    pytest.fail(f"{what} did not reach the server after {GESTURE_ATTEMPTS} attempts.", pytrace=False)


def download(page, button: str) -> tuple[str, bytes]:
    with page.expect_download(timeout=STEP_TIMEOUT_S * 1000) as info:
        page.click(button)
    return info.value.suggested_filename, Path(info.value.path()).read_bytes()


def test_review_in_a_browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1, accept_downloads=True)
            context.set_default_timeout(STEP_TIMEOUT_S * 1000)
            page = context.new_page()
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            review(page, server)
            second_reviewer_is_refused(browser, server)
            close_during_detection(page, context)
        except Exception:
            print("h3de serve output:\n" + server.app.output)
            raise
        finally:
            browser.close()
    origin = server.app.base + "/"
    assert all(url.startswith((origin, "data:", "blob:")) for url in requests), requests
    assert "Traceback" not in server.app.output, server.app.output


def close_during_detection(page, context) -> None:
    """Close the tab while a detection runs, then reopen: the detection ends quietly, the app is free."""
    page.click("#h3de-detect")
    wait_for_state(page, "s.get('detecting')")
    url = page.url
    page.close()
    reopened = context.new_page()
    reopened.goto(url)
    reopened.wait_for_selector("#h3de-detect")
    wait_for_state(reopened, "!s.get('detecting') && s.get('landmarks').length === 3", DETECTION_TIMEOUT_S)
    reopened.close()
    context.close()


def second_reviewer_is_refused(browser, server: Server) -> None:
    """Another browser (its own cookies) opening the printed address is told the app is taken."""
    other = browser.new_context()
    try:
        response = other.new_page().goto(server.url)
        assert response.status == 409
        assert "already reviewing on this server" in response.text()
    finally:
        other.close()


def review(page, server: Server) -> None:
    page.goto(server.url)
    page.wait_for_selector("#h3de-detect")
    assert page.title() == "H3DE Landmarks review"
    assert "secret" not in page.url, "the token leaves the address bar"
    wait_for_state(page, "s.get('case_index') === 0 && s.get('volume_open')")
    page.wait_for_function(RENDERED, arg=SLICE_VIEWS, timeout=STEP_TIMEOUT_S * 1000)

    # Upload a second case (it opens), then go back to the first.
    act_and_wait_for_frame(page, AXIAL, lambda: page.set_input_files(
        "#h3de-upload", str(server.root / "to-upload" / "beta.nrrd")))
    wait_for_state(page, "s.get('cases').length === 2 && s.get('case_index') === 1")
    assert read_state(page, "cases")[1]["path"] == str(server.root / "uploads" / "upload-1" / "beta.nrrd")
    act_and_wait_for_frame(page, AXIAL, lambda: page.click("#h3de-previous"))
    wait_for_state(page, "s.get('case_index') === 0")

    page.click("#h3de-detect")
    wait_for_state(page, "s.get('landmarks').length === 3 && !s.get('detecting')", DETECTION_TIMEOUT_S)
    assert read_state(page, "model_label") == "blob-standin@1.0.0"
    predicted = read_state(page, "landmarks")
    assert [(row["name"], row["status"]) for row in predicted] == [
        ("L0", "predicted"), ("L1", "predicted"), ("L2", "absent")]

    # Drag L0 in the axial view: screen right is the patient's left (+L), screen down is posterior (+P).
    def select_l0():
        page.click("#h3de-landmark-0 td:first-child")
        wait_for_state(page, "s.get('active_landmark') === 0")

    def drag_l0():
        select_l0()  # centres the views on L0 again (the server handles messages in order)
        page.wait_for_function(RENDERED, arg=SLICE_VIEWS, timeout=GESTURE_TIMEOUT_S * 1000)
        drag(page, view_centre(page, AXIAL), DRAG_PX)

    act_and_wait_for_frame(page, AXIAL, select_l0)
    retried(drag_l0, "s.get('landmarks')[0].status === 'moved'", "Dragging L0", page)
    moved = read_state(page, "landmarks")[0]
    shift = np.array(moved["position"]) - predicted[0]["position"]
    assert shift[0] > 0 and shift[1] > 0 and abs(shift[2]) < 1e-3, shift
    assert shift[0] / shift[1] == pytest.approx(DRAG_PX[0] / DRAG_PX[1], rel=0.15)
    assert moved["displacement_mm"] > 2.0

    # Place the absent L2: the views centre on the model's guess, the click puts it left of and above it.
    act_and_wait_for_frame(page, AXIAL, lambda: page.click("#h3de-place-2"))
    wait_for_state(page, "s.get('placing') === 2")

    def click_to_place():
        x, y = view_centre(page, AXIAL)
        hover(page, x + PLACE_PX[0], y + PLACE_PX[1])
        page.mouse.click(x + PLACE_PX[0], y + PLACE_PX[1])

    retried(click_to_place, "s.get('landmarks')[2].placed && s.get('placing') === -1", "Placing L2", page)
    placed = read_state(page, "landmarks")[2]
    guess = np.array(placed["predicted_position"])
    offset = np.array(placed["position"]) - guess
    assert placed["status"] == "placed by hand"
    assert offset[0] < 0 and offset[1] < 0 and abs(offset[2]) < 1e-3, offset
    assert offset[0] / offset[1] == pytest.approx(PLACE_PX[0] / PLACE_PX[1], rel=0.15)

    # Export: downloads equal the files then saved beside the case, in LPS with labels and review statuses.
    name, markups_bytes = download(page, "#h3de-download-mrk")
    assert name == "alpha.landmarks.mrk.json"
    name, csv_bytes = download(page, "#h3de-download-csv")
    assert name == "alpha.landmarks.csv"
    cases = server.root / "cases"
    assert not (cases / "alpha.landmarks.csv").exists(), "a download saves nothing"
    page.click("#h3de-save")
    wait_for_state(page, "s.get('cases')[0].saved")
    assert markups_bytes == (cases / "alpha.landmarks.mrk.json").read_bytes()
    assert csv_bytes == (cases / "alpha.landmarks.csv").read_bytes()
    rows = read_state(page, "landmarks")
    markups = json.loads(markups_bytes)["markups"][0]
    assert markups["coordinateSystem"] == "LPS"
    points = markups["controlPoints"]
    assert [point["label"] for point in points] == ["L0", "L1", "L2"]
    assert [point["positionStatus"] for point in points] == ["defined"] * 3
    table = list(csv.DictReader(io.StringIO(csv_bytes.decode())))
    assert [row["review"] for row in table] == ["moved", "predicted", "placed by hand"]
    assert [row["label"] for row in table] == ["L0", "L1", "L2"]
    for point, line, row in zip(points, table, rows):
        np.testing.assert_allclose(point["position"], row["position"], atol=1e-3)
        np.testing.assert_allclose([float(line[axis]) for axis in "xyz"], row["position"], atol=1e-3)
    wait_for_state(page, "s.get('cases')[0].saved")
