"""Evaluation report folder: Markdown summary, CSV tables and PNG plots of an `EvaluationResult`.

Files written (each atomically; none replaced unless `overwrite`):

- ``summary.md``: MRE ± SD (mm and voxels), SDR table, absent-landmark detection, per-landmark
  table (worst first), per-case table, provenance lines;
- ``per_landmark.csv``, ``per_case.csv``, ``errors.csv`` (one row per case and landmark);
- a reliability section (`reliability`: how well expected errors, or confidences, single out
  the errors above ``big_error_mm``) and ``calibration.png`` when expected errors are known;
- ``error_per_landmark.png`` (horizontal box plot with every error as a dot) and
  ``detection_rate.png`` (cumulative fraction of landmarks within d mm, SDR thresholds marked),
  drawn with matplotlib (the ``report`` extra); without it the plots are skipped and the summary
  says so.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes
from ..data.landmark_files.common import status_text
from ..errors import H3DEError
from .metrics import EvaluationResult
from .reliability import Reliability, calibration_figure, reliability, reliability_lines

TABLE_FILES = ("summary.md", "per_landmark.csv", "per_case.csv", "errors.csv")
PLOT_FILES = ("error_per_landmark.png", "detection_rate.png", "calibration.png")
REPORT_FILES = TABLE_FILES + PLOT_FILES
PLOTS_SKIPPED = "Plots skipped: matplotlib is not installed (pip install 'h3de-landmarks[report]')."


def write_report(
    result: EvaluationResult,
    folder: str | os.PathLike,
    provenance: dict[str, str] | None = None,
    seconds_per_case: dict[str, float] | None = None,
    overwrite: bool = False,
    big_error_mm: float | None = None,
) -> list[Path]:
    """Write the report files of `result` into `folder`; returns the paths written.

    Args:
        result: the evaluation.
        folder: report folder (created if needed).
        provenance: "what: value" lines for the summary (data, model, command, date).
        seconds_per_case: detection time of each case, reported when given.
        overwrite: replace report files already in `folder`.
        big_error_mm: the error a reviewer must find, for the reliability section (default:
            the largest SDR threshold).
    """
    folder = Path(folder)
    check_report_folder(folder, overwrite)
    seconds_per_case = seconds_per_case or {}
    trust = reliability(result, big_error_mm or result.thresholds_mm[-1])
    plots = _plots(result, trust)
    summary = summary_markdown(result, provenance or {}, seconds_per_case, plots_drawn=plots is not None,
                               trust=trust)
    contents: dict[str, bytes] = {
        "summary.md": summary.encode("utf-8"),
        "per_landmark.csv": csv_bytes(per_landmark_rows(result)),
        "per_case.csv": csv_bytes(per_case_rows(result, seconds_per_case)),
        "errors.csv": csv_bytes(error_rows(result)),
        **(plots or {}),
    }
    return [atomic_write_bytes(folder / name, data, overwrite=overwrite) for name, data in contents.items()]


def check_report_folder(folder: str | os.PathLike, overwrite: bool) -> None:
    """Refuse a folder that already holds report files, unless `overwrite`."""
    folder = Path(folder)
    existing = [name for name in REPORT_FILES if (folder / name).exists()]
    if existing and not overwrite:
        raise H3DEError(f"{folder} already holds a report ({existing[0]}); pass --overwrite to replace it.")
    if folder.exists() and not folder.is_dir():
        raise H3DEError(f"{folder} is a file, not a report folder.")


def per_landmark_rows(result: EvaluationResult) -> list[dict[str, object]]:
    """Rows of per_landmark.csv, worst mean error first."""
    rows = []
    for stats in _worst_first(result):
        row = {
            "landmark": stats.name,
            "cases": stats.cases,
            "unlocated": stats.unlocated,
            "mean_mm": _number(stats.mean_mm),
            "median_mm": _number(stats.median_mm),
            "sd_mm": _number(stats.sd_mm),
            "max_mm": _number(stats.max_mm),
            "mean_voxels": _number(result.in_voxels(stats.mean_mm)),
        }
        row.update({f"sdr_{_label(t)}mm": _number(stats.sdr[t]) for t in result.thresholds_mm})
        rows.append(row)
    return rows


def per_case_rows(result: EvaluationResult, seconds_per_case: dict[str, float]) -> list[dict[str, object]]:
    """Rows of per_case.csv, in case order."""
    rows = []
    for index, case in enumerate(result.case_names):
        errors = result.errors_mm[index]
        located = errors[np.isfinite(errors)]
        row = {
            "case": case,
            "landmarks_scored": int(result.truth_present[index].sum()),
            "unlocated": int(np.sum(result.truth_present[index] & ~result.predicted_located[index])),
            "mre_mm": _number(result.per_case_mre_mm[index]),
            "mre_voxels": _number(result.in_voxels(result.per_case_mre_mm[index])),
            "max_mm": _number(located.max() if located.size else math.nan),
            "status_mismatches": int(np.sum(result.truth_present[index] != result.predicted_present[index])),
            "seconds": _number(seconds_per_case.get(case, math.nan)),
        }
        row.update({f"sdr_{_label(t)}mm": _number(v) for t, v in result.per_case_sdr(index).items()})
        rows.append(row)
    return rows


def error_rows(result: EvaluationResult) -> list[dict[str, object]]:
    """Rows of errors.csv: one per case and landmark."""
    rows = []
    for c, case in enumerate(result.case_names):
        for n, name in enumerate(result.landmark_names):
            predicted = status_text(result.predicted_present[c, n])
            if not result.predicted_located[c, n]:
                predicted = "absent (no position)"
            rows.append(
                {
                    "case": case,
                    "landmark": name,
                    "error_mm": _number(result.errors_mm[c, n]),
                    "error_voxels": _number(result.in_voxels(result.errors_mm[c, n])),
                    "truth_status": status_text(result.truth_present[c, n]),
                    "predicted_status": predicted,
                    "predicted_confidence": _number(result.predicted_confidence[c, n]),
                }
            )
    return rows


def summary_markdown(
    result: EvaluationResult,
    provenance: dict[str, str],
    seconds_per_case: dict[str, float],
    plots_drawn: bool = True,
    trust: Reliability | None = None,
) -> str:
    """Text of summary.md."""
    lines = ["# Landmark detection evaluation", ""]
    scored = int(result.truth_present.sum())
    lines.append(
        f"{len(result.case_names)} cases, {len(result.landmark_names)} landmarks, {scored} truly present "
        f"landmark positions scored ({result.unlocated} without a predicted position)."
    )
    lines += ["", "## Mean radial error", ""]
    voxels = ""
    if result.voxel_mm:
        voxels = (
            f" = {_fixed(result.in_voxels(result.mre_mm), 2)} ± {_fixed(result.in_voxels(result.sd_mm), 2)} "
            f"voxels of {_fixed(result.voxel_mm, 3)} mm"
        )
    lines.append(f"**MRE ± SD: {_fixed(result.mre_mm)} ± {_fixed(result.sd_mm)} mm**{voxels}.")
    lines.append("(Mean over cases of each case's mean radial error; SD over those per-case means.)")
    finite = result.errors_mm[np.isfinite(result.errors_mm)]
    if finite.size:
        lines.append(
            f"Pooled over landmarks: median {_fixed(np.median(finite))} mm, 95th percentile "
            f"{_fixed(np.percentile(finite, 95))} mm, max {_fixed(finite.max())} mm."
        )
    seconds = [seconds_per_case[case] for case in result.case_names if case in seconds_per_case]
    if seconds:
        lines.append(
            f"Detection time: {_fixed(np.mean(seconds), 1)} s per case on average (max {_fixed(max(seconds), 1)} s)."
        )
    lines += ["", "## Successful detection rate (pooled over truly present landmarks)", ""]
    lines += _table(
        ["Threshold (mm)", "Threshold (voxels)", "SDR"],
        [
            [_label(t), _fixed(result.in_voxels(t), 2), _percent(result.sdr[t])]
            for t in result.thresholds_mm
        ],
    )
    if trust is not None:
        lines += ["", "## Does the model know where it is wrong?", ""]
        lines += reliability_lines(trust)
    lines += ["", "## Absent landmarks", ""]
    lines += _absence_lines(result)
    lines += ["", "## Per landmark (worst mean error first)", ""]
    sdr_headers = [f"SDR {_label(t)} mm" for t in result.thresholds_mm]
    lines += _table(
        ["Landmark", "Cases", "Mean (mm)", "Median (mm)", "SD (mm)", "Max (mm)", *sdr_headers],
        [
            [
                s.name,
                str(s.cases),
                _fixed(s.mean_mm),
                _fixed(s.median_mm),
                _fixed(s.sd_mm),
                _fixed(s.max_mm),
                *[_percent(s.sdr[t]) for t in result.thresholds_mm],
            ]
            for s in _worst_first(result)
        ],
    )
    lines += ["", "## Per case", ""]
    case_rows = per_case_rows(result, seconds_per_case)
    lines += _table(
        ["Case", "MRE (mm)", "Max (mm)", *sdr_headers, "Status mismatches", "Seconds"],
        [
            [
                row["case"],
                _fixed(row["mre_mm"]),
                _fixed(row["max_mm"]),
                *[_percent(row[f"sdr_{_label(t)}mm"]) for t in result.thresholds_mm],
                str(row["status_mismatches"]),
                _fixed(row["seconds"], 1),
            ]
            for row in case_rows
        ],
    )
    lines += ["", "## Provenance", ""]
    thresholds = ", ".join(_label(t) for t in result.thresholds_mm)
    lines += [f"- SDR thresholds: {thresholds} mm", *[f"- {key}: {value}" for key, value in provenance.items()]]
    if not plots_drawn:
        lines += ["", PLOTS_SKIPPED]
    else:
        lines += ["", "![Error per landmark](error_per_landmark.png)", "", "![Detection rate](detection_rate.png)"]
        if trust is not None and trust.calibration:
            lines += ["", "![Calibration](calibration.png)"]
    return "\n".join(lines) + "\n"


def _absence_lines(result: EvaluationResult) -> list[str]:
    absence = result.absence
    if absence.absent_absent + absence.absent_present + absence.present_absent == 0:
        return ["Every landmark is present in the truth and predicted present."]
    lines = [
        f"Status accuracy {_percent(absence.accuracy)}; absent landmarks found (sensitivity) "
        f"{_percent(absence.sensitivity)}; present landmarks kept (specificity) {_percent(absence.specificity)}.",
        "",
    ]
    lines += _table(
        ["Truth \\ prediction", "Present", "Absent"],
        [
            ["Present", str(absence.present_present), str(absence.present_absent)],
            ["Absent", str(absence.absent_present), str(absence.absent_absent)],
        ],
    )
    return lines


def _plots(result: EvaluationResult, trust: Reliability | None) -> dict[str, bytes] | None:
    """PNG bytes of the plots, or None when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    plots = {
        "error_per_landmark.png": png_bytes(_error_per_landmark_figure(Figure, result)),
        "detection_rate.png": png_bytes(_detection_rate_figure(Figure, result)),
    }
    if trust is not None and trust.calibration:
        plots["calibration.png"] = png_bytes(calibration_figure(Figure, trust))
    return plots


