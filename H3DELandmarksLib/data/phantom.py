"""Procedural CT-like head phantoms with exactly known landmarks.

`make_phantom` draws a small skull-shaped head in Hounsfield units and returns it with its
landmarks. The anatomy is built from simple solids (ellipsoids, capsules, cylinders) in an
anatomical frame: millimetres, x towards the patient's left, y posterior, z superior, origin at
the centre of the cranium. A rigid pose (scale, rotation, translation) places that frame in LPS
space, and every voxel is sampled through the volume's own index-to-physical matrix, so the
landmarks, computed analytically from the same solids, are exact in LPS millimetres whatever the
direction matrix, origin or spacing.

Random streams are independent: the shape, the pose, the grid (direction, flip, placement of
the head in the field of view) and the noise each come from their own child of the seed. The
same seed with a different direction or `absent` list therefore gives the same anatomy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple, Sequence

import numpy as np
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from .landmarks import Landmarks
from .solids import (
    Box,
    Capsule,
    Cylinder,
    Difference,
    Ellipsoid,
    HalfSpace,
    Intersection,
    Shape,
    Slab,
    sphere,
)
from .volume import Volume

PHANTOM_LANDMARKS: dict[str, str] = {
    "nasion": "Midline junction of the nasal bone with the frontal bone, between the orbits.",
    "bregma": "Junction of the coronal and sagittal sutures on the outer surface of the skull vault.",
    "inion": "Posterior tip of the external occipital protuberance.",
    "sella": "Centre of the sella turcica, the cup-shaped pituitary fossa in the skull base.",
    "orbit_left": "Centre of the left eye socket (centre of the eyeball).",
    "orbit_right": "Centre of the right eye socket (centre of the eyeball).",
    "porion_left": "Centre of the left ear canal where it crosses the outer surface of the skull.",
    "porion_right": "Centre of the right ear canal where it crosses the outer surface of the skull.",
    "gonion_left": "Outermost point of the left angle of the mandible, where ramus and body meet.",
    "gonion_right": "Outermost point of the right angle of the mandible, where ramus and body meet.",
    "menton": "Lowest point of the chin on the mandibular symphysis.",
    "dens_tip": "Tip of the dens (odontoid process) of the second cervical vertebra.",
}
PHANTOM_LANDMARK_NAMES: tuple[str, ...] = tuple(PHANTOM_LANDMARKS)

HU_RANGE = (-1024, 3071)
_AIR = -1000.0
_MAX_TILT_DEG = 15.0
_MAX_JAW_OPENING_DEG = 18.0
_FILL = 0.92
_BLUR_VOXELS = 0.45
_SIDES = (("left", 1.0), ("right", -1.0))


@dataclass(frozen=True)
class _Tissue:
    """Hounsfield units of one phantom."""

    soft: float
    fat: float
    brain: float
    csf: float
    globe: float
    bone: float
    dense_bone: float
    cancellous: float
    disc: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "_Tissue":
        bone = rng.uniform(1150.0, 1450.0)
        return cls(
            soft=rng.uniform(35.0, 55.0),
            fat=rng.uniform(-110.0, -70.0),
            brain=rng.uniform(28.0, 36.0),
            csf=rng.uniform(3.0, 12.0),
            globe=rng.uniform(8.0, 18.0),
            bone=bone,
            dense_bone=bone + rng.uniform(200.0, 400.0),
            cancellous=rng.uniform(250.0, 400.0),
            disc=rng.uniform(70.0, 100.0),
        )


class _Layer(NamedTuple):
    """One solid painted with one value; layers are painted by increasing `order`.

    Orders: 0 soft-tissue envelope, 1-3 maxilla and its air cavities, 4-7 vault, sutures, brain,
    ventricles, 8-9 skull base bones and the cavities cut in them, 10-12 orbits, 13 bones outside
    the vault (nasal bone, occipital knob, mandible), 14-18 spine, spinal cord, dens, airway.
    `removed_with` names the landmark whose absence removes the layer.
    """

    order: int
    shape: Shape
    hu: float
    removed_with: str | None = None


_ENVELOPE = 0  # soft tissue of the head and neck; the head's envelope solids also bound its size


class _Head(NamedTuple):
    layers: list[_Layer]
    landmarks: dict[str, np.ndarray]


class _Variation:
    """Draws shape perturbations scaled by `amount` (0 gives the mean phantom)."""

    def __init__(self, rng: np.random.Generator, amount: float) -> None:
        self.rng, self.amount = rng, float(amount)

    def offset(self, half_range: float, count: int | None = None):
        """Uniform in ``[-half_range, half_range] * amount``."""
        return self.amount * half_range * self.rng.uniform(-1.0, 1.0, count)

    def factor(self, half_range: float, count: int | None = None):
        """Uniform in ``1 +/- half_range * amount``."""
        return 1.0 + self.offset(half_range, count)


def _v(*values: float) -> np.ndarray:
    return np.array(values, float)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def _skull(vary: _Variation, g: np.ndarray, tissue: _Tissue) -> tuple[Ellipsoid, _Head]:
    """Vault with sutures, brain and ventricles, skull base with the sella, occipital knob."""
    outer = Ellipsoid(_v(0, 0, 0), _v(35, 42, 36) * g)
    inner = outer.grown(-4.5 * vary.factor(0.1))
    bregma = outer.surface_point(_v(0, (-6 + vary.offset(3)) * g[1], 0), axis=2, sign=1)
    suture_level = HalfSpace(_v(0, 0, 0.25 * outer.semi[2]), _v(0, 0, 1))
    coronal = Intersection(outer, Slab(bregma, _v(0, 1, 0), 1.25), suture_level)
    behind_bregma = HalfSpace(bregma, _v(0, 1, 0))
    sagittal = Intersection(outer, Slab(bregma, _v(1, 0, 0), 1.25), behind_bregma, suture_level)
    knob_radius = 5.0 * vary.factor(0.15)
    knob_surface = outer.surface_point(_v(0, 0, (-6 + vary.offset(3)) * g[2]), axis=1, sign=1)
    knob = sphere(knob_surface - _v(0, 1.5, 0), knob_radius)
    sella = _v(vary.offset(1), -4 * g[1] + vary.offset(1.5), -20 * g[2] + vary.offset(1))
    m = float(np.mean(g))
    layers = [
        _Layer(_ENVELOPE, outer.grown(4.0), tissue.soft),
        _Layer(_ENVELOPE, knob.grown(3.0), tissue.soft, "inion"),
        _Layer(4, outer, tissue.bone),
        _Layer(5, coronal, tissue.soft, "bregma"),
        _Layer(5, sagittal, tissue.soft, "bregma"),
        _Layer(6, inner, tissue.brain),
        *(_Layer(7, Ellipsoid(_v(side * 5, 3, 6) * g, _v(3, 11, 5) * g), tissue.csf) for _, side in _SIDES),
        _Layer(8, Ellipsoid(sella - _v(0, 0, 5 * m), _v(10, 9, 7) * m), tissue.bone),
        _Layer(9, sphere(sella, 3.5 * m), tissue.soft, "sella"),
        _Layer(9, Cylinder(_v(0, 7, -45) * g, _v(0, 7, -28) * g, 6.5 * m), tissue.csf),
        _Layer(13, knob, tissue.bone, "inion"),
    ]
    landmarks = {"bregma": bregma, "inion": knob.a + _v(0, knob_radius, 0), "sella": sella}
    return outer, _Head(layers, landmarks)


def _face(vary: _Variation, g: np.ndarray, tissue: _Tissue, skull: Ellipsoid) -> _Head:
    """Maxilla with sinuses and nasal cavity, nasal bone, orbits with eyeballs."""
    m = float(np.mean(g))
    maxilla = Ellipsoid(_v(0, -26, -28) * g, _v(25, 16, 16) * g)
    nasion = skull.surface_point(_v(0, 0, (-3 + vary.offset(1.5)) * g[2]), axis=1, sign=-1)
    nasal_bone = Capsule(nasion, nasion + _v(0, -8 + vary.offset(2), -12 + vary.offset(2)) * g, 2.5 * m)
    layers = [
        _Layer(_ENVELOPE, maxilla.grown(4.0), tissue.soft),
        _Layer(_ENVELOPE, Ellipsoid(_v(0, -15, -44) * g, _v(30, 24, 18) * g), tissue.soft),
        _Layer(_ENVELOPE, nasal_bone.grown(3.5), tissue.soft, "nasion"),
        _Layer(1, maxilla, tissue.bone),
        _Layer(2, maxilla.grown(-3.0), tissue.soft),
        *(_Layer(3, Ellipsoid(_v(side * 11, -26, -27) * g, _v(6, 8, 8) * g), _AIR) for _, side in _SIDES),
        _Layer(3, Ellipsoid(_v(0, -32, -25) * g, _v(4, 9, 10) * g), _AIR),
        _Layer(13, nasal_bone, tissue.bone, "nasion"),
    ]
    landmarks = {"nasion": nasion}
    for name, side in _SIDES:
        surface = skull.surface_point(_v(side * 16, 0, -7) * g, axis=1, sign=-1)
        centre = surface + _v(0, 2.5, 0) + vary.offset(1.5, 3)
        radius = 9.5 * m * vary.factor(0.05)
        wall = Difference(sphere(centre, radius + 3.5), sphere(centre, radius))
        behind_rim = HalfSpace(centre - _v(0, 0.45 * (radius + 3.5), 0), _v(0, 1, 0))
        globe = sphere(centre, 0.78 * radius)
        tag = f"orbit_{name}"
        layers += [
            _Layer(_ENVELOPE, globe.grown(2.5), tissue.soft, tag),
            _Layer(10, Intersection(wall, behind_rim), tissue.bone, tag),
            _Layer(11, Intersection(sphere(centre, radius), behind_rim), tissue.fat, tag),
            _Layer(12, globe, tissue.globe, tag),
        ]
        landmarks[tag] = centre
    return _Head(layers, landmarks)


def _ears(vary: _Variation, g: np.ndarray, tissue: _Tissue, skull: Ellipsoid) -> _Head:
    """Petrous bones and mastoid processes, each with a bone-lined ear canal running in from the side."""
    layers, landmarks = [], {}
    for name, side in _SIDES:
        level = _v(0, (4 + vary.offset(1.5)) * g[1], (-14 + vary.offset(1.5)) * g[2])
        porion = skull.surface_point(level, axis=0, sign=side)
        lateral = _v(side, 0, 0)
        petrous = Ellipsoid(porion - 10 * lateral + _v(0, 2, 1), _v(8, 10, 7) * g)
        radius = 2.5 * float(np.mean(g))
        canal = Capsule(porion + 10 * lateral, porion - 11 * lateral, radius)
        canal_wall = Intersection(Cylinder(porion - 13 * lateral, porion, radius + 3.0), skull)
        mastoid = Ellipsoid(porion - 3 * lateral + _v(0, 6, -8) * g, _v(5, 6, 8) * g)
        layers += [
            _Layer(_ENVELOPE, mastoid.grown(3.0), tissue.soft),
            _Layer(8, petrous, tissue.dense_bone),
            _Layer(8, canal_wall, tissue.dense_bone),
            _Layer(8, mastoid, tissue.bone),
            _Layer(9, canal, _AIR, f"porion_{name}"),
        ]
        landmarks[f"porion_{name}"] = porion
    return _Head(layers, landmarks)


def _mandible(vary: _Variation, g: np.ndarray, tissue: _Tissue, skull: Ellipsoid) -> _Head:
    """Separate jaw bone: condyles below the skull, rami, angles, body and chin; opens at random."""
    m = float(np.mean(g))
    jaw_radius, condyle_radius, chin_radius = 3.4 * m, 4.0 * m, 5.0 * m
    condyles, angles = {}, {}
    for name, side in _SIDES:
        below_skull = skull.surface_point(_v(side * 27, -3, 0) * g, axis=2, sign=-1)
        condyles[name] = below_skull - _v(0, 0, 2.5 + condyle_radius)
        angles[name] = _v(side * 28, 3, -52) * g + vary.offset(2, 3)
    chin = _v(vary.offset(1.5), -30 * g[1], -58 * g[2])
    hinge = _unit(condyles["left"] - condyles["right"])
    opening_angle = np.radians(_MAX_JAW_OPENING_DEG) * vary.amount * vary.rng.uniform()
    opening = Rotation.from_rotvec(hinge * opening_angle).as_matrix()
    pivot = condyles["right"]
    chin = pivot + opening @ (chin - pivot)
    layers = [
        _Layer(_ENVELOPE, sphere(chin, chin_radius + 4), tissue.soft, "menton"),
        _Layer(13, sphere(chin, chin_radius), tissue.bone, "menton"),
    ]
    landmarks = {"menton": chin + opening @ _v(0, 0, -chin_radius)}
    for name, _ in _SIDES:
        angle = pivot + opening @ (angles[name] - pivot)
        middle = (angle + chin) / 2
        tag = f"gonion_{name}"
        for solid, removed_with in (
            (Capsule(condyles[name], angle, jaw_radius), tag),
            (sphere(condyles[name], condyle_radius), tag),
            (Capsule(angle, middle, jaw_radius), tag),
            (Capsule(middle, chin, jaw_radius), "menton"),
        ):
            layers += [
                _Layer(_ENVELOPE, solid.grown(4.0), tissue.soft, removed_with),
                _Layer(13, solid, tissue.bone, removed_with),
            ]
        outward = -_unit(_unit(condyles[name] - angle) + _unit(chin - angle))
        landmarks[tag] = angle + jaw_radius * outward
    return _Head(layers, landmarks)


def _dens(g: np.ndarray) -> Capsule:
    """The odontoid process, pointing up from the second vertebra into the atlas ring."""
    return Capsule(_v(0, 1, -50) * g, _v(0, 1, -40) * g, 3.0 * float(np.mean(g)))


def _spine(g: np.ndarray, tissue: _Tissue, bottom: float) -> list[_Layer]:
    """Neck, airway, spinal cord, atlas ring with the dens, vertebrae down to z = `bottom`."""
    m = float(np.mean(g))
    low = min(bottom, -60.0 * g[2]) - 10.0

    def column(y: float, top: float, radius: float) -> Cylinder:
        return Cylinder(_v(0, y * g[1], low), _v(0, y * g[1], top * g[2]), radius * m)

    def segment(y: float, z_from: float, z_to: float, radius: float) -> Cylinder:
        return Cylinder(_v(0, y, z_from) * g, _v(0, y, z_to) * g, radius * m)

    layers = [
        _Layer(_ENVELOPE, column(1, -30, 22), tissue.soft),
        _Layer(14, Difference(segment(5, -44, -38, 11), segment(5, -44, -38, 8.5)), tissue.bone),
        _Layer(16, column(9, -28, 3.5), tissue.brain),
        _Layer(17, _dens(g), tissue.bone, "dens_tip"),
        _Layer(18, column(-14, -38, 3.5), _AIR),
    ]
    top = -46.0
    while top * g[2] > low:
        arch = Difference(segment(9, top - 10, top - 2, 8), segment(9, top - 10, top - 2, 5))
        layers += [
            _Layer(14, segment(-1, top - 12, top, 7), tissue.bone),
            _Layer(15, segment(-1, top - 11, top - 1, 5.8), tissue.cancellous),
            _Layer(14, segment(-1, top - 15, top - 12, 6.5), tissue.disc),
            _Layer(14, arch, tissue.bone),
        ]
        top -= 15.0
    return layers


def _head(vary: _Variation) -> tuple[_Tissue, np.ndarray, _Head]:
    """Sample tissue values, global proportions and every part above the neck."""
    tissue = _Tissue.sample(vary.rng)
    g = vary.factor(0.06, 3)
    skull, cranium = _skull(vary, g, tissue)
    parts = [cranium, *(part(vary, g, tissue, skull) for part in (_face, _ears, _mandible))]
    layers = [layer for part in parts for layer in part.layers]
    landmarks = {name: position for part in parts for name, position in part.landmarks.items()}
    dens = _dens(g)
    landmarks["dens_tip"] = dens.b + _v(0, 0, dens.radius)
    return tissue, g, _Head(layers, landmarks)


def _bounding_sphere(layers: list[_Layer]) -> tuple[np.ndarray, float]:
    """Sphere holding the soft-tissue envelope of the head's layers (the neck comes later)."""
    points = np.concatenate([layer.shape.surface_points() for layer in layers if layer.order == _ENVELOPE])
    centre = (points.min(axis=0) + points.max(axis=0)) / 2
    return centre, float(np.max(np.linalg.norm(points - centre, axis=1))) + 2.0


