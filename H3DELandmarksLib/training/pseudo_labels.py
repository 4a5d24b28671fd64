"""Pseudo-labels of unannotated scans: from registered references, then from a trained model.

`register_references` registers every reference (an annotated case, or a population template
with its landmarks) onto every unannotated scan (`data.registration`) and keeps each pair's
carried-over landmarks in ``registration/<target>/<reference>.json`` of the run folder, keyed by
both scans' fingerprints and the settings: a resumed or repeated run never registers a pair twice.
`matched_estimates` moves each pair's landmarks to their best patch matches in the target at
native resolution (`data.patch_matching`; on the mouse atlas this takes the 5-reference labels
from 0.230 to 0.174 mm). `registration_labels` fuses them (`data.landmark_fusion`): the median position, its spread as the
label's expected error, and as the confidence (the training weight) the reliability of that
spread. `model_labels` updates the labels with a trained model's positions: each point moves
toward the model's position by inverse-variance weighting of the two expected errors (the
label's, and the model's validation error), so a model less accurate than the registrations
barely moves them; the label keeps the fused expected error and its reliability as the weight.
Where the model reports the landmark absent, the previous label stays. Label sets are written as
``<case>.mrk.json`` files (weight and expected error in each point's description) so that they
open in Slicer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from ..atomic import atomic_write_text
from ..checksums import sha256_of
from ..data.landmark_files import read_landmarks, write_landmarks
from ..data.landmark_fusion import fuse_estimates, reliability
from ..data.landmarks import Landmarks
from ..data.patch_matching import MatchSettings, landmark_patches, match_patches
from ..data.registration import RegistrationSettings, carry_points, prepare_image, supported, use_threads
from ..data.volume import Volume
from ..errors import H3DEError

REGISTRATION_DIR = "registration"
REGISTRATION_FORMAT = 1
SPREAD_PER_WORKING_VOXEL = 85.0


@dataclass(frozen=True)
class Reference:
    """An annotated scan registered onto the unannotated ones.

    Attributes:
        name: its case name (or "template").
        fingerprint: changes whenever its volume or landmarks change.
        load: its volume and its landmarks in model order.
    """

    name: str
    fingerprint: str
    load: Callable[[], tuple[Volume, Landmarks]]


@dataclass(frozen=True)
class Target:
    """An unannotated scan: its case name, fingerprint and volume loader."""

    name: str
    fingerprint: str
    load: Callable[[], Volume]


def run_settings(settings: RegistrationSettings, landmarks: Landmarks) -> RegistrationSettings:
    """`settings` with a working spacing when it has none: the largest distance between two of the
    reference's `landmarks` over `SPREAD_PER_WORKING_VOXEL` (0.28 mm for mouse skulls, whose
    landmarks spread over 24 mm), never finer than needed."""
    if settings.working_spacing_mm is not None:
        return settings
    points = landmarks.positions[landmarks.present]
    spread = float(np.max(np.linalg.norm(points[:, None] - points[None], axis=-1))) if len(points) > 1 else 0.0
    return dataclasses.replace(settings, working_spacing_mm=round(spread / SPREAD_PER_WORKING_VOXEL, 3) or None)


def register_references(references: Sequence[Reference], targets: Sequence[Target], names: Sequence[str],
                        output: Path, settings: RegistrationSettings, progress: bool = True,
                        stop: Callable[[], bool] | None = None, workers: int = 1) -> dict[str, list[np.ndarray]] | None:
    """Every reference's landmarks ``(N, 3)`` carried onto every target, by target name.

    Pairs already in ``output/registration`` are read back; the others are registered and stored
    as each finishes, `workers` pairs at a time. Parallel pairs run in worker processes sharing
    SimpleITK's threads (ITK's L-BFGS-B is not thread-safe, see `data.registration`); with one
    SimpleITK thread per worker the landmarks are the same at any worker count. Returns None when
    `stop()` turned true before every pair was done (the finished pairs are kept for the next run).
    """
    results = {target.name: [_read_pair(_pair_path(output, target.name, reference.name),
                                        _pair_key(target, reference, names, settings), len(names))
                             for reference in references] for target in targets}
    missing = [target for target in targets if any(points is None for points in results[target.name])]
    stored = sum(points is not None for found in results.values() for points in found)
    if missing and stop is not None and stop():
        return None
    needed = {index for target in missing for index, points in enumerate(results[target.name]) if points is None}
    prepared = {index: _prepared_reference(references[index], settings) for index in sorted(needed)}
    pending: dict[Future, tuple[Target, int]] = {}
    stopped = False

    def collect(done) -> None:
        for future in done:
            target, index = pending.pop(future)
            if future.cancelled():
                continue
            carried, metric = future.result()
            points = np.full((len(names), 3), np.nan)
            points[prepared[index][1]] = carried
            _write_pair(_pair_path(output, target.name, references[index].name),
                        _pair_key(target, references[index], names, settings), points, metric)
            results[target.name][index] = points
            bar.update()

    with tqdm(total=len(targets) * len(references), initial=stored, disable=not progress, desc="registration",
              unit="pair") as bar, _registration_pool(workers) as pool:
        try:
            for target in missing:
                image = None
                for index in (index for index, points in enumerate(results[target.name]) if points is None):
                    stopped = stop is not None and stop()
                    if stopped:
                        break
                    if image is None:
                        image = prepare_image(target.load(), settings)
                    reference_image, _, points = prepared[index]
                    pending[pool.submit(carry_points, image, reference_image, points, settings)] = (target, index)
                    while len(pending) >= 2 * workers:
                        collect(wait(pending, return_when=FIRST_COMPLETED).done)
                if stopped:
                    break
            if stopped:
                for future in pending:
                    future.cancel()
            collect(wait(pending).done)
        finally:
            for future in pending:
                future.cancel()
    return None if stopped else results


def _registration_pool(workers: int) -> Executor:
    """Where pairs are registered: in this process one at a time, or in `workers` processes that
    share SimpleITK's threads."""
    if workers <= 1:
        return ThreadPoolExecutor(1)
    threads = max(1, sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() // workers)
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=use_threads,
                               initargs=(threads,))


