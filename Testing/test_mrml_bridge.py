"""The scene bridge with the real slicer-core scene: volume geometry, detection, background work.

A rotated, anisotropic volume goes into a volume node (also through Slicer's own NRRD reader,
and under a linear transform); detection on the node must put every point, in RAS, exactly
where the library's LPS result is, and within half a voxel of the truth. The stand-in network
of the predictor geometry tests finds balls from the image alone. The background detection
runs the real `h3de detect` (a child process, JSON progress) with a small random-weight model on
a volume Slicer's own reader loaded; the points it puts in the scene must be the positions the
library finds in the original file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from builders_blobs import COARSE, DIRECTIONS, FINE, blob_volume, heatmap_predictor, truth_positions, voxel_errors
from builders_downloads import MODEL_ID, make_registry, serve
from builders_models import small_state_dict, valid_manifest
from H3DELandmarksLib.data.phantom import PHANTOM_LANDMARK_NAMES, make_phantom
from H3DELandmarksLib.data.volume_io import read_volume, write_volume
from H3DELandmarksLib.errors import H3DEError, VolumeError
from H3DELandmarksLib.inference import Predictor
from H3DELandmarksLib.model.config import default_config
from H3DELandmarksLib.model.network import H3DENet

slicer = pytest.importorskip("slicer")
import vtk  # noqa: E402 - comes with slicer-core

from H3DELandmarksLib.mrml.corrections import apply_detection  # noqa: E402 - needs slicer
from H3DELandmarksLib.cli.parent_guard import STDIN_CLOSED_STATUS  # noqa: E402
from H3DELandmarksLib.mrml.child_process import library_command  # noqa: E402
from H3DELandmarksLib.mrml.detect_process import start_detection  # noqa: E402
from H3DELandmarksLib.mrml.markups_node import create_landmarks_node  # noqa: E402
from H3DELandmarksLib.mrml.models import ModelDownload, model_from_folder, registered_models  # noqa: E402
from H3DELandmarksLib.mrml.volume_node import (  # noqa: E402
    LPS_TO_RAS,
    lps_to_ras,
    ras_to_lps,
    volume_from_node,
    volume_to_node,
)
from H3DELandmarksLib.registry import SCHEMA_VERSION, ModelCache, write_package  # noqa: E402

DOWNLOAD_OPTIONS = dict(retries=0, backoff_s=0.0, timeout=(2.0, 2.0))
DETECTION_TIMEOUT_S = 180.0


def rigid_ras_matrix() -> np.ndarray:
    """A rotation about an oblique axis plus a translation, as a 4x4 RAS matrix."""
    axis = np.array([1.0, -2.0, 0.5]) / np.linalg.norm([1.0, -2.0, 0.5])
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_rotvec(0.4 * axis).as_matrix()
    matrix[:3, 3] = [12.0, -7.5, 30.0]
    return matrix


def add_transform(scene, node, matrix: np.ndarray):
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    node.SetAndObserveTransformNodeID(transform.GetID())
    return transform


def apply_lps(matrix_ras: np.ndarray, points_lps: np.ndarray) -> np.ndarray:
    """Apply a RAS 4x4 transform to LPS points."""
    matrix_lps = LPS_TO_RAS @ matrix_ras @ LPS_TO_RAS
    return np.asarray(points_lps) @ matrix_lps[:3, :3].T + matrix_lps[:3, 3]


def ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def world_points_ras(node) -> np.ndarray:
    points = []
    for index in range(node.GetNumberOfControlPoints()):
        position = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(index, position)
        points.append(position)
    return np.array(points)


@pytest.fixture(scope="module")
def phantom():
    """A rotated (left-handed, oblique or permuted), anisotropic phantom and its landmarks."""
    return make_phantom(5, size=(40, 36, 30), spacing=(1.8, 2.2, 3.0), direction="random", flip=True)


def test_volume_node_holds_the_volume_with_its_geometry_in_ras(phantom):
    volume, _ = phantom
    node = volume_to_node(volume, slicer.vtkMRMLScene(), "CT")
    np.testing.assert_allclose(ijk_to_ras(node), LPS_TO_RAS @ volume.index_to_physical_matrix, atol=1e-12)
    back = volume_from_node(node)
    np.testing.assert_allclose(back.index_to_physical_matrix, volume.index_to_physical_matrix, atol=1e-12)
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.array.dtype == volume.array.dtype


def test_slicer_reader_and_bridge_agree_on_every_voxel_position(tmp_path, phantom):
    """Slicer's NRRD reader makes a left-handed volume right-handed (k reversed); positions must agree."""
    volume, _ = phantom
    _, node = read_into_scene(write_volume(volume, tmp_path / "phantom.nrrd"))
    seen = volume_from_node(node)
    k, j, i = np.meshgrid(*(np.arange(n) for n in volume.array.shape), indexing="ij")
    ijk = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(float)
    in_node = seen.physical_to_index(volume.index_to_physical(ijk))
    np.testing.assert_allclose(in_node, np.rint(in_node), atol=1e-6)
    i_node, j_node, k_node = np.rint(in_node).astype(int).T
    np.testing.assert_array_equal(seen.array[k_node, j_node, i_node], volume.array.reshape(-1))


