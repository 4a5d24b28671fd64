"""`h3de models` end to end: list, show, download, verify, remove against a local HTTP server."""

from __future__ import annotations

import functools
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from builders_models import small_state_dict, valid_manifest
from H3DELandmarksLib.cli import main as cli_main
from H3DELandmarksLib.registry import ModelCache, pack_package, write_package


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def models(tmp_path, monkeypatch):
    """A registry with a bundled model and a downloadable one served over HTTP; returns the cache dir."""
    served = tmp_path / "served"
    write_package(tmp_path / "build" / "remote", valid_manifest("remote-skull", "2.0.0"), small_state_dict())
    packed = pack_package(tmp_path / "build" / "remote", served / "remote.zip")
    registry_dir = tmp_path / "Models"
    write_package(registry_dir / "bundled-skull", valid_manifest("bundled-skull"), small_state_dict())
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    entries = [
        {"id": "bundled-skull", "version": "1.0.0", "title": "Bundled skull", "url": None, "sha256": None,
         "size": None, "bundled": "bundled-skull"},
        {"id": "remote-skull", "version": "2.0.0", "title": "Remote skull",
         "url": f"http://127.0.0.1:{httpd.server_port}/remote.zip", "sha256": packed.sha256, "size": packed.size,
         "bundled": None},
    ]
    (registry_dir / "models.json").write_text(json.dumps({"models": entries}), encoding="utf-8")
    monkeypatch.setenv("H3DE_REGISTRY", str(registry_dir / "models.json"))
    yield tmp_path / "cache"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def h3de(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli_main.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def status_of(listing: str, model_id: str) -> str:
    row = next(line for line in listing.splitlines() if line.startswith(model_id))
    return row.split("  ")[-1].strip()


def test_download_verify_remove_cycle(models, capsys):
    cache = str(models)
    code, out, _ = h3de(capsys, "models", "list", "--cache-dir", cache)
    assert code == 0 and out.splitlines()[0].split() == ["ID", "VERSION", "TITLE", "SIZE", "STATUS"]
    assert status_of(out, "bundled-skull") == "bundled"
    assert status_of(out, "remote-skull") == "not downloaded"

    code, out, _ = h3de(capsys, "models", "download", "remote-skull", "--cache-dir", cache)
    assert code == 0 and "Downloaded and verified remote-skull@2.0.0" in out
    assert status_of(h3de(capsys, "models", "list", "--cache-dir", cache)[1], "remote-skull") == "cached"
    code, out, _ = h3de(capsys, "models", "download", "remote-skull", "--cache-dir", cache)
    assert code == 0 and "already downloaded" in out

    code, out, _ = h3de(capsys, "models", "verify", "remote-skull@2.0.0", "--cache-dir", cache)
    assert (code, out.strip()) == (0, "remote-skull@2.0.0 is intact (cached).")
    weights = ModelCache(models).package_dir("remote-skull", "2.0.0") / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b"\x00")
    code, _, err = h3de(capsys, "models", "verify", "remote-skull", "--cache-dir", cache)
    assert code == 1 and "model.safetensors differs from the downloaded archive" in err

    code, out, _ = h3de(capsys, "models", "remove", "remote-skull", "--cache-dir", cache)
    assert code == 0 and out.startswith("Removed remote-skull@2.0.0")
    assert status_of(h3de(capsys, "models", "list", "--cache-dir", cache)[1], "remote-skull") == "not downloaded"
    assert not any((models / "packages" / "remote-skull").iterdir())
    code, out, _ = h3de(capsys, "models", "remove", "remote-skull", "--cache-dir", cache)
    assert code == 0 and "nothing to remove" in out


