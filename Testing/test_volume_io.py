"""Reading, validating and writing volumes; the `h3de info` sub-command."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from builders_volumes import (
    OBLIQUE,
    ORIGIN,
    SERIES_A,
    SERIES_B,
    SPACING,
    make_volume,
    write_dicom_series,
)
from H3DELandmarksLib.cli.main import main
from H3DELandmarksLib.data.volume import Volume
from H3DELandmarksLib.data.volume_io import choose_dicom_series, read_volume, validate_volume, write_volume
from H3DELandmarksLib.errors import VolumeError


def assert_same_volume(read: Volume, written: Volume, atol: float) -> None:
    assert read.array.dtype == written.array.dtype
    np.testing.assert_array_equal(read.array, written.array)
    np.testing.assert_allclose(read.spacing, written.spacing, atol=atol)
    np.testing.assert_allclose(read.origin, written.origin, atol=atol)
    np.testing.assert_allclose(read.direction, written.direction, atol=atol)


def write_metaimage(path: Path, dim_size="4 4 4", spacing="1 1 1", matrix="1 0 0 0 1 0 0 0 1") -> Path:
    """A hand-written .mha file (to get geometry SimpleITK itself refuses to create)."""
    voxels = int(np.prod([int(n) for n in dim_size.split()]))
    header = (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        f"TransformMatrix = {matrix}\nOffset = 0 0 0\nElementSpacing = {spacing}\nDimSize = {dim_size}\n"
        "ElementType = MET_FLOAT\nElementDataFile = LOCAL\n"
    )
    path.write_bytes(header.encode() + np.ones(voxels, np.float32).tobytes())
    return path


def write_nrrd_header(path: Path, directions: str) -> Path:
    """A hand-written .nrrd file with the given `space directions`."""
    header = (
        "NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: 4 4 4\n"
        f"space directions: {directions}\nencoding: raw\nendian: little\nspace origin: (0,0,0)\n\n"
    )
    path.write_bytes(header.encode() + np.ones(64, np.float32).tobytes())
    return path


def truncated_copy(path: Path) -> Path:
    """Copy of `path` cut in half, named like it."""
    target = path.with_name(f"cut-{path.name}")
    data = path.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


@pytest.mark.parametrize("suffix", [".nrrd", ".nhdr", ".mha", ".mhd"])
def test_round_trip_keeps_voxels_and_geometry_exactly(tmp_path, suffix):
    volume = make_volume()
    path = write_volume(volume, tmp_path / f"ct{suffix}")
    assert_same_volume(read_volume(str(path)), volume, atol=1e-12)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize(
    "direction", [OBLIQUE, OBLIQUE @ np.diag([1.0, -1.0, 1.0])], ids=["rotation", "reflection"]
)
def test_nifti_round_trip_keeps_geometry_to_float32_precision(tmp_path, suffix, direction):
    # NIfTI stores spacing, origin and the qform/sform in float32; SimpleITK converts RAS to LPS and
    # keeps the full (even left-handed) direction through qfac / sform.
    volume = make_volume(direction=direction)
    path = write_volume(volume, tmp_path / f"ct{suffix}")
    assert_same_volume(read_volume(path), volume, atol=1e-5)


def test_float_voxels_round_trip(tmp_path):
    volume = make_volume(dtype=np.float32)
    assert_same_volume(read_volume(write_volume(volume, tmp_path / "ct.nii.gz")), volume, atol=1e-5)


def test_write_refuses_to_overwrite_and_leaves_no_temporary_files(tmp_path):
    volume = make_volume()
    path = write_volume(volume, tmp_path / "ct.mhd")
    assert sorted(os.listdir(tmp_path)) == ["ct.mhd", "ct.zraw"]
    with pytest.raises(VolumeError, match="already exists"):
        write_volume(volume, path)
    brighter = Volume(volume.array + 1, volume.spacing, volume.origin, volume.direction)
    write_volume(brighter, path, overwrite=True)
    np.testing.assert_array_equal(read_volume(path).array, brighter.array)
    assert sorted(os.listdir(tmp_path)) == ["ct.mhd", "ct.zraw"]


def test_write_refuses_unsupported_format(tmp_path):
    with pytest.raises(VolumeError, match="ct.png"):
        write_volume(make_volume(), tmp_path / "ct.png")
    assert os.listdir(tmp_path) == []


def test_dicom_series_round_trip(tmp_path):
    volume = make_volume()
    write_dicom_series(volume, tmp_path / "dicom", SERIES_A)
    assert_same_volume(read_volume(tmp_path / "dicom"), volume, atol=1e-6)


def test_dicom_folder_with_two_series_reads_the_longer_one(tmp_path, caplog):
    longer = make_volume(shape_kji=(6, 7, 8))
    shorter = make_volume(shape_kji=(4, 7, 8))
    write_dicom_series(shorter, tmp_path / "dicom", SERIES_A)
    write_dicom_series(longer, tmp_path / "dicom", SERIES_B)
    with caplog.at_level(logging.WARNING, logger="H3DELandmarksLib.data.volume_io"):
        volume = read_volume(tmp_path / "dicom")
    np.testing.assert_array_equal(volume.array, longer.array)
    message = caplog.records[-1].getMessage()
    assert SERIES_B in message and "6 slices" in message and "ignoring 1 other series" in message
    series, ignored = choose_dicom_series(tmp_path / "dicom")
    assert (series.uid, len(series.files), ignored) == (SERIES_B, 6, 1)


def test_dicom_series_in_a_subfolder_is_found(tmp_path):
    write_dicom_series(make_volume(), tmp_path / "study" / "series", SERIES_A)
    assert read_volume(tmp_path / "study").shape_ijk == (8, 7, 6)


def bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Bad input name -> (path, words the error must contain)."""
    noise_array = np.random.default_rng(1).normal(size=(32, 32, 32)).astype(np.float32)
    noise = Volume(noise_array, SPACING, ORIGIN, np.eye(3))
    cases = {"missing file": (tmp_path / "absent.nrrd", "does not exist"),
             "missing folder": (tmp_path / "absent", "does not exist"),
             "unsupported format": (tmp_path / "photo.png", "not a supported"),
             "no DICOM series": (tmp_path / "notes", "no DICOM series")}
    (tmp_path / "photo.png").write_bytes(b"\x89PNG")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not DICOM")
    for suffix in (".nrrd", ".nii", ".nii.gz", ".mha"):
        for compress in (False, True):
            whole = tmp_path / f"noise{'-gz' if compress else ''}{suffix}"
            sitk.WriteImage(noise.to_sitk(), str(whole), compress)
            cases[f"truncated {whole.name}"] = (truncated_copy(whole), "cannot be read")
    image_2d = sitk.GetImageFromArray(np.ones((5, 6), np.float32))
    sitk.WriteImage(image_2d, str(tmp_path / "2d.nrrd"))
    cases["2D image"] = (tmp_path / "2d.nrrd", "2D image")
    single_slice = make_volume(shape_kji=(1, 5, 6))
    sitk.WriteImage(single_slice.to_sitk(), str(tmp_path / "slice.nrrd"))
    cases["single slice"] = (tmp_path / "slice.nrrd", "single slice")
    series_4d = sitk.JoinSeries([noise.to_sitk(), noise.to_sitk()])
    sitk.WriteImage(series_4d, str(tmp_path / "4d.nrrd"))
    cases["4D"] = (tmp_path / "4d.nrrd", "4 dimensions")
    rgb = sitk.Compose([make_volume().to_sitk()] * 3)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.nii.gz"))
    cases["vector"] = (tmp_path / "rgb.nii.gz", "3 components")
    cases["empty"] = (write_metaimage(tmp_path / "empty.mha", dim_size="4 0 4"), "empty")
    with_nan = noise.array.copy()
    with_nan[1, 2, 3] = np.nan
    with_nan[3, 2, 1] = np.inf
    sitk.WriteImage(Volume(with_nan, SPACING, ORIGIN, np.eye(3)).to_sitk(), str(tmp_path / "nan.nrrd"))
    cases["non-finite"] = (tmp_path / "nan.nrrd", "2 non-finite")
    cases["zero spacing"] = (write_metaimage(tmp_path / "flat.mha", spacing="1 0 1"), "zero voxel spacing")
    cases["singular direction"] = (
        write_nrrd_header(tmp_path / "singular.nrrd", "(1,0,0) (2,0,0) (0,0,1)"),
        "singular direction",
    )
    return cases


