"""Where the network runs: device choice, mixed precision and CPU thread count."""

from __future__ import annotations

import contextlib
import os

import torch

from .errors import H3DEError

DEVICES = ("auto", "cuda", "mps", "cpu")
TORCH_THREADS = torch.get_num_threads()  # PyTorch's own choice, before anything set another


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for "auto" (cuda, then mps, then cpu), "cuda", "mps" or "cpu".

    A GPU that was asked for but is not available is an error, not a silent fallback.
    """
    name = str(name).lower()
    if name not in DEVICES:
        raise H3DEError(f"Unknown device {name!r}; choose one of {', '.join(DEVICES)}.")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise H3DEError("Device cuda was requested but PyTorch sees no CUDA GPU on this machine.")
    if name == "mps" and not mps_available():
        raise H3DEError("Device mps was requested but PyTorch sees no Apple GPU (MPS) on this machine.")
    return torch.device(name)


def mps_available() -> bool:
    """True when PyTorch can use an Apple GPU."""
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed-precision type on a GPU (bfloat16 where CUDA supports it, else float16); None on CPU."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return None


def precision_context(device: torch.device) -> contextlib.AbstractContextManager:
    """`torch.autocast` on a GPU, a no-op context on CPU (full precision)."""
    dtype = autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def set_threads(threads: int | None) -> None:
    """Use `threads` CPU threads for PyTorch's operators (None keeps PyTorch's default)."""
    if threads is None:
        return
    if threads < 1:
        raise H3DEError(f"The thread count must be at least 1, not {threads}.")
    torch.set_num_threads(int(threads))


def default_threads() -> int:
    """CPU threads for inference when the user names none: PyTorch's own choice (one per core),
    less the cores other processes keep busy, at least 1.

    PyTorch's threads wait for each other at every operator, so one of them sharing its core with
    another busy process slows all of them down: on two cores with one other busy process, two
    threads took 16 s where one took 10 s. Busy cores are the 1-minute load average, or the
    processes running right now (Linux, without this one) when that is higher: the average lags
    a process that just started.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = max(os.getloadavg()[0], running_processes() - 1) if hasattr(os, "getloadavg") else 0.0
    return max(1, min(TORCH_THREADS, cores, round(cores - busy)))


def running_processes() -> int:
    """Processes running or ready to run right now, this one included (0 where unknown)."""
    try:
        with open("/proc/loadavg", encoding="ascii") as stream:
            return int(stream.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 0
