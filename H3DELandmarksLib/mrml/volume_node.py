"""Volume nodes ⇄ `Volume`: the one place where the scene's RAS meets the library's LPS.

A volume node's geometry is its IJK-to-RAS matrix; a linear parent transform (and every transform
above it) is hardened into that geometry here, without modifying the scene, so detection sees the
volume exactly where the views show it. A non-linear transform cannot be expressed as voxel
geometry and is refused. Axis order: ``Volume.array`` is ``[k, j, i]``, as
``slicer.util.arrayFromVolume`` returns it.
"""

from __future__ import annotations

import numpy as np
import slicer
import slicer.util
import vtk

from ..data.volume import Volume
from ..data.volume_io import validate_volume
from ..errors import VolumeError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
RAS_FLIP = np.array([-1.0, -1.0, 1.0])


def lps_to_ras(points: np.ndarray) -> np.ndarray:
    """Points ``(..., 3)`` from LPS to RAS (x and y negated); the inverse is the same operation."""
    return np.asarray(points, float) * RAS_FLIP


ras_to_lps = lps_to_ras


def node_ijk_to_lps(node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """4x4 matrix from continuous (i, j, k, 1) to world LPS millimetres, parent transforms included.

    Raises `VolumeError` when a transform above the node is not linear.
    """
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    matrix = slicer.util.arrayFromVTKMatrix(ijk_to_ras)
    transform_node = node.GetParentTransformNode()
    if transform_node is not None:
        if not transform_node.IsTransformToWorldLinear():
            raise VolumeError(
                f"Volume node {node.GetName()!r} is under the non-linear transform "
                f"{transform_node.GetName()!r}; harden it (Data module, right-click, Harden transform) first."
            )
        to_world = vtk.vtkMatrix4x4()
        transform_node.GetMatrixTransformToWorld(to_world)
        matrix = slicer.util.arrayFromVTKMatrix(to_world) @ matrix
    return LPS_TO_RAS @ matrix


def volume_from_node(node: slicer.vtkMRMLVolumeNode) -> Volume:
    """The node's voxels and world geometry as a validated `Volume` (voxels copied).

    Raises `VolumeError` (one sentence naming the node) for a node without image data, under a
    non-linear transform, or that is not a usable 3D scalar volume.
    """
    if node is None:
        raise VolumeError("No volume node was given; choose an input volume.")
    if node.GetImageData() is None:
        raise VolumeError(f"Volume node {node.GetName()!r} holds no image data.")
    matrix = node_ijk_to_lps(node)
    axes = matrix[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing == 0):
        raise VolumeError(f"Volume node {node.GetName()!r} has a zero voxel spacing.")
    volume = Volume(
        array=np.array(slicer.util.arrayFromVolume(node)),
        spacing=tuple(float(s) for s in spacing),
        origin=tuple(float(o) for o in matrix[:3, 3]),
        direction=axes / spacing,
    )
    validate_volume(volume, f"node {node.GetName()!r}")
    return volume


def volume_to_node(volume: Volume, scene: slicer.vtkMRMLScene, name: str) -> slicer.vtkMRMLScalarVolumeNode:
    """Add a scalar volume node holding a copy of `volume`, its geometry converted to RAS."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    ras_matrix = LPS_TO_RAS @ volume.index_to_physical_matrix
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ras_matrix))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array))
    return node