@dataclass(frozen=True)
class _Pose:
    """Anatomical frame to LPS: ``lps = position + scale * rotation @ (a - centre)``."""

    centre: np.ndarray
    scale: float
    rotation: np.ndarray
    position: np.ndarray

    def to_lps(self, anatomical: np.ndarray) -> np.ndarray:
        return self.position + self.scale * (np.asarray(anatomical) - self.centre) @ self.rotation.T


class _Canvas:
    """The voxel grid with the anatomical coordinates of every voxel, painted layer by layer."""

    def __init__(self, grid: Volume, pose: _Pose) -> None:
        self.grid, self.pose = grid, pose
        matrix = grid.index_to_physical_matrix
        linear = pose.rotation.T @ matrix[:3, :3] / pose.scale
        offset = pose.centre + pose.rotation.T @ (matrix[:3, 3] - pose.position) / pose.scale
        ni, nj, nk = grid.shape_ijk
        i = np.arange(ni, dtype=np.float32)[None, None, :]
        j = np.arange(nj, dtype=np.float32)[None, :, None]
        k = np.arange(nk, dtype=np.float32)[:, None, None]
        linear, offset = linear.astype(np.float32), offset.astype(np.float32)
        self.x, self.y, self.z = (
            (offset[a] + linear[a, 0] * i) + (linear[a, 1] * j + linear[a, 2] * k) for a in range(3)
        )
        self.hu = np.full(grid.array.shape, _AIR, np.float32)

    def paint(self, layer: _Layer) -> None:
        box = self._box(layer.shape.bound())
        if box is None:
            return
        mask = layer.shape.contains(self.x[box], self.y[box], self.z[box])
        self.hu[box][mask] = layer.hu

    def _box(self, bound: Box | None) -> tuple[slice, slice, slice] | None:
        """Array slices ``[k, j, i]`` covering an anatomical box, None when it misses the grid."""
        if bound is None:
            return (slice(None),) * 3
        corners = np.array([[bound[c][a] for a, c in enumerate(choice)] for choice in np.ndindex(2, 2, 2)])
        ijk = self.grid.physical_to_index(self.pose.to_lps(corners))
        low = np.maximum(np.floor(ijk.min(axis=0)).astype(int), 0)
        high = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, self.grid.shape_ijk)
        if np.any(low >= high):
            return None
        return tuple(slice(low[a], high[a]) for a in (2, 1, 0))


