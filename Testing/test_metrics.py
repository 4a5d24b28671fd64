"""Landmark metrics on hand-made cases with known answers."""

import math

import numpy as np
import pytest

from H3DELandmarksLib.data.landmarks import Landmarks
from H3DELandmarksLib.errors import LandmarkFileError
from H3DELandmarksLib.evaluation.metrics import (
    CLINICAL_THRESHOLDS_MM,
    default_thresholds,
    evaluate_cases,
    radial_errors,
    threshold_rule,
)

NAMES = ["a", "b", "c", "d"]
NAN = [math.nan] * 3


def shifted(truth: Landmarks, offsets_mm: list[float], present=None) -> Landmarks:
    """Prediction = truth moved along x by `offsets_mm` (NaN offset: no position)."""
    positions = truth.positions.copy()
    positions[:, 0] += np.nan_to_num(np.asarray(offsets_mm, float), nan=0.0)
    positions[np.isnan(offsets_mm)] = np.nan
    if present is None:
        present = np.isfinite(positions).all(axis=1)
    return Landmarks(NAMES, positions, present=present)


def truth_with(present=(True, True, True, True)) -> Landmarks:
    positions = np.arange(12, dtype=float).reshape(4, 3)
    positions[~np.asarray(present)] = np.nan
    return Landmarks(NAMES, positions, present=present)


def test_radial_errors_known_distances_and_nan_rules():
    truth = truth_with(present=(True, True, False, True))
    predicted = shifted(truth_with(), [3.0, 0.5, 1.0, math.nan])
    errors = radial_errors(predicted, truth)
    np.testing.assert_allclose(errors[:2], [3.0, 0.5])
    assert math.isnan(errors[2])  # truly absent: never scored
    assert math.isnan(errors[3])  # prediction without a position


def test_radial_errors_score_an_absent_prediction_by_its_best_guess_and_align_names():
    truth = truth_with()
    predicted = shifted(truth, [1.0, 2.0, 0.0, 0.0], present=[True, False, True, True])
    reversed_prediction = predicted.reordered(NAMES[::-1])
    np.testing.assert_allclose(radial_errors(reversed_prediction, truth), [1.0, 2.0, 0.0, 0.0])


def test_radial_errors_refuse_a_prediction_lacking_a_landmark():
    predicted = Landmarks(["a", "b"], np.zeros((2, 3)))
    with pytest.raises(LandmarkFileError, match="lacks 2 landmark"):
        radial_errors(predicted, truth_with())


def test_mre_is_the_mean_of_per_case_means_and_sd_is_over_cases():
    # Case one: four errors of 1 mm. Case two: one error of 3 mm, three landmarks truly absent.
    one = truth_with()
    two = truth_with(present=(True, False, False, False))
    pairs = {
        "one": (shifted(truth_with(), [1.0] * 4), one),
        "two": (shifted(truth_with(), [3.0, 9.0, 9.0, 9.0]), two),
    }
    result = evaluate_cases(pairs, [2.0, 4.0])
    np.testing.assert_allclose(result.per_case_mre_mm, [1.0, 3.0])
    assert result.mre_mm == pytest.approx(2.0)  # pooled would be 7 / 5 = 1.4
    assert result.sd_mm == pytest.approx(1.0)  # population SD of (1, 3)
    assert result.sdr == {2.0: pytest.approx(0.8), 4.0: pytest.approx(1.0)}  # pooled: 4 of 5 within 2 mm
    assert result.per_case_sdr(1) == {2.0: 0.0, 4.0: 1.0}


def test_unlocated_landmarks_leave_mre_but_fail_sdr():
    truth = truth_with()
    result = evaluate_cases({"x": (shifted(truth, [1.0, 1.0, 1.0, math.nan]), truth)}, [2.0])
    assert result.unlocated == 1
    assert result.mre_mm == pytest.approx(1.0)
    assert result.sdr[2.0] == pytest.approx(0.75)
    stats = {s.name: s for s in result.per_landmark}
    assert stats["d"].unlocated == 1 and math.isnan(stats["d"].mean_mm) and stats["d"].sdr[2.0] == 0.0


def test_per_landmark_statistics():
    truth = truth_with()
    pairs = {
        f"case{n}": (shifted(truth, [offset, 0.0, 0.0, 0.0]), truth) for n, offset in enumerate([1.0, 2.0, 6.0])
    }
    stats = evaluate_cases(pairs, [2.0, 5.0]).per_landmark[0]
    assert (stats.name, stats.cases, stats.unlocated) == ("a", 3, 0)
    assert stats.mean_mm == pytest.approx(3.0)
    assert stats.median_mm == pytest.approx(2.0)
    assert stats.sd_mm == pytest.approx(np.std([1.0, 2.0, 6.0]))
    assert stats.max_mm == pytest.approx(6.0)
    assert stats.sdr == {2.0: pytest.approx(2 / 3), 5.0: pytest.approx(2 / 3)}


def test_absent_landmark_detection_counts_and_rates():
    # Truth: case one has c absent; case two has c and d absent.
    # Prediction: case one gets c right (absent) and wrongly calls a absent; case two misses d.
    pairs = {
        "one": (
            shifted(truth_with(), [0, 0, 0, 0], present=[False, True, False, True]),
            truth_with(present=(True, True, False, True)),
        ),
        "two": (
            shifted(truth_with(), [0, 0, 0, 0], present=[True, True, False, True]),
            truth_with(present=(True, True, False, False)),
        ),
    }
    absence = evaluate_cases(pairs, [1.0]).absence
    assert (absence.absent_absent, absence.absent_present) == (2, 1)
    assert (absence.present_absent, absence.present_present) == (1, 4)
    assert absence.total == 8
    assert absence.accuracy == pytest.approx(6 / 8)
    assert absence.sensitivity == pytest.approx(2 / 3)
    assert absence.specificity == pytest.approx(4 / 5)


def test_rates_without_absent_landmarks_are_nan():
    truth = truth_with()
    absence = evaluate_cases({"x": (truth.copy(), truth)}, [1.0]).absence
    assert math.isnan(absence.sensitivity)
    assert absence.specificity == 1.0 and absence.accuracy == 1.0


def test_errors_in_voxels():
    truth = truth_with()
    result = evaluate_cases({"x": (shifted(truth, [0.5] * 4), truth)}, [1.0], voxel_mm=0.25)
    assert result.in_voxels(result.mre_mm) == pytest.approx(2.0)
    assert math.isnan(evaluate_cases({"x": (truth.copy(), truth)}, [1.0]).in_voxels(1.0))


def test_truth_landmark_sets_must_agree():
    truth = truth_with()
    other = Landmarks(["a", "b", "c", "e"], truth.positions)
    with pytest.raises(LandmarkFileError, match="'y'"):
        evaluate_cases({"x": (truth.copy(), truth), "y": (other.copy(), other)}, [1.0])
    with pytest.raises(LandmarkFileError, match="no case"):
        evaluate_cases({}, [1.0])


def test_default_thresholds_by_scale():
    assert default_thresholds(0.5) == CLINICAL_THRESHOLDS_MM
    assert default_thresholds(0.3) == CLINICAL_THRESHOLDS_MM
    assert default_thresholds(0.141) == pytest.approx((0.282, 0.3525, 0.423, 0.564), abs=1e-3)
    with pytest.raises(ValueError):
        default_thresholds(0.0)
    assert threshold_rule(0.141) == "2, 2.5, 3 and 4 voxels of 0.141 mm (micro-CT scale)"
    assert threshold_rule(None) == threshold_rule(0.7) == "the clinical 2, 2.5, 3 and 4 mm"
