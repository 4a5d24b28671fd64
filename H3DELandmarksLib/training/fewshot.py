"""Few-shot and one-shot training: annotated scans teach a model through pseudo-labels in rounds.

When a generic dataset has unannotated scans (volumes without a landmark file), or a reference
template is given:

1. every reference (each annotated case, or the template alone) is registered onto every
   unannotated scan, each estimate is sharpened by patch matching at native resolution, and the
   estimates are fused into round-0 pseudo-labels, weighted by their reliability
   (`pseudo_labels`);
2. round r trains the networks on the annotated plus pseudo-labelled cases (a few pseudo-labelled
   cases validate, see `TrainingData`); round 1 starts from seeded random weights with the full
   recipe, every later round from the previous round's weights with a fine-tuning schedule (a
   third of the epochs at 0.3 of the learning rate, `initialization.fine_tuning_stage`);
3. the round's model re-labels the unannotated scans: each label moves toward the model's
   position by the weight of their expected errors (`pseudo_labels.model_labels`; the model's is
   its validation error, measured on held-out pseudo-labelled scans); when the labels moved less
   than the tolerance (median over points) and the model validates at or below their median
   expected error (labels a worse model could not move have not settled), training stops, and
   after the last round (resuming with more rounds continues from there).

Run folder: ``registration/`` (per-pair cache), ``pseudo_labels/round-<r>/`` (the labels after
round r, the ones round r + 1 trains on), ``rounds/<r>/`` (each round's checkpoint, log and
package), ``cache/`` (the cases, shared by the rounds), ``fewshot.json`` (the finished rounds, how
far the labels moved, the last model's validation error and the labels' median expected error),
``package/`` (the last round's model) and ``labels/`` (the latest labels of the unannotated
scans, one ``.mrk.json`` each with every point's expected error: the run's landmarks for the
scans it was given, never worse than the registrations, since a worse model barely moves them).
Every step writes atomically and is skipped when its result is already there, so ``resume=True``
after a time limit or Ctrl-C continues where the run stopped. A time limit in a later round leaves
``package/`` holding the last finished round's model (its manifest names the round that was cut),
usable at once; a time limit in any round leaves ``labels/``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..atomic import atomic_write_text, remove_directory
from ..data.datasets import GenericDataset, match_landmarks
from ..data.landmark_files import read_landmarks
from ..data.landmarks import Landmarks
from ..data.patch_matching import MatchSettings
from ..data.registration import RegistrationSettings
from ..data.volume import Volume
from ..data.volume_io import read_volume
from ..errors import CheckpointError
from ..inference.predictor import Predictor
from ..registry.package import read_package, write_package
from ..registry.stage_weights import split_stage_state_dicts
from .config import TrainingConfig, TrainingConfigError, parse_training_config
from .initialization import FINE_TUNING_EPOCH_FRACTION, FINE_TUNING_LR_FACTOR, InitialModel, fine_tuning_stage
from .loop import CACHE_DIR, CHECKPOINT_FILE, PACKAGE_DIR, TrainingResult, train
from .pseudo_labels import (
    Reference,
    Target,
    file_digest,
    label_movement,
    labels_settled,
    match_settings,
    matched_estimates,
    median_expected_error,
    model_labels,
    pending_pairs,
    read_label_set,
    register_references,
    registration_labels,
    run_settings,
    write_label_set,
)
from .recipe import DataSummary, summarize_data

# Planning costs on a 2-core CPU, from the mouse atlas (bench/fewshot_mouse.py,
# bench/parallel_registration_bench.py): seconds of one registration worker to register one
# reference onto one scan (2 worker processes of 1 thread each took 21 s per pair and worker on
# the idle machine, one worker of 2 threads 15.5 s), and to re-label one scan with a round's model on 2 threads
# (h3de detect took 2.0 s per scan; 3 s leaves room for loading it).
SECONDS_PER_PAIR = 20.0
SECONDS_PER_RELABEL = 3.0
STATE_FILE = "fewshot.json"
LABELS_DIR = "pseudo_labels"
OUTPUT_LABELS_DIR = "labels"
ROUNDS_DIR = "rounds"
TEMPLATE = "template"


@dataclass(frozen=True)
class FewShotSettings:
    """How the pseudo-labels are made and updated.

    Attributes:
        rounds: most training rounds.
        tolerance_mm: stop once the labels move less than this (median); None: half the finest
            stage spacing.
        reliability_scale_mm: registration spread at which a pseudo-label weighs one half;
            None: the finest stage spacing.
        registration: how the references are registered.
        template: (volume, landmarks) files of a population template, the only reference.
    """

    rounds: int = 2
    tolerance_mm: float | None = None
    reliability_scale_mm: float | None = None
    registration: RegistrationSettings = field(default_factory=RegistrationSettings)
    template: tuple[Path, Path] | None = None


def needs_pseudo_labels(data_root: str | os.PathLike | None, settings: FewShotSettings) -> bool:
    """Whether a run on `data_root` is a few-shot run (unannotated scans, or a template)."""
    if settings.template is not None:
        return True
    return data_root is not None and bool(GenericDataset(data_root).unannotated_cases())


def few_shot_summary(source: GenericDataset, load: Callable[[str], tuple[Volume, Landmarks]],
                     settings: FewShotSettings) -> DataSummary:
    """What a derived recipe is made from in a few-shot run: the references' voxels, landmarks,
    poses and intensities, with every scan (annotated and unannotated) counted as a case."""
    if settings.template is not None:
        template = _references(source, settings)[0]
        summary = summarize_data(lambda _: template.load(), [TEMPLATE])
        annotated = source.cases()
    else:
        annotated = [reference.name for reference in _references(source, settings)]
        summary = summarize_data(load, annotated)
    unannotated = source.unannotated_cases()
    return dataclasses.replace(summary, cases=annotated + unannotated, pseudo_labelled=len(unannotated))


def registration_workers(threads: int | None) -> int:
    """Pairs registered at once: one per CPU thread (`threads`, or every core)."""
    return max(1, threads or os.cpu_count() or 1)


def round_minutes(source: GenericDataset, settings: FewShotSettings, output: str | os.PathLike,
                  max_minutes: float, workers: int = 1) -> float:
    """Minutes the first round's training may plan within `max_minutes`: what is left after
    registering the pairs not yet stored in `output` (`workers` at a time) and re-labelling the
    unannotated scans after each round (at least a twentieth of the budget), shared with the later
    rounds, which each train a third as long."""
    references = [reference.name for reference in _references(source, settings)]
    scans = source.unannotated_cases()
    before = (pending_pairs(Path(output), scans, references) * SECONDS_PER_PAIR / workers
              + settings.rounds * len(scans) * SECONDS_PER_RELABEL) / 60.0
    rounds = 1 + (settings.rounds - 1) * FINE_TUNING_EPOCH_FRACTION
    return max(max_minutes - before, max_minutes / 20.0) / rounds


def train_few_shot(config: TrainingConfig, output_dir: str | os.PathLike, data_root: str | os.PathLike,
                   settings: FewShotSettings, device: str = "auto", threads: int | None = None,
                   max_minutes: float | None = None, resume: bool = False, overwrite: bool = False,
                   progress: bool = True, command: object = "H3DELandmarksLib.training.fewshot.train_few_shot"
                   ) -> TrainingResult:
    """Few-shot training of `config` on `data_root` (see module notes); the arguments are `train`'s."""
    if settings.rounds < 1:
        raise TrainingConfigError("Few-shot training needs at least one round.")
    started = time.monotonic()
    deadline = None if max_minutes is None else started + 60.0 * max_minutes
    output = Path(output_dir)
    state = _initial_state(output, config, resume, overwrite)
    source = GenericDataset(data_root)
    unannotated = source.unannotated_cases()
    if len(unannotated) < 2:
        raise TrainingConfigError("Few-shot training needs at least two unannotated scans (one validates).")
    references = _references(source, settings)
    names, descriptions, first = _landmark_set(references)
    registration = run_settings(settings.registration, first)
    targets = [Target(case, source.fingerprint(case), lambda case=case: source.load(case)[0]) for case in unannotated]
    matching = match_settings(targets)
    finest = min(min(stage.spacing_mm) for stage in config.stages)
    scale = settings.reliability_scale_mm or finest
    tolerance = settings.tolerance_mm if settings.tolerance_mm is not None else finest / 2

    later = _later_round_config(config)
    labels = read_label_set(output / LABELS_DIR / "round-0", names)
    if labels is None:
        estimates = register_references(references, targets, names, output, registration, progress,
                                        stop=None if deadline is None else lambda: time.monotonic() > deadline,
                                        workers=registration_workers(threads))
        if estimates is None:
            return TrainingResult(False, output, None, {})
        estimates = matched_estimates(references, targets, estimates, matching, progress)
        labels = registration_labels(names, descriptions, estimates, scale)
        write_label_set(output / LABELS_DIR / "round-0", labels)

    result = None
    for number in range(1, settings.rounds + 1):
        folder = output / ROUNDS_DIR / str(number)
        if number <= state["rounds"]:
            labels = read_label_set(output / LABELS_DIR / f"round-{number}", names) or labels
            result = TrainingResult(True, folder, folder / PACKAGE_DIR, state["metrics"])
            if state.get("settled") and number == state["rounds"]:
                break
            continue
        remaining = None if deadline is None else max(0.0, (deadline - time.monotonic()) / 60.0)
        if progress:
            tqdm.write(f"Round {number}/{settings.rounds}: training on {len(source.cases())} annotated and "
                       f"{len(labels)} pseudo-labelled scans")
        result = train(config if number == 1 else later, folder, data_root=data_root, device=device,
                       threads=threads, max_minutes=remaining, resume=(folder / CHECKPOINT_FILE).is_file(), overwrite=False, progress=progress,
                       command=command, initial=_previous_round(output, number, config, names, descriptions),
                       pseudo_labels=labels, cache_dir=output / CACHE_DIR)
        if not result.finished:
            _write_labels(output, labels, state)
            if number == 1:
                return TrainingResult(False, output, None, result.metrics)
            previous = output / ROUNDS_DIR / str(number - 1) / PACKAGE_DIR
            package = _write_package(output, previous, config, references, unannotated, state, registration,
                                     matching, stopped_in_round=number)
            return TrainingResult(False, output, package, state["metrics"])
        predictor = Predictor.from_model(result.package, device=device, threads=threads)
        model_error = result.metrics.get(config.stages[-1].name, {}).get("val_mre_mm", scale)
        updated = model_labels(lambda volume: predictor.predict(volume).landmarks, targets, labels, model_error,
                               scale, progress)
        moved = label_movement(labels, updated)
        settled = labels_settled(moved, tolerance, model_error, labels)
        write_label_set(output / LABELS_DIR / f"round-{number}", updated)
        labels = updated
        state["movement_mm"].append(round(moved, 4))
        if progress:
            tqdm.write(f"Round {number}: pseudo-labels moved {moved:.3g} mm (median; tolerance {tolerance:.3g} mm)")
        state.update(rounds=number, settled=settled, metrics=result.metrics, model_error_mm=round(model_error, 4))
        _write_state(output, state)
        if settled:
            break
    _write_labels(output, labels, state)
    package = _write_package(output, result.package, config, references, unannotated, state, registration,
                             matching)
    return TrainingResult(True, output, package, state["metrics"])