def _prepared_reference(reference: Reference, settings: RegistrationSettings) -> tuple:
    """The reference's registration image, which of its landmarks have structure support, and
    their positions."""
    volume, landmarks = reference.load()
    image = prepare_image(volume, settings)
    usable = supported(volume, landmarks, image.threshold)
    return image, usable, landmarks.positions[usable]


def match_settings(targets: Sequence[Target]) -> MatchSettings:
    """Patch matching for the targets' voxels (the first one's smallest spacing)."""
    return MatchSettings.for_voxels(float(min(targets[0].load().spacing)))


def matched_estimates(references: Sequence[Reference], targets: Sequence[Target],
                      estimates: dict[str, list[np.ndarray]], settings: MatchSettings,
                      progress: bool = True) -> dict[str, list[np.ndarray]]:
    """`estimates` (from `register_references`) moved to their best patch matches in each
    target, reference by reference."""
    patches = []
    for reference in references:
        volume, landmarks = reference.load()
        patches.append(landmark_patches(volume, landmarks.located_positions, settings))
    matched = {}
    for target in tqdm(targets, disable=not progress, desc="patch matching", unit="scan"):
        volume = target.load()
        matched[target.name] = [match_patches(reference, volume, points, settings)[0]
                                for reference, points in zip(patches, estimates[target.name])]
    return matched


def registration_labels(names: Sequence[str], descriptions: Sequence[str],
                        estimates: dict[str, list[np.ndarray]], scale_mm: float) -> dict[str, Landmarks]:
    """Fused registration estimates per case: expected error = the spread (NaN with one
    estimate), confidence = its reliability at `scale_mm`."""
    labels = {}
    for case, points in estimates.items():
        fused = fuse_estimates(names, points)
        landmarks = fused.landmarks
        landmarks.descriptions = list(descriptions)
        landmarks.confidence = np.where(landmarks.present, reliability(fused.spread_mm, scale_mm), np.nan)
        landmarks.expected_error = np.where(landmarks.present, fused.spread_mm, np.nan)
        labels[case] = landmarks
    return labels


def model_labels(predict: Callable[[Volume], Landmarks], targets: Sequence[Target],
                 previous: dict[str, Landmarks], model_error_mm: float, scale_mm: float,
                 progress: bool = True) -> dict[str, Landmarks]:
    """The labels moved toward the model's positions (see module notes); a label of unknown
    expected error weighs as much as the model, one the model alone finds takes its position."""
    labels = {}
    model_variance = max(model_error_mm, 1e-6) ** 2
    for target in tqdm(targets, disable=not progress, desc="re-labelling", unit="scan"):
        found = predict(target.load())
        before = previous[target.name].reordered(found.names)
        known = np.full(len(found), np.nan) if before.expected_error is None else before.expected_error
        label_variance = np.where(np.isfinite(known), known, model_error_mm) ** 2
        pull = np.where(before.present, label_variance / (label_variance + model_variance), 1.0)
        fused_error = np.sqrt(np.where(before.present, model_variance * pull, model_variance))
        start = np.where(before.present[:, None], before.positions, found.positions)
        use = found.present
        labels[target.name] = Landmarks(
            names=list(found.names),
            positions=np.where(use[:, None], start + pull[:, None] * (found.positions - start), before.positions),
            present=use | before.present,
            confidence=np.where(use, reliability(fused_error, scale_mm), before.confidence),
            descriptions=list(before.descriptions),
            expected_error=np.where(use, fused_error, known),
        )
    return labels


