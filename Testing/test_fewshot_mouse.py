"""bench/fewshot_mouse.py without training on the atlas: the 10-shot references and baseline runs,
the fine-tuning data (annotated cases only), the fine-tuning table, ratios and step times on a
synthetic atlas, its refusals, resuming and timing the training, and (slow) the finetune step end to
end on phantoms."""

import csv
import importlib
import json
from pathlib import Path

import numpy as np
import pytest

from H3DELandmarksLib.data.datasets import GenericDataset
from H3DELandmarksLib.data.landmark_files import read_landmarks, write_landmarks
from H3DELandmarksLib.data.landmarks import Landmarks
from H3DELandmarksLib.data.phantom import make_phantom
from H3DELandmarksLib.data.volume_io import write_volume
from H3DELandmarksLib.training.fewshot import FewShotSettings, needs_pseudo_labels
from builders_training import QUICK

REPO = Path(__file__).resolve().parents[1]
EVALUATED = ["E1_", "E2_"]
BASELINE_RUNS = ("malpaca-7", "malpaca-8", "malpaca-9", "malpaca-10")
NAMES = ["1", "2", "3"]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    return importlib.import_module("fewshot_mouse")


def write_atlas(root: Path, references: list[str], volume=None) -> Path:
    """A mouse_ct_atlas-like folder: the references, two exact cases to evaluate and one refined
    case nobody annotates; each landmark file holds NAMES (or the phantom's) at made-up places.
    Volumes are `volume(seed)` files, or placeholders; MALPACA errors are 0.2 + 0.01 * run index."""
    cases = {**{case: "refined" for case in references}, **{case: "exact" for case in EVALUATED}, "R1_": "refined"}
    (root / "volumes").mkdir(parents=True)
    (root / "landmarks").mkdir()
    (root / "baselines").mkdir()
    for seed, case in enumerate(cases):
        if volume is None:
            (root / "volumes" / f"{case}.nii.gz").write_bytes(b"not read")
            landmarks = Landmarks(NAMES, np.random.default_rng(seed).uniform(-10, 10, (3, 3)))
        else:
            image, landmarks = volume(seed)
            write_volume(image, root / "volumes" / f"{case}.nii.gz")
        write_landmarks(root / "landmarks" / f"{case}.mrk.json", landmarks)
    (root / "cases.csv").write_text("case,landmarks\n" + "".join(f"{c},{k}\n" for c, k in cases.items()))
    names = read_landmarks(root / "landmarks" / f"{EVALUATED[0]}.mrk.json").names
    with open(root / "baselines" / "malpaca_errors.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["run", "references", "case", "landmark", "error_mm"])
        for index, run in enumerate(BASELINE_RUNS):
            for case in EVALUATED:
                writer.writerows([run, "five of them", case, name, 0.2 + 0.01 * index] for name in names)
    return root


def shifted(atlas: Path, case: str, shift_mm: float) -> Landmarks:
    """The atlas truth of `case`, every point moved `shift_mm` along x."""
    truth = read_landmarks(atlas / "landmarks" / f"{case}.mrk.json")
    return Landmarks(truth.names, truth.positions + [shift_mm, 0.0, 0.0])


def write_run(folder: Path, atlas: Path, references: list[str], detections_mm: float | None = None) -> None:
    """A finished run folder as `all` leaves it: data/landmarks, and detections `detections_mm` off."""
    (folder / "data" / "landmarks").mkdir(parents=True)
    for case in references:
        (folder / "data" / "landmarks" / f"{case}.mrk.json").symlink_to(atlas / "landmarks" / f"{case}.mrk.json")
    if detections_mm is not None:
        for case in EVALUATED:
            write_landmarks(folder / "detected" / f"{case}.mrk.json", shifted(atlas, case, detections_mm))


def write_training(folder: Path, seconds: float, stages: dict[str, float]) -> None:
    """What a finished training records: its package manifest's seconds and the per-epoch log."""
    (folder / "package").mkdir(parents=True)
    (folder / "package" / "manifest.json").write_text(json.dumps(
        {"training": {"provenance": {"seconds": seconds}, "metrics": {stage: {} for stage in stages}}}))
    rows = "".join(f"{epoch},{stage},1,1,1,0.001,{value / 2}\n" for stage, value in stages.items() for epoch in (0, 1))
    (folder / "training_log.csv").write_text("epoch,stage,train_loss,val_loss,val_mre_mm,lr,seconds\n" + rows)


def test_the_ten_shot_references_are_atlas_cases_and_no_baseline_run_used_an_evaluated_case(bench, shared_dir):
    atlas = shared_dir / "data" / "mouse_ct_atlas"
    with open(atlas / "cases.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    kinds = {row["case"]: row["landmarks"] for row in rows}
    ten = bench.REFERENCES[10]
    assert len(set(ten)) == 10 and set(ten) <= set(kinds) and ten[:5] == bench.REFERENCES[5]
    substitute = next(row["case"] for row in rows if row["landmarks"] == "refined" and not row["note"]
                      and row["case"] not in ten[:9])
    assert ten[9] == substitute
    evaluated = bench.evaluated_cases(atlas, ten)
    assert evaluated and all(kinds[case] == "exact" and case not in ten for case in evaluated)
    spelled = {case.replace(".", "_"): case for case in kinds}
    references, cases = {}, {}
    with open(atlas / "baselines" / "malpaca_errors.csv", newline="") as stream:
        for row in csv.DictReader(stream):
            references[row["run"]] = row["references"].split()
            cases.setdefault(row["run"], set()).add(row["case"])
    for run in bench.BASELINE_RUNS[10][2]:
        in_atlas = {spelled[name.replace(".", "_")] for name in references[run] if name.replace(".", "_") in spelled}
        assert in_atlas <= set(ten) and set(evaluated) <= cases[run]


def test_finetune_data_holds_the_ten_annotated_cases_and_no_unannotated_scan(bench, tmp_path):
    references = bench.REFERENCES[10]
    atlas = write_atlas(tmp_path / "atlas", references)
    data = bench.prepare(atlas, tmp_path / "run" / "data", references, every_volume=False)
    for sub, suffix in (("volumes", ".nii.gz"), ("landmarks", ".mrk.json")):
        links = sorted((data / sub).iterdir())
        assert [path.name for path in links] == sorted(f"{case}{suffix}" for case in references)
        assert all(path.is_symlink() and path.resolve() == (atlas / sub / path.name).resolve() for path in links)
    assert GenericDataset(data).cases() == sorted(references) and not GenericDataset(data).unannotated_cases()
    assert not needs_pseudo_labels(data, FewShotSettings())
    few_shot = bench.prepare(atlas, tmp_path / "few" / "data", references)
    assert GenericDataset(few_shot).unannotated_cases() == sorted([*EVALUATED, "R1_"])


def test_the_few_shot_table_has_the_model_and_the_runs_final_labels(bench, tmp_path):
    atlas = write_atlas(tmp_path / "atlas", bench.FIVE)
    run = tmp_path / "run"
    write_run(run, atlas, bench.FIVE, detections_mm=0.4)
    assert list(bench.few_shot_columns(run, atlas, EVALUATED, 5)) == ["5-shot"]
    for case in EVALUATED:
        write_landmarks(run / "train" / "labels" / f"{case}.mrk.json", shifted(atlas, case, 0.1))
    columns = bench.few_shot_columns(run, atlas, EVALUATED, 5)
    assert all(columns["5-shot"][case] == pytest.approx(0.4) for case in EVALUATED)
    assert all(columns["5-shot labels"][case] == pytest.approx(0.1) for case in EVALUATED)


def test_training_resumes_and_adds_up_its_wall_time_and_is_skipped_once_finished(bench, tmp_path, monkeypatch):
    folder, commands = tmp_path / "train", []

    def run(command):
        commands.append(command)
        (folder / "package").mkdir(parents=True, exist_ok=True)
        (folder / "checkpoint.pt").write_bytes(b"")
        stopped = {"stopped_early": True} if len(commands) == 1 else {}
        training = {"metrics": {"fine": stopped}}
        if len(commands) == 2:
            training["few_shot"] = {"rounds": 1, "stopped_in_round": 2}
        (folder / "package" / "manifest.json").write_text(json.dumps({"training": training}))

    monkeypatch.setattr(bench, "_run", run)
    timing = {"train_s": 50.0}
    assert not bench.train(["h3de", "train"], folder, timing)
    assert commands == [["h3de", "train"]] and timing["train_s"] < 50.0
    timing["train_s"] = 100.0
    assert not bench.train(["h3de", "train"], folder, timing)
    assert bench.train(["h3de", "train"], folder, timing)
    assert commands[1] == commands[2] == ["h3de", "train", "--resume"] and timing["train_s"] >= 100.0
    assert bench.train(["h3de", "train"], folder, timing) and len(commands) == 3


def test_finetune_prints_every_model_beside_malpaca_with_the_ratios_and_times(bench, tmp_path, monkeypatch,
                                                                              capsys):
    atlas = write_atlas(tmp_path / "atlas", bench.REFERENCES[10])
    origin, scratch, run = tmp_path / "fewshot-5", tmp_path / "fewshot-10", tmp_path / "finetune-10"
    write_run(origin, atlas, bench.REFERENCES[5])
    write_training(origin / "train", 1000.0, {"coarse": 400.0, "fine": 500.0})
    write_run(scratch, atlas, bench.REFERENCES[10], detections_mm=0.25)
    for number, seconds in ((1, 1000.0), (2, 800.0)):
        stages = {"coarse": seconds / 2, "fine": seconds / 4}
        write_training(scratch / "train" / "rounds" / str(number), seconds, stages)
    (scratch / "timing.json").write_text(json.dumps({"train_s": 3000.0, "detect_s": 50.0, "evaluate_s": 5.0}))
    detected = []

    def train(command, folder, timing):
        assert command[command.index("--init-from") + 1] == str(origin / "train" / "package")
        assert command[command.index("--data") + 1] == str(run / "data") and "--resume" not in command
        write_training(folder, 500.0, {"coarse": 200.0, "fine": 250.0})
        timing["train_s"] = 600.0
        return True

    def detect(package, atlas_folder, cases, out, threads, timing, key):
        detected.append((package, out, cases))
        for case in cases:
            write_landmarks(out / f"{case}.mrk.json", shifted(atlas_folder, case, 0.4 if package.parent.parent == origin
                                                              else 0.2))
        timing[key] = 10.0

    monkeypatch.setattr(bench, "train", train)
    monkeypatch.setattr(bench, "detect", detect)
    monkeypatch.setattr(bench, "evaluate", lambda *args: args[-1].update(evaluate_s=2.0))
    assert bench.main(["finetune", "--from", str(origin), "--run", str(run), "--scratch", str(scratch),
                       "--atlas", str(atlas), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert [(package, out_folder.name) for package, out_folder, _ in detected] == [
        (run / "train" / "package", "detected"), (origin / "train" / "package", "detected-from")]
    assert all(cases == EVALUATED for _, _, cases in detected)
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()}
    assert lines["case"] == ["5-shot", "fine-tuned", "10-shot", *BASELINE_RUNS]
    assert [float(value) for value in lines["mean"][:7]] == pytest.approx([0.4, 0.2, 0.25, 0.2, 0.21, 0.22, 0.23])
    assert "error, fine-tuned / 5-shot: 0.500 (target < 1)" in out
    assert "error, fine-tuned / 10-shot: 0.800 (target <= 1)" in out
    assert "error, 10-shot / MALPACA (mean of its runs): 1.163" in out
    assert "training time, fine-tuned / 10-shot (h3de train wall times): 0.200 (target <= 1/3)" in out
    times = [" ".join(line.split()) for line in out.splitlines()]
    assert "round 2 network training (coarse 400 s, fine 200 s) 800.0 s" in times
    assert any(line.startswith("rest (") and line.endswith(" 1200.0 s") for line in times)
    assert "network training (coarse 200 s, fine 250 s) 500.0 s" in times
    assert "end to end 3055.0 s" in times and "end to end 612.0 s" in times
    assert json.loads((run / "timing.json").read_text()) == {"train_s": 600.0, "detect_s": 10.0, "evaluate_s": 2.0,
                                                             "detect_from_s": 10.0}
    assert sorted(path.name for path in (run / "data" / "volumes").iterdir()) == sorted(
        f"{case}.nii.gz" for case in bench.REFERENCES[10])


def test_finetune_refuses_a_scratch_run_without_detections_and_a_model_that_saw_an_evaluated_case(
        bench, tmp_path, capsys):
    atlas = write_atlas(tmp_path / "atlas", bench.REFERENCES[10])
    origin, scratch = tmp_path / "fewshot-5", tmp_path / "fewshot-10"
    write_run(origin, atlas, bench.REFERENCES[5])
    write_training(origin / "train", 10.0, {"coarse": 5.0})
    write_run(scratch, atlas, bench.REFERENCES[10])
    arguments = ["finetune", "--from", str(origin), "--run", str(tmp_path / "run"), "--atlas", str(atlas)]
    assert bench.main(arguments + ["--scratch", str(scratch)]) == 1
    assert "lacks the detections of E1_ (2 cases in all)" in capsys.readouterr().err
    (origin / "data" / "landmarks" / "E2_.mrk.json").symlink_to(atlas / "landmarks" / "E2_.mrk.json")
    assert bench.main(arguments) == 1
    assert "trained on the landmarks of E2_, an evaluated case" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_finetune_runs_end_to_end_on_phantoms(bench, tmp_path, capsys):
    references = bench.REFERENCES[10]
    atlas = write_atlas(tmp_path / "atlas", references, lambda seed: make_phantom(seed, size=(32, 32, 32), spacing=4.0))
    origin = tmp_path / "fewshot-5"
    bench.prepare(atlas, origin / "data", bench.REFERENCES[5], every_volume=False)
    recipe = tmp_path / "quick.json"
    recipe.write_text(json.dumps(QUICK))
    bench._run(["h3de", "train", "--data", str(origin / "data"), "--output", str(origin / "train"), "--config",
                str(recipe), "--threads", "1", "--no-progress"])
    run = tmp_path / "finetune-10"
    arguments = ["finetune", "--from", str(origin), "--run", str(run), "--atlas", str(atlas), "--threads", "1"]
    assert bench.main(arguments) == 0
    out = capsys.readouterr().out
    manifest = json.loads((run / "train" / "package" / "manifest.json").read_text())
    assert sorted(manifest["training"]["data"]["train_cases"] + manifest["training"]["data"]["validation_cases"]) == \
        sorted(references)
    assert "Fine-tuned from" in manifest["description"]
    redetected = sorted(path.name for path in (run / "detected-from").glob("*.mrk.json"))
    assert redetected == [f"{case}.mrk.json" for case in EVALUATED]
    assert (run / "report" / "comparison.md").is_file()
    assert "error, fine-tuned / 5-shot" in out and "network training (coarse" in out
