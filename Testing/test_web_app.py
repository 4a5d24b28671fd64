"""The review app's server logic without a browser: real Slicer scene, real trame state.

The controller is driven exactly as the page drives it (open, detect, jump, drag, place, mark
absent, save, download, change case); a point dragged or placed in a view is, for the scene, a
control point whose world position changes, so the tests set positions directly. Detection runs
the real predictor with the image-computed stand-in network of the geometry tests on ball
volumes: positions are known to within half a voxel, and the landmark whose ball is missing
comes back absent.
"""

from __future__ import annotations

import asyncio
import csv
import json

import numpy as np
import pytest

from builders_blobs import COARSE, DIRECTIONS, FINE, blob_volume, heatmap_predictor, truth_positions
from H3DELandmarksLib.cli.main import main
from H3DELandmarksLib.data.landmark_files import read_landmarks
from H3DELandmarksLib.data.volume_io import write_volume
from H3DELandmarksLib.errors import DetectionCancelled, H3DEError

slicer = pytest.importorskip("slicer")
pytest.importorskip("trame_slicer", reason="the review app needs the web extra (pip install -e '.[web]')")

from trame.app import get_server  # noqa: E402 - needs the web extra
from trame_slicer.core import SlicerApp  # noqa: E402

from H3DELandmarksLib.mrml.markups_node import point_position_lps  # noqa: E402 - needs slicer
from H3DELandmarksLib.mrml.volume_node import lps_to_ras  # noqa: E402
from H3DELandmarksLib.web.cases import CaseList, review_files  # noqa: E402
from H3DELandmarksLib.web.controller import ReviewController  # noqa: E402
from H3DELandmarksLib.web.detection import BackgroundDetector  # noqa: E402

SHOWN = [0, 1, 2]  # landmark 3 has no ball: absent
UPLOAD_LIMIT = 4 * 1024 * 1024
SERVERS = iter(range(10**6))


def write_case(path, direction="oblique"):
    write_volume(blob_volume(DIRECTIONS[direction], truth_positions(), shown=SHOWN, extent_mm=36.0), path)
    return path


@pytest.fixture(scope="module")
def slicer_app():
    return SlicerApp()


@pytest.fixture
def loads():
    return []


@pytest.fixture
def controller(tmp_path, slicer_app, loads):
    slicer_app.scene.Clear()
    write_case(tmp_path / "cases" / "alpha.nrrd")
    write_case(tmp_path / "cases" / "beta.nii.gz", direction="flipped")

    def load():
        loads.append(1)
        return heatmap_predictor([COARSE, FINE])

    made = make_controller(slicer_app, tmp_path, load)
    yield made
    made.detector.shutdown()


def make_controller(slicer_app, tmp_path, load=lambda: heatmap_predictor([COARSE, FINE])):
    """A controller on the cases folder and upload folder of `tmp_path`, as `h3de serve` makes it."""
    detector = BackgroundDetector(lambda model: load(), "blob-standin")
    state = get_server(f"h3de-web-test-{next(SERVERS)}", client_type="vue3").state
    cases = CaseList([str(tmp_path / "cases")], tmp_path / "uploads", max_upload_bytes=UPLOAD_LIMIT)
    return ReviewController(state, slicer_app, cases, detector)


def detect(controller) -> None:
    asyncio.run(controller.detect())
    assert controller.state.error == ""


def opened_and_detected(controller):
    controller.open_case(0)
    detect(controller)
    return controller.session.landmarks_node


def move_to(node, index: int, lps) -> None:
    node.SetNthControlPointPositionWorld(index, *lps_to_ras(lps))


def test_case_list_holds_the_given_volumes_and_saves_beside_them(controller, tmp_path):
    state = controller.state
    assert [item["name"] for item in state.cases] == ["alpha", "beta"]
    assert not any(item["saved"] for item in state.cases) and state.case_index == -1
    files = review_files(controller.cases[0])
    assert files.mrk_json == tmp_path / "cases" / "alpha.landmarks.mrk.json"
    assert files.csv == tmp_path / "cases" / "alpha.landmarks.csv"


