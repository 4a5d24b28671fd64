"""Evaluation report files and `h3de evaluate` end to end on tiny synthetic landmark files."""

import csv
import sys
import types

import numpy as np
import pytest
import SimpleITK as sitk

from H3DELandmarksLib.cli.main import main
from H3DELandmarksLib.data.landmark_files import read_landmarks, write_landmarks
from H3DELandmarksLib.data.landmarks import Landmarks
from H3DELandmarksLib.errors import H3DEError
from H3DELandmarksLib.evaluation.metrics import evaluate_cases
from H3DELandmarksLib.evaluation.reports import REPORT_FILES, write_report

NAMES = ["nasion", "bregma", "lambda"]
TRUTH = np.array([[10.0, 20.0, 30.0], [12.0, 25.0, 31.0], [15.0, 22.0, 28.0]])
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def landmarks(offset_mm: float = 0.0, present=(True, True, True)) -> Landmarks:
    """Truth moved by `offset_mm` along x."""
    return Landmarks(NAMES, TRUTH + [offset_mm, 0.0, 0.0], present=present)


def read_rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture
def files(tmp_path):
    """predictions/<case>.mrk.json (errors 1 and 3 mm), truth/ in two formats, cases.csv, timing."""
    predictions, truth = tmp_path / "predictions", tmp_path / "truth"
    write_landmarks(predictions / "alpha.mrk.json", landmarks(1.0))
    write_landmarks(predictions / "beta.mrk.json", landmarks(3.0))
    write_landmarks(truth / "alpha.fcsv", landmarks())
    write_landmarks(truth / "beta.mrk.json", landmarks())
    write_landmarks(truth / "gamma.csv", landmarks())
    (tmp_path / "cases.csv").write_text("case,landmarks\nalpha,exact\nbeta,refined\ngamma,exact\n")
    (predictions / "timing.csv").write_text("case,seconds\nalpha,12.5\nbeta,7.5\n")
    return tmp_path


def test_report_files_hold_the_numbers_and_valid_plots(tmp_path):
    pytest.importorskip("matplotlib")
    pairs = {"alpha": (landmarks(1.0), landmarks()), "beta": (landmarks(3.0, (True, False, True)), landmarks())}
    result = evaluate_cases(pairs, [2.0, 4.0], voxel_mm=0.5)
    written = write_report(result, tmp_path / "report", {"Model": "toy-model 1.0"}, {"alpha": 4.0})
    assert sorted(path.name for path in written) == sorted(set(REPORT_FILES) - {"calibration.png"})

    summary = (tmp_path / "report" / "summary.md").read_text(encoding="utf-8")
    assert "MRE ± SD: 2.000 ± 1.000 mm" in summary
    assert "4.00 ± 2.00 voxels" in summary
    assert "| 2 | 4.00 | 50.0 % |" in summary
    assert "Model: toy-model 1.0" in summary
    assert "specificity) 83.3 %" in summary

    per_case = read_rows(tmp_path / "report" / "per_case.csv")
    assert [(row["case"], float(row["mre_mm"]), row["seconds"]) for row in per_case] == [
        ("alpha", 1.0, "4.0"),
        ("beta", 3.0, ""),
    ]
    per_landmark = read_rows(tmp_path / "report" / "per_landmark.csv")
    assert {row["landmark"] for row in per_landmark} == set(NAMES)
    assert float(per_landmark[0]["mean_mm"]) == 2.0 and float(per_landmark[0]["sdr_2mm"]) == 0.5
    errors = read_rows(tmp_path / "report" / "errors.csv")
    assert len(errors) == 6
    assert errors[4]["predicted_status"] == "absent" and float(errors[4]["error_voxels"]) == 6.0

    from matplotlib.image import imread

    for name in ("error_per_landmark.png", "detection_rate.png"):
        path = tmp_path / "report" / name
        assert path.read_bytes().startswith(PNG_SIGNATURE)
        height, width = imread(path).shape[:2]
        assert height > 200 and width > 200


def test_report_refuses_to_replace_a_report_unless_told(tmp_path):
    result = evaluate_cases({"alpha": (landmarks(1.0), landmarks())}, [2.0])
    write_report(result, tmp_path)
    with pytest.raises(H3DEError, match="--overwrite"):
        write_report(result, tmp_path)
    write_report(result, tmp_path, overwrite=True)


