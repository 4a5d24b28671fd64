"""Benchmark of H3DE-Net configurations on this machine's CPU.

Prints one table: parameters, multiply-adds, median forward latency and peak resident memory of
the reference-compatible and the default configuration at 128x128x64 and 256x256x128, with the
ratios default / reference measured in the same run. Each measurement runs in its own process so
peak RSS belongs to that configuration alone; a reference run that would exceed the memory limit
is stopped by an address-space limit and reported as such.

    python bench/model_bench.py [--repeats 5] [--threads N] [--memory-limit-gb 20] [--landmarks 14]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

SIZES = [(128, 128, 64), (256, 256, 128)]
CONFIGS = ["reference", "default"]


def measure(name: str, size: tuple[int, int, int], repeats: int, landmarks: int, threads: int) -> dict:
    """Run inside the child process: one configuration at one size."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    from H3DELandmarksLib.model import build_model

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = build_model(name, n_landmarks=landmarks).eval()
    x = torch.randn(1, 1, *size)
    with torch.inference_mode():
        cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        counter = FlopCounterMode(display=False, custom_mapping={
            cpu_attention: lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v),
        })
        with counter:
            net(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - start)
    return {
        "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
        "gmacs": counter.get_total_flops() / 2e9,
        "latency_s": statistics.median(times),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def run_child(name: str, size, args) -> dict:
    """Measure in a fresh process under an address-space limit."""
    limit = int(args.memory_limit_gb * 2**30)
    code = (
        "import json, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit})); "
        "sys.path.insert(0, 'bench'); import model_bench; "
        f"print(json.dumps(model_bench.measure({name!r}, {tuple(size)!r}, {args.repeats}, {args.landmarks}, {args.threads})))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["killed"])[-1]
        return {"error": f"failed under a {args.memory_limit_gb:g} GB limit ({last[:60]})"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--memory-limit-gb", type=float, default=20.0)
    parser.add_argument("--landmarks", type=int, default=14)
    args = parser.parse_args()
    results = {(n, s): run_child(n, s, args) for s in SIZES for n in CONFIGS}
    print(f"{'config':<10} {'input':<12} {'params M':>9} {'GMACs':>8} {'latency s':>10} {'peak RSS GB':>12}")
    for size in SIZES:
        for name in CONFIGS:
            r = results[(name, size)]
            label = "x".join(map(str, size))
            if "error" in r:
                print(f"{name:<10} {label:<12} {r['error']}")
                continue
            print(f"{name:<10} {label:<12} {r['params_m']:>9.2f} {r['gmacs']:>8.1f} {r['latency_s']:>10.2f} "
                  f"{r['peak_rss_gb']:>12.2f}")
        ref, new = results[("reference", size)], results[("default", size)]
        if "error" not in ref and "error" not in new:
            print(f"{'ratio':<10} {'x'.join(map(str, size)):<12} {'':>9} {new['gmacs'] / ref['gmacs']:>8.2f} "
                  f"{new['latency_s'] / ref['latency_s']:>10.2f} {new['peak_rss_gb'] / ref['peak_rss_gb']:>12.2f}")


if __name__ == "__main__":
    main()