def test_open_shows_one_volume_and_names_the_downloads(controller):
    controller.open_case(1)
    state = controller.state
    assert state.case_index == 1 and state.volume_open and state.landmarks == []
    assert state.download_names == {"mrk_json": "beta.landmarks.mrk.json", "csv": "beta.landmarks.csv"}
    controller.open_case(0)
    volumes = controller.slicer_app.scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    assert volumes.GetNumberOfItems() == 1 and volumes.GetItemAsObject(0).GetName() == "alpha"


def test_detection_lists_landmarks_in_lps_with_confidence_and_status(controller):
    opened_and_detected(controller)
    state = controller.state
    rows = state.landmarks
    assert [row["name"] for row in rows] == ["L0", "L1", "L2", "L3"]
    assert [row["status"] for row in rows] == ["predicted"] * 3 + ["absent"]
    assert [row["placed"] for row in rows] == [True, True, True, False]
    assert [row["low_confidence"] for row in rows] == [False, False, False, True]
    assert all(0.3 <= row["confidence"] <= 1.0 for row in rows[:3]) and rows[3]["confidence"] < 0.3
    truth = truth_positions()
    volume = controller.session.detection_input()
    for row in rows[:3]:
        error_voxels = np.abs(volume.physical_to_index(np.array(row["position"]))
                              - volume.physical_to_index(truth[row["index"]]))
        assert error_voxels.max() < 0.5, row
    assert rows[3]["position"] is None
    assert state.progress == 100 and not state.detecting and state.model_label == "blob-standin@1.0.0"
    assert state.message.startswith("Found 3 of 4 landmarks")


def test_drag_place_and_mark_absent_show_as_corrections(controller):
    node = opened_and_detected(controller)
    state = controller.state
    moved_to = np.array(state.landmarks[0]["position"]) + [3.0, 0.0, -4.0]
    move_to(node, 0, moved_to)
    controller.mark_absent(1)
    controller.place(3)
    assert state.placing == 3 and state.active_landmark == 3
    interaction = controller.slicer_app.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
    assert interaction.GetCurrentInteractionMode() == slicer.vtkMRMLInteractionNode.Place
    assert node.GetControlPointPlacementStartIndex() == 3
    move_to(node, 3, truth_positions()[3])
    rows = state.landmarks
    assert [row["status"] for row in rows] == ["moved", "marked absent", "predicted", "placed by hand"]
    assert rows[0]["displacement_mm"] == pytest.approx(5.0, abs=1e-3)
    np.testing.assert_allclose(rows[0]["position"], moved_to, atol=1e-3)
    assert state.placing == -1


def test_placing_a_placed_point_is_refused_in_one_sentence(controller):
    opened_and_detected(controller)
    controller.place(0)
    assert controller.state.error == "L0 is already placed; drag it in a slice view to move it."
    assert controller.state.placing == -1


def test_jump_centres_the_slice_views_on_the_point(controller, slicer_app):
    opened_and_detected(controller)
    red = slicer_app.scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetLayoutName("Red")
    red.SetOrientationToAxial()
    controller.jump(1)
    assert controller.state.active_landmark == 1
    centre = [0.0, 0.0, 0.0, 1.0]
    red.GetXYToRAS().MultiplyPoint([red.GetDimensions()[0] / 2, red.GetDimensions()[1] / 2, 0.0, 1.0], centre)
    np.testing.assert_allclose(centre[:3], lps_to_ras(point_position_lps(controller.session.landmarks_node, 1)),
                               atol=1e-4)


