"""The data of a training run: its source, split, landmark set and cached cases.

Annotated points train with weight 1. Few-shot training adds pseudo-labelled cases (unannotated
scans of a generic dataset with landmarks from registration or from a previous model): their
landmarks' confidence is their training weight, and the validation cases are then drawn from
them (the `data.validation` fraction of them, at least 1 and at most 4, or the cases it names),
so that every annotated scan trains.
"""

from __future__ import annotations

import os
from functools import cached_property

import numpy as np

from ..data.datasets import (
    CaseSource,
    GenericDataset,
    MMLDDataset,
    PhantomDataset,
    mark_absent,
    match_landmarks,
    split_cases,
)
from ..data.landmarks import Landmarks
from ..data.shape import mean_shape
from ..data.volume import Volume
from .cache import CaseCache
from .config import TrainingConfig, TrainingConfigError

MAX_PSEUDO_LABELLED_VALIDATION = 4
DEFAULT_PHANTOM = {"train_seeds": [1000, 1064], "validation_seeds": [0, 8]}


class TrainingData:
    """Training and validation cases with the model's landmark set, read through a disk cache.

    Args:
        config: the training configuration.
        cache_dir: where the cache lives.
        data_root: the dataset folder (overrides ``data.root``; not used by phantoms).
        names, descriptions: the landmark set, when already known (a resumed run); otherwise
            from the configuration or the first training case.
        mean_shape: the mean shape to use (a fine-tuned model keeps its own); otherwise the
            training cases' own.
        pseudo_labels: landmarks (model order, confidence = training weight) of unannotated
            cases of the generic dataset, for few-shot training.
    """

    def __init__(self, config: TrainingConfig, cache_dir: str | os.PathLike, data_root: str | os.PathLike | None = None,
                 names: list[str] | None = None, descriptions: list[str] | None = None,
                 mean_shape: np.ndarray | None = None,
                 pseudo_labels: dict[str, Landmarks] | None = None) -> None:
        self.config = config
        data = config.data
        self.pseudo_labels = dict(pseudo_labels or {})
        if self.pseudo_labels:
            self.source, self.train_cases, self.validation_cases = _pseudo_labelled_split(
                config, data_root, sorted(self.pseudo_labels))
        else:
            self.source, self.train_cases, self.validation_cases = _source_and_split(config, data_root)
        self.cache = CaseCache(self.source, cache_dir)
        self.absent = {case: list(absent) for case, absent in data.get("absent", {}).items()}
        unknown = sorted(set(self.absent) - set(self.train_cases) - set(self.validation_cases))
        if unknown:
            raise TrainingConfigError(
                f"data.absent names case {unknown[0]!r}, which is not a training or validation case.")
        if names is None and config.landmarks is not None:
            names = [entry["name"] for entry in config.landmarks]
            descriptions = [entry.get("description", "") for entry in config.landmarks]
        if names is None:
            first = self.case_landmarks_as_read(self.train_cases[0])
            names, descriptions = list(first.names), list(first.descriptions)
        self.names = list(names)
        self.descriptions = list(descriptions or [""] * len(self.names))
        self._mean_shape = mean_shape

    def case(self, case: str) -> tuple[Volume, Landmarks]:
        """The case's volume and its landmarks in model order, configured absences applied; the
        confidence is the training weight (NaN, i.e. 1, for annotated points)."""
        volume = self.cache.get(case)[0]
        landmarks = match_landmarks(self.case_landmarks_as_read(case), self.names, case)
        if case not in self.pseudo_labels:
            landmarks.confidence[:] = np.nan
        return volume, mark_absent(landmarks, self.absent.get(case, []), case)

    def case_landmarks_as_read(self, case: str) -> Landmarks:
        """The case's annotation, or its pseudo-label."""
        return self.pseudo_labels[case] if case in self.pseudo_labels else self.cache.get(case)[1]

    @cached_property
    def mean_shape(self) -> np.ndarray:
        """(L, 3) the given mean shape, or the generalised Procrustes mean of the training cases'
        present landmarks."""
        if self._mean_shape is not None:
            return self._mean_shape
        shapes = []
        for case in self.train_cases:
            landmarks = self.case(case)[1]
            shapes.append(landmarks.located_positions)
        return mean_shape(shapes)

    def provenance(self) -> dict:
        """JSON-ready description of the data: source, split, fingerprints."""
        cases = self.train_cases + self.validation_cases
        return {
            **self.source.describe(),
            "train_cases": self.train_cases,
            "validation_cases": self.validation_cases,
            "absent": self.absent,
            "fingerprints": {case: self.source.fingerprint(case) for case in cases},
            **({"pseudo_labelled_cases": sorted(self.pseudo_labels)} if self.pseudo_labels else {}),
        }


