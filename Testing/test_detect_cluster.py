"""`h3de detect --workers N` on a local Dask cluster (127.0.0.1, single-threaded workers): the
outputs of one process, byte for byte apart from timings; resumed batches; a killed worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pytest

from builders_blobs import DIRECTIONS, blob_volume, truth_positions
from builders_models import tiny_package
from H3DELandmarksLib.cli.main import main
from H3DELandmarksLib.data.volume_io import write_volume

pytest.importorskip("distributed")

CASE_DIRECTIONS = ("oblique", "flipped", "permuted", "identity")
VARYING_JSON_KEYS = ("created", "timings_s")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    one_window = [{"name": "fine", "spacing_mm": [3.0, 3.0, 3.0], "patch_size": [40, 40, 40]}]
    return tiny_package(tmp_path_factory.mktemp("model") / "package", n_landmarks=2, stages=one_window).path


@pytest.fixture(scope="module")
def batch(tmp_path_factory, model):
    """Four small volumes and what one single-threaded process writes for them."""
    folder = tmp_path_factory.mktemp("batch")
    for number, direction in enumerate(CASE_DIRECTIONS):
        truth = truth_positions()[:2] + np.array([number, -number, 0.5 * number])
        write_volume(blob_volume(DIRECTIONS[direction], truth, extent_mm=30.0), folder / "in" / f"case{number}.nrrd")
    assert detect(folder / "in", "--model", model, "--out", folder / "alone", "--threads", "1",
                  "--progress", "none") == 0
    return folder


def detect(*arguments) -> int:
    return main(["detect", *map(str, arguments), "--device", "cpu"])


def comparable(path: Path):
    """The file's bytes, or for a .json file its content without creation time and timings."""
    if not path.name.endswith(".json") or path.name.endswith(".mrk.json"):
        return path.read_bytes()
    document = json.loads(path.read_text(encoding="utf-8"))

    def strip(value):
        if isinstance(value, dict):
            return {key: strip(item) for key, item in value.items() if key not in VARYING_JSON_KEYS}
        if isinstance(value, list):
            return [strip(item) for item in value]
        return value

    return strip(document)


def assert_same_outputs(expected: Path, got: Path) -> None:
    names = sorted(path.name for path in expected.iterdir())
    assert sorted(path.name for path in got.iterdir()) == names  # nothing else: no staging or temporary file
    assert len(names) == 3 * len(CASE_DIRECTIONS)
    for name in names:
        assert comparable(got / name) == comparable(expected / name), name


def test_two_workers_write_what_one_process_writes_and_resume_skips_finished_cases(batch, model, capsys):
    out = batch / "cluster"
    assert detect(batch / "in", "--model", model, "--out", out, "--workers", "2", "--threads", "1",
                  "--progress", "json") == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0]["event"] == "start" and events[0]["cases"] == 4 and events[0]["workers"] == 2
    assert events[-1] == {**events[-1], "event": "done", "succeeded": 4, "failed": 0}
    done = [event for event in events if event["event"] == "case_done"]
    assert sorted(event["case"] for event in done) == [f"case{number}" for number in range(len(CASE_DIRECTIONS))]
    for number in range(len(CASE_DIRECTIONS)):
        fractions = [event["fraction"] for event in events
                     if event["event"] == "progress" and event["case"] == f"case{number}"]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert_same_outputs(batch / "alone", out)

    for path in out.glob("case2.*"):
        path.unlink()
    assert detect(batch / "in", "--model", model, "--out", out, "--workers", "2", "--threads", "1",
                  "--skip-existing", "--progress", "json") == 0
    statuses = {event["case"]: event["status"] for event in map(json.loads, capsys.readouterr().out.splitlines())
                if event["event"] == "case_done"}
    assert statuses == {f"case{number}": "ok" if number == 2 else "skipped" for number in range(len(CASE_DIRECTIONS))}
    assert_same_outputs(batch / "alone", out)


def test_a_worker_killed_mid_batch_loses_no_case_and_corrupts_no_file(batch, model, tmp_path):
    out = tmp_path / "cluster"
    command = [sys.executable, "-m", "H3DELandmarksLib.cli.main", "detect", str(batch / "in"), "--model", str(model),
               "--out", str(out), "--workers", "2", "--threads", "1", "--device", "cpu", "--progress", "json"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    events, killed = [], None
    try:
        for line in process.stdout:
            events.append(json.loads(line))
            if killed is None and events[-1]["event"] == "progress" and events[-1]["step"] == "start":
                killed = events[-1]
                os.kill(process_listening_at(process.pid, killed["worker"]), signal.SIGKILL)
        assert process.wait(timeout=300) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert killed is not None
    assert events[-1] == {**events[-1], "event": "done", "succeeded": 4, "failed": 0}
    starts = Counter(event["case"] for event in events if event["event"] == "progress" and event["step"] == "start")
    assert starts[killed["case"]] == 2 and set(starts.values()) <= {1, 2}
    assert_same_outputs(batch / "alone", out)


def process_listening_at(parent: int, address: str) -> int:
    """The process id of the child of `parent` that listens at the worker address tcp://HOST:PORT."""
    port = int(address.rsplit(":", 1)[1])
    for child in psutil.Process(parent).children(recursive=True):
        if any(connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
               for connection in child.net_connections(kind="tcp")):
            return child.pid
    raise AssertionError(f"no child of {parent} listens at {address}")