def test_next_flagged_selects_the_flagged_points_in_turn_and_the_counts_follow_corrections(controller):
    node = opened_and_detected(controller)
    state = controller.state
    assert [row["flagged"] for row in state.landmarks] == [False, False, False, True]
    assert all(row["expected_error_mm"] is None for row in state.landmarks)
    assert state.review_counts == "3 of 4 placed; 1 flagged, 0 moved, 0 placed by hand"
    controller.next_flagged()
    assert state.active_landmark == 3
    controller.next_flagged()
    assert state.active_landmark == 3
    move_to(node, 3, truth_positions()[3])
    move_to(node, 0, np.array(state.landmarks[0]["position"]) + 2.0)
    assert state.review_counts == "4 of 4 placed; 0 flagged, 1 moved, 1 placed by hand"
    controller.next_flagged()
    assert state.active_landmark == 3 and state.message == "No point is flagged."


def test_redetection_keeps_corrected_points(controller):
    node = opened_and_detected(controller)
    moved_to = np.array(controller.state.landmarks[2]["position"]) + [0.0, 6.0, 0.0]
    move_to(node, 2, moved_to)
    detect(controller)
    rows = controller.state.landmarks
    assert controller.session.landmarks_node is node
    assert [row["status"] for row in rows] == ["predicted", "predicted", "moved", "absent"]
    np.testing.assert_allclose(rows[2]["position"], moved_to, atol=1e-3)


def test_save_and_download_write_lps_files_beside_the_case(controller, tmp_path):
    node = opened_and_detected(controller)
    moved_to = np.array(controller.state.landmarks[0]["position"]) + [-2.0, 1.0, 0.5]
    move_to(node, 0, moved_to)
    files = review_files(controller.cases[0])
    downloaded = {kind: controller.download(kind) for kind in ("csv", "mrk_json")}
    assert not files.csv.exists() and not files.mrk_json.exists(), "a download saves nothing"
    controller.save()
    assert downloaded["csv"] == files.csv.read_bytes()
    assert downloaded["mrk_json"] == files.mrk_json.read_bytes()
    state = controller.state
    assert state.saved_files == [str(files.mrk_json), str(files.csv)] and state.cases[0]["saved"]
    markups = json.loads(files.mrk_json.read_text())["markups"][0]
    assert markups["coordinateSystem"] == "LPS"
    assert [point["label"] for point in markups["controlPoints"]] == ["L0", "L1", "L2", "L3"]
    np.testing.assert_allclose(markups["controlPoints"][0]["position"], moved_to, atol=1e-9)
    table = list(csv.DictReader(files.csv.open()))
    assert [row["review"] for row in table] == ["moved", "predicted", "predicted", "absent"]
    assert [row["case"] for row in table] == ["alpha"] * 4
    for path in (files.mrk_json, files.csv):
        landmarks = read_landmarks(path)
        for row in state.landmarks:
            expected = row["position"] if row["placed"] else [np.nan] * 3
            np.testing.assert_allclose(landmarks.positions[row["index"]], expected, atol=1e-3)
    controller.download("pdf")
    assert state.error == "Unknown export 'pdf'; choose one of mrk_json, csv."


def test_a_saved_review_is_shown_again_after_a_restart_and_detection_keeps_it(controller, slicer_app, tmp_path):
    node = opened_and_detected(controller)
    moved_to = np.array(controller.state.landmarks[0]["position"]) + [3.0, 0.0, 0.0]
    move_to(node, 0, moved_to)
    controller.mark_absent(1)
    controller.save()
    saved = controller.state.landmarks
    controller.detector.shutdown()
    slicer_app.scene.Clear()

    restarted = make_controller(slicer_app, tmp_path)
    try:
        assert restarted.state.cases[0]["saved"]
        restarted.open_case(0)
        assert restarted.state.message == "Opened alpha with its saved review."
        assert [row["status"] for row in restarted.state.landmarks] == [
            "moved", "marked absent", "predicted", "absent"]
        for before, after in zip(saved, restarted.state.landmarks):
            assert after["position"] == before["position"] and after["confidence"] == before["confidence"]
        detect(restarted)
        restarted.save()
        assert restarted.state.replace_prompt == "", "the session's own review is saved over without asking"
        rows = restarted.state.landmarks
        assert [row["status"] for row in rows] == ["moved", "marked absent", "predicted", "absent"]
        np.testing.assert_allclose(rows[0]["position"], moved_to, atol=1e-3)
    finally:
        restarted.detector.shutdown()


