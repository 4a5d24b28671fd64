"""Expected error per detected point: a log-linear model of signals the detection gives for free.

Signals (per landmark, all from one detection and its last stage, no ground truth):

- ``pass_shift_mm``: how far the last pass of the last stage moved the point from the pass before
  it (from the previous stage's position with a single pass): a point that still moves has not
  settled;
- ``shape_residual_mm``: distance from the point to where the model's mean shape, fitted to all
  found points, puts it: a point off the skull's shape is suspect;
- ``tta_spread_mm`` (with test-time rotations): median distance of the tilted passes' positions
  from the combined one: a point the network places differently when the patch tilts is unsure;
- ``match_spread_mm`` (with reference patches): median distance of the references' patch matches
  from their median, the final position: references that disagree about the point's local image
  leave it unsure;
- ``confidence``: the heatmap's peak height.

The model, ``log(error) ≈ c · [1, log(shift + ε), log(residual + ε), log(spread + ε), ..., confidence]``
(the signals a detection gives), is fitted by
least squares on held-out detections (cases the network never saw); its mean-correcting factor
(the mean of exp(residual), Duan's smearing estimate) turns the fitted geometric mean into an
expected error in millimetres. It lives in the manifest as ``uncertainty``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEATURES = ("pass_shift_mm", "shape_residual_mm", "tta_spread_mm", "match_spread_mm", "confidence")
LOG_FEATURES = ("pass_shift_mm", "shape_residual_mm", "tta_spread_mm", "match_spread_mm")
EPSILON_MM = 0.01
MIN_ERROR_MM = 1e-3


@dataclass(frozen=True)
class ErrorModel:
    """``expected error = smearing · exp(coefficients · [1, transformed features])``."""

    features: tuple[str, ...]
    coefficients: np.ndarray
    smearing: float
    calibration: dict

    def expected_error(self, signals: dict[str, np.ndarray]) -> np.ndarray:
        """(L,) expected errors in mm; NaN where a signal is unknown."""
        design = _design(signals, self.features)
        return self.smearing * np.exp(design @ self.coefficients)

    def to_manifest(self) -> dict:
        return {
            "model": "log-linear",
            "features": list(self.features),
            "coefficients": [round(float(value), 6) for value in self.coefficients],
            "smearing": round(float(self.smearing), 6),
            "calibration": self.calibration,
        }

    @classmethod
    def from_manifest(cls, entry: dict) -> "ErrorModel":
        return cls(tuple(entry["features"]), np.asarray(entry["coefficients"], float), float(entry["smearing"]),
                   dict(entry.get("calibration", {})))


def fit_error_model(signals: dict[str, np.ndarray], errors: np.ndarray, calibration: dict) -> ErrorModel:
    """Least-squares fit on held-out points (`errors` in mm, aligned with each signal array);
    signals that are unknown everywhere (e.g. no mean shape) are left out of the model."""
    features = tuple(name for name in FEATURES if name in signals and np.isfinite(signals[name]).any())
    design = _design(signals, features)
    target = np.log(np.maximum(np.asarray(errors, float), MIN_ERROR_MM))
    used = np.all(np.isfinite(design), axis=1) & np.isfinite(target)
    if used.sum() <= design.shape[1]:
        raise ValueError(f"an error model needs more than {design.shape[1]} known points, not {int(used.sum())}")
    coefficients, *_ = np.linalg.lstsq(design[used], target[used], rcond=None)
    residuals = target[used] - design[used] @ coefficients
    return ErrorModel(features, coefficients, float(np.mean(np.exp(residuals))),
                      {**calibration, "points": int(used.sum())})


def _design(signals: dict[str, np.ndarray], features: tuple[str, ...]) -> np.ndarray:
    columns = [np.ones_like(np.asarray(signals[features[0]], float))] if features else []
    for name in features:
        values = np.asarray(signals[name], float)
        columns.append(np.log(values + EPSILON_MM) if name in LOG_FEATURES else values)
    return np.stack(columns, axis=1)
