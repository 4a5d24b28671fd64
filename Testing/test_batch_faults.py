"""Batches that survive any one bad case (issue 15, section 2): every failure is one sentence for its
case, output problems are caught before any work, a case's outputs appear together or not at all
(full disk, SIGKILL), `--skip-existing` resumes, implausible geometry is refused before allocating.

File-system faults use tmpfs mounts (read-only, or a few kB large) and run only as root where
mounting works; they are skipped elsewhere.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from builders_blobs import COARSE, DIRECTIONS, FINE, blob_volume, heatmap_predictor, truth_positions
from builders_models import tiny_package
from H3DELandmarksLib.cli.detect import summary_table
from H3DELandmarksLib.cli.main import main
from H3DELandmarksLib.data.landmark_files import read_landmarks
from H3DELandmarksLib.data.volume import Volume
from H3DELandmarksLib.data.volume_io import write_volume
from H3DELandmarksLib.errors import VolumeError
from H3DELandmarksLib.inference import batch
from H3DELandmarksLib.inference.batch import FAILED, OK, SKIPPED, detect_case
from H3DELandmarksLib.inference.plausibility import check_volume_fits_model

REPO = Path(__file__).resolve().parents[1]
FORMATS = ["mrk.json", "csv", "json"]


@pytest.fixture(scope="module")
def predictor():
    return heatmap_predictor([COARSE, FINE], n_landmarks=2)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    one_window = [{"name": "fine", "spacing_mm": [3.0, 3.0, 3.0], "patch_size": [40, 40, 40]}]
    return tiny_package(tmp_path_factory.mktemp("model") / "package", n_landmarks=2, stages=one_window).path


@pytest.fixture
def tmpfs(tmp_path):
    """mount(options) -> a fresh tmpfs mount point under tmp_path (root only; skipped elsewhere)."""
    mounted = []

    def mount(options: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        point = tmp_path / f"mount{len(mounted)}"
        point.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                          capture_output=True).returncode != 0:
            pytest.skip("tmpfs cannot be mounted here")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=True)


def write_case(path: Path, spacing=None) -> Path:
    volume = blob_volume(DIRECTIONS["oblique"], truth_positions()[:2])
    if spacing is not None:
        volume = Volume(volume.array, spacing, volume.origin, volume.direction)
    write_volume(volume, path)
    return path


def detect(*arguments) -> int:
    return main(["detect", *map(str, arguments), "--device", "cpu", "--progress", "none"])


def listing(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_a_case_at_1e6_mm_spacing_fails_alone_with_a_summary(tmp_path, model, capsys):
    for name in ("a", "c"):
        write_case(tmp_path / "in" / f"{name}.nrrd")
    write_case(tmp_path / "in" / "b.nrrd", spacing=(1e6, 1e6, 1e6))

    assert detect(tmp_path / "in", "--model", model, "--out", tmp_path / "out", "--format", "json") == 2

    captured = capsys.readouterr()
    assert listing(tmp_path / "out") == ["a.json", "c.json"]
    assert "2 of 3 cases succeeded." in captured.out
    assert "Traceback" not in captured.err
    message = next(line for line in captured.err.splitlines() if line.startswith("h3de: error: b:"))
    assert "far more than model blob-standin looks at 120 × 120 × 120 mm" in message
    assert "micrometres written as millimetres" in message


def test_an_unexpected_error_is_one_sentence_for_its_case(tmp_path, predictor, monkeypatch):
    source = write_case(tmp_path / "case.nrrd")

    def broken(*args, **kwargs):
        raise ValueError("iterator is too large\nsecond line")

    monkeypatch.setattr(predictor, "predict", broken)
    result = detect_case(predictor, source, "case", tmp_path / "out")
    assert result.status == FAILED and not result.ok
    assert result.error == f"{source} failed with an unexpected error (ValueError: iterator is too large second line)."
    assert not (tmp_path / "out").exists() or listing(tmp_path / "out") == []


@pytest.mark.parametrize("volume, phrase", [
    (Volume(np.zeros((20, 20, 20), np.int16), (1.0, 1.0, 1.0), (0, 0, 0), np.eye(3)),
     "holds the value 0 in every voxel, so it shows no structure"),
    (Volume(np.arange(8, dtype=np.int16).reshape(2, 2, 2), (1.0, 1.0, 1.0), (0, 0, 0), np.eye(3)),
     "measures 2 × 2 × 2 mm (2 × 2 × 2 voxels of 1 × 1 × 1 mm), far less than model m looks at 80 × 80 × 80"),
    (Volume(np.broadcast_to(np.int16(1), (166, 250, 250)), (141.0, 141.0, 141.0), (0, 0, 0), np.eye(3)),
     "measures 3.525e+04 × 3.525e+04 × 2.341e+04 mm (250 × 250 × 166 voxels of 141 × 141 × 141 mm), far more"),
])
def test_implausible_volumes_are_refused_with_the_reason(volume, phrase):
    with pytest.raises(VolumeError, match="^The volume ") as refused:
        check_volume_fits_model(volume, COARSE, "m")
    assert phrase in str(refused.value)


def test_every_landmark_absent_gets_a_note(tmp_path):
    source = write_case(tmp_path / "case.nrrd")
    strict = heatmap_predictor([COARSE, FINE], n_landmarks=2, threshold=1.0)
    result = detect_case(strict, source, "case", tmp_path / "out", ["json"])
    assert result.status == OK and result.present == 0 and result.absent == 2
    assert result.note.startswith("Every landmark is absent: the highest confidence, 0.")
    assert result.note.endswith("is below the model's threshold 1 (is this the anatomy and modality model "
                                "blob-standin was trained on?).")
    assert summary_table([result]).splitlines()[1].split() == ["case", "ok", "0", "2", f"{result.seconds:.1f}"]


def test_output_folder_problems_are_caught_before_any_work(tmp_path, model, capsys, tmpfs):
    source = write_case(tmp_path / "case.nrrd")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    config = REPO / "Resources" / "Training" / "phantom.json"
    commands = [
        ["detect", str(source), "--model", str(model), "--out", str(a_file)],
        ["train", str(config), "--output", str(a_file)],
        ["evaluate", "--predictions", str(tmp_path), "--truth", str(tmp_path), "--out", str(a_file / "report")],
        ["import-checkpoint", str(tmp_path / "none.pth"), "--landmarks", "mmld", "--spacing", "0.3",
         "--out", str(a_file / "package")],
        ["serve", "--model", str(model), "--upload-dir", str(a_file)],
    ]
    expected = [f"--out {a_file} is a file, not a folder.", f"--output {a_file} is a file, not a folder.",
                f"--out {a_file}/report cannot be created: {a_file} is a file, not a folder.",
                f"--out {a_file}/package cannot be created: {a_file} is a file, not a folder.",
                f"--upload-dir {a_file} is a file, not a folder."]
    for command, message in zip(commands, expected):
        assert main(command) == 2
        assert capsys.readouterr().err == f"h3de: error: {message}\n"

    read_only = tmpfs("ro,size=64k")
    assert detect(source, "--model", model, "--out", read_only / "results") == 2
    assert capsys.readouterr().err == (f"h3de: error: --out {read_only}/results is not writable (in {read_only}): "
                                       "Read-only file system.\n")
    assert main(["train", str(config), "--output", str(read_only / "run"), "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith(f"h3de: error: --output {read_only}/run is not writable")


def test_a_full_disk_leaves_no_partial_case(tmp_path, predictor, tmpfs):
    source = write_case(tmp_path / "case.nrrd")
    full = tmpfs("size=8k")
    result = detect_case(predictor, source, "case", full, FORMATS)
    assert result.status == FAILED
    assert result.error == (f"The outputs of case case cannot be written to {full}: No space left on device; "
                            "nothing of it was kept.")
    assert listing(full) == []


KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {testing!r})
from builders_blobs import COARSE, FINE, heatmap_predictor
from H3DELandmarksLib.inference import batch

phase = {phase!r}
original_write, original_move = batch._write_format, batch._move_committed
written = []

def write_then_die(path, *args):
    original_write(path, *args)
    written.append(path)
    if phase == "staging" and len(written) == 2:
        os.kill(os.getpid(), signal.SIGKILL)

def move_one_then_die(commit, out_dir):
    first = sorted(commit.iterdir())[0]
    os.replace(first, out_dir / first.name)
    os.kill(os.getpid(), signal.SIGKILL)

batch._write_format = write_then_die
batch._move_committed = move_one_then_die
batch.detect_case(heatmap_predictor([COARSE, FINE], n_landmarks=2), {source!r}, "case", {out!r})
"""


