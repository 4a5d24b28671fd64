"""Downloads against a local HTTP server: success, errors, resume, restart; cache and resolution."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest

from builders_downloads import MODEL_ID, make_registry, serve
from builders_models import small_state_dict, valid_manifest
from H3DELandmarksLib.errors import DownloadError, ModelPackageError
from H3DELandmarksLib.registry import (
    ModelCache,
    default_cache_dir,
    download_model,
    load_registry,
    resolve_model,
    sha256_of,
    write_package,
)

FAST = dict(show_progress=False, retries=2, backoff_s=0.0, timeout=(2.0, 2.0))


def first_then(first, then):
    """A route answering the first request with `first` and every later one with `then`."""
    return lambda handler, attempt: (first if attempt == 0 else then)(handler, attempt)


def status(code: int):
    return lambda handler, attempt: handler.send_error(code)


def assert_nothing_loadable(cache_root: Path, registry) -> None:
    """No package, no archive, no temporary directory; resolve_model refuses the model."""
    cache = ModelCache(cache_root)
    assert not cache.package_dir(MODEL_ID, "1.0.0").parent.exists() or not any(
        cache.package_dir(MODEL_ID, "1.0.0").parent.iterdir())
    assert not cache.archive_path(MODEL_ID, "1.0.0").exists()
    with pytest.raises(ModelPackageError, match=r"is not downloaded; run `h3de models download"):
        resolve_model(MODEL_ID, cache_dir=cache_root, registry=registry)


def test_download_verifies_extracts_and_then_works_offline(tmp_path, server, packed):
    payload, sha256, size = packed
    server.routes["/m.zip"] = serve(payload)
    registry = make_registry(tmp_path, server, "/m.zip", sha256, size)
    calls = []
    path = download_model(MODEL_ID, cache_dir=tmp_path / "cache", registry=registry,
                          progress=lambda done, total: calls.append((done, total)), **FAST)
    cache = ModelCache(tmp_path / "cache")
    assert path == cache.package_dir(MODEL_ID, "1.0.0")
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "model.safetensors"]
    assert calls[-1] == (size, size)
    assert not any(cache.partial_path(MODEL_ID, "1.0.0").parent.iterdir())
    server.routes.clear()
    assert download_model(MODEL_ID, cache_dir=tmp_path / "cache", registry=registry, **FAST) == path
    assert resolve_model(f"{MODEL_ID}@1.0.0", cache_dir=tmp_path / "cache", registry=registry) == path
    assert len(server.log) == 1


def test_http_404_names_url_and_status(tmp_path, server, packed):
    _, sha256, size = packed
    registry = make_registry(tmp_path, server, "/missing.zip", sha256, size)
    with pytest.raises(DownloadError) as raised:
        download_model(MODEL_ID, cache_dir=tmp_path / "cache", registry=registry, **FAST)
    assert str(raised.value) == (f"Downloading http://127.0.0.1:{server.server_port}/missing.zip failed: "
                                 "HTTP 404 Not Found.")
    assert len(server.log) == 1
    assert_nothing_loadable(tmp_path / "cache", registry)


def test_wrong_checksum_is_discarded(tmp_path, server, packed):
    payload, sha256, size = packed
    server.routes["/m.zip"] = serve(payload)
    registry = make_registry(tmp_path, server, "/m.zip", "0" * 64, size)
    with pytest.raises(DownloadError, match=rf"expected sha256 000000000000…, got {sha256[:12]}…"):
        download_model(MODEL_ID, cache_dir=tmp_path / "cache", registry=registry, **FAST)
    assert not ModelCache(tmp_path / "cache").partial_path(MODEL_ID, "1.0.0").exists()
    assert_nothing_loadable(tmp_path / "cache", registry)


def test_truncated_transfers_fail_then_the_partial_file_is_resumed(tmp_path, server, packed):
    payload, sha256, size = packed
    server.routes["/m.zip"] = serve(payload, ranges=False, cut_at=size // 3)
    registry = make_registry(tmp_path, server, "/m.zip", sha256, size)
    with pytest.raises(DownloadError, match=r"failed after 3 attempts \(the connection was lost; \d+ of \d+ bytes"):
        download_model(MODEL_ID, cache_dir=tmp_path / "cache", registry=registry, **FAST)
    assert len(server.log) == 3
    assert_nothing_loadable(tmp_path / "cache", registry)
    partial = ModelCache(tmp_path / "cache").partial_path(MODEL_ID, "1.0.0")
    kept = partial.stat().st_size
    assert 0 < kept <= size // 3

    server.routes["/m.zip"] = serve(payload)
    path = download_model(MODEL_ID, cache_dir=tmp_path / "cache", registry=registry, **FAST)
    assert server.log[-1]["range"] == f"bytes={kept}-"
    assert resolve_model(MODEL_ID, cache_dir=tmp_path / "cache", registry=registry) == path
    assert not partial.exists()


def test_dropped_connection_is_resumed_with_range(tmp_path, server, packed):
    payload, sha256, size = packed
    half = size // 2
    server.routes["/m.zip"] = first_then(serve(payload, cut_at=half), serve(payload))
    registry = make_registry(tmp_path, server, "/m.zip", sha256, size)
    path = download_model(MODEL_ID, cache_dir=tmp_path / "cache", registry=registry, **FAST)
    first, second = (entry["range"] for entry in server.log)
    assert first is None
    assert 0 < int(re.fullmatch(r"bytes=(\d+)-", second).group(1)) <= half
    assert (path / "manifest.json").is_file()


def test_server_without_range_support_restarts_from_zero(tmp_path, server, packed):
    payload, sha256, size = packed
    server.routes["/m.zip"] = first_then(serve(payload, cut_at=size // 2), serve(payload, ranges=False))
    registry = make_registry(tmp_path, server, "/m.zip", sha256, size)
    path = download_model(MODEL_ID, cache_dir=tmp_path / "cache", registry=registry, **FAST)
    assert server.log[1]["range"].startswith("bytes=")
    assert ModelCache(tmp_path / "cache").archive_path(MODEL_ID, "1.0.0").read_bytes() == payload
    assert (path / "model.safetensors").is_file()


def test_server_errors_are_retried(tmp_path, server, packed):
    payload, sha256, size = packed
    server.routes["/m.zip"] = first_then(status(503), serve(payload))
    registry = make_registry(tmp_path, server, "/m.zip", sha256, size)
    download_model(MODEL_ID, cache_dir=tmp_path / "cache", registry=registry, **FAST)
    assert len(server.log) == 2


def test_persistent_server_errors_fail_with_the_status(tmp_path, server, packed):
    _, sha256, size = packed
    server.routes["/m.zip"] = status(500)
    registry = make_registry(tmp_path, server, "/m.zip", sha256, size)
    with pytest.raises(DownloadError, match=r"failed after 3 attempts \(HTTP 500 Internal Server Error; 0 of"):
        download_model(MODEL_ID, cache_dir=tmp_path / "cache", registry=registry, **FAST)
    assert_nothing_loadable(tmp_path / "cache", registry)


def test_size_disagreeing_with_the_registry_is_refused(tmp_path, server, packed):
    payload, sha256, size = packed
    server.routes["/m.zip"] = serve(payload)
    registry = make_registry(tmp_path, server, "/m.zip", sha256, size - 1)
    with pytest.raises(DownloadError, match=f"the server offers {size} bytes, the registry expects {size - 1}"):
        download_model(MODEL_ID, cache_dir=tmp_path / "cache", registry=registry, **FAST)
    assert_nothing_loadable(tmp_path / "cache", registry)


def test_verified_archive_that_is_no_package_is_removed(tmp_path, server):
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "not a model")
    payload = (tmp_path / "other.zip").read_bytes()
    server.routes["/m.zip"] = serve(payload)
    registry = make_registry(tmp_path, server, "/m.zip", sha256_of(tmp_path / "other.zip"), len(payload))
    with pytest.raises(ModelPackageError, match="is not a model package archive"):
        download_model(MODEL_ID, cache_dir=tmp_path / "cache", registry=registry, **FAST)
    assert_nothing_loadable(tmp_path / "cache", registry)


def test_resolve_model_accepts_package_paths_and_explains_the_rest(tmp_path):
    package = write_package(tmp_path / "package", valid_manifest(), small_state_dict()).path
    assert resolve_model(package) == package.resolve()
    assert resolve_model(str(package)) == package.resolve()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelPackageError, match="is not a model package directory: manifest.json is missing"):
        resolve_model(tmp_path / "empty")
    with pytest.raises(ModelPackageError, match="is not a model package directory: it does not exist"):
        resolve_model(str(tmp_path / "nowhere"))
    registry_file = tmp_path / "models.json"
    registry_file.write_text(json.dumps({"models": []}), encoding="utf-8")
    with pytest.raises(ModelPackageError, match="Unknown model 'nope'; `h3de models list`"):
        resolve_model("nope", cache_dir=tmp_path / "cache", registry=load_registry(registry_file))
    (tmp_path / "cache" / "packages").mkdir(parents=True)
    with pytest.raises(ModelPackageError, match=r"'packages@\.\.' is neither a model package directory nor"):
        resolve_model("packages@..", cache_dir=tmp_path / "cache", registry=load_registry(registry_file))


def test_resolve_model_prefers_the_bundled_package_and_newest_version(tmp_path):
    write_package(tmp_path / "bundled" / "skull", valid_manifest(version="1.10.0"), small_state_dict())
    entries = [
        {"id": MODEL_ID, "version": version, "title": "Test skull", "url": None, "sha256": None, "size": None,
         "bundled": "bundled/skull" if version == "1.10.0" else f"bundled/{version}"}
        for version in ("1.2.0", "1.10.0", "1.11.0-rc.1")
    ]
    (tmp_path / "models.json").write_text(json.dumps({"models": entries}), encoding="utf-8")
    registry = load_registry(tmp_path / "models.json")
    assert registry.find(MODEL_ID).version == "1.10.0"
    assert resolve_model(MODEL_ID, cache_dir=tmp_path / "cache", registry=registry) == tmp_path / "bundled" / "skull"
    with pytest.raises(ModelPackageError, match=r"The bundled model test-skull@1.2.0 is missing"):
        resolve_model(f"{MODEL_ID}@1.2.0", cache_dir=tmp_path / "cache", registry=registry)
    with pytest.raises(ModelPackageError, match="has no version 9.0.0; available: 1.2.0, 1.10.0, 1.11.0-rc.1"):
        resolve_model(f"{MODEL_ID}@9.0.0", cache_dir=tmp_path / "cache", registry=registry)


def test_registry_problems_name_the_entry(tmp_path, monkeypatch):
    registry_file = tmp_path / "models.json"
    monkeypatch.setenv("H3DE_REGISTRY", str(registry_file))
    entry = {"id": MODEL_ID, "version": "1.0.0", "title": "T", "url": "http://x/m.zip", "sha256": "ab",
             "size": 10, "bundled": None}
    registry_file.write_text(json.dumps({"models": [entry]}), encoding="utf-8")
    with pytest.raises(ModelPackageError, match=r"models\[0\].sha256 must be 64 lower-case hexadecimal digits"):
        load_registry()
    entry.update(sha256="a" * 64, size=None)
    registry_file.write_text(json.dumps({"models": [entry]}), encoding="utf-8")
    with pytest.raises(ModelPackageError, match=r"\(test-skull@1.0.0\) needs url, sha256 and size together"):
        load_registry()


def test_default_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("H3DE_CACHE_DIR", str(tmp_path / "override"))
    assert default_cache_dir() == tmp_path / "override"
    monkeypatch.delenv("H3DE_CACHE_DIR")
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "h3de-landmarks" / "models"