def test_every_bad_input_raises_one_sentence_naming_the_file(tmp_path):
    for name, (path, words) in bad_inputs(tmp_path).items():
        with pytest.raises(VolumeError) as caught:
            read_volume(path)
        message = str(caught.value)
        assert str(path) in message, name
        assert words in message, f"{name}: {message}"
        assert "\n" not in message and message.endswith("."), name


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"array": np.ones((4, 5), np.float32)}, "2D image"),
        ({"array": np.ones((4, 5, 6, 3), np.float32)}, "3 components"),
        ({"array": np.ones((4, 0, 6), np.float32)}, "empty"),
        ({"array": np.full((4, 5, 6), np.inf, np.float32)}, "120 non-finite"),
        ({"array": np.ones((4, 5, 6), np.complex64)}, "complex64"),
        ({"spacing": (1.0, -1.0, 1.0)}, "spacing"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing"),
        ({"origin": (0.0, np.nan, 0.0)}, "origin"),
        ({"direction": np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])}, "singular direction"),
        ({"direction": np.array([[1.0, 1.0, 0.0], [0.0, 1e-9, 0.0], [0.0, 0.0, 1.0]])}, "singular direction"),
    ],
)
def test_validate_volume_rejects_bad_in_memory_volumes(change, words):
    fields = {"array": np.ones((4, 5, 6), np.float32), "spacing": (1.0, 1.0, 1.0), "origin": (0.0, 0.0, 0.0),
              "direction": np.eye(3)}
    fields.update(change)
    with pytest.raises(VolumeError, match=words) as caught:
        validate_volume(Volume(**fields), "node 'CT'")
    assert "node 'CT'" in str(caught.value)


