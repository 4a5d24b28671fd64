"""Atomic writes honour the umask: results are as readable as any other file the user writes."""

from __future__ import annotations

import os
import stat

import pytest

from builders_models import small_state_dict, valid_manifest
from H3DELandmarksLib.atomic import atomic_destination, atomic_write_text
from H3DELandmarksLib.errors import H3DEError
from H3DELandmarksLib.registry import write_package


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_and_package_folders_take_the_umask(tmp_path, umask):
    written = atomic_write_text(tmp_path / "case.csv", "a,b\n")
    package = write_package(tmp_path / "package", valid_manifest(), small_state_dict()).path
    assert mode(written) == 0o666 & ~umask
    assert mode(package) == 0o777 & ~umask
    assert {mode(path) for path in package.iterdir()} == {0o666 & ~umask}


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_destination(tmp_path / "case.json") as temporary:
            temporary.write_text("half")
            raise RuntimeError("writer failed")
    atomic_write_text(tmp_path / "case.json", "{}")
    with pytest.raises(H3DEError, match="already exists"):
        atomic_write_text(tmp_path / "case.json", "[]")
    assert [path.name for path in tmp_path.iterdir()] == ["case.json"]
    assert (tmp_path / "case.json").read_text() == "{}"