def test_show_summarises_the_manifest(models, capsys):
    code, out, _ = h3de(capsys, "models", "show", "bundled-skull", "--cache-dir", str(models))
    assert code == 0
    for expected in ("bundled-skull@1.0.0: Bundled skull", "Status: bundled", "Modality: synthetic CT",
                     "Landmarks (2):", "1. A - first", "coarse stage: spacing 2 x 2 x 2 mm, patch 64 x 64 x 64 voxels",
                     "mean_radial_error_mm: 1.25", "Licence: CC-BY-4.0"):
        assert expected in out
    code, out, _ = h3de(capsys, "models", "show", "remote-skull", "--cache-dir", str(models))
    assert code == 0 and "Run `h3de models download remote-skull@2.0.0`" in out


def test_bundled_models_need_no_download_and_verify(models, capsys):
    code, out, _ = h3de(capsys, "models", "download", "bundled-skull", "--cache-dir", str(models))
    assert code == 0 and "nothing to download" in out
    code, out, _ = h3de(capsys, "models", "verify", "bundled-skull", "--cache-dir", str(models))
    assert (code, out.strip()) == (0, "bundled-skull@1.0.0 is intact (bundled).")
    assert not models.exists()


def test_user_errors_are_one_line(models, capsys):
    code, _, err = h3de(capsys, "models", "download", "nope", "--cache-dir", str(models))
    assert code == 2
    assert err == "h3de: error: Unknown model 'nope'; `h3de models list` shows the available models.\n"
    code, _, err = h3de(capsys, "models", "verify", "remote-skull", "--cache-dir", str(models))
    assert code == 2
    assert err == ("h3de: error: Model remote-skull@2.0.0 is not downloaded; "
                   "run `h3de models download remote-skull@2.0.0`.\n")


def test_cache_dir_defaults_to_the_environment(models, capsys, monkeypatch):
    monkeypatch.setenv("H3DE_CACHE_DIR", str(models))
    assert h3de(capsys, "models", "download", "remote-skull")[0] == 0
    assert ModelCache(models).has_package("remote-skull", "2.0.0")


def test_show_and_verify_take_a_package_folder(models, tmp_path, capsys):
    manifest = valid_manifest("folder-skull")
    manifest["preprocessing"]["intensity"] = {"clip_min": -1000, "clip_max": 2000, "scale_min": 0, "scale_max": 1}
    manifest["training"]["metrics"] = {
        "fine": {"epochs_trained": 40, "best_epoch": 38, "validation_cases": 10, "training_cases": 200,
                 "val_loss": 0.021309584971855988, "val_mre_mm": 0.9793597284486819},
        "evaluation": {"data": "30 unseen phantoms", "mre_mm": 1.04, "mre_sd_mm": 0.33,
                       "sdr_percent": {"2": 91.5, "4": 97.7}, "seconds_per_case": 0.5},
    }
    folder = write_package(tmp_path / "folder-skull", manifest, small_state_dict()).path
    code, out, _ = h3de(capsys, "models", "show", str(folder))
    assert code == 0
    for expected in ("folder-skull@1.0.0: Test skull landmarks", "Status: package folder",
                     "intensities clipped to [-1000, 2000], then mapped linearly onto [0, 1]",
                     "Evaluation on 30 unseen phantoms: MRE 1.04 ± 0.33 mm; SDR 91.5 / 97.7 % at 2 / 4 mm; "
                     "0.5 s per case",
                     "fine: MRE 0.979 mm, loss 0.0213, best epoch 38 of 40, 10 validation / 200 training cases",
                     f"Path: {folder}"):
        assert expected in out
    assert "0.97935" not in out
    code, out, _ = h3de(capsys, "models", "verify", str(folder))
    assert (code, out.strip()) == (0, f"{folder} is intact (package folder).")
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    code, _, err = h3de(capsys, "models", "verify", str(folder))
    assert code == 1 and "cannot be read as safetensors" in err and "is damaged; write or download it again" in err
    code, _, err = h3de(capsys, "models", "show", str(tmp_path / "missing"))
    assert code == 2 and "is not a model package directory: it does not exist" in err
