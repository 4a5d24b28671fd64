"""Landmark detection metrics: radial errors, MRE ± SD, SDR, per-landmark statistics, absence.

Definitions follow the published H3DE-Net evaluation:

- radial error: Euclidean distance (mm) between the predicted and the true position;
- MRE: mean over cases of each case's mean radial error over its present true landmarks, and SD
  over those per-case means (population SD, numpy's default, ddof = 0);
- SDR@t: fraction of present true landmarks within t mm, pooled over all cases.

A present true landmark for which the prediction has no position at all cannot have an error: it
is left out of MRE (and counted as "unlocated") but counts as a failure in every SDR. True absent
landmarks are never scored for distance; they enter the absent-landmark detection statistics
instead, which compare the true present/absent status with the predicted one.

Pure numpy; no torch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..data.landmarks import Landmarks
from ..errors import LandmarkFileError

CLINICAL_THRESHOLDS_MM = (2.0, 2.5, 3.0, 4.0)
CLINICAL_MIN_SPACING_MM = 0.3


def default_thresholds(median_spacing_mm: float) -> tuple[float, ...]:
    """SDR thresholds (mm) suited to the scale of the data.

    Clinical CT (voxels of 0.3 mm and more): the field's 2, 2.5, 3 and 4 mm.

    Finer scans (micro-CT, small animals): 2, 2.5, 3 and 4 voxels, i.e. those numbers times the
    spacing. Such scans image small anatomy at a resolution chosen for its size (a mouse skull of
    ~22 mm spans ~160 voxels of 0.141 mm, as a human head spans ~200 voxels of 1 mm), and expert
    placement is reproducible to one or two voxels in both, so thresholds in voxels keep SDR
    discriminating around the errors that matter. For 0.141 mm voxels this gives 0.28, 0.35, 0.42
    and 0.56 mm, which bracket the 0.20-0.25 mm of multi-atlas registration. Scaling the clinical
    millimetres by spacing / 0.5 mm instead (0.56-1.13 mm) would put every method near 100 %.
    """
    if not np.isfinite(median_spacing_mm) or median_spacing_mm <= 0:
        raise ValueError(f"A voxel spacing must be a positive number, not {median_spacing_mm}.")
    if median_spacing_mm >= CLINICAL_MIN_SPACING_MM:
        return CLINICAL_THRESHOLDS_MM
    return tuple(round(float(t * median_spacing_mm), 3) for t in CLINICAL_THRESHOLDS_MM)


def threshold_rule(median_spacing_mm: float | None) -> str:
    """How `default_thresholds` chooses for this spacing, in words (for reports)."""
    if median_spacing_mm is None or median_spacing_mm >= CLINICAL_MIN_SPACING_MM:
        return "the clinical 2, 2.5, 3 and 4 mm"
    return f"2, 2.5, 3 and 4 voxels of {median_spacing_mm:.3g} mm (micro-CT scale)"


def radial_errors(predicted: Landmarks, truth: Landmarks) -> np.ndarray:
    """``(N,)`` radial errors in mm, in the order of `truth`'s names.

    NaN where the true landmark is absent or the prediction has no position for it. An absent
    prediction that keeps a best-guess position is scored by that position. Raises
    `LandmarkFileError` when the prediction lacks a landmark of the truth.
    """
    aligned = _aligned(predicted, truth)
    errors = np.linalg.norm(aligned.positions - truth.positions, axis=1)
    errors[~truth.present] = np.nan
    return errors


@dataclass(frozen=True)
class LandmarkStatistics:
    """Errors of one landmark over the cases where it is truly present (mm; NaN when none)."""

    name: str
    cases: int
    unlocated: int
    mean_mm: float
    median_mm: float
    sd_mm: float
    max_mm: float
    sdr: dict[float, float]


@dataclass(frozen=True)
class AbsenceStatistics:
    """Agreement of predicted and true present/absent status ("absent" is the positive class).

    Counts are named truth_prediction: `absent_absent` = truly absent and predicted absent.
    Rates are NaN when their denominator is zero.
    """

    absent_absent: int
    absent_present: int
    present_absent: int
    present_present: int

    @property
    def total(self) -> int:
        return self.absent_absent + self.absent_present + self.present_absent + self.present_present

    @property
    def accuracy(self) -> float:
        return _ratio(self.absent_absent + self.present_present, self.total)

    @property
    def sensitivity(self) -> float:
        """Fraction of truly absent landmarks predicted absent."""
        return _ratio(self.absent_absent, self.absent_absent + self.absent_present)

    @property
    def specificity(self) -> float:
        """Fraction of truly present landmarks predicted present."""
        return _ratio(self.present_present, self.present_present + self.present_absent)


@dataclass(frozen=True)
class EvaluationResult:
    """Errors of predictions against truth for C cases and N landmarks, and statistics over them.

    Attributes:
        case_names: the C cases, in evaluation order.
        landmark_names: the N landmarks, in the truth's order.
        errors_mm: ``(C, N)`` radial errors; NaN where not scored (see `radial_errors`).
        truth_present, predicted_present: ``(C, N)`` bool status.
        predicted_located: ``(C, N)`` bool, the prediction has a position.
        predicted_confidence: ``(C, N)`` predicted confidence (NaN when unknown).
        predicted_expected_error: ``(C, N)`` the detector's expected error in mm (NaN when unknown).
        thresholds_mm: the SDR thresholds.
        voxel_mm: the voxel size used to express errors in voxels, or None.
    """

    case_names: list[str]
    landmark_names: list[str]
    errors_mm: np.ndarray
    truth_present: np.ndarray
    predicted_present: np.ndarray
    predicted_located: np.ndarray
    predicted_confidence: np.ndarray
    predicted_expected_error: np.ndarray
    thresholds_mm: tuple[float, ...]
    voxel_mm: float | None = None

    @property
    def unlocated(self) -> int:
        """Truly present landmarks for which the prediction has no position."""
        return int(np.sum(self.truth_present & ~self.predicted_located))

    @cached_property
    def per_case_mre_mm(self) -> np.ndarray:
        """``(C,)`` mean radial error of each case (NaN for a case with no error to average)."""
        return _quiet(np.nanmean, self.errors_mm, axis=1)

    @property
    def mre_mm(self) -> float:
        """Mean over cases of the per-case mean radial errors."""
        return float(_quiet(np.nanmean, self.per_case_mre_mm))

    @property
    def sd_mm(self) -> float:
        """Population SD of the per-case mean radial errors."""
        return float(_quiet(np.nanstd, self.per_case_mre_mm))

    @cached_property
    def sdr(self) -> dict[float, float]:
        """Fraction of truly present landmarks within each threshold, pooled over cases."""
        return _sdr(self.errors_mm[self.truth_present], self.thresholds_mm)

    def per_case_sdr(self, case_index: int) -> dict[float, float]:
        """SDR of one case."""
        row = self.truth_present[case_index]
        return _sdr(self.errors_mm[case_index][row], self.thresholds_mm)

    @cached_property
    def per_landmark(self) -> list[LandmarkStatistics]:
        """Statistics of every landmark, in landmark order."""
        statistics = []
        for index, name in enumerate(self.landmark_names):
            present = self.truth_present[:, index]
            errors = self.errors_mm[present, index]
            located = errors[np.isfinite(errors)]
            statistics.append(
                LandmarkStatistics(
                    name=name,
                    cases=int(present.sum()),
                    unlocated=int(errors.size - located.size),
                    mean_mm=_safe(np.mean, located),
                    median_mm=_safe(np.median, located),
                    sd_mm=_safe(np.std, located),
                    max_mm=_safe(np.max, located),
                    sdr=_sdr(errors, self.thresholds_mm),
                )
            )
        return statistics

    @cached_property
    def absence(self) -> AbsenceStatistics:
        """Present/absent agreement over every (case, landmark)."""
        truth, predicted = self.truth_present, self.predicted_present
        return AbsenceStatistics(
            absent_absent=int(np.sum(~truth & ~predicted)),
            absent_present=int(np.sum(~truth & predicted)),
            present_absent=int(np.sum(truth & ~predicted)),
            present_present=int(np.sum(truth & predicted)),
        )

    def in_voxels(self, millimetres: float | np.ndarray) -> float | np.ndarray:
        """Millimetres expressed in voxels (NaN when no voxel size is known)."""
        return np.divide(millimetres, self.voxel_mm if self.voxel_mm else np.nan)


def evaluate_cases(
    pairs: dict[str, tuple[Landmarks, Landmarks]],
    thresholds_mm: tuple[float, ...] | list[float],
    voxel_mm: float | None = None,
) -> EvaluationResult:
    """Evaluate predictions against truth.

    Args:
        pairs: case name -> (predicted, truth). Every truth must hold the same landmark names (in
            any order); every prediction must hold at least those names.
        thresholds_mm: SDR thresholds in mm (see `default_thresholds`).
        voxel_mm: voxel size to express errors in voxels too, or None.
    """
    if not pairs:
        raise LandmarkFileError("There is no case to evaluate.")
    thresholds = tuple(sorted(float(t) for t in thresholds_mm))
    if not thresholds or any(not np.isfinite(t) or t <= 0 for t in thresholds):
        raise ValueError(f"SDR thresholds must be positive millimetres, not {list(thresholds_mm)}.")
    names = list(next(iter(pairs.values()))[1].names)
    rows = {key: [] for key in ("errors", "truth", "predicted", "located", "confidence", "expected")}
    for case, (predicted, truth) in pairs.items():
        if len(truth) == 0:
            raise LandmarkFileError(f"The truth of case {case!r} holds no landmarks, so there is nothing to evaluate.")
        if sorted(truth.names) != sorted(names):
            raise LandmarkFileError(f"The truth of case {case!r} does not hold the same landmarks as the others.")
        truth = truth.reordered(names)
        try:
            aligned = _aligned(predicted, truth)
        except LandmarkFileError as error:
            message = str(error)
            raise LandmarkFileError(f"In case {case!r}, {message[:1].lower()}{message[1:]}") from None
        rows["errors"].append(radial_errors(aligned, truth))
        rows["truth"].append(truth.present)
        rows["predicted"].append(aligned.present)
        rows["located"].append(aligned.has_position)
        rows["confidence"].append(aligned.confidence)
        rows["expected"].append(aligned.expected_error)
    return EvaluationResult(
        case_names=list(pairs),
        landmark_names=names,
        errors_mm=np.array(rows["errors"], float),
        truth_present=np.array(rows["truth"], bool),
        predicted_present=np.array(rows["predicted"], bool),
        predicted_located=np.array(rows["located"], bool),
        predicted_confidence=np.array(rows["confidence"], float),
        predicted_expected_error=np.array(rows["expected"], float),
        thresholds_mm=thresholds,
        voxel_mm=voxel_mm,
    )


def _aligned(predicted: Landmarks, truth: Landmarks) -> Landmarks:
    """`predicted` in the order of `truth`'s names; a missing name is an error."""
    missing = [name for name in truth.names if name not in predicted.names]
    if missing:
        shown = ", ".join(map(repr, missing[:5])) + (" ..." if len(missing) > 5 else "")
        raise LandmarkFileError(f"The prediction lacks {len(missing)} landmark(s) of the truth: {shown}.")
    return predicted.reordered(truth.names)


def _sdr(errors: np.ndarray, thresholds: tuple[float, ...]) -> dict[float, float]:
    """Fraction of `errors` within each threshold; NaN errors count as failures."""
    errors = np.asarray(errors, float)
    with np.errstate(invalid="ignore"):
        return {t: _ratio(int(np.sum(errors <= t)), errors.size) for t in thresholds}


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def _safe(function, values: np.ndarray) -> float:
    """`function(values)` as a float, NaN for no values."""
    return float(function(values)) if values.size else float("nan")


def _quiet(function, values: np.ndarray, **kwargs) -> np.ndarray | float:
    """A numpy nan-reduction without the warning for all-NaN input (whose result is NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return function(values, **kwargs)
