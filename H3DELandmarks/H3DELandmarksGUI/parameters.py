"""The module's settings, stored in the scene (parameter node wrapper)."""

from typing import Annotated

from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

# The choices of H3DELandmarksLib.device.DEVICES (that module needs PyTorch to import).
DEVICES = ["auto", "cpu", "cuda", "mps"]
# H3DELandmarksLib.mrml.review.DEFAULT_ERROR_THRESHOLD_MM (that module needs numpy to import).
DEFAULT_ERROR_THRESHOLD_MM = 0.5


@parameterNodeWrapper
class H3DELandmarksParameterNode:
    """The module's settings.

    inputVolume - volume to detect landmarks in.
    model - "ID@VERSION" of a registered model, or a model package folder.
    device - "auto", "cpu", "cuda" or "mps".
    confidenceThreshold - points below it are shown as low confidence (and flagged when their
        expected error is unknown).
    errorThreshold - points whose expected error (mm) is above it are flagged for review.
    updateUntouchedOnly - re-detecting into corrected landmarks updates only untouched points.
    landmarks - the point list holding the detected landmarks.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    model: str = ""
    device: Annotated[str, Choice(DEVICES)] = "auto"
    confidenceThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    errorThreshold: Annotated[float, WithinRange(0.0, 20.0)] = DEFAULT_ERROR_THRESHOLD_MM
    updateUntouchedOnly: bool = False
    landmarks: vtkMRMLMarkupsFiducialNode