def _matrix_option(value, random_value: np.ndarray, what: str, proper: bool) -> np.ndarray:
    """Resolve a "random" | None | 3x3 option; None means identity."""
    if isinstance(value, str):
        if value != "random":
            raise ValueError(f'The {what} must be "random", None or a 3x3 matrix, not {value!r}.')
        return random_value
    if value is None:
        return np.eye(3)
    matrix = np.asarray(value, float)
    if matrix.shape != (3, 3) or not np.allclose(matrix.T @ matrix, np.eye(3), atol=1e-6):
        raise ValueError(f"The {what} must be an orthonormal 3x3 matrix.")
    if proper and np.linalg.det(matrix) < 0:
        raise ValueError(f"The {what} must be a rotation (determinant +1), not a reflection.")
    return matrix


def _random_tilt(rng: np.random.Generator) -> np.ndarray:
    """Head tilt within +/- _MAX_TILT_DEG about each axis."""
    return Rotation.from_euler("xyz", rng.uniform(-_MAX_TILT_DEG, _MAX_TILT_DEG, 3), degrees=True).as_matrix()


def _random_direction(rng: np.random.Generator) -> np.ndarray:
    """A rotation: half the time a signed axis permutation, otherwise an oblique one."""
    if rng.uniform() < 0.5:
        matrix = np.eye(3)[:, rng.permutation(3)] * rng.choice([-1.0, 1.0], 3)
    else:
        q, r = np.linalg.qr(rng.standard_normal((3, 3)))
        matrix = q * np.sign(np.diag(r))
    if np.linalg.det(matrix) < 0:
        matrix[:, 2] *= -1.0
    return matrix