def _error_per_landmark_figure(figure_class, result: EvaluationResult):
    """Horizontal box plot per landmark (worst median at the top) with every error as a dot."""
    statistics = sorted(result.per_landmark, key=lambda s: _sort_key(s.median_mm))
    index = {name: i for i, name in enumerate(result.landmark_names)}
    columns = [result.errors_mm[:, index[s.name]] for s in statistics]
    columns = [column[np.isfinite(column)] for column in columns]
    figure = figure_class(figsize=(8, 1.5 + 0.24 * len(columns)), layout="constrained")
    axes = figure.add_subplot()
    drawable = [column if column.size else np.array([np.nan]) for column in columns]
    axes.boxplot(drawable, orientation="horizontal", whis=(0, 100), widths=0.6, showfliers=False)
    rng = np.random.default_rng(0)
    for position, column in enumerate(columns, start=1):
        jitter = rng.uniform(-0.18, 0.18, column.size)
        axes.plot(column, position + jitter, ".", color="tab:blue", alpha=0.5, markersize=3)
    axes.set_yticks(range(1, len(columns) + 1), [s.name for s in statistics])
    for threshold in result.thresholds_mm:
        axes.axvline(threshold, color="0.6", linestyle=":", linewidth=1)
    axes.set_xlabel("radial error (mm)")
    axes.set_ylabel("landmark (worst median at the top)")
    axes.set_title(
        f"Error per landmark: MRE {_fixed(result.mre_mm)} ± {_fixed(result.sd_mm)} mm, {len(result.case_names)} cases"
    )
    axes.set_xlim(left=0)
    axes.grid(axis="x", alpha=0.3)
    return figure


