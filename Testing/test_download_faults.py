"""Downloads and the cache under attack or bad luck (issue 15, section 3), against a local server on
127.0.0.1: concurrent downloads of one model, redirects away from http(s), redirect loops,
malformed addresses, compression bombs, a manifest naming another model, a bundled path leaving
the registry folder."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from builders_downloads import MODEL_ID, make_registry
from builders_models import small_state_dict, valid_manifest
from H3DELandmarksLib.errors import DownloadError, ModelPackageError
from H3DELandmarksLib.registry import ModelCache, download_model, load_registry, pack_package, write_package
from H3DELandmarksLib.registry import package as package_module
from H3DELandmarksLib.registry.verify import verify_model

REPO = Path(__file__).resolve().parents[1]
FAST = dict(show_progress=False, retries=0, backoff_s=0.0, timeout=(2.0, 2.0))

DOWNLOADER = """
import sys
from H3DELandmarksLib.registry import download_model, load_registry
registry = load_registry(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
print(download_model("test-skull", cache_dir=sys.argv[2], registry=registry, show_progress=False, retries=0))
"""


def slowly(payload: bytes, pieces: int = 20, pause_s: float = 0.05):
    """A route sending `payload` in `pieces` with a pause between them (no Range support)."""

    def route(handler, attempt) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        step = -(-len(payload) // pieces)
        for start in range(0, len(payload), step):
            handler.wfile.write(payload[start:start + step])
            handler.wfile.flush()
            time.sleep(pause_s)
        handler.close_connection = True

    return route


def redirect(location: str):
    def route(handler, attempt) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route


def registry_for(tmp_path: Path, url: str, sha256: str = "a" * 64, size: int = 10, bundled=None):
    entry = {"id": MODEL_ID, "version": "1.0.0", "title": "Test skull", "url": url, "sha256": sha256,
             "size": size, "bundled": bundled}
    (tmp_path / "models.json").write_text(json.dumps({"models": [entry]}), encoding="utf-8")
    return tmp_path / "models.json"


def test_three_processes_downloading_one_model_all_succeed_and_the_cache_stays_valid(tmp_path, server, packed):
    payload, sha256, size = packed
    server.routes["/m.zip"] = slowly(payload)
    make_registry(tmp_path, server, "/m.zip", sha256, size)
    cache = tmp_path / "cache"
    processes = [subprocess.Popen([sys.executable, "-c", DOWNLOADER, str(tmp_path / "models.json"), str(cache)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "PYTHONPATH": str(REPO)}) for _ in range(3)]
    for process in processes:
        assert process.stdout.readline() == "ready\n"
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    results = [process.communicate(timeout=120) for process in processes]

    package_dir = ModelCache(cache).package_dir(MODEL_ID, "1.0.0")
    assert [process.returncode for process in processes] == [0, 0, 0], [err for _, err in results]
    assert [out.strip() for out, _ in results] == [str(package_dir)] * 3
    assert len(server.log) == 1
    assert verify_model(MODEL_ID, cache_dir=cache, registry=load_registry(tmp_path / "models.json")) == []


@pytest.mark.parametrize("location, phrase", [
    ("file:///etc/passwd", "the server redirected it to file:///etc/passwd, which is not an http or https address"),
    ("/loop.zip", "the server redirected more than 30 times (a redirect loop?)"),
])
def test_bad_redirects_say_what_failed(tmp_path, server, location, phrase):
    server.routes["/m.zip"] = redirect(location)
    server.routes["/loop.zip"] = redirect("/m.zip")
    url = f"http://127.0.0.1:{server.server_port}/m.zip"
    with pytest.raises(DownloadError) as raised:
        download_model(MODEL_ID, cache_dir=tmp_path / "cache", registry=load_registry(registry_for(tmp_path, url)),
                       **FAST)
    assert str(raised.value) == f"Downloading {url} failed: {phrase}."


@pytest.mark.parametrize("url, message", [
    ("http://[::1/m.zip", "The download address 'http://[::1/m.zip' is malformed (Invalid IPv6 URL)."),
    ("http:///m.zip", "The download address 'http:///m.zip' is not an http or https address with a host."),
])
def test_malformed_addresses_are_named(tmp_path, url, message):
    with pytest.raises(DownloadError) as raised:
        download_model(MODEL_ID, cache_dir=tmp_path / "cache", registry=load_registry(registry_for(tmp_path, url)),
                       **FAST)
    assert str(raised.value) == message


def serve_archive(tmp_path: Path, server, archive: bytes):
    from builders_downloads import serve

    server.routes["/m.zip"] = serve(archive)
    (tmp_path / "m.zip").write_bytes(archive)
    return make_registry(tmp_path, server, "/m.zip", package_module.sha256_of(tmp_path / "m.zip"), len(archive))


def test_a_compression_bomb_is_refused_and_nothing_is_kept(tmp_path, server, monkeypatch):
    monkeypatch.setattr(package_module, "MIN_UNPACKED_LIMIT", 1 << 20)
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", json.dumps(valid_manifest()))
        archive.writestr("model.safetensors", bytes(8 << 20))
    registry = serve_archive(tmp_path, server, stream.getvalue())
    refusal = (r"test-skull@1\.0\.0\.zip is refused: its model\.safetensors unpacks to more than 1048576 bytes "
               r"\(the limit for an archive of \d+ bytes\)\.$")
    with pytest.raises(ModelPackageError, match=refusal):
        download_model(MODEL_ID, cache_dir=tmp_path / "cache", registry=registry, **FAST)
    cache = ModelCache(tmp_path / "cache")
    assert not cache.archive_path(MODEL_ID, "1.0.0").exists()
    assert not (tmp_path / "cache" / "packages" / MODEL_ID).exists() or not any(
        (tmp_path / "cache" / "packages" / MODEL_ID).iterdir())


def test_an_archive_of_another_model_is_refused(tmp_path, server):
    write_package(tmp_path / "other", valid_manifest("other-model"), small_state_dict())
    archive = pack_package(tmp_path / "other", tmp_path / "other.zip").path.read_bytes()
    registry = serve_archive(tmp_path, server, archive)
    with pytest.raises(ModelPackageError, match=r"test-skull@1\.0\.0\.zip holds the model other-model@1\.0\.0, not "
                                                r"test-skull@1\.0\.0 as the registry says\.$"):
        download_model(MODEL_ID, cache_dir=tmp_path / "cache", registry=registry, **FAST)
    assert not ModelCache(tmp_path / "cache").has_package(MODEL_ID, "1.0.0")


@pytest.mark.parametrize("bundled", ["../elsewhere", "/etc", "models/../../x", "..\\..\\x", "C:\\models"])
def test_a_bundled_path_leaving_the_registry_folder_is_refused(tmp_path, bundled):
    path = registry_for(tmp_path, None, None, None, bundled)
    with pytest.raises(ModelPackageError) as raised:
        load_registry(path)
    assert str(raised.value) == (f"{path}: models[0] (test-skull@1.0.0) has the bundled path {bundled!r}, which "
                                 f"leaves the registry folder {tmp_path}.")
