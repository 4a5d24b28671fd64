"""H3DE-Net in PyTorch: configuration, network and output decoding (imports nothing above it)."""

from __future__ import annotations

from .config import H3DEConfig, resolve_config
from .network import H3DENet


def build_model(config_or_name: "H3DEConfig | str | dict" = "default", n_landmarks: int | None = None) -> H3DENet:
    """Build an H3DE-Net from a configuration, a configuration dict or a name
    ("reference", "reference-proposals", "default", "default-proposals")."""
    return H3DENet(resolve_config(config_or_name, n_landmarks))


__all__ = ["H3DEConfig", "H3DENet", "build_model"]