def _detection_rate_figure(figure_class, result: EvaluationResult):
    """Cumulative fraction of truly present landmarks within d mm, thresholds marked."""
    errors = result.errors_mm[result.truth_present]
    finite = np.sort(errors[np.isfinite(errors)])
    figure = figure_class(figsize=(7, 4.5), layout="constrained")
    axes = figure.add_subplot()
    limit = max(1.5 * result.thresholds_mm[-1], float(np.percentile(finite, 99)) if finite.size else 0.0)
    if finite.size:
        distances = np.concatenate([[0.0], finite, [limit]])
        fractions = np.concatenate([[0.0], np.arange(1, finite.size + 1), [finite.size]]) / max(errors.size, 1)
        axes.step(distances, fractions, where="post", color="tab:blue", label="landmarks within d")
    for threshold in result.thresholds_mm:
        axes.axvline(threshold, color="0.5", linestyle=":", linewidth=1)
        axes.annotate(
            f"{_label(threshold)} mm: {_percent(result.sdr[threshold])}",
            (threshold, result.sdr[threshold] if math.isfinite(result.sdr[threshold]) else 0.0),
            xytext=(4, -12),
            textcoords="offset points",
            fontsize=8,
        )
    axes.set_xlim(0, limit)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("distance d (mm)")
    axes.set_ylabel("fraction of truly present landmarks")
    axes.set_title("Cumulative detection rate (SDR thresholds dotted)")
    axes.grid(alpha=0.3)
    return figure


def png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _worst_first(result: EvaluationResult):
    return sorted(result.per_landmark, key=lambda s: _sort_key(s.mean_mm), reverse=True)


def _sort_key(value: float) -> float:
    """NaN sorts as the worst."""
    return value if math.isfinite(value) else math.inf


def csv_bytes(rows: list[dict[str, object]]) -> bytes:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _number(value: float) -> float | str:
    """A CSV cell: the number rounded to 4 decimals, empty for NaN."""
    value = float(value)
    return round(value, 4) if math.isfinite(value) else ""


def _fixed(value: float | str, decimals: int = 3) -> str:
    """Fixed-point text; a dash for NaN or an empty CSV cell."""
    if value == "" or not math.isfinite(float(value)):
        return "–"
    return f"{float(value):.{decimals}f}"


def _percent(value: float | str) -> str:
    if value == "" or not math.isfinite(float(value)):
        return "–"
    return f"{100 * float(value):.1f} %"


def _label(threshold: float) -> str:
    """Threshold as short text: 2, 2.5, 0.282."""
    return f"{threshold:g}"