def _triple(value, what: str, kind: type) -> tuple:
    values = tuple(kind(v) for v in np.broadcast_to(np.asarray(value), (3,)))
    if min(values) <= 0:
        raise ValueError(f"The {what} must be positive along every axis, got {values}.")
    return values


def _grid(
    size: tuple[int, int, int],
    spacing: tuple[float, float, float],
    direction,
    flip: bool | None,
    rng: np.random.Generator,
    head_position: np.ndarray,
    slack: float,
) -> Volume:
    """An empty volume whose centre lies within `slack` mm of the head's position."""
    matrix = _matrix_option(direction, _random_direction(rng), "direction", proper=False)
    random_flip = bool(rng.uniform() < 0.5)
    if flip is None:
        flip = random_flip and isinstance(direction, str)
    if flip:
        matrix = matrix * _v(-1, 1, 1)
    centre = head_position + _unit(rng.standard_normal(3)) * rng.uniform() * slack
    origin = centre - matrix @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2)
    return Volume(np.zeros(size[::-1], np.int16), spacing, tuple(float(o) for o in origin), matrix)


def _scanned(sharp: Volume, noise_hu: float, rng: np.random.Generator) -> np.ndarray:
    """The image as a scanner would give it: blurred, noisy, rounded to int16 HU."""
    sigma = [_BLUR_VOXELS * s for s in sharp.spacing]
    hu = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sharp.to_sitk(), sigma))
    if noise_hu > 0:
        hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_hu)
    return np.rint(np.clip(hu, *HU_RANGE)).astype(np.int16)


