"""Benchmark of `h3de detect --workers N`: batch throughput of 1 and 2 local Dask workers.

Builds the micro-CT model of `detect_bench` (the mouse-skull design, RANDOM weights: the timing
of a trained model is the same) and a batch of synthetic micro-CTs, then runs in fresh processes,
one after the other:

- ``--workers 1 --threads 1`` and ``--workers 2 --threads 1`` (single-threaded workers);
- for reference, one process without a cluster, ``--threads 2``.

Throughput counts the batch only: from the ``start`` event (every worker has loaded the model)
to the ``done`` event; start-up (interpreter, imports, cluster, model loading) is reported
beside it. The runs are repeated in turn (``--repeats``) and each one's fastest batch counts, so
that other load on the machine weighs on every configuration alike; the CPU load average is
printed with the results. The ratios printed are measured in this one run (expect about 1.6x or
more from two single-threaded workers on two idle cores).

    python bench/cluster_bench.py [--cases 8] [--repeats 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from detect_bench import build_package, write_synthetic_volume

SIZE, SPACING_MM, INTENSITY = (160, 160, 110), 0.141, (0.0, 255.0)
RUNS = [
    # label, extra arguments
    ("1 worker, 1 thread", ["--workers", "1", "--threads", "1"]),
    ("2 workers, 1 thread each", ["--workers", "2", "--threads", "1"]),
    ("1 process, 2 threads (no cluster)", ["--threads", "2"]),
]


def run_batch(inputs: Path, package: Path, out: Path, arguments: list[str]) -> dict:
    """Run `h3de detect` on the batch in a child process; times of its start and done events."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "H3DELandmarksLib.cli.main", "detect", str(inputs), "--model", str(package),
               "--out", str(out), "--progress", "json", "--device", "cpu", *arguments]
    launched = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    times, events = {}, []
    for line in child.stdout:
        event = json.loads(line)
        events.append(event)
        if event["event"] in ("start", "done"):
            times[event["event"]] = time.perf_counter()
    if child.wait() != 0:
        raise RuntimeError(f"h3de detect {' '.join(arguments)} failed with status {child.returncode}")
    done = events[-1]
    if done["failed"]:
        raise RuntimeError(f"h3de detect {' '.join(arguments)}: {done['failed']} cases failed")
    return {"startup_s": times["start"] - launched, "batch_s": times["done"] - times["start"],
            "cases": done["cases"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8, help="volumes in the batch")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the configurations")
    parser.add_argument("--workdir", type=Path, default=None, help="keep volumes and package here")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="h3de-cluster-bench-"))
    inputs = workdir / "in"
    inputs.mkdir(parents=True, exist_ok=True)
    try:
        for number in range(args.cases):
            volume = inputs / f"microct_{number:02d}.nrrd"
            if not volume.exists():
                write_synthetic_volume(volume, SIZE, SPACING_MM, np.uint8, INTENSITY)
        package = build_package(workdir / "microct", "microct", INTENSITY)
        print(f"{args.cases} synthetic micro-CTs {'x'.join(map(str, SIZE))} at {SPACING_MM} mm, mouse-skull model "
              f"design (random weights), CPU, {os.cpu_count()} cores")
        results: dict[str, dict] = {}
        for _ in range(args.repeats):
            for label, arguments in RUNS:
                result = run_batch(inputs, package, workdir / "out", arguments)
                if label not in results or result["batch_s"] < results[label]["batch_s"]:
                    results[label] = result
        for label, result in results.items():
            print(f"{label:36s} batch {result['batch_s']:6.1f} s = {60 * result['cases'] / result['batch_s']:5.1f} "
                  f"cases/min   (start-up and model loading {result['startup_s']:.1f} s)")
        print(f"load average during the runs (1, 5, 15 min): {', '.join(f'{value:.1f}' for value in os.getloadavg())}")
        one, two = (results[label]["batch_s"] for label, _ in RUNS[:2])
        print(f"throughput 2 workers / 1 worker: {one / two:.2f}x")
        print(f"throughput 2 workers / 1 process of 2 threads: {results[RUNS[2][0]]['batch_s'] / two:.2f}x")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
