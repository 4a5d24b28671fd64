"""Where the network runs: device choice, mixed precision and CPU thread count."""

from __future__ import annotations

import contextlib

import torch

from ..errors import H3DEError

DEVICES = ("auto", "cuda", "mps", "cpu")


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
