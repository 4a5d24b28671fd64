"""Landmark detection with a model package: package loading, windows and the two-stage predictor."""

from .package_loading import load_package
from .predictor import Detection, Predictor

__all__ = ["Detection", "Predictor", "load_package"]