def test_save_asks_before_replacing_a_review_it_did_not_write(controller, tmp_path):
    opened_and_detected(controller)
    files = review_files(controller.cases[0])
    files.mrk_json.write_text("someone's review")
    controller.save()
    state = controller.state
    assert "saved by another session or program" in state.replace_prompt and state.saved_files == []
    assert files.mrk_json.read_text() == "someone's review" and not files.csv.exists()
    controller.keep_saved_review()
    assert state.replace_prompt == "" and files.mrk_json.read_text() == "someone's review"
    controller.save(True)
    assert state.replace_prompt == "" and read_landmarks(files.mrk_json).names == ["L0", "L1", "L2", "L3"]
    controller.save()
    assert state.replace_prompt == "", "saving again over its own files does not ask"
    files.csv.write_text(files.csv.read_text() + "\n")
    controller.save()
    assert state.replace_prompt, "a file changed since this session wrote it is not replaced silently"


def test_an_unreadable_saved_review_is_reported_and_kept(controller):
    files = review_files(controller.cases[0])
    files.mrk_json.write_text("{ not json")
    controller.open_case(0)
    state = controller.state
    assert state.case_index == 0 and state.landmarks == []
    assert state.error.startswith("The saved review could not be read, so it is not shown: ")
    detect(controller)
    controller.save()
    assert state.replace_prompt and files.mrk_json.read_text() == "{ not json"


def test_changing_case_keeps_each_cases_review(controller):
    node = opened_and_detected(controller)
    move_to(node, 0, np.array(controller.state.landmarks[0]["position"]) + 2.0)
    controller.next_case()
    assert controller.state.case_index == 1 and controller.state.landmarks == []
    assert not node.GetDisplayNode().GetVisibility()
    controller.next_case()
    assert controller.state.case_index == 1
    controller.previous_case()
    assert controller.state.case_index == 0 and node.GetDisplayNode().GetVisibility()
    assert controller.state.landmarks[0]["status"] == "moved"
    assert node.GetNodeReferenceID("H3DELandmarks.Volume") == controller.session.volume_node.GetID()


def test_model_loads_once_for_all_detections(controller, loads):
    opened_and_detected(controller)
    controller.open_case(1)
    detect(controller)
    assert len(loads) == 1 and len(controller.state.landmarks) == 4


def upload_item(name: str, content: bytes) -> dict:
    return {"name": name, "size": len(content), "type": "", "content": content}


def test_upload_adds_a_case_in_its_own_folder_and_opens_it(controller, tmp_path):
    content = write_case(tmp_path / "source" / "alpha.nrrd").read_bytes()
    controller.upload([upload_item("alpha.nrrd", content)])
    state = controller.state
    assert [item["name"] for item in state.cases] == ["alpha", "beta", "upload-1_alpha"]
    assert state.case_index == 2 and state.error == ""
    assert controller.cases[2].path == tmp_path / "uploads" / "upload-1" / "alpha.nrrd"
    assert review_files(controller.cases[2]).mrk_json == tmp_path / "uploads" / "upload-1" / "alpha.landmarks.mrk.json"


def test_an_upload_named_like_a_reviewed_case_leaves_that_case_and_its_review_alone(controller, tmp_path):
    opened_and_detected(controller)
    controller.save()
    files = review_files(controller.cases[0])
    saved = files.mrk_json.read_bytes()
    content = write_case(tmp_path / "source" / "alpha.nrrd").read_bytes()
    controller.upload([upload_item("alpha.nrrd", content)])
    controller.upload([upload_item("alpha.nrrd", content)])
    names = [item["name"] for item in controller.state.cases]
    assert names == ["alpha", "beta", "upload-1_alpha", "upload-2_alpha"]
    assert review_files(controller.cases[0]) == files and files.mrk_json.read_bytes() == saved
    controller.open_case(0)
    assert [row["status"] for row in controller.state.landmarks] == ["predicted"] * 3 + ["absent"]


