"""Strict, explained loading of a state dict into a network."""

from __future__ import annotations

import torch
from torch import nn


def state_dict_problem(net: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """A sentence naming the first missing, unexpected or mis-shaped key, or None if `state` fits."""
    expected = net.state_dict()
    for key in expected:
        if key not in state:
            return f"tensor {key!r} is missing"
    for key, value in state.items():
        if key not in expected:
            return f"tensor {key!r} is not part of this architecture"
        if tuple(value.shape) != tuple(expected[key].shape):
            return f"tensor {key!r} has shape {tuple(value.shape)}, the architecture needs {tuple(expected[key].shape)}"
    return None


def load_weights(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load `state` (floating tensors cast to float32) into `net`; call `state_dict_problem` first."""
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
