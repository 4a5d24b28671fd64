"""Dataset layouts, landmark-name checks, splits and the case cache."""

import numpy as np
import pytest

from H3DELandmarksLib.data.datasets import (
    GenericDataset,
    MMLDDataset,
    PhantomDataset,
    mark_absent,
    match_landmarks,
    split_cases,
)
from H3DELandmarksLib.data.landmark_files import write_landmarks, write_mmld_case
from H3DELandmarksLib.data.landmarks import Landmarks
from H3DELandmarksLib.data.volume import Volume
from H3DELandmarksLib.data.volume_io import write_volume
from H3DELandmarksLib.errors import LandmarkFileError, VolumeError
from H3DELandmarksLib.training.cache import CaseCache

NAMES = ["tip", "base", "left"]


def small_case(seed, names=NAMES):
    rng = np.random.default_rng(seed)
    volume = Volume(rng.integers(0, 255, (6, 7, 8)).astype(np.int16), (1.0, 1.5, 2.0), (1.0, 2.0, 3.0), np.eye(3))
    landmarks = Landmarks(list(names), rng.uniform(2, 8, (len(names), 3)))
    return volume, landmarks


def write_generic(root, cases, landmark_folder=True, suffix=".mrk.json"):
    for number, (case, names) in enumerate(cases.items()):
        volume, landmarks = small_case(number, names)
        write_volume(volume, root / "volumes" / f"{case}.nii.gz")
        folder = root / "landmarks" if landmark_folder else root / "volumes"
        write_landmarks(folder / f"{case}{suffix}", landmarks)


def test_generic_layout_reads_volumes_and_landmarks_in_either_folder(tmp_path):
    write_generic(tmp_path, {"a": NAMES, "b": NAMES})
    write_generic(tmp_path, {"c": NAMES}, landmark_folder=False, suffix=".fcsv")
    dataset = GenericDataset(tmp_path)
    assert dataset.cases() == ["a", "b", "c"]
    volume, landmarks = dataset.load("c")
    expected_volume, expected_landmarks = small_case(0)
    np.testing.assert_array_equal(volume.array, expected_volume.array)
    np.testing.assert_allclose(landmarks.positions, expected_landmarks.positions, atol=5e-5)  # files carry 1e-4 mm
    assert dataset.fingerprint("a") != dataset.fingerprint("b")
    assert dataset.describe() == {"layout": "generic", "root": tmp_path.name}


def test_cases_csv_lists_cases_notes_and_splits(tmp_path):
    write_generic(tmp_path, {name: NAMES for name in "abcdef"})
    (tmp_path / "cases.csv").write_text(
        "case,landmarks,split\na,exact,\nb,exact,test\nc,refined,\nd,exact,\ne,refined,validation\nf,exact,\n"
    )
    dataset = GenericDataset(tmp_path)
    assert dataset.notes("c") == {"landmarks": "refined", "split": ""}
    train, validation = split_cases(dataset, seed=0, fraction=0.5, only_where={"landmarks": "exact"})
    assert "b" not in train + validation
    assert "e" in validation
    drawn = [case for case in validation if case != "e"]
    assert len(drawn) == 2 and all(dataset.notes(case)["landmarks"] == "exact" for case in drawn)
    assert sorted(train + validation) == ["a", "c", "d", "e", "f"]
    assert split_cases(dataset, seed=0, fraction=0.5, only_where={"landmarks": "exact"}) == (train, validation)
    assert split_cases(dataset, seed=0, cases=["c"])[1] == ["c", "e"]


def test_cases_csv_naming_a_missing_case_is_an_error(tmp_path):
    write_generic(tmp_path, {"a": NAMES})
    (tmp_path / "cases.csv").write_text("case\na\nghost\n")
    with pytest.raises(VolumeError, match="ghost"):
        GenericDataset(tmp_path)


