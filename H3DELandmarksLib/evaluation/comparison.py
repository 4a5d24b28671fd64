"""A baseline beside the model: the same cases and landmarks, per case, per landmark, the ratio
and where each method wins.

A baseline is either a second set of predictions scored against the same truth, or a table of
errors computed elsewhere (such as MALPACA's and ALPACA's errors on the mouse atlas): a CSV with
columns ``case``, ``landmark`` and ``error_mm``, and optionally ``run`` or ``reference`` — rows of
several runs (or references) are averaged per case and landmark, after keeping the runs named.
Only cases and landmarks both methods scored are compared.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes
from ..errors import H3DEError
from .reports import csv_bytes, png_bytes
from .metrics import EvaluationResult

RUN_COLUMNS = ("run", "reference")


@dataclass(frozen=True)
class MethodErrors:
    """Radial errors ``(C, N)`` in mm of one method (NaN where not scored)."""

    name: str
    case_names: list[str]
    landmark_names: list[str]
    errors_mm: np.ndarray


@dataclass(frozen=True)
class Comparison:
    """Two methods on their common cases and landmarks (errors aligned, ``(C, N)``)."""

    model: MethodErrors
    baseline: MethodErrors

    @property
    def scored(self) -> np.ndarray:
        return np.isfinite(self.model.errors_mm) & np.isfinite(self.baseline.errors_mm)

    def case_means(self, method: MethodErrors) -> np.ndarray:
        """(C,) mean error of each case over the landmarks both methods scored."""
        return _masked_mean(method.errors_mm, self.scored, axis=1)

    def landmark_means(self, method: MethodErrors) -> np.ndarray:
        """(N,) mean error of each landmark over the cases both methods scored."""
        return _masked_mean(method.errors_mm, self.scored, axis=0)

    def mre(self, method: MethodErrors) -> float:
        """Mean over cases of the per-case mean errors."""
        return float(np.nanmean(self.case_means(method)))

    def per_case_rows(self) -> list[dict[str, object]]:
        return _rows("case", self.model.case_names, self.case_means(self.model), self.case_means(self.baseline),
                     self.model.name, self.baseline.name)

    def per_landmark_rows(self) -> list[dict[str, object]]:
        return _rows("landmark", self.model.landmark_names, self.landmark_means(self.model),
                     self.landmark_means(self.baseline), self.model.name, self.baseline.name)

    def summary_markdown(self) -> str:
        model, baseline = self.model.name, self.baseline.name
        cases, landmarks = self.per_case_rows(), self.per_landmark_rows()
        case_wins = sum(row["better"] == model for row in cases)
        landmark_wins = sum(row["better"] == model for row in landmarks)
        model_mre, baseline_mre = self.mre(self.model), self.mre(self.baseline)
        lines = [
            f"# {model} beside {baseline}",
            "",
            f"Same {len(cases)} cases and {len(landmarks)} landmarks ({int(self.scored.sum())} points scored by both).",
            "",
            f"| | {model} | {baseline} | ratio |",
            "|---|---|---|---|",
            f"| MRE (mean of per-case means) | {model_mre:.3f} mm | {baseline_mre:.3f} mm | "
            f"{model_mre / baseline_mre:.2f} |",
            f"| median point error | {np.median(self.model.errors_mm[self.scored]):.3f} mm | "
            f"{np.median(self.baseline.errors_mm[self.scored]):.3f} mm | |",
            f"| largest point error | {np.max(self.model.errors_mm[self.scored]):.3f} mm | "
            f"{np.max(self.baseline.errors_mm[self.scored]):.3f} mm | |",
            f"| cases won | {case_wins} | {len(cases) - case_wins} | |",
            f"| landmarks won (mean error) | {landmark_wins} | {len(landmarks) - landmark_wins} | |",
            "",
            "## Per case",
            "",
            *_table(cases, "case", model, baseline),
            "",
            "## Per landmark",
            "",
            *_table(landmarks, "landmark", model, baseline),
            "",
        ]
        return "\n".join(lines)


def method_errors(result: EvaluationResult, name: str) -> MethodErrors:
    """The errors of an evaluation as one method."""
    return MethodErrors(name, list(result.case_names), list(result.landmark_names), result.errors_mm.copy())


def read_error_table(path: str | os.PathLike, name: str, runs: list[str] | None = None) -> MethodErrors:
    """Errors from a CSV table (see module notes); `runs` keeps only those runs or references."""
    path = Path(path)
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    except (OSError, UnicodeDecodeError) as error:
        raise H3DEError(f"Cannot read the baseline table {path}: {getattr(error, 'strerror', None) or error}.") from None
    if not rows or not {"case", "landmark", "error_mm"} <= set(rows[0]):
        raise H3DEError(f"{path} is not an error table with columns case, landmark and error_mm.")
    run_column = next((column for column in RUN_COLUMNS if column in rows[0]), None)
    if runs:
        if run_column is None:
            raise H3DEError(f"{path} has no run or reference column to choose runs from.")
        unknown = sorted(set(runs) - {row[run_column] for row in rows})
        if unknown:
            raise H3DEError(f"{path} has no {run_column} {unknown[0]!r}.")
        rows = [row for row in rows if row[run_column] in runs]
    cases = list(dict.fromkeys(row["case"] for row in rows))
    landmarks = list(dict.fromkeys(row["landmark"] for row in rows))
    sums, counts = np.zeros((len(cases), len(landmarks))), np.zeros((len(cases), len(landmarks)))
    case_index = {case: index for index, case in enumerate(cases)}
    landmark_index = {landmark: index for index, landmark in enumerate(landmarks)}
    for number, row in enumerate(rows, start=2):
        try:
            value = float(row["error_mm"])
        except ValueError:
            raise H3DEError(f"{path} line {number}: error_mm {row['error_mm']!r} is not a number.") from None
        if np.isfinite(value):
            sums[case_index[row["case"]], landmark_index[row["landmark"]]] += value
            counts[case_index[row["case"]], landmark_index[row["landmark"]]] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        errors = np.where(counts > 0, sums / counts, np.nan)
    return MethodErrors(name, cases, landmarks, errors)


def compare(model: MethodErrors, baseline: MethodErrors) -> Comparison:
    """Both methods restricted to the cases and landmarks they share (in the model's order)."""
    cases = [case for case in model.case_names if case in baseline.case_names]
    landmarks = [name for name in model.landmark_names if name in baseline.landmark_names]
    if not cases or not landmarks:
        raise H3DEError(f"{model.name} and {baseline.name} share no case and landmark to compare.")
    return Comparison(_restricted(model, cases, landmarks), _restricted(baseline, cases, landmarks))


def comparison_figure(comparison: Comparison):
    """Per-landmark mean errors of both methods side by side (matplotlib Figure), or None without
    matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    names = comparison.model.landmark_names
    positions = np.arange(len(names))
    figure = Figure(figsize=(max(6.0, 0.25 * len(names) + 2), 3.6), layout="constrained")
    axes = figure.add_subplot()
    for offset, method in ((-0.2, comparison.model), (0.2, comparison.baseline)):
        axes.bar(positions + offset, comparison.landmark_means(method), width=0.4, label=method.name)
    axes.set_xticks(positions, names, rotation=90, fontsize=7)
    axes.set_ylabel("mean radial error (mm)")
    axes.set_title(f"Per landmark: {comparison.model.name} and {comparison.baseline.name}, same cases")
    axes.legend()
    return figure


def _restricted(method: MethodErrors, cases: list[str], landmarks: list[str]) -> MethodErrors:
    rows = [method.case_names.index(case) for case in cases]
    columns = [method.landmark_names.index(name) for name in landmarks]
    return MethodErrors(method.name, cases, landmarks, method.errors_mm[np.ix_(rows, columns)])


def _masked_mean(values: np.ndarray, mask: np.ndarray, axis: int) -> np.ndarray:
    counts = mask.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, np.where(mask, values, 0.0).sum(axis=axis) / counts, np.nan)


def _rows(key: str, labels: list[str], model: np.ndarray, baseline: np.ndarray, model_name: str,
          baseline_name: str) -> list[dict[str, object]]:
    rows = []
    for label, ours, theirs in zip(labels, model, baseline):
        if not (np.isfinite(ours) and np.isfinite(theirs)):
            continue
        better = model_name if ours < theirs else baseline_name if theirs < ours else "tie"
        rows.append({key: label, f"{model_name}_mm": round(float(ours), 4), f"{baseline_name}_mm": round(float(theirs), 4),
                     "ratio": round(float(ours / theirs), 3) if theirs > 0 else float("nan"), "better": better})
    return rows


def _table(rows: list[dict[str, object]], key: str, model: str, baseline: str) -> list[str]:
    lines = [f"| {key} | {model} mm | {baseline} mm | ratio | better |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row[key]} | {row[f'{model}_mm']:.3f} | {row[f'{baseline}_mm']:.3f} | {row['ratio']:.2f} | "
                     f"{row['better']} |")
    return lines


COMPARISON_FILES = ("comparison.md", "comparison_per_case.csv", "comparison_per_landmark.csv")
COMPARISON_PLOT = "comparison_per_landmark.png"


def write_comparison(comparison: Comparison, folder: str | os.PathLike, overwrite: bool = False) -> list[Path]:
    """Write the comparison's Markdown, CSV tables and per-landmark plot into `folder`."""
    folder = Path(folder)
    contents = {
        "comparison.md": comparison.summary_markdown().encode("utf-8"),
        "comparison_per_case.csv": csv_bytes(comparison.per_case_rows()),
        "comparison_per_landmark.csv": csv_bytes(comparison.per_landmark_rows()),
    }
    figure = comparison_figure(comparison)
    if figure is not None:
        contents[COMPARISON_PLOT] = png_bytes(figure)
    return [atomic_write_bytes(folder / name, data, overwrite=overwrite) for name, data in contents.items()]
