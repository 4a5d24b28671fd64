"""Does the detector know where it is wrong? Expected errors (or confidences) against real errors.

For the truly present points with an error: which of them are "big" (error above a threshold),
how well the expected error ranks them (AUROC: the chance that a big error gets a higher expected
error than a small one), what share of the big errors sits among the 10 % of points a reviewer
would check first (highest expected error), and a calibration table (points binned by expected
error: mean expected against mean observed). A model without expected errors is judged by its
confidence instead (lowest first).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import mannwhitneyu

from .metrics import EvaluationResult

REVIEW_SHARE = 0.1
CALIBRATION_BINS = 5


@dataclass(frozen=True)
class Reliability:
    """How well the per-point scores single out the big errors (see module notes)."""

    score_name: str
    big_error_mm: float
    points: int
    big_errors: int
    auroc: float
    reviewed_share: float
    calibration: list[tuple[float, float, int]]


def reliability(result: EvaluationResult, big_error_mm: float) -> Reliability | None:
    """The reliability of `result`'s expected errors (or confidences); None without either."""
    errors = result.errors_mm
    scored = result.truth_present & np.isfinite(errors)
    expected = result.predicted_expected_error
    if np.isfinite(expected[scored]).any():
        name, score, calibrated = "expected error", expected, True
    elif np.isfinite(result.predicted_confidence[scored]).any():
        name, score, calibrated = "confidence (lowest first)", 1.0 - result.predicted_confidence, False
    else:
        return None
    used = scored & np.isfinite(score)
    error, score = errors[used], score[used]
    big = error > big_error_mm
    auroc = float("nan")
    if big.any() and (~big).any():
        auroc = float(mannwhitneyu(score[big], score[~big]).statistic / (big.sum() * (~big).sum()))
    reviewed = np.argsort(-score, kind="stable")[: max(1, round(REVIEW_SHARE * len(score)))]
    share = float(big[reviewed].sum() / big.sum()) if big.any() else float("nan")
    return Reliability(name, big_error_mm, int(used.sum()), int(big.sum()), auroc, share,
                       _calibration(score, error) if calibrated else [])


def reliability_lines(value: Reliability) -> list[str]:
    """Markdown lines for the report."""
    lines = [
        f"Scored by {value.score_name} over {value.points} points; {value.big_errors} errors above "
        f"{value.big_error_mm:g} mm.",
        f"- AUROC for errors above {value.big_error_mm:g} mm: {value.auroc:.3f}",
        f"- share of those errors among the {100 * REVIEW_SHARE:.0f} % of points reviewed first: "
        f"{100 * value.reviewed_share:.1f} %",
    ]
    if value.calibration:
        lines += ["", "| expected error (mean, mm) | observed error (mean, mm) | points |", "|---|---|---|"]
        lines += [f"| {expected:.3f} | {observed:.3f} | {count} |" for expected, observed, count in value.calibration]
    return lines


def calibration_figure(figure_class, value: Reliability):
    """Observed against expected error per bin, with the diagonal."""
    figure = figure_class(figsize=(4.2, 4.0), layout="constrained")
    axes = figure.add_subplot()
    expected = [row[0] for row in value.calibration]
    observed = [row[1] for row in value.calibration]
    limit = 1.1 * max(expected + observed)
    axes.plot([0, limit], [0, limit], color="grey", linestyle=":", label="perfect calibration")
    axes.plot(expected, observed, marker="o", label="points binned by expected error")
    axes.set_xlim(0, limit)
    axes.set_ylim(0, limit)
    axes.set_xlabel("expected error (mm)")
    axes.set_ylabel("observed error (mm)")
    axes.set_title(f"Calibration (AUROC {value.auroc:.2f} for > {value.big_error_mm:g} mm)")
    axes.legend(fontsize=8)
    return figure


def _calibration(expected: np.ndarray, observed: np.ndarray) -> list[tuple[float, float, int]]:
    """Equal-count bins of `expected`: (mean expected, mean observed, count)."""
    order = np.argsort(expected, kind="stable")
    return [(float(expected[part].mean()), float(observed[part].mean()), int(part.size))
            for part in np.array_split(order, min(CALIBRATION_BINS, len(order))) if part.size]