def test_cli_compares_prediction_files_with_truth(files, capsys):
    out = files / "report"
    status = main(["evaluate", "--predictions", str(files / "predictions"), "--truth", str(files / "truth"),
                   "--out", str(out), "--thresholds", "2,4", "--voxel-mm", "0.5"])
    assert status == 0
    assert "MRE 2.000 ± 1.000 mm over 2 cases; SDR 2 mm 50.0 %, 4 mm 100.0 %." in capsys.readouterr().out
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "1 truth files have no prediction" in summary
    assert "Detection time: 10.0 s per case" in summary
    assert [row["case"] for row in read_rows(out / "per_case.csv")] == ["alpha", "beta"]


def test_cli_reads_the_csv_and_json_predictions_detect_writes(files, capsys):
    predictions = files / "csv-json"
    write_landmarks(predictions / "alpha.csv", landmarks(1.0))
    write_landmarks(predictions / "beta.json", landmarks(3.0))
    write_landmarks(predictions / "beta.csv", landmarks(9.0))  # beta.json is preferred
    (predictions / "timing.csv").write_text("case,seconds\nalpha,12.5\nbeta,7.5\n")
    status = main(["evaluate", "--predictions", str(predictions), "--truth", str(files / "truth"),
                   "--out", str(files / "report"), "--thresholds", "2,4"])
    assert status == 0
    assert "MRE 2.000 ± 1.000 mm over 2 cases" in capsys.readouterr().out


