"""The expected error per point: the detection's signals and the fitted log-linear error model."""

from __future__ import annotations

import numpy as np
import pytest

from builders_blobs import COARSE, DIRECTIONS, FINE, BlobHeatmapNet, LEVEL_STEP, blob_volume, manifest, truth_positions
from H3DELandmarksLib.errors import ModelPackageError
from H3DELandmarksLib.inference import Predictor
from H3DELandmarksLib.inference.uncertainty import ErrorModel, fit_error_model
from H3DELandmarksLib.registry.manifest import validate_manifest


def synthetic_signals(count: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Errors that grow as the square root of the pass shift, with log-normal noise."""
    rng = np.random.default_rng(seed)
    shift = rng.uniform(0.01, 2.0, count)
    signals = {"pass_shift_mm": shift, "shape_residual_mm": rng.uniform(0.0, 1.0, count),
               "confidence": rng.uniform(0.3, 1.0, count)}
    errors = 0.2 * np.sqrt(shift + 0.01) * np.exp(rng.normal(0.0, 0.3, count))
    return signals, errors


def test_fit_recovers_the_trend_and_the_mean_error():
    signals, errors = synthetic_signals(4000, 1)
    model = fit_error_model(signals, errors, {"cases": ["a"]})
    assert model.coefficients[1] == pytest.approx(0.5, abs=0.03)
    assert abs(model.coefficients[2]) < 0.05 and abs(model.coefficients[3]) < 0.1
    held_out, truth = synthetic_signals(4000, 2)
    expected = model.expected_error(held_out)
    assert expected.mean() == pytest.approx(truth.mean(), rel=0.03)
    assert model.calibration == {"cases": ["a"], "points": 4000}
    again = ErrorModel.from_manifest(model.to_manifest())
    np.testing.assert_allclose(again.expected_error(held_out), expected, rtol=1e-5)


def test_unknown_signal_is_left_out_and_too_few_points_refused():
    signals, errors = synthetic_signals(50, 3)
    signals["shape_residual_mm"] = np.full(50, np.nan)
    assert fit_error_model(signals, errors, {}).features == ("pass_shift_mm", "confidence")
    with pytest.raises(ValueError, match="more than 3 known points"):
        fit_error_model({name: values[:3] for name, values in signals.items()}, errors[:3], {})


def test_detection_reports_signals_and_the_manifests_expected_error():
    volume = blob_volume(DIRECTIONS["oblique"], truth_positions())
    stages = [COARSE, {**FINE, "passes": 2}]
    net = BlobHeatmapNet(4, 1 / (LEVEL_STEP * 5))
    plain = Predictor(net, manifest(4, "canonical", stages), device="cpu").predict(volume)
    assert set(plain.signals) == {"pass_shift_mm", "shape_residual_mm", "confidence"}
    assert np.all(plain.signals["pass_shift_mm"] < 1.0)
    assert np.all(np.isnan(plain.signals["shape_residual_mm"]))
    assert np.all(np.isnan(plain.landmarks.expected_error))
    model = ErrorModel(("pass_shift_mm", "confidence"), np.array([-1.0, 0.5, -0.2]), 1.1, {})
    calibrated = manifest(4, "canonical", stages) | {"uncertainty": model.to_manifest()}
    detection = Predictor(net, calibrated, device="cpu").predict(volume)
    np.testing.assert_allclose(detection.landmarks.expected_error, model.expected_error(detection.signals))
    assert np.all(np.isfinite(detection.landmarks.expected_error))


def test_manifest_refuses_an_error_model_with_the_wrong_coefficient_count():
    document = manifest(4, "canonical", [COARSE, FINE])
    document["uncertainty"] = {"model": "log-linear", "features": ["confidence"], "coefficients": [1.0], "smearing": 1.0}
    with pytest.raises(ModelPackageError, match="uncertainty.coefficients must hold 2 numbers"):
        validate_manifest(document)
    document["uncertainty"]["features"] = ["heatmap_width"]
    with pytest.raises(ModelPackageError, match="uncertainty"):
        validate_manifest(document)


def test_test_time_rotations_keep_positions_and_add_their_spread():
    volume = blob_volume(DIRECTIONS["oblique"], truth_positions())
    net = BlobHeatmapNet(4, 1 / (LEVEL_STEP * 5))
    stages = [COARSE, {**FINE, "tta_rotations": 3, "tta_degrees": 8.0}]
    detection = Predictor(net, manifest(4, "canonical", stages), device="cpu").predict(volume)
    assert np.all(np.linalg.norm(detection.landmarks.positions - truth_positions(), axis=1) < 1.0)
    assert np.all(detection.signals["tta_spread_mm"] < 0.5)
    assert set(detection.signals) == {"pass_shift_mm", "shape_residual_mm", "tta_spread_mm", "confidence"}
    coarse_stage = {**COARSE, "tta_rotations": 2}
    with pytest.raises(ModelPackageError, match="tta_rotations applies only to the fine stage"):
        validate_manifest(manifest(4, "canonical", [coarse_stage, FINE]))