def test_landmark_name_mismatch_names_the_case_and_the_point(tmp_path):
    write_generic(tmp_path, {"a": NAMES, "b": ["tip", "base", "right"]})
    dataset = GenericDataset(tmp_path)
    reference = dataset.load("a")[1].names
    with pytest.raises(LandmarkFileError, match=r"Case 'b' has no landmark 'left'"):
        match_landmarks(dataset.load("b")[1], reference, "b")
    with pytest.raises(LandmarkFileError, match=r"Case 'b' has a landmark 'right'"):
        match_landmarks(dataset.load("b")[1], ["tip", "base"], "b")


def test_matching_reorders_and_absences_are_applied():
    _, landmarks = small_case(0)
    reordered = match_landmarks(landmarks, ["left", "tip", "base"], "a")
    np.testing.assert_array_equal(reordered.positions[0], landmarks.positions[2])
    marked = mark_absent(reordered, ["tip"], "a")
    assert marked.present.tolist() == [True, False, True]
    assert np.isfinite(marked.positions[1]).all()
    with pytest.raises(LandmarkFileError, match="'a' has no landmark 'nose'"):
        mark_absent(reordered, ["nose"], "a")


def test_mmld_layout(tmp_path):
    for number in range(2):
        volume, _ = small_case(number)
        landmarks = Landmarks([f"L{i}" for i in range(14)], np.full((14, 3), 4.0) + number)
        write_mmld_case(tmp_path, f"case{number}", volume, landmarks)
    dataset = MMLDDataset(tmp_path)
    assert dataset.cases() == ["case0", "case1"]
    volume, landmarks = dataset.load("case1")
    assert len(landmarks) == 14 and landmarks.names[0] == "L0"
    np.testing.assert_allclose(landmarks.positions[0], [5.0, 5.0, 5.0])


def test_phantom_dataset_is_deterministic_and_draws_absences():
    dataset = PhantomDataset(seeds=(3, 4), size=(24, 24, 24), spacing_mm=(4.0, 5.0), absent_probability=0.5)
    assert dataset.cases() == ["phantom-3", "phantom-4"]
    first, again = dataset.load("phantom-3"), dataset.load("phantom-3")
    np.testing.assert_array_equal(first[0].array, again[0].array)
    assert 4.0 <= first[0].spacing[0] <= 5.0
    assert not first[1].present.all()
    assert dataset.fingerprint("phantom-3") != dataset.fingerprint("phantom-4")


class CountingSource:
    """A one-case source that counts loads and can change its data."""

    def __init__(self):
        self.loads, self.version = 0, 0

    def cases(self):
        return ["only case/1"]

    def notes(self, case):
        return {}

    def load(self, case):
        self.loads += 1
        return small_case(self.version)

    def fingerprint(self, case):
        return f"v{self.version}"

    def describe(self):
        return {"layout": "counting"}


def test_cache_reads_each_case_once_and_rereads_changed_cases(tmp_path):
    source = CountingSource()
    volume, landmarks = CaseCache(source, tmp_path).get("only case/1")
    again = CaseCache(source, tmp_path).get("only case/1")
    assert source.loads == 1
    expected = small_case(0)
    np.testing.assert_array_equal(again[0].array, expected[0].array)
    np.testing.assert_array_equal(again[0].direction, expected[0].direction)
    np.testing.assert_allclose(again[1].positions, expected[1].positions)
    assert again[1].names == NAMES
    source.version = 1
    changed = CaseCache(source, tmp_path).get("only case/1")
    assert source.loads == 2
    np.testing.assert_array_equal(changed[0].array, small_case(1)[0].array)


def test_mouse_atlas_split_validates_on_exact_cases_only(shared_dir):
    dataset = GenericDataset(shared_dir / "data" / "mouse_ct_atlas")
    assert len(dataset.cases()) == 43
    train, validation = split_cases(dataset, seed=0, fraction=0.25, only_where={"landmarks": "exact"})
    assert len(validation) == 6 and len(train) == 37
    assert all(dataset.notes(case)["landmarks"] == "exact" for case in validation)