def test_cli_selects_cases_by_cases_csv_value(files):
    out = files / "report"
    assert main(["evaluate", "--predictions", str(files / "predictions"), "--truth", str(files / "truth"),
                 "--out", str(out), "--cases", "exact"]) == 0
    assert [row["case"] for row in read_rows(out / "per_case.csv")] == ["alpha"]
    assert "| 2 | – | 100.0 % |" in (out / "summary.md").read_text(encoding="utf-8")  # clinical mm, voxel size unknown


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--predictions", "{tmp}/missing", "--truth", "{tmp}/truth"], "is not a folder"),
        (["--predictions", "{tmp}", "--truth", "{tmp}/truth"], "holds no <case>.mrk.json"),
        (["--predictions", "{tmp}/predictions"], "needs both --predictions DIR and --truth DIR"),
        (["--predictions", "{tmp}/predictions", "--truth", "{tmp}/truth", "--model", "m"], "Give either"),
        (["--predictions", "{tmp}/predictions", "--truth", "{tmp}/truth", "--cases", "nobody"], "No case matches"),
    ],
)
def test_cli_bad_input_is_one_sentence_and_a_non_zero_exit(files, capsys, arguments, message):
    arguments = [argument.format(tmp=files) for argument in arguments]
    assert main(["evaluate", *arguments, "--out", str(files / "report")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error and "Traceback" not in error


def test_cli_names_the_case_without_truth_and_the_bad_file(files, capsys):
    (files / "truth" / "alpha.fcsv").unlink()
    arguments = ["evaluate", "--predictions", str(files / "predictions"), "--truth", str(files / "truth")]
    assert main([*arguments, "--out", str(files / "report")]) == 2
    assert "no truth file for case 'alpha'" in capsys.readouterr().err
    write_landmarks(files / "truth" / "alpha.csv", landmarks())
    (files / "predictions" / "beta.mrk.json").write_text("{ not json")
    assert main([*arguments, "--out", str(files / "report")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "beta.mrk.json is not a valid" in error


def test_cli_refuses_bad_thresholds(files, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", "--predictions", str(files), "--truth", str(files), "--out", str(files),
              "--thresholds", "2,-1"])
    assert stop.value.code == 2 and "positive millimetres" in capsys.readouterr().err


class ShiftingPredictor:
    """Stands in for inference.Predictor: answers the truth of the volume moved 0.5 mm along x."""

    model_id, model_version = "toy", "1.0.0"

    def __init__(self, truth_by_origin: dict):
        self.truth_by_origin = truth_by_origin

    def predict(self, volume):
        truth = self.truth_by_origin[volume.origin]
        return types.SimpleNamespace(landmarks=Landmarks(truth.names, truth.positions + [0.5, 0.0, 0.0]))


def test_cli_runs_a_model_over_a_dataset_folder(tmp_path, monkeypatch, capsys):
    truth_by_origin, requests = {}, []
    for number, case in enumerate(["one", "two"]):
        image = sitk.Image([6, 6, 6], sitk.sitkUInt8)
        image.SetSpacing([0.25, 0.25, 0.25])
        image.SetOrigin([float(number), 0.0, 0.0])
        (tmp_path / "data" / "volumes").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(tmp_path / "data" / "volumes" / f"{case}.nrrd"))
        write_landmarks(tmp_path / "data" / "landmarks" / f"{case}.mrk.json", landmarks())
        truth_by_origin[(float(number), 0.0, 0.0)] = landmarks()

    def from_model(model, device, threads, cache_dir, confidence_threshold, patch_matching):
        assert patch_matching
        requests.append((model, device, threads, confidence_threshold))
        return ShiftingPredictor(truth_by_origin)

    fake = types.ModuleType("H3DELandmarksLib.inference")
    fake.Predictor = types.SimpleNamespace(from_model=from_model)
    monkeypatch.setitem(sys.modules, "H3DELandmarksLib.inference", fake)
    out = tmp_path / "report"
    assert main(["evaluate", "--model", "toy", "--data", str(tmp_path / "data"), "--out", str(out),
                 "--device", "cpu", "--threads", "1"]) == 0
    assert requests == [("toy", "cpu", 1, None)]
    assert "MRE 0.500 ± 0.000 mm over 2 cases" in capsys.readouterr().out
    rows = read_rows(out / "per_case.csv")
    assert [row["case"] for row in rows] == ["one", "two"] and all(float(row["seconds"]) >= 0 for row in rows)
    assert float(rows[0]["mre_voxels"]) == 2.0
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "| 0.5 | 2.00 | 100.0 % |" in summary  # 2 voxels of 0.25 mm: micro-CT thresholds
    assert "Model: toy 1.0.0 (from toy)" in summary and "generic layout" in summary
    saved = read_landmarks(out / "predictions" / "one.mrk.json")
    np.testing.assert_allclose(saved.positions, TRUTH + [0.5, 0.0, 0.0])


def test_cli_runs_a_real_model_package_on_a_generic_dataset(tmp_path, capsys):
    from builders_blobs import DIRECTIONS, blob_volume, truth_positions
    from builders_models import tiny_package
    from H3DELandmarksLib.data.volume_io import write_volume

    one_window = [{"name": "fine", "spacing_mm": [3.0, 3.0, 3.0], "patch_size": [40, 40, 40]}]
    package = tiny_package(tmp_path / "model", n_landmarks=2, stages=one_window).path
    truth = truth_positions()[:2]
    for case, direction in [("left", "identity"), ("right", "oblique")]:
        volume = blob_volume(DIRECTIONS[direction], truth, extent_mm=30.0)
        write_volume(volume, tmp_path / "data" / "volumes" / f"{case}.nrrd")
        write_landmarks(tmp_path / "data" / "landmarks" / f"{case}.mrk.json", Landmarks(["L0", "L1"], truth))
    out = tmp_path / "report"
    arguments = ["evaluate", "--model", str(package), "--data", str(tmp_path / "data"), "--out", str(out)]
    assert main([*arguments, "--device", "cpu", "--threads", "1", "--cases", "right"]) == 0
    assert "over 1 cases" in capsys.readouterr().out
    rows = read_rows(out / "per_case.csv")
    assert [row["case"] for row in rows] == ["right"] and float(rows[0]["seconds"]) > 0
    assert read_landmarks(out / "predictions" / "right.mrk.json").names == ["L0", "L1"]
    assert "Model: blob-standin 1.0.0" in (out / "summary.md").read_text(encoding="utf-8")

    # The same scan through h3de detect, then scored from its files with its own timings.
    detected = tmp_path / "detected"
    volume_path = tmp_path / "data" / "volumes" / "right.nrrd"
    assert main(["detect", str(volume_path), "--model", str(package), "--out", str(detected), "--device", "cpu",
                 "--threads", "1", "--progress", "none"]) == 0
    assert main(["evaluate", "--predictions", str(detected), "--truth", str(tmp_path / "data" / "landmarks"),
                 "--out", str(tmp_path / "detect_report")]) == 0
    rows = read_rows(tmp_path / "detect_report" / "per_case.csv")
    assert [row["case"] for row in rows] == ["right"] and float(rows[0]["seconds"]) > 0


def test_baseline_table_and_folder_go_beside_the_model(files, capsys):
    table = files / "errors.csv"
    rows = ["run,case,landmark,error_mm"]
    rows += [f"r1,alpha,{name},2.0" for name in NAMES] + [f"r2,alpha,{name},4.0" for name in NAMES]
    rows += [f"r1,beta,{name},1.0" for name in NAMES] + [f"r1,delta,{name},9.0" for name in NAMES]
    table.write_text("\n".join(rows) + "\n", encoding="utf-8")
    report = files / "report"
    assert main(["evaluate", "--predictions", str(files / "predictions"), "--truth", str(files / "truth"),
                 "--out", str(report), "--baseline", str(table), "--baseline-name", "MALPACA", "--name", "ours"]) == 0
    assert "MRE 2.000 mm against 2.000 mm (ratio 1.00)" in capsys.readouterr().out
    per_case = {row["case"]: row for row in read_rows(report / "comparison_per_case.csv")}
    assert set(per_case) == {"alpha", "beta"}
    assert per_case["alpha"]["MALPACA_mm"] == "3.0" and per_case["alpha"]["better"] == "ours"
    assert per_case["beta"]["ratio"] == "3.0" and per_case["beta"]["better"] == "MALPACA"
    assert "| cases won | 1 | 1 | |" in (report / "comparison.md").read_text(encoding="utf-8")

    assert main(["evaluate", "--predictions", str(files / "predictions"), "--truth", str(files / "truth"),
                 "--out", str(report), "--overwrite", "--baseline", str(table), "--baseline-runs", "r2"]) == 0
    assert "Beside errors on the same 1 cases: MRE 1.000 mm against 4.000 mm" in capsys.readouterr().out

    other = files / "other"
    write_landmarks(other / "alpha.mrk.json", landmarks(0.5))
    assert main(["evaluate", "--predictions", str(files / "predictions"), "--truth", str(files / "truth"),
                 "--out", str(report), "--overwrite", "--baseline", str(other)]) == 0
    assert "Beside other on the same 1 cases: MRE 1.000 mm against 0.500 mm (ratio 2.00)" in capsys.readouterr().out
    assert main(["evaluate", "--predictions", str(files / "predictions"), "--truth", str(files / "truth"),
                 "--out", str(report), "--overwrite", "--baseline", str(table), "--baseline-runs", "r9"]) == 2
    assert "has no run 'r9'" in capsys.readouterr().err


def test_reliability_section_ranks_big_errors_by_expected_error(tmp_path):
    pytest.importorskip("matplotlib")
    pairs = {}
    for number, offset in enumerate([0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.2, 2.0, 0.15, 0.25]):
        predicted = landmarks(offset)
        predicted.expected_error = np.full(3, offset * (1.5 if number % 2 else 0.8))
        pairs[f"case{number}"] = (predicted, landmarks())
    result = evaluate_cases(pairs, [0.5, 1.0])
    written = write_report(result, tmp_path / "report", big_error_mm=0.5)
    assert (tmp_path / "report" / "calibration.png").read_bytes().startswith(PNG_SIGNATURE)
    assert len(written) == len(REPORT_FILES)
    summary = (tmp_path / "report" / "summary.md").read_text(encoding="utf-8")
    assert "Scored by expected error over 30 points; 12 errors above 0.5 mm." in summary
    assert "- AUROC for errors above 0.5 mm: 0.958" in summary
    assert "among the 10 % of points reviewed first: 25.0 %" in summary
    without = evaluate_cases({"a": (landmarks(0.7), landmarks())}, [0.5])
    assert "Does the model know" not in (write_report(without, tmp_path / "plain")[0]).read_text(encoding="utf-8")