@pytest.mark.parametrize("files, sentence", [
    ([upload_item("notes.txt", b"not a volume")], "The uploaded files hold no volume"),
    ([upload_item("alpha\x00.nrrd", b"x")], "The uploaded file name 'alpha\\x00.nrrd' holds control characters"),
    ([upload_item("a.nrrd", b"x"), upload_item("dir/a.nrrd", b"y")], "Two uploaded files are both named 'a.nrrd'"),
    ([upload_item("big.nrrd", bytes(UPLOAD_LIMIT + 1))], "The upload is 4.0 MB, over this server's limit of 4 MB"),
])
def test_a_refused_upload_is_one_sentence_and_leaves_nothing_on_disk(controller, tmp_path, files, sentence):
    controller.upload(files)
    state = controller.state
    assert state.error.startswith(sentence) and "\n" not in state.error
    assert len(state.cases) == 2
    uploads = tmp_path / "uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == []


def test_the_page_refuses_an_upload_over_the_limit_without_sending_it(controller):
    controller.upload_refused(5 * 1024 * 1024)
    assert controller.state.error == "The upload is 5.0 MB, over this server's limit of 4 MB (h3de serve --max-upload-mb)."
    assert controller.state.max_upload_bytes == UPLOAD_LIMIT


def test_uploads_kept_in_the_upload_folder_are_offered_again(controller, slicer_app, tmp_path):
    content = write_case(tmp_path / "source" / "gamma.nrrd").read_bytes()
    controller.upload([upload_item("gamma.nrrd", content)])
    controller.detector.shutdown()
    restarted = make_controller(slicer_app, tmp_path)
    try:
        assert [item["name"] for item in restarted.state.cases] == ["alpha", "beta", "gamma"]
        assert restarted.cases[2].path == tmp_path / "uploads" / "upload-1" / "gamma.nrrd"
    finally:
        restarted.detector.shutdown()


def test_the_model_is_picked_among_those_offered(controller, loads):
    state = controller.state
    assert state.models == [{"label": "blob-standin", "spec": "blob-standin"}] and state.model == "blob-standin"
    controller.choose_model("elsewhere")
    assert state.error == "'elsewhere' is not one of the models offered." and controller.detector.model == "blob-standin"
    opened_and_detected(controller)
    controller.choose_model("blob-standin")
    detect(controller)
    assert len(loads) == 1


def test_user_errors_become_one_sentence(controller, tmp_path):
    asyncio.run(controller.detect())
    assert controller.state.error == "Open a case before detecting landmarks."
    controller.mark_absent(0)
    assert controller.state.error == "Detect landmarks before marking one absent."
    (tmp_path / "cases" / "beta.nii.gz").write_bytes(b"broken")
    controller.open_case(1)
    assert "beta.nii.gz" in controller.state.error and controller.state.case_index == -1
    controller.open_case(7)
    assert controller.state.error == "There is no case number 8."


def test_cancelled_detection_raises_and_the_next_one_runs(controller):
    controller.open_case(0)
    volume = controller.session.detection_input()
    detector = controller.detector
    with pytest.raises(DetectionCancelled):
        asyncio.run(detector.detect(volume, progress=lambda step, fraction: detector.cancel()))
    fractions = []
    detection = asyncio.run(detector.detect(volume, progress=lambda step, fraction: fractions.append(fraction)))
    assert detection.landmarks.present.tolist() == [True, True, True, False]
    assert fractions[-1] == 1.0 and fractions == sorted(fractions)


def test_serve_refuses_an_unknown_model_before_starting(capsys):
    assert main(["serve", "--model", "no-such-model", "--port", "0"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("h3de: error: ") and "no-such-model" in error and "\n" not in error


def test_case_list_refuses_an_empty_upload(tmp_path):
    with pytest.raises(H3DEError, match="No file was uploaded"):
        CaseList([], tmp_path).add_upload([])