def make_phantom(
    seed: int,
    size: int | Sequence[int] = (96, 96, 96),
    spacing: float | Sequence[float] = 1.5,
    rotation: str | np.ndarray | None = "random",
    direction: str | np.ndarray | None = "random",
    flip: bool | None = None,
    absent: Sequence[str] = (),
    shape_variation: float = 1.0,
    noise_hu: float = 20.0,
) -> tuple[Volume, Landmarks]:
    """Draw a CT-like head phantom and its exact landmarks; the same arguments give the same result.

    Args:
        seed: random seed.
        size: voxels along i, j, k.
        spacing: voxel size in mm, one value or one per i, j, k.
        rotation: pose of the head in LPS space: "random" (tilt up to 15 degrees about each
            axis), None (upright, facing -P), or a 3x3 rotation matrix.
        direction: orientation of the volume axes: "random" (a signed axis permutation or an
            oblique rotation, equally likely), None (identity), or an orthonormal 3x3 matrix
            whose columns are the LPS directions of i, j, k.
        flip: store the volume mirrored along i (the direction's first column negated, so its
            determinant changes sign; the anatomy is unchanged). None means random when
            `direction` is "random", otherwise False.
        absent: names from PHANTOM_LANDMARK_NAMES whose structure is removed from the image
            (e.g. nasal bone, ear canal, dens, part of the jaw); they come back absent.
        shape_variation: scale of the random anatomical variation (0 gives the mean shape).
        noise_hu: standard deviation of the Gaussian noise (HU).

    Returns:
        An int16 volume in HU (the head fills about 90% of the smallest extent of the field of
        view at most, and is shrunk below its natural size, a cranium about 84 mm long, only
        when the field of view is too small), and the landmarks in PHANTOM_LANDMARK_NAMES order.
    """
    size = _triple(size, "size", int)
    if min(size) < 4:
        raise ValueError(f"The phantom needs at least 4 voxels along every axis, got {size}.")
    spacing = _triple(spacing, "spacing", float)
    absent = (absent,) if isinstance(absent, str) else tuple(absent)
    unknown = sorted(set(absent) - set(PHANTOM_LANDMARK_NAMES))
    if unknown:
        choices = ", ".join(PHANTOM_LANDMARK_NAMES)
        raise ValueError(f"Unknown phantom landmark(s) {', '.join(unknown)}; choose from {choices}.")
    shape_rng, pose_rng, grid_rng, noise_rng = (
        np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(4)
    )

    tissue, g, head = _head(_Variation(shape_rng, shape_variation))
    centre, radius = _bounding_sphere(head.layers)
    room = 0.5 * min((n - 1) * s for n, s in zip(size, spacing))
    scale = min(1.0, _FILL * room / radius)
    rotation = _matrix_option(rotation, _random_tilt(pose_rng), "rotation", proper=True)
    pose = _Pose(centre, scale, rotation, pose_rng.uniform(-150.0, 150.0, 3))
    slack = room - scale * radius
    grid = _grid(size, spacing, direction, flip, grid_rng, pose.position, slack)

    canvas = _Canvas(grid, pose)
    layers = head.layers + _spine(g, tissue, bottom=float(canvas.z.min()))
    for layer in sorted(layers, key=lambda layer: layer.order):
        if layer.removed_with not in absent:
            canvas.paint(layer)
    array = _scanned(replace(grid, array=canvas.hu), noise_hu, noise_rng)

    present = np.array([name not in absent for name in PHANTOM_LANDMARK_NAMES])
    positions = np.full((len(PHANTOM_LANDMARK_NAMES), 3), np.nan)
    for row, name in enumerate(PHANTOM_LANDMARK_NAMES):
        if present[row]:
            positions[row] = pose.to_lps(head.landmarks[name])
    landmarks = Landmarks(
        names=list(PHANTOM_LANDMARK_NAMES),
        positions=positions,
        present=present,
        descriptions=list(PHANTOM_LANDMARKS.values()),
    )
    return replace(grid, array=array), landmarks
