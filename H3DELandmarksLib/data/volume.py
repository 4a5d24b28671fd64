"""The `Volume` type: a 3D scalar image with its full physical geometry (LPS, mm).

Axis order: `array` is indexed ``[k, j, i]`` exactly as SimpleITK's ``GetArrayFromImage`` returns
it; every geometric quantity (`spacing`, index arguments, `shape_ijk`) is in ITK ``(i, j, k)`` order.
Physical point of continuous index ``ijk``: ``origin + direction @ (spacing * ijk)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class Volume:
    """A 3D scalar volume in LPS millimetres.

    Attributes:
        array: voxel values indexed ``[k, j, i]``.
        spacing: voxel size along i, j, k (mm).
        origin: LPS position of voxel (0, 0, 0) (mm).
        direction: 3x3 matrix whose columns are the LPS directions of the i, j, k axes.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along i, j, k."""
        k, j, i = self.array.shape
        return i, j, k

    @property
    def index_to_physical_matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping continuous (i, j, k, 1) to (L, P, S, 1)."""
        matrix = np.eye(4)
        matrix[:3, :3] = np.asarray(self.direction, float) @ np.diag(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix

    def index_to_physical(self, ijk: np.ndarray) -> np.ndarray:
        """Map continuous indices ``(..., 3)`` in (i, j, k) order to LPS millimetres."""
        ijk = np.asarray(ijk, float)
        matrix = self.index_to_physical_matrix
        return ijk @ matrix[:3, :3].T + matrix[:3, 3]

    def physical_to_index(self, lps: np.ndarray) -> np.ndarray:
        """Map LPS millimetres ``(..., 3)`` to continuous indices in (i, j, k) order."""
        lps = np.asarray(lps, float)
        matrix = self.index_to_physical_matrix
        return (lps - matrix[:3, 3]) @ np.linalg.inv(matrix[:3, :3]).T

    def to_sitk(self) -> sitk.Image:
        """Return a SimpleITK image with the same voxels and geometry."""
        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        image.SetSpacing([float(s) for s in self.spacing])
        image.SetOrigin([float(o) for o in self.origin])
        image.SetDirection([float(d) for d in np.asarray(self.direction, float).ravel()])
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Volume":
        """Build a Volume from a 3D scalar SimpleITK image (geometry kept exactly)."""
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing=tuple(float(s) for s in image.GetSpacing()),
            origin=tuple(float(o) for o in image.GetOrigin()),
            direction=np.array(image.GetDirection(), float).reshape(3, 3),
        )
