"""Tests of the procedural head phantom: determinism, variation, truth against image, absence."""

import itertools
import time

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from H3DELandmarksLib.data.landmarks import Landmarks
from H3DELandmarksLib.data.phantom import HU_RANGE, PHANTOM_LANDMARK_NAMES, PHANTOM_LANDMARKS, make_phantom
from H3DELandmarksLib.data.volume import Volume

BONE, SOFT = 600.0, 300.0
L, P, S = np.eye(3)  # anatomical axes: patient left, posterior, superior

# Hole-like landmarks: (image value below, offset of the ray origin, anatomical directions in
# which bone is met within `reach` mm of that origin, reach).
HOLES = {
    "orbit_left": (200.0, 0 * L, [S, -S, L, -L, P], 16.0),
    "orbit_right": (200.0, 0 * L, [S, -S, L, -L, P], 16.0),
    "porion_left": (-300.0, -2.5 * L, [S, -S, P, -P], 7.0),
    "porion_right": (-300.0, 2.5 * L, [S, -S, P, -P], 7.0),
    "sella": (250.0, 0 * L, [-S, P, -P, L, -L], 9.0),
}
# Bony points: bone within 2 mm, soft tissue within 5 mm.
BONY_POINTS = ("nasion", "inion", "gonion_left", "gonion_right", "menton", "dens_tip")



def rotation_about(axis: np.ndarray, degrees: float) -> np.ndarray:
    """Right-handed rotation matrix."""
    return Rotation.from_rotvec(axis / np.linalg.norm(axis) * degrees, degrees=True).as_matrix()


TILT = rotation_about(np.array([1.0, 1.5, 1.8]), 17.0)
PERMUTED = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
OBLIQUE = np.linalg.qr(np.random.default_rng(5).standard_normal((3, 3)))[0]


def sample(volume: Volume, lps: np.ndarray) -> float:
    """Trilinear interpolation of the image at an LPS point."""
    ijk = volume.physical_to_index(lps)
    base = np.floor(ijk).astype(int)
    frac = ijk - base
    value = 0.0
    for corner in itertools.product((0, 1), repeat=3):
        i, j, k = base + corner
        weight = np.prod(np.where(corner, frac, 1.0 - frac))
        value += weight * float(volume.array[k, j, i])
    return value


def ball(volume: Volume, lps: np.ndarray, radius: float) -> np.ndarray:
    """Voxel values whose centres lie within `radius` mm of an LPS point."""
    centre = volume.physical_to_index(lps)
    half = radius / np.asarray(volume.spacing) + 1
    low = np.maximum(np.floor(centre - half).astype(int), 0)
    high = np.minimum(np.ceil(centre + half).astype(int) + 1, volume.shape_ijk)
    axes = np.meshgrid(*(np.arange(lo, hi) for lo, hi in zip(low, high)), indexing="ij")
    ijk = np.stack(axes, -1).reshape(-1, 3)
    inside = np.linalg.norm(volume.index_to_physical(ijk) - lps, axis=1) <= radius
    i, j, k = ijk[inside].T
    return volume.array[k, j, i].astype(float)


def meets_bone(volume: Volume, start: np.ndarray, direction: np.ndarray, reach: float) -> bool:
    return any(sample(volume, start + t * direction) > BONE for t in np.arange(0.5, reach, 0.5))


def pairwise_distances(positions: np.ndarray) -> np.ndarray:
    return np.linalg.norm(positions[:, None] - positions[None], axis=2)


def position(landmarks: Landmarks, name: str) -> np.ndarray:
    return landmarks.positions[landmarks.index(name)]


def check_truth_against_image(volume: Volume, landmarks: Landmarks, rotation: np.ndarray) -> None:
    """Each landmark sits on the structure that defines it; `rotation` is the head's pose."""
    assert landmarks.present.all()
    for name, (below, offset, directions, reach) in HOLES.items():
        start = position(landmarks, name) + rotation @ offset
        assert sample(volume, position(landmarks, name)) < below, name
        assert sample(volume, start) < below, name
        for direction in directions:
            assert meets_bone(volume, start, rotation @ direction, reach), (name, direction)
    for name in BONY_POINTS:
        assert ball(volume, position(landmarks, name), 2.0).max() > BONE, name
        assert ball(volume, position(landmarks, name), 5.0).min() < SOFT, name
    # Bregma: suture gap under the point, bone in front of the coronal suture beside the sagittal one.
    inside_vault = position(landmarks, "bregma") - 2.5 * (rotation @ S)
    assert sample(volume, inside_vault) < BONE
    assert sample(volume, inside_vault - 6.0 * (rotation @ P)) > BONE
    assert sample(volume, inside_vault + 4.5 * (rotation @ (L - P))) > BONE