def test_a_linear_parent_transform_is_hardened_without_touching_the_scene(phantom):
    volume, _ = phantom
    scene = slicer.vtkMRMLScene()
    node = volume_to_node(volume, scene, "CT")
    matrix = rigid_ras_matrix()
    transform = add_transform(scene, node, matrix)
    seen = volume_from_node(node)
    corners = np.array([[0.0, 0.0, 0.0], [39.0, 0.0, 0.0], [0.0, 35.0, 29.0], [39.0, 35.0, 29.0]])
    np.testing.assert_allclose(seen.index_to_physical(corners), apply_lps(matrix, volume.index_to_physical(corners)),
                               atol=1e-9)
    assert node.GetParentTransformNode() is transform
    np.testing.assert_allclose(ijk_to_ras(node), LPS_TO_RAS @ volume.index_to_physical_matrix, atol=1e-12)


def test_a_non_linear_transform_and_an_empty_node_are_refused_in_one_sentence(phantom):
    volume, _ = phantom
    scene = slicer.vtkMRMLScene()
    node = volume_to_node(volume, scene, "CT")
    warp = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    node.SetAndObserveTransformNodeID(warp.GetID())
    with pytest.raises(VolumeError, match=r"^Volume node 'CT' is under the non-linear transform 'warp'; harden"):
        volume_from_node(node)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(VolumeError, match=r"^Volume node 'empty' holds no image data\.$"):
        volume_from_node(empty)


@pytest.mark.parametrize("transformed", [False, True], ids=["plain", "under a linear transform"])
def test_detected_points_in_ras_are_the_library_positions_in_lps(transformed):
    truth = truth_positions()
    volume = blob_volume(DIRECTIONS["oblique"], truth)
    scene = slicer.vtkMRMLScene()
    node = volume_to_node(volume, scene, "blobs")
    matrix = rigid_ras_matrix() if transformed else np.eye(4)
    if transformed:
        add_transform(scene, node, matrix)
    detection = heatmap_predictor([COARSE, FINE]).predict(volume_from_node(node))
    landmarks = create_landmarks_node(scene, detection.landmarks, detection.model_id, detection.model_version,
                                      volume_node=node)
    points = world_points_ras(landmarks)
    np.testing.assert_allclose(points, lps_to_ras(detection.landmarks.positions), atol=1e-9)
    back_in_volume = apply_lps(np.linalg.inv(matrix), ras_to_lps(points))
    assert voxel_errors(volume, back_in_volume, truth).max() < 0.5


def test_registered_and_folder_models_are_offered(tmp_path, server, packed):
    _, sha256, size = packed
    registry = make_registry(tmp_path, server, "/m.zip", sha256, size)
    [choice] = registered_models(registry, cache_dir=tmp_path / "cache")
    assert (choice.spec, choice.status, choice.needs_download) == (f"{MODEL_ID}@1.0.0", "not downloaded", True)
    package = write_package(tmp_path / "package", valid_manifest("folder-model", "2.0.0"), small_state_dict())
    folder = model_from_folder(package.path)
    assert (folder.spec, folder.status, folder.needs_download) == (str(package.path), "from folder", False)
    assert "folder-model@2.0.0" in folder.label


