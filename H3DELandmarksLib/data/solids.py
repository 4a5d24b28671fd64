"""Solids for procedural phantoms: ellipsoids, capsules, cylinders, half-spaces, slabs, and their
intersections and differences, each with a bounding box and a vectorised point test (millimetres).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


Box = tuple[np.ndarray, np.ndarray]  # lowest and highest corner


class Shape(Protocol):
    def bound(self) -> Box | None:
        """Axis-aligned box holding the shape (anatomical mm), None if unbounded."""

    def contains(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Boolean mask of the points inside."""


def sphere_directions(count: int = 96) -> np.ndarray:
    """Near-uniform unit vectors (Fibonacci sphere), ``(count, 3)``."""
    k = np.arange(count) + 0.5
    z = 1.0 - 2.0 * k / count
    phi = np.pi * (1.0 + 5.0**0.5) * k
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


SURFACE_DIRECTIONS = sphere_directions()


@dataclass(frozen=True)
class Ellipsoid:
    centre: np.ndarray
    semi: np.ndarray

    def bound(self) -> Box:
        return self.centre - self.semi, self.centre + self.semi

    def contains(self, x, y, z):
        c, a = self.centre, self.semi
        return ((x - c[0]) / a[0]) ** 2 + ((y - c[1]) / a[1]) ** 2 + ((z - c[2]) / a[2]) ** 2 < 1.0

    def surface_points(self) -> np.ndarray:
        return self.centre + SURFACE_DIRECTIONS * self.semi

    def grown(self, margin: float) -> "Ellipsoid":
        return Ellipsoid(self.centre, self.semi + margin)

    def surface_point(self, point: Sequence[float], axis: int, sign: float) -> np.ndarray:
        """`point` with its `axis` coordinate moved onto the surface, on the `sign` side."""
        point = np.array(point, float)
        others = [a for a in range(3) if a != axis]
        rest = 1.0 - sum(((point[a] - self.centre[a]) / self.semi[a]) ** 2 for a in others)
        point[axis] = self.centre[axis] + sign * self.semi[axis] * np.sqrt(rest)
        return point


@dataclass(frozen=True)
class _AroundSegment:
    """A solid within `radius` of the segment a-b: its bound and the points' place along a-b."""

    a: np.ndarray
    b: np.ndarray
    radius: float

    def bound(self) -> Box:
        return np.minimum(self.a, self.b) - self.radius, np.maximum(self.a, self.b) + self.radius

    def _along(self, x, y, z):
        """Length of a-b, its unit direction (zero when a equals b), the points' offsets from a and
        their coordinate along a-b."""
        axis = self.b - self.a
        length = float(np.linalg.norm(axis))
        u = axis / length if length > 0 else axis
        dx, dy, dz = x - self.a[0], y - self.a[1], z - self.a[2]
        return length, u, (dx, dy, dz), dx * u[0] + dy * u[1] + dz * u[2]


@dataclass(frozen=True)
class Capsule(_AroundSegment):
    """Points within `radius` of the segment a-b (a sphere when a equals b)."""

    def contains(self, x, y, z):
        length, u, (dx, dy, dz), along = self._along(x, y, z)
        t = np.clip(along, 0.0, length)
        return (dx - t * u[0]) ** 2 + (dy - t * u[1]) ** 2 + (dz - t * u[2]) ** 2 < self.radius**2

    def surface_points(self) -> np.ndarray:
        return np.concatenate([self.a + self.radius * SURFACE_DIRECTIONS, self.b + self.radius * SURFACE_DIRECTIONS])

    def grown(self, margin: float) -> "Capsule":
        return Capsule(self.a, self.b, self.radius + margin)


def sphere(centre: np.ndarray, radius: float) -> Capsule:
    return Capsule(centre, centre, radius)


@dataclass(frozen=True)
class Cylinder(_AroundSegment):
    """Flat-ended cylinder of `radius` around the segment a-b (a and b distinct)."""

    def contains(self, x, y, z):
        length, _, (dx, dy, dz), t = self._along(x, y, z)
        radial = dx * dx + dy * dy + dz * dz - t * t
        return (t >= 0.0) & (t <= length) & (radial < self.radius**2)


@dataclass(frozen=True)
class HalfSpace:
    """Points on the side of the plane through `point` that `normal` points to."""

    point: np.ndarray
    normal: np.ndarray

    def bound(self) -> None:
        return None

    def contains(self, x, y, z):
        p, n = self.point, self.normal
        return (x - p[0]) * n[0] + (y - p[1]) * n[1] + (z - p[2]) * n[2] > 0.0


@dataclass(frozen=True)
class Slab:
    """Points closer than `half_width` to the plane through `point` with unit `normal`."""

    point: np.ndarray
    normal: np.ndarray
    half_width: float

    def bound(self) -> None:
        return None

    def contains(self, x, y, z):
        p, n = self.point, self.normal
        return np.abs((x - p[0]) * n[0] + (y - p[1]) * n[1] + (z - p[2]) * n[2]) < self.half_width


class Intersection:
    def __init__(self, *shapes: Shape) -> None:
        self.shapes = shapes

    def bound(self) -> Box:
        boxes = [box for box in (shape.bound() for shape in self.shapes) if box is not None]
        return np.max([low for low, _ in boxes], axis=0), np.min([high for _, high in boxes], axis=0)

    def contains(self, x, y, z):
        mask = self.shapes[0].contains(x, y, z)
        for shape in self.shapes[1:]:
            mask &= shape.contains(x, y, z)
        return mask


class Difference:
    def __init__(self, kept: Shape, removed: Shape) -> None:
        self.kept, self.removed = kept, removed

    def bound(self) -> Box | None:
        return self.kept.bound()

    def contains(self, x, y, z):
        return self.kept.contains(x, y, z) & ~self.removed.contains(x, y, z)