def few_shot_outcome(output: str | os.PathLike) -> list[str]:
    """Sentences for the user on the few-shot run in `output`: where the unannotated scans'
    landmarks are, and whether the model has learned them (it validates at or below their median
    expected error) or needs more training."""
    output = Path(output)
    path = output / STATE_FILE
    if not path.is_file() or not (output / OUTPUT_LABELS_DIR).is_dir():
        return []
    state = json.loads(path.read_text(encoding="utf-8"))
    count = len(json.loads((output / OUTPUT_LABELS_DIR / "done.json").read_text(encoding="utf-8")))
    label_error, model_error = state.get("labels_error_mm"), state.get("model_error_mm")
    spread = "" if label_error is None else f" (median expected error {label_error:.3g} mm)"
    lines = [f"Landmarks of the {count} unannotated scans: {output / OUTPUT_LABELS_DIR}{spread}."]
    if model_error is not None and label_error is not None and model_error > label_error:
        lines.append(f"The model validates at {model_error:.3g} mm, less accurate than those labels: for these scans "
                     f"use {output / OUTPUT_LABELS_DIR}; for new scans train on (--resume with a larger --max-minutes, "
                     "or more --rounds).")
    return lines


def _write_labels(output: Path, labels: dict[str, Landmarks], state: dict) -> None:
    """``OUT/labels``: the latest labels of the unannotated scans, and their median expected error
    in the run's state."""
    write_label_set(output / OUTPUT_LABELS_DIR, labels)
    error = median_expected_error(labels)
    state["labels_error_mm"] = None if error is None else round(error, 4)
    _write_state(output, state)


