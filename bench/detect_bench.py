"""Benchmark of `h3de detect` end to end: total time, where the time goes, and peak memory.

Builds two 45-landmark model packages with RANDOM weights (the timing of a trained model is the
same, but with random weights the coarse positions, and so the number of fine patches, are
arbitrary; the table reports that number):

- micro-CT model: the architecture and stages of the product's mouse-skull model, read from
  Resources/Training/mouse-skull-45.json (the model `h3de train` produces from that file);
- CT model: the full "default" network; coarse stage 2.0 mm, 128x128x112 patch; fine stage
  0.5 mm, 64^3 patch.

It writes a synthetic 250x250x166 uint8 micro-CT at 0.141 mm and 512x512x400 and 512x512x600
int16 CTs at 0.5 mm (compressed NRRD), then runs `h3de detect` on each in a fresh process (interpreter start,
imports and model loading included) and reports wall time, the per-step times the command
records, the number of coarse windows and fine patches, and the child's CPU time and peak
resident memory (CPU seconds well below cores x wall seconds mean other processes shared the CPU).
It first times the start-up of `h3de --version` against a bare `python -c pass`.

With --competing-load, a busy process (one core spinning) runs beside every detection and each
case is timed twice in the same run, with the default thread count and with --threads 1: the
default must be no slower.

    python bench/detect_bench.py [--device cpu] [--threads N] [--case NAME] [--competing-load]
                                 [--repeat N] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_LANDMARKS = 45
MOUSE_TRAINING_CONFIG = Path(__file__).resolve().parents[1] / "Resources" / "Training" / "mouse-skull-45.json"
CT_STAGES = [
    {"name": "coarse", "spacing_mm": [2.0, 2.0, 2.0], "patch_size": [128, 128, 112]},
    {"name": "fine", "spacing_mm": [0.5, 0.5, 0.5], "patch_size": [64, 64, 64]},
]


def model_design(model: str):
    """(H3DEConfig, stages) of the benchmarked model."""
    from H3DELandmarksLib.model.config import default_config
    from H3DELandmarksLib.training.config import load_training_config

    if model == "ct":
        return default_config(N_LANDMARKS), CT_STAGES
    training = load_training_config(MOUSE_TRAINING_CONFIG)
    stages = [{"name": stage.name, "spacing_mm": list(stage.spacing_mm), "patch_size": list(stage.patch_size)}
              for stage in training.stages]
    return training.network_config(N_LANDMARKS), stages
CASES = [
    # name, model, size (i, j, k), spacing mm, dtype, intensity (clip_min, clip_max)
    ("microct_250x250x166", "microct", (250, 250, 166), 0.141, np.uint8, (0.0, 255.0)),
    ("ct_512x512x400", "ct", (512, 512, 400), 0.5, np.int16, (-1000.0, 2000.0)),
    ("ct_512x512x600", "ct", (512, 512, 600), 0.5, np.int16, (-1000.0, 2000.0)),
]


def build_package(directory: Path, model: str, intensity: tuple[float, float]) -> Path:
    """A package of `model`'s design with random weights (seed 0)."""
    import torch

    from H3DELandmarksLib.model.network import H3DENet
    from H3DELandmarksLib.registry import Manifest, write_package

    torch.manual_seed(0)
    config, stages = model_design(model)
    manifest = Manifest(
        id=f"bench-{directory.name}",
        version="0.0.1",
        title="Benchmark model (random weights)",
        description="Untrained network, for timing only.",
        config=config,
        landmark_names=[f"landmark_{index:02d}" for index in range(N_LANDMARKS)],
        intensity={"clip_min": intensity[0], "clip_max": intensity[1], "scale_min": 0.0, "scale_max": 1.0},
        stages=stages,
        command="bench",
        license="CC0-1.0",
        created="2025-01-01T00:00:00Z",
    )
    return write_package(directory, manifest.to_dict(), H3DENet(config).state_dict(), overwrite=True).path


def write_synthetic_volume(path: Path, size: tuple[int, int, int], spacing: float, dtype, intensity) -> None:
    """An ellipsoidal head: soft tissue, a bone shell and noise, slice by slice (bounded memory)."""
    from H3DELandmarksLib.data.volume import Volume
    from H3DELandmarksLib.data.volume_io import write_volume

    low, high = intensity
    air, tissue, bone = low, low + 0.35 * (high - low), low + 0.8 * (high - low)
    rng = np.random.default_rng(0)
    i, j = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="xy")
    array = np.empty(size[::-1], dtype)
    centre, radii = np.array(size) / 2, np.array(size) * np.array([0.42, 0.45, 0.45])
    for k in range(size[2]):
        r = np.sqrt(((i - centre[0]) / radii[0]) ** 2 + ((j - centre[1]) / radii[1]) ** 2
                    + ((k - centre[2]) / radii[2]) ** 2)
        slice_values = np.where(r < 0.9, tissue, np.where(r < 1.0, bone, air))
        slice_values = slice_values + rng.normal(0, 0.02 * (high - low), slice_values.shape)
        array[k] = np.clip(slice_values, np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)
    volume = Volume(array, (spacing,) * 3, (0.0, 0.0, 0.0), np.eye(3))
    write_volume(volume, path, overwrite=True, compress=True)