def label_movement(old: dict[str, Landmarks], new: dict[str, Landmarks]) -> float:
    """Median distance (mm) that the labels moved, over the points present in both."""
    distances = []
    for case, landmarks in new.items():
        before = old[case].reordered(landmarks.names)
        both = landmarks.present & before.present
        distances += list(np.linalg.norm(landmarks.positions[both] - before.positions[both], axis=1))
    return float(np.median(distances)) if distances else 0.0


def labels_settled(moved_mm: float, tolerance_mm: float, model_error_mm: float,
                   labels: dict[str, Landmarks]) -> bool:
    """Whether re-labelling converged: the labels moved less than `tolerance_mm` and the model
    validates at or below their median expected error. Labels that a worse model could not move
    have not converged: the model needs more training (see `model_labels`)."""
    error = median_expected_error(labels)
    return moved_mm < tolerance_mm and (error is None or model_error_mm <= error)


def median_expected_error(labels: dict[str, Landmarks]) -> float | None:
    """Median expected error (mm) of the present points of `labels`; None when none is known."""
    errors = [landmarks.expected_error[landmarks.present] for landmarks in labels.values()
              if landmarks.expected_error is not None]
    known = np.concatenate(errors) if errors else np.empty(0)
    known = known[np.isfinite(known)]
    return float(np.median(known)) if len(known) else None


def write_label_set(folder: Path, labels: dict[str, Landmarks]) -> None:
    """``<case>.mrk.json`` per case (replacing older ones), then ``done.json`` listing them."""
    for case, landmarks in labels.items():
        write_landmarks(folder / f"{case}.mrk.json", landmarks, overwrite=True)
    atomic_write_text(folder / "done.json", json.dumps(sorted(labels)), overwrite=True)


def read_label_set(folder: Path, names: Sequence[str]) -> dict[str, Landmarks] | None:
    """The label set written by `write_label_set`, None when it is absent or incomplete."""
    try:
        cases = json.loads((folder / "done.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return {case: read_landmarks(folder / f"{case}.mrk.json").reordered(list(names)) for case in cases}


def settings_digest(settings: RegistrationSettings) -> str:
    return hashlib.sha256(json.dumps(dataclasses.asdict(settings), sort_keys=True).encode()).hexdigest()


def pending_pairs(output: Path, targets: Sequence[str], references: Sequence[str]) -> int:
    """How many (target, reference) pairs have no registration stored in ``output`` yet."""
    return sum(not _pair_path(output, target, reference).is_file() for target in targets for reference in references)


def _pair_key(target: Target, reference: Reference, names: Sequence[str], settings: RegistrationSettings) -> dict:
    return {"format": REGISTRATION_FORMAT, "target": target.fingerprint, "reference": reference.fingerprint,
            "names": list(names), "settings": settings_digest(settings)}


def _pair_path(output: Path, target: str, reference: str) -> Path:
    return output / REGISTRATION_DIR / _safe(target) / f"{_safe(reference)}.json"


def _read_pair(path: Path, key: dict, count: int) -> np.ndarray | None:
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if stored.get("key") != key:
        return None
    points = np.array([[np.nan if value is None else value for value in row] for row in stored["points"]], float)
    if points.shape != (count, 3):
        raise H3DEError(f"{path} holds {len(points)} points, not {count}; delete it to register that pair again.")
    return points


def _write_pair(path: Path, key: dict, points: np.ndarray, metric: float) -> None:
    rows = [[None if not np.isfinite(value) else float(value) for value in row] for row in points]
    atomic_write_text(path, json.dumps({"key": key, "metric": float(metric), "points": rows}), overwrite=True)


def _safe(name: str) -> str:
    """A file-system-safe name that keeps distinct names apart."""
    readable = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:60]
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def file_digest(*paths: str | os.PathLike) -> str:
    """Digest of files' contents (a reference template's fingerprint)."""
    return hashlib.sha256("".join(sha256_of(path) for path in paths).encode()).hexdigest()
