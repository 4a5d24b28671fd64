"""The `Landmarks` type: an ordered, named set of points in LPS millimetres.

Each landmark has a name, an optional description, a position (NaN when no position is known at
all), a confidence (NaN when unknown), an expected error in millimetres (NaN when unknown) and a
present/absent status. An absent landmark keeps its
best-guess position when one exists.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..errors import LandmarkFileError


@dataclass
class Landmarks:
    """Ordered landmarks; arrays are aligned with `names`.

    Attributes:
        names: landmark names, unique, in model order.
        positions: ``(N, 3)`` LPS millimetres; a row of NaN means no position at all.
        present: ``(N,)`` bool; False marks an absent landmark (its position, if any, is a guess).
        confidence: ``(N,)`` float in [0, 1]; NaN when unknown (e.g. hand-placed points).
        expected_error: ``(N,)`` float, the detector's calibrated expected radial error in mm;
            NaN when unknown.
        descriptions: optional free text per landmark.
    """

    names: list[str]
    positions: np.ndarray
    present: np.ndarray = None
    confidence: np.ndarray = None
    descriptions: list[str] = field(default=None)
    expected_error: np.ndarray = None

    def __post_init__(self) -> None:
        n = len(self.names)
        self.names = [str(name) for name in self.names]
        self.positions = np.asarray(self.positions, float).reshape(n, 3)
        if self.present is None:
            self.present = np.all(np.isfinite(self.positions), axis=1)
        self.present = np.asarray(self.present, bool).reshape(n)
        if self.confidence is None:
            self.confidence = np.full(n, np.nan)
        self.confidence = np.asarray(self.confidence, float).reshape(n)
        if self.expected_error is None:
            self.expected_error = np.full(n, np.nan)
        self.expected_error = np.asarray(self.expected_error, float).reshape(n)
        if self.descriptions is None:
            self.descriptions = [""] * n
        self.descriptions = [str(d) for d in self.descriptions]
        if len(self.descriptions) != n:
            raise LandmarkFileError(f"{len(self.descriptions)} descriptions were given for {n} landmarks.")
        duplicates = sorted(name for name, count in Counter(self.names).items() if count > 1)
        if duplicates:
            raise LandmarkFileError(f"Landmark names must be unique; repeated: {', '.join(duplicates)}.")
        undefined = self.present & ~np.all(np.isfinite(self.positions), axis=1)
        if undefined.any():
            raise LandmarkFileError(
                f"Landmark {self.names[int(np.argmax(undefined))]!r} is marked present but has no position."
            )

    def __len__(self) -> int:
        return len(self.names)

    @property
    def located_positions(self) -> np.ndarray:
        """``(N, 3)`` the positions, with NaN rows where a landmark is absent."""
        return np.where(self.present[:, None], self.positions, np.nan)

    @property
    def has_position(self) -> np.ndarray:
        """``(N,)`` bool: the landmark has a position (present, or an absent best guess)."""
        return np.all(np.isfinite(self.positions), axis=1)

    def index(self, name: str) -> int:
        """Position of landmark `name` in the ordered set."""
        try:
            return self.names.index(name)
        except ValueError:
            raise LandmarkFileError(f"There is no landmark named {name!r}.") from None

    def reordered(self, names: list[str]) -> "Landmarks":
        """Return the landmarks in the order of `names` (every name must exist here)."""
        where = {name: index for index, name in enumerate(self.names)}
        missing = [name for name in names if name not in where]
        if missing:
            raise LandmarkFileError(f"Landmarks {', '.join(map(repr, missing))} are missing.")
        order = [where[name] for name in names]
        return Landmarks(
            names=list(names),
            positions=self.positions[order],
            present=self.present[order],
            confidence=self.confidence[order],
            descriptions=[self.descriptions[i] for i in order],
            expected_error=self.expected_error[order],
        )

    def copy(self) -> "Landmarks":
        """Deep copy."""
        return Landmarks(
            names=list(self.names),
            positions=self.positions.copy(),
            present=self.present.copy(),
            confidence=self.confidence.copy(),
            descriptions=list(self.descriptions),
            expected_error=self.expected_error.copy(),
        )