def test_landmark_set_is_fixed_and_described():
    assert len(PHANTOM_LANDMARK_NAMES) == 12
    assert all(PHANTOM_LANDMARKS[name].endswith(".") for name in PHANTOM_LANDMARK_NAMES)
    volume, landmarks = make_phantom(0, size=24, spacing=6.0)
    assert landmarks.names == list(PHANTOM_LANDMARK_NAMES)
    assert landmarks.descriptions == list(PHANTOM_LANDMARKS.values())
    assert landmarks.present.all() and np.isnan(landmarks.confidence).all()


def test_same_seed_gives_identical_phantom():
    first, first_landmarks = make_phantom(7, size=48, spacing=3.0)
    second, second_landmarks = make_phantom(7, size=48, spacing=3.0)
    assert np.array_equal(first.array, second.array)
    assert first.origin == second.origin and np.array_equal(first.direction, second.direction)
    assert np.array_equal(first_landmarks.positions, second_landmarks.positions)


def test_different_seeds_differ_in_image_pose_and_shape():
    first, first_landmarks = make_phantom(1, size=48, spacing=3.0)
    second, second_landmarks = make_phantom(2, size=48, spacing=3.0)
    assert not np.array_equal(first.array, second.array)
    assert first.origin != second.origin
    distances = [pairwise_distances(lm.positions) for lm in (first_landmarks, second_landmarks)]
    assert np.abs(distances[0] - distances[1]).max() > 3.0  # the shapes differ, not only the pose


def test_zero_shape_variation_gives_one_shape_in_different_poses():
    shapes = [make_phantom(seed, size=24, spacing=6.0, shape_variation=0.0)[1].positions for seed in (3, 4)]
    distances = [pairwise_distances(positions) for positions in shapes]
    np.testing.assert_allclose(distances[0], distances[1], atol=1e-9)
    assert np.abs(shapes[0] - shapes[1]).max() > 1.0


@pytest.mark.parametrize(("seed", "rotation"), [(0, None), (11, TILT)], ids=["upright", "tilted"])
@pytest.mark.parametrize(
    ("direction", "flip"),
    [(None, False), (None, True), (PERMUTED, False), (PERMUTED, True), (OBLIQUE, False), (OBLIQUE, True)],
    ids=["identity", "identity-flipped", "permuted", "permuted-flipped", "oblique", "oblique-flipped"],
)
def test_truth_matches_image_in_any_volume_orientation(seed, rotation, direction, flip):
    volume, landmarks = make_phantom(seed, rotation=rotation, direction=direction, flip=flip)
    assert np.linalg.det(volume.direction) == pytest.approx(-1.0 if flip else 1.0)
    check_truth_against_image(volume, landmarks, np.eye(3) if rotation is None else TILT)


@pytest.mark.parametrize("seed", range(4))
def test_truth_matches_image_in_random_pose(seed):
    volume, landmarks = make_phantom(seed)
    for name, (below, *_) in HOLES.items():
        assert sample(volume, position(landmarks, name)) < below, name
    for name in BONY_POINTS:
        assert ball(volume, position(landmarks, name), 2.0).max() > BONE, name
        assert ball(volume, position(landmarks, name), 5.0).min() < SOFT, name
    assert sample(volume, position(landmarks, "bregma")) < BONE
    assert ball(volume, position(landmarks, "bregma"), 5.0).max() > BONE


def test_volume_orientation_changes_the_array_but_not_the_anatomy():
    volumes = [
        make_phantom(9, size=48, spacing=3.0, direction=direction, flip=flip)
        for direction, flip in [(None, False), (PERMUTED, True), (OBLIQUE, False)]
    ]
    reference = volumes[0][1].positions
    for volume, landmarks in volumes[1:]:
        np.testing.assert_allclose(landmarks.positions, reference, atol=1e-9)
        assert not np.array_equal(volume.array, volumes[0][0].array)


