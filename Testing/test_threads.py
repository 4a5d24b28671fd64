"""Default CPU threads: never more than the cores other processes leave free."""

from __future__ import annotations

import os

import pytest

from H3DELandmarksLib import device


@pytest.fixture
def machine(monkeypatch):
    """Set the cores, PyTorch's own thread count, the load average and the running processes."""
    def describe(cores: int, torch_threads: int, load: float, running: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
        monkeypatch.setattr(device, "TORCH_THREADS", torch_threads)
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
        monkeypatch.setattr(device, "running_processes", lambda: running)
    return describe


@pytest.mark.parametrize("cores, torch_threads, load, running, expected", [
    (2, 2, 0.05, 1, 2),   # idle two-core machine: both cores
    (2, 2, 1.0, 1, 1),    # one other busy process (in the load average)
    (2, 2, 0.1, 2, 1),    # one other busy process that just started (running now, not yet averaged)
    (2, 2, 9.0, 11, 1),   # heavily loaded: still one thread
    (16, 8, 3.0, 4, 8),   # PyTorch's choice (physical cores) is the ceiling
    (16, 16, 3.2, 2, 13),
    (4, 4, 0.0, 0, 4),    # running processes unknown
])
def test_default_threads_leave_busy_cores_alone(machine, cores, torch_threads, load, running, expected):
    machine(cores, torch_threads, load, running)
    assert device.default_threads() == expected


def test_running_processes_counts_this_one():
    assert device.running_processes() >= 1 or not os.path.exists("/proc/loadavg")