def _write_package(output: Path, round_package: Path, config: TrainingConfig, references: list[Reference],
                   unannotated: list[str], state: dict, registration: RegistrationSettings,
                   matching: MatchSettings, stopped_in_round: int | None = None) -> Path:
    """``OUT/package``: the model of `round_package` with round 1's recipe and the few-shot
    provenance; `stopped_in_round` records the round a time limit cut (the model is then the
    round before it, and resuming continues that round)."""
    built = read_package(round_package)
    manifest = dict(built.manifest)
    few_shot = {
        "references": [reference.name for reference in references], "pseudo_labelled_cases": unannotated,
        "rounds": state["rounds"], "label_movement_mm": state["movement_mm"],
        "model_validation_mm": state.get("model_error_mm"), "label_expected_error_mm": state.get("labels_error_mm"),
        "later_rounds": {"epoch_fraction": FINE_TUNING_EPOCH_FRACTION, "lr_factor": FINE_TUNING_LR_FACTOR},
        "registration": dataclasses.asdict(registration),
        "patch_matching": dataclasses.asdict(matching)}
    if stopped_in_round is not None:
        few_shot["stopped_in_round"] = stopped_in_round
    manifest["training"] = {**manifest["training"], "recipe": config.raw, "few_shot": few_shot}
    package = output / PACKAGE_DIR
    write_package(package, manifest, built.state_dict(), overwrite=True, references=built.reference_patches())
    return package