def test_random_directions_cover_permutations_obliques_and_flips():
    directions = [make_phantom(seed, size=16, spacing=10.0)[0].direction for seed in range(16)]
    determinants = np.round([np.linalg.det(d) for d in directions])
    assert set(determinants) == {-1.0, 1.0}
    permutation = [np.allclose(np.abs(d), np.round(np.abs(d))) for d in directions]
    assert any(permutation) and not all(permutation)
    assert len({tuple(np.round(d, 6).ravel()) for d in directions}) > 8


ABSENCE_OPTIONS = dict(seed=4, rotation=None, direction=None, noise_hu=0.0)


@pytest.fixture(scope="module")
def complete_phantom() -> tuple[Volume, Landmarks]:
    return make_phantom(**ABSENCE_OPTIONS)


@pytest.mark.parametrize("name", PHANTOM_LANDMARK_NAMES)
def test_absent_landmark_removes_its_structure(name, complete_phantom):
    full, full_landmarks = complete_phantom
    volume, landmarks = make_phantom(absent=[name], **ABSENCE_OPTIONS)
    row = landmarks.index(name)
    assert not landmarks.present[row] and np.isnan(landmarks.positions[row]).all()
    others = np.arange(len(landmarks)) != row
    assert landmarks.present[others].all()
    np.testing.assert_array_equal(landmarks.positions[others], full_landmarks.positions[others])
    probe = full_landmarks.positions[row] - (2.5 * S if name == "bregma" else 0.0)  # inside the vault
    assert np.abs(ball(volume, probe, 3.0) - ball(full, probe, 3.0)).mean() > 150.0


def test_missing_jaw_leaves_no_bone_at_chin_and_jaw_angles():
    jaw = ["menton", "gonion_left", "gonion_right"]
    full, full_landmarks = make_phantom(6, rotation=None)
    volume, landmarks = make_phantom(6, rotation=None, absent=jaw)
    assert [landmarks.present[landmarks.index(name)] for name in jaw] == [False] * 3
    for name in jaw:
        assert ball(volume, position(full_landmarks, name), 3.0).max() < SOFT


def test_intensities_are_in_hounsfield_range():
    volume, _ = make_phantom(2)
    values = volume.array
    assert values.dtype == np.int16
    assert HU_RANGE[0] <= values.min() and values.max() <= HU_RANGE[1]
    assert np.mean(values < -900) > 0.2  # air around the head
    assert np.mean(np.abs(values - 40) < 60) > 0.05  # brain and soft tissue
    assert np.mean(values > 1000) > 0.01  # cortical bone
    assert values.max() < 2200


def test_small_anisotropic_field_of_view_still_holds_the_whole_head():
    volume, landmarks = make_phantom(8, size=(64, 56, 40), spacing=(1.0, 1.2, 2.5))
    assert volume.spacing == (1.0, 1.2, 2.5) and volume.shape_ijk == (64, 56, 40)
    ijk = volume.physical_to_index(landmarks.positions)
    assert (ijk > 0).all() and (ijk < np.array(volume.shape_ijk) - 1).all()


def test_generation_time_of_a_96_cube():
    make_phantom(0, size=24, spacing=6.0)
    start = time.perf_counter()
    make_phantom(1)
    elapsed = time.perf_counter() - start
    print(f"make_phantom 96^3: {elapsed:.3f} s")
    assert elapsed < 5.0


@pytest.mark.parametrize(
    "options",
    [
        dict(absent=["chin"]),
        dict(direction=np.ones((3, 3))),
        dict(rotation=np.diag([-1.0, 1.0, 1.0])),
        dict(rotation="upright"),
        dict(size=(96, 96, 2)),
        dict(spacing=(1.0, 0.0, 1.0)),
    ],
    ids=[
        "unknown-landmark",
        "non-orthonormal-direction",
        "reflection-as-rotation",
        "unknown-rotation",
        "tiny-size",
        "zero-spacing",
    ],
)
def test_invalid_options_are_refused(options):
    with pytest.raises(ValueError):
        make_phantom(0, **options)