def pseudo_labelled_validation_count(pseudo_labelled: int, fraction: float) -> int:
    """How many of a few-shot run's pseudo-labelled scans validate: `fraction` of them, at least
    1 and at most `MAX_PSEUDO_LABELLED_VALIDATION`, and never all of them."""
    return max(0, min(pseudo_labelled - 1, MAX_PSEUDO_LABELLED_VALIDATION, max(1, round(fraction * pseudo_labelled))))


def _pseudo_labelled_split(config: TrainingConfig, data_root,
                           pseudo_labelled: list[str]) -> tuple[CaseSource, list[str], list[str]]:
    """Annotated cases (all but ``test`` ones) and pseudo-labelled ones train; validation cases
    are drawn from the pseudo-labelled ones, unless `data.validation.cases` names them."""
    root = data_root or config.data.get("root")
    if config.data["layout"] != "generic" or root is None:
        raise TrainingConfigError("Few-shot training needs a generic dataset folder (--data DIR).")
    source = GenericDataset(root)
    unknown = sorted(set(pseudo_labelled) - set(source.unannotated_cases()))
    if unknown:
        raise TrainingConfigError(f"Pseudo-labelled case {unknown[0]!r} is not an unannotated case of {root}.")
    validation = config.data.get("validation", {})
    named = list(validation.get("cases", ()))
    if named:
        unknown = sorted(set(named) - set(source.cases()) - set(pseudo_labelled))
        if unknown:
            raise TrainingConfigError(f"Validation case {unknown[0]!r} is not in the dataset.")
        held_out = sorted(named)
    else:
        count = pseudo_labelled_validation_count(len(pseudo_labelled), validation.get("fraction", 0.0))
        chosen = np.random.default_rng(config.seed).permutation(len(pseudo_labelled))[:count]
        held_out = sorted(pseudo_labelled[index] for index in chosen)
    annotated = [case for case in source.cases() if source.notes(case).get("split") != "test"]
    train = [case for case in annotated + pseudo_labelled if case not in held_out]
    if not held_out or not train:
        raise TrainingConfigError("Few-shot training needs at least two unannotated scans (one validates).")
    return source, train, held_out


def _source_and_split(config: TrainingConfig, data_root) -> tuple[CaseSource, list[str], list[str]]:
    data = config.data
    if data["layout"] == "phantom":
        settings = {**DEFAULT_PHANTOM, **data.get("phantom", {})}
        train_seeds = range(*settings.pop("train_seeds"))
        validation_seeds = range(*settings.pop("validation_seeds"))
        settings = {key: tuple(value) if isinstance(value, list) else value for key, value in settings.items()}
        source = PhantomDataset(seeds=tuple(train_seeds) + tuple(validation_seeds), **settings)
        names = source.cases()
        return source, names[:len(train_seeds)], names[len(train_seeds):]
    root = data_root or data.get("root")
    if root is None:
        raise TrainingConfigError("The training data folder is not given: pass --data DIR or set data.root.")
    source = GenericDataset(root) if data["layout"] == "generic" else MMLDDataset(root)
    validation = data.get("validation", {})
    train, held_out = split_cases(source, config.seed, validation.get("fraction", 0.0), validation.get("cases", ()),
                                  validation.get("only_where"))
    if validation.get("training_cases") and not held_out:
        return source, train, list(train)
    if not held_out:
        raise TrainingConfigError("No validation cases: set data.validation (fraction or cases).")
    return source, train, held_out