def _references(source: GenericDataset, settings: FewShotSettings) -> list[Reference]:
    """The template alone when one is given, else every annotated case (but ``test`` ones)."""
    if settings.template is not None:
        volume_path, landmark_path = (Path(path) for path in settings.template)
        for path in (volume_path, landmark_path):
            if not path.is_file():
                raise TrainingConfigError(f"Reference template file {path} does not exist.")
        return [Reference(TEMPLATE, file_digest(volume_path, landmark_path),
                          lambda: (read_volume(volume_path), read_landmarks(landmark_path)))]
    cases = [case for case in source.cases() if source.notes(case).get("split") != "test"]
    if not cases:
        raise TrainingConfigError(
            f"{source.root} has no annotated case to register onto its unannotated scans; annotate one or give "
            "a reference template.")
    return [Reference(case, source.fingerprint(case), lambda case=case: source.load(case)) for case in cases]


def _landmark_set(references: list[Reference]) -> tuple[list[str], list[str], Landmarks]:
    """The first reference's landmark names and descriptions, and its landmarks; the others must
    have the same landmarks."""
    first = references[0].load()[1]
    names = list(first.names)
    for reference in references[1:]:
        match_landmarks(reference.load()[1], names, reference.name)
    return names, list(first.descriptions), first


def _later_round_config(config: TrainingConfig) -> TrainingConfig:
    """`config` with every stage on the fine-tuning schedule (rounds after the first)."""
    raw = {**config.raw, "stages": [fine_tuning_stage(stage) for stage in config.raw["stages"]]}
    return parse_training_config(raw, "the later rounds' recipe")


def _previous_round(output: Path, number: int, config: TrainingConfig, names: list[str],
                    descriptions: list[str]) -> InitialModel | None:
    """The previous round's weights (its mean shape is recomputed from the updated labels)."""
    if number == 1:
        return None
    package = read_package(output / ROUNDS_DIR / str(number - 1) / PACKAGE_DIR)
    networks = split_stage_state_dicts(package.manifest, package.state_dict(), str(package.path))
    return InitialModel(f"{package.id}@{package.version}", config.raw, names, descriptions, None, networks)


def _initial_state(output: Path, config: TrainingConfig, resume: bool, overwrite: bool) -> dict:
    path = output / STATE_FILE
    if resume and path.is_file():
        state = json.loads(path.read_text(encoding="utf-8"))
        if state.get("config_sha256") != config.sha256:
            raise CheckpointError(f"{output} holds a few-shot run of a different training configuration; resume with "
                                  "the same one or start over with --overwrite.")
        return state
    if not resume and (path.exists() or (output / ROUNDS_DIR).exists()):
        if not overwrite:
            raise CheckpointError(
                f"{output} already holds a training run; pass --resume to continue it or --overwrite to start over.")
        for stale in (output / ROUNDS_DIR, output / LABELS_DIR, output / PACKAGE_DIR, output / OUTPUT_LABELS_DIR):
            if stale.is_dir():
                remove_directory(stale)
        path.unlink(missing_ok=True)
    return {"config_sha256": config.sha256, "rounds": 0, "settled": False, "movement_mm": [], "metrics": {}}


def _write_state(output: Path, state: dict) -> None:
    atomic_write_text(output / STATE_FILE, json.dumps(state, indent=2) + "\n", overwrite=True)
