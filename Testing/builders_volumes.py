"""Small volumes with non-trivial geometry, and DICOM series written from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from H3DELandmarksLib.data.volume import Volume

SPACING = (0.5, 0.7, 1.2)
ORIGIN = (10.0, -20.5, 30.25)
SERIES_A = "1.2.826.0.1.3680043.2.1125.1001"
SERIES_B = "1.2.826.0.1.3680043.2.1125.1002"


def rotation(axis: int, angle: float) -> np.ndarray:
    """Rotation matrix by `angle` radians about LPS axis `axis`."""
    return Rotation.from_rotvec(np.eye(3)[axis] * angle).as_matrix()


OBLIQUE = rotation(0, 0.3) @ rotation(2, 0.5)


def make_volume(shape_kji=(6, 7, 8), dtype=np.int16, direction=OBLIQUE) -> Volume:
    """A small volume of random values with non-trivial geometry."""
    array = np.random.default_rng(0).integers(-1000, 1000, size=shape_kji).astype(dtype)
    return Volume(array=array, spacing=SPACING, origin=ORIGIN, direction=np.array(direction, float))


def write_dicom_series(volume: Volume, folder: Path, uid: str) -> None:
    """Write `volume` as one DICOM file per k slice with ImagePositionPatient / ImageOrientationPatient."""
    folder.mkdir(parents=True, exist_ok=True)
    image = volume.to_sitk()
    d = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        tags = {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": uid,
            "0008|0018": f"{uid}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0037": "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0020|0032": "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
        }
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid}-{k:03d}.dcm"))
        writer.Execute(slice_image)