@pytest.mark.parametrize("phase", ["staging", "commit"])
def test_sigkill_in_the_write_window_leaves_a_case_complete_or_absent(tmp_path, predictor, phase):
    source, out = write_case(tmp_path / "case.nrrd"), tmp_path / "out"
    script = KILLED_RUN.format(testing=str(REPO / "Testing"), phase=phase, source=str(source), out=str(out))
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    visible = [name for name in listing(out) if not name.startswith(".")]
    assert visible == ([] if phase == "staging" else ["case.csv"])

    result = detect_case(predictor, source, "case", out, FORMATS, skip_existing=True)
    assert result.status == (OK if phase == "staging" else SKIPPED), result.error
    assert listing(out) == ["case.csv", "case.json", "case.mrk.json"]
    assert read_landmarks(out / "case.csv").names == read_landmarks(out / "case.json").names == ["L0", "L1"]


def test_skip_existing_resumes_a_batch_without_recomputing(tmp_path, model, capsys):
    for name in ("a", "b"):
        write_case(tmp_path / "in" / f"{name}.nrrd")
    out = tmp_path / "out"
    assert detect(tmp_path / "in", "--model", model, "--out", out) == 0
    kept = {name: (out / name).stat().st_mtime_ns for name in listing(out) if name.startswith("a.")}
    (out / "b.json").unlink()
    capsys.readouterr()

    assert detect(tmp_path / "in", "--model", model, "--out", out) == 2
    assert "a.mrk.json already exists; pass --overwrite to replace it." in capsys.readouterr().err
    (out / "b.csv").unlink()
    (out / "b.mrk.json").unlink()

    assert detect(tmp_path / "in", "--model", model, "--out", out, "--skip-existing") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[:2] == ["a", "skipped"] and table[2].split()[:2] == ["b", "ok"]
    assert "2 of 2 cases succeeded (1 already done, skipped)." in table
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept
    assert len(listing(out)) == 6
    with pytest.raises(SystemExit):
        main(["detect", "x.nrrd", "--model", "m", "--out", "o", "--overwrite", "--skip-existing"])


def test_outputs_honour_the_umask(tmp_path, predictor):
    source = write_case(tmp_path / "case.nrrd")
    previous = os.umask(0o027)
    try:
        assert detect_case(predictor, source, "case", tmp_path / "out", FORMATS).status == OK
    finally:
        os.umask(previous)
    assert {oct((tmp_path / "out" / f"case.{suffix}").stat().st_mode & 0o777) for suffix in FORMATS} == {"0o640"}


def test_sigint_while_writing_propagates_and_leaves_nothing(tmp_path, predictor, monkeypatch):
    source, out = write_case(tmp_path / "case.nrrd"), tmp_path / "out"
    original, written = batch._write_format, []

    def write_then_interrupt(path, *args):
        original(path, *args)
        written.append(path)
        if len(written) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(batch, "_write_format", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        detect_case(predictor, source, "case", out, FORMATS)
    assert listing(out) == []