def run_detect(volume: Path, package: Path, out: Path, device: str, threads: int | None) -> dict:
    """Run `h3de detect` in a child process; wall time, its JSON events and its peak RSS."""
    command = [sys.executable, "-m", "H3DELandmarksLib.cli.main", "detect", str(volume), "--model", str(package),
               "--out", str(out), "--progress", "json", "--device", device, "--overwrite"]
    if threads:
        command += ["--threads", str(threads)]
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        exit_code = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        events = [json.loads(line) for line in stdout.read().splitlines() if line.strip()]
        errors = stderr.read()
    if exit_code != 0:
        raise RuntimeError(f"h3de detect failed ({exit_code}): {errors.strip()[-500:]}")
    return {"wall_s": wall, "events": events, "peak_rss_gb": usage.ru_maxrss / 2**20,
            "cpu_s": usage.ru_utime + usage.ru_stime}


def startup_seconds(command: list[str], repeat: int = 5) -> float:
    """Median wall time of `command` in a fresh process."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def busy_process() -> subprocess.Popen:
    """A process that keeps one core busy until it is stopped (it was running 1 s before return)."""
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(1.0)
    return child


def median_run(repeat: int, *args) -> dict:
    """The run of median wall time among `repeat` runs of `run_detect(*args)`."""
    runs = sorted((run_detect(*args) for _ in range(repeat)), key=lambda result: result["wall_s"])
    return runs[len(runs) // 2]


def report(name: str, result: dict) -> str:
    """Lines describing one run."""
    events = result["events"]
    start = next(e for e in events if e["event"] == "start")
    case = next(e for e in events if e["event"] == "case_done")
    steps = [e["step"] for e in events if e["event"] == "progress"]
    timings = case["timings"]
    lines = [
        f"{name}: {result['wall_s']:.1f} s end to end ({result['cpu_s']:.1f} CPU s, {os.cpu_count()} cores), "
        f"peak RSS {result['peak_rss_gb']:.2f} GB, "
        f"{steps.count('coarse')} coarse window(s), {steps.count('fine')} fine patch(es), "
        f"{case['present']} present / {case['absent']} absent (random weights)",
        f"  {'start-up, imports, model loading':34s} {result['wall_s'] - case['seconds']:7.2f} s "
        f"(model loading alone {start['load_seconds']:.2f} s)",
    ]
    lines += [f"  {key:34s} {value:7.2f} s" for key, value in timings.items() if key != "total"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: h3de's)")
    parser.add_argument("--case", action="append", choices=[case[0] for case in CASES],
                        help="benchmark only this case (repeatable; default: all)")
    parser.add_argument("--competing-load", action="store_true",
                        help="run a busy process beside each detection; time the default and --threads 1")
    parser.add_argument("--repeat", type=int, default=1, help="runs per timing, the median reported")
    parser.add_argument("--workdir", type=Path, default=None, help="keep volumes and packages here")
    args = parser.parse_args()
    bare = startup_seconds([sys.executable, "-c", "pass"])
    version = startup_seconds([sys.executable, "-m", "H3DELandmarksLib.cli.main", "--version"])
    print(f"start-up: h3de --version {version:.2f} s, bare python {bare:.2f} s (median of 5)")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="h3de-detect-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        for model in ("microct", "ct"):
            config, stages = model_design(model)
            print(f"model {model}: {N_LANDMARKS} landmarks, embed dims {list(config.embed_dims)}, random weights; "
                  + "; ".join(f"{s['name']} {s['spacing_mm'][0]} mm {'x'.join(map(str, s['patch_size']))}"
                              for s in stages))
        for name, model, size, spacing, dtype, intensity in CASES:
            if args.case and name not in args.case:
                continue
            volume = workdir / f"{name}.nrrd"
            if not volume.exists():
                write_synthetic_volume(volume, size, spacing, dtype, intensity)
            package = build_package(workdir / model, model, intensity)
            if not args.competing_load:
                result = median_run(args.repeat, volume, package, workdir / "out", args.device, args.threads)
                print(report(name, result), flush=True)
                continue
            load = busy_process()
            try:
                default = median_run(args.repeat, volume, package, workdir / "out", args.device, None)
                single = median_run(args.repeat, volume, package, workdir / "out", args.device, 1)
            finally:
                load.kill()
                load.wait()
            print(report(f"{name}, one busy process beside it, default threads", default))
            print(report(f"{name}, one busy process beside it, --threads 1", single))
            print(f"{name}: default / --threads 1 under load = {default['wall_s'] / single['wall_s']:.2f}", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
