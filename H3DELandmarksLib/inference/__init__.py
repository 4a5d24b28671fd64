"""Landmark detection with a model package: device, preprocessing, windows and the two-stage predictor."""

from .device import resolve_device
from .predictor import Detection, Predictor

__all__ = ["Detection", "Predictor", "resolve_device"]