def wait_until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_background_download_reports_progress_and_finishes(tmp_path, server, packed):
    payload, sha256, size = packed
    server.routes["/m.zip"] = serve(payload)
    registry = make_registry(tmp_path, server, "/m.zip", sha256, size)
    download = ModelDownload(MODEL_ID, cache_dir=tmp_path / "cache", registry=registry, **DOWNLOAD_OPTIONS)
    assert download.wait(10)
    assert (download.error(), download.cancelled, download.fraction) == (None, False, 1.0)
    assert download.result() == ModelCache(tmp_path / "cache").package_dir(MODEL_ID, "1.0.0")


def test_background_download_can_be_cancelled_and_resumed(tmp_path, server, packed):
    payload, sha256, size = packed
    release = threading.Event()

    def stalls_half_way(handler, attempt):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload[: len(payload) // 2])
        handler.wfile.flush()
        release.wait(10)
        handler.wfile.write(payload[len(payload) // 2:])

    server.routes["/m.zip"] = stalls_half_way
    registry = make_registry(tmp_path, server, "/m.zip", sha256, size)
    download = ModelDownload(MODEL_ID, cache_dir=tmp_path / "cache", registry=registry, **DOWNLOAD_OPTIONS)
    wait_until(lambda: download.fraction > 0.25)
    assert not download.finished
    download.cancel()
    release.set()
    assert download.wait(10)
    assert download.cancelled and download.path is None
    assert download.error() == "The download was cancelled; the next download resumes where it stopped."
    assert ModelCache(tmp_path / "cache").partial_path(MODEL_ID, "1.0.0").exists()
    server.routes["/m.zip"] = serve(payload)
    resumed = ModelDownload(MODEL_ID, cache_dir=tmp_path / "cache", registry=registry, **DOWNLOAD_OPTIONS)
    assert resumed.wait(10) and resumed.path is not None
    assert server.log[-1]["range"] is not None


def test_background_download_failure_is_one_sentence(tmp_path, server, packed):
    _, sha256, size = packed
    registry = make_registry(tmp_path, server, "/missing.zip", sha256, size)
    download = ModelDownload(MODEL_ID, cache_dir=tmp_path / "cache", registry=registry, **DOWNLOAD_OPTIONS)
    assert download.wait(10)
    assert download.path is None and download.error().startswith("Downloading http://127.0.0.1:")
    assert "HTTP 404" in download.error()
    with pytest.raises(H3DEError, match="HTTP 404"):
        download.result()


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    """A small H3DE-Net package with random weights, one 64-voxel stage at 4 mm, every landmark present."""
    names = list(PHANTOM_LANDMARK_NAMES)
    config = default_config(len(names), embed_dims=(8, 16, 32, 64), qk_dims=(8, 16, 32, 64), depths=(1, 1, 1, 1),
                            decoder_dims=(32, 16, 16, 8), skip_dims=(8,))
    manifest = valid_manifest("phantom-random", "0.0.1")
    manifest["architecture"] = config.to_dict()
    manifest["landmarks"] = [{"name": name} for name in names]
    manifest["preprocessing"]["stages"] = [{"name": "coarse", "spacing_mm": [4.0, 4.0, 4.0], "patch_size": [64] * 3}]
    manifest["confidence_threshold"] = 0.0
    assert manifest["schema_version"] == SCHEMA_VERSION
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return write_package(tmp_path_factory.mktemp("model") / "package", manifest, H3DENet(config).state_dict()).path


def read_into_scene(path):
    """A scene and a volume node filled by Slicer's own reader."""
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "phantom")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return scene, node


def follow(run) -> list[dict]:
    """Poll a detection like the module's timer does, until it finishes; all events seen."""
    events = []
    deadline = time.monotonic() + DETECTION_TIMEOUT_S
    while not run.finished:
        assert time.monotonic() < deadline, "detection timed out"
        events += run.poll()
        time.sleep(0.05)
    return events + run.poll()


def test_background_detection_of_a_slicer_loaded_volume_matches_the_library(tmp_path, phantom, random_model):
    volume, _ = phantom
    path = write_volume(volume, tmp_path / "phantom.nrrd")
    scene, node = read_into_scene(path)
    run = start_detection(node, str(random_model), device="cpu", python=sys.executable)
    events = follow(run)
    result = run.result()
    run.cleanup()
    assert not run.work_dir.exists()
    fractions = [event["fraction"] for event in events if event["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and run.fraction == 1.0
    assert [event["event"] for event in events][-2:] == ["case_done", "done"]
    landmarks, created = apply_detection(scene, result.landmarks, result.model_id, result.model_version,
                                         volume_node=node)
    assert created and (result.model_id, result.model_version) == ("phantom-random", "0.0.1")

    direct = Predictor.from_model(random_model, device="cpu").predict(read_volume(path)).landmarks
    assert direct.names == [landmarks.GetNthControlPointLabel(i) for i in range(len(direct))]
    assert direct.present.all()
    np.testing.assert_allclose(ras_to_lps(world_points_ras(landmarks)), direct.positions, atol=1e-4)


def test_background_detection_failure_is_one_sentence(phantom, tmp_path):
    volume, _ = phantom
    node = volume_to_node(volume, slicer.vtkMRMLScene(), "CT")
    missing = tmp_path / "no-model"
    run = start_detection(node, str(missing), device="cpu", python=sys.executable)
    follow(run)
    assert run.error() == f"{missing} is not a model package directory: it does not exist."
    with pytest.raises(H3DEError, match="is not a model package directory"):
        run.result()
    run.cleanup()


def test_background_detection_can_be_cancelled(phantom, random_model):
    volume, _ = phantom
    node = volume_to_node(volume, slicer.vtkMRMLScene(), "CT")
    run = start_detection(node, str(random_model), device="cpu", python=sys.executable)
    run.cancel()
    follow(run)
    assert run.error() == "Landmark detection was cancelled."
    run.cleanup()
    assert not run.work_dir.exists()


def write_launcher(folder: Path) -> Path:
    """A stand-in for PythonSlicer: like CTK's AppLauncher it runs the real Python as its child
    (whose process id it writes to $H3DE_TEST_CHILD_PID) and waits for it."""
    launcher = folder / "PythonSlicer"
    launcher.write_text(
        f"#!{sys.executable}\n"
        "import os, subprocess, sys\n"
        f"child = subprocess.Popen([{sys.executable!r}, *sys.argv[1:]])\n"
        "open(os.environ['H3DE_TEST_CHILD_PID'], 'w').write(str(child.pid))\n"
        "sys.exit(child.wait())\n",
        encoding="utf-8",
    )
    launcher.chmod(0o755)
    return launcher


def process_ended(pid: int) -> bool:
    """True when `pid` no longer runs (gone, or a zombie nobody reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")
def test_cancel_ends_the_real_python_behind_a_launcher(phantom, random_model, tmp_path, monkeypatch):
    pid_file = tmp_path / "child.pid"
    monkeypatch.setenv("H3DE_TEST_CHILD_PID", str(pid_file))
    volume, _ = phantom
    node = volume_to_node(volume, slicer.vtkMRMLScene(), "CT")
    run = start_detection(node, str(random_model), device="cpu", python=str(write_launcher(tmp_path)))
    wait_until(pid_file.exists)
    wait_until(lambda: pid_file.read_text() != "")
    child = int(pid_file.read_text())
    assert not process_ended(child)
    run.cancel()
    wait_until(lambda: process_ended(child), seconds=5.0)
    follow(run)
    assert run.error() == "Landmark detection was cancelled."
    assert not (run.output_dir / f"{run.case}.json").exists(), "the detection went on after cancel"
    run.cleanup()


def test_detect_stops_when_its_standard_input_closes(phantom, random_model, tmp_path):
    volume, _ = phantom
    path = write_volume(volume, tmp_path / "phantom.nrrd")
    command = library_command("detect", str(path), "--model", str(random_model), "--out", str(tmp_path / "out"),
                              "--device", "cpu", "--progress", "none", "--stop-when-stdin-closes")
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]),
                                                                os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env=environment)
    process.stdin.close()
    assert process.wait(DETECTION_TIMEOUT_S) == STDIN_CLOSED_STATUS, process.stderr.read()
    process.stderr.close()
    assert not (tmp_path / "out" / "phantom.json").exists()
