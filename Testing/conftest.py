"""Shared pytest fixtures."""

import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from builders_downloads import Handler
from builders_models import small_state_dict, valid_manifest
from H3DELandmarksLib.device import default_threads
from H3DELandmarksLib.registry import pack_package, write_package

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(autouse=True)
def cpu_threads():
    """Each test starts with the PyTorch threads h3de itself picks (the cores other processes
    leave free: on a shared 2-core machine two threads run ten times slower than one), and a test
    that sets its own count does not pass it on."""
    torch.set_num_threads(default_threads())


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ../shared folder (reference fixtures, mouse atlas); skips when absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not beside the checkout")
    return SHARED


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.routes, httpd.log = {}, []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """(zip bytes, sha256, size) of a valid package of about 400 kB.

    Large enough that a transfer cut half-way has already written whole 64 kB chunks to the
    partial file (the bytes of an unfinished chunk are lost with the connection).
    """
    folder = tmp_path_factory.mktemp("packed")
    weights = {**small_state_dict(), "noise": torch.randn(100_000, generator=torch.Generator().manual_seed(1))}
    write_package(folder / "package", valid_manifest(), weights)
    info = pack_package(folder / "package", folder / "package.zip")
    return info.path.read_bytes(), info.sha256, info.size
