"""Training checkpoints: written atomically, read back with PyTorch's weights-only loader.

A checkpoint holds only tensors and plain values (numbers, strings, lists, dicts), so reading one
never runs pickled code.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from ..atomic import atomic_write_bytes
from ..errors import CheckpointError

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write `state` to `path` atomically (a reader sees the old or the new checkpoint, whole)."""
    stream = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, stream)
    atomic_write_bytes(path, stream.getvalue(), overwrite=True)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by `save_checkpoint`; raises CheckpointError naming the file."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"There is no training checkpoint at {path} to resume from.") from None
    except Exception as error:  # the unpickler raises many types for damaged or foreign files
        raise CheckpointError(f"{path} is not a readable training checkpoint ({error}).") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a training checkpoint of this version.")
    return state
