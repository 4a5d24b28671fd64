"""bench/cross_validate.py on a tiny dataset: folds never see their cases, settings come from the
inner validation cases (stage by stage for a refine stage added by recipe overrides), every
reported case gets a prediction and the run resumes."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from H3DELandmarksLib.data.landmark_files import read_landmarks, write_landmarks
from H3DELandmarksLib.data.phantom import make_phantom
from H3DELandmarksLib.data.volume_io import write_volume
from builders_training import TINY_ARCHITECTURE

REPO = Path(__file__).resolve().parents[1]
TINY_RECIPE = {
    "model": {"id": "tiny-cv", "version": "0.0.1", "title": "Tiny", "modality": "CT", "license": "Apache-2.0"},
    "landmarks": "from data",
    "architecture": TINY_ARCHITECTURE,
    "preprocessing": {"orientation": "canonical",
                      "intensity": {"clip_min": -1000, "clip_max": 2000, "scale_min": 0, "scale_max": 1}},
    "stages": [
        {"name": "coarse", "spacing_mm": 4.5, "patch_size": [32, 32, 40], "epochs": 1, "samples_per_epoch": 2,
         "batch_size": 1},
        {"name": "fine", "spacing_mm": 3.0, "patch_size": [32, 32, 40], "epochs": 1, "samples_per_epoch": 2,
         "batch_size": 1},
    ],
    "data": {"layout": "generic", "validation": {"fraction": 0.5, "only_where": {"landmarks": "exact"}}},
}


def load_bench():
    spec = importlib.util.spec_from_file_location("cross_validate", REPO / "bench" / "cross_validate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_dataset(data: Path) -> Path:
    """Six phantom cases: p0-p3 exact (reported), p4 and p5 refined (always train)."""
    kinds = {f"p{seed}": "exact" if seed < 4 else "refined" for seed in range(6)}
    for seed, case in enumerate(kinds):
        volume, landmarks = make_phantom(seed, size=(32, 32, 32), spacing=4.0)
        write_volume(volume, data / "volumes" / f"{case}.nrrd")
        write_landmarks(data / "landmarks" / f"{case}.mrk.json", landmarks)
    (data / "cases.csv").write_text("case,landmarks\n" + "".join(f"{c},{k}\n" for c, k in kinds.items()))
    return data


@pytest.mark.slow
def test_every_reported_case_is_predicted_by_a_model_that_never_saw_it(tmp_path, capsys):
    data = write_dataset(tmp_path / "data")
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(TINY_RECIPE))
    bench = load_bench()
    arguments = ["--data", str(data), "--recipe", str(recipe), "--out", str(tmp_path / "cv"), "--folds", "2",
                 "--threads", "1"]
    assert bench.main([*arguments, "--fold", "2"]) == 0
    assert "Folds 1 of 2 are not done yet" in capsys.readouterr().out
    assert not (tmp_path / "cv" / "fold-1" / "run").exists() and not (tmp_path / "cv" / "report").exists()
    assert bench.main(arguments) == 0
    folds = json.loads((tmp_path / "cv" / "folds.json").read_text())
    assert sorted(folds[0] + folds[1]) == ["p0", "p1", "p2", "p3"]
    for number, test_cases in enumerate(folds, start=1):
        fold = tmp_path / "cv" / f"fold-{number}"
        provenance = json.loads((fold / "run" / "package" / "manifest.json").read_text())["training"]["data"]
        seen = set(provenance["train_cases"]) | set(provenance["validation_cases"])
        assert not seen & set(test_cases) and {"p4", "p5"} <= seen
        selection = json.loads((fold / "selection.json").read_text())
        assert selection["cases"] == provenance["validation_cases"] and len(selection["settings"]) == 4
        assert selection["settings"][-1]["tta_rotations"] == 4
        manifest = json.loads((fold / "selected" / "manifest.json").read_text())
        assert manifest["uncertainty"]["calibration"]["cases"] == selection["cases"]
    for case in ["p0", "p1", "p2", "p3"]:
        assert len(read_landmarks(tmp_path / "cv" / "predictions" / f"{case}.mrk.json")) == 12
    summary = (tmp_path / "cv" / "report" / "summary.md").read_text(encoding="utf-8")
    assert "4 cases" in summary and "Scored by expected error" in summary
    capsys.readouterr()
    for number in (1, 2):
        shutil.rmtree(tmp_path / "cv" / f"fold-{number}" / "run")
    assert bench.main(arguments) == 0
    assert "h3de train" not in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--fold 3 is not a fold of this run"):
        bench.main([*arguments, "--fold", "3"])


@pytest.mark.slow
def test_a_refine_stage_from_recipe_overrides_gets_its_settings_chosen_after_the_fine_stage(tmp_path):
    data = write_dataset(tmp_path / "data")
    recipe, overrides = tmp_path / "recipe.json", tmp_path / "refine.json"
    recipe.write_text(json.dumps(TINY_RECIPE))
    refine = {**TINY_RECIPE["stages"][1], "name": "refine", "spacing_mm": 2.0, "centre_jitter": 0.1}
    overrides.write_text(json.dumps({"stages": [{"name": "coarse"}, {"name": "fine"}, refine]}))
    bench = load_bench()
    fold = tmp_path / "cv" / "fold-1"
    args = bench._parser().parse_args(["--data", str(data), "--recipe", str(recipe), "--recipe-overrides",
                                       str(overrides), "--out", str(tmp_path / "cv"), "--threads", "1"])
    assert bench._train(args, data, fold / "run", None)
    selected = bench._select(fold, data, 1)
    settings = json.loads((fold / "selection.json").read_text())["settings"]
    assert [(row["stage"], row["tta_rotations"]) for row in settings] == [("fine", 0)] * 3 + [("refine", 0)] * 3 + [
        ("refine", 4)]
    manifest = json.loads((selected / "manifest.json").read_text())
    assert [stage["name"] for stage in manifest["preprocessing"]["stages"]] == ["coarse", "fine", "refine"]
    best_fine = min(row["inner_validation_mre_mm"] for row in settings[:3])
    assert manifest["preprocessing"]["stages"][1]["passes"] in {
        row["passes"] for row in settings[:3] if row["inner_validation_mre_mm"] == best_fine}