def test_validate_volume_accepts_a_good_volume():
    validate_volume(make_volume(), "node 'CT'")


def test_info_prints_geometry_and_the_chosen_dicom_series(tmp_path, capsys):
    path = write_volume(make_volume(direction=np.diag([-1.0, -1.0, 1.0])), tmp_path / "ct.nrrd")
    write_dicom_series(make_volume(shape_kji=(4, 7, 8)), tmp_path / "dicom", SERIES_A)
    write_dicom_series(make_volume(), tmp_path / "dicom", SERIES_B)
    assert main(["info", str(path), str(tmp_path / "dicom")]) == 0
    output = capsys.readouterr().out
    assert "size (i, j, k):     8 x 7 x 6 voxels" in output
    assert "spacing (mm):       0.5, 0.7, 1.2" in output
    assert "origin (LPS mm):    10, -20.5, 30.25" in output
    assert "axis i (LPS):       -1, 0, 0" in output
    assert "orientation:        RAS" in output
    assert f"DICOM series:       {SERIES_B} (6 slices; 1 other series ignored)" in output


def test_info_takes_what_detect_takes_folders_of_volumes_and_patterns(tmp_path, capsys):
    for name in ("a.nrrd", "b.nii.gz"):
        write_volume(make_volume(), tmp_path / "scans" / name)
    write_volume(make_volume(), tmp_path / "scans" / "deeper" / "c.mha")
    assert main(["info", str(tmp_path / "scans")]) == 0
    described = [line for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
    assert described == [str(tmp_path / "scans" / "a.nrrd"), str(tmp_path / "scans" / "b.nii.gz")]
    assert main(["info", "--recursive", str(tmp_path / "scans"), str(tmp_path / "scans" / "*.nrrd")]) == 0
    described = [line for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
    assert [Path(line).name for line in described] == ["a.nrrd", "b.nii.gz", "c.mha"]
    assert main(["info", str(tmp_path / "*.mhd")]) == 2
    pattern = str(tmp_path / "*.mhd")
    assert capsys.readouterr().err == f"h3de: error: The pattern {pattern!r} matches no file or folder.\n"


def test_info_on_a_bad_file_prints_one_line_on_stderr_and_fails(tmp_path, capsys):
    path = tmp_path / "ct.nii.gz"
    write_volume(make_volume(), path)
    cut = truncated_copy(path)
    assert main(["info", str(cut)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and str(cut) in lines[0]
