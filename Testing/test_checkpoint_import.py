"""Published checkpoints become model packages that reproduce the published outputs."""

import argparse
import collections
import json

import numpy as np
import pytest
import torch

from H3DELandmarksLib.cli.main import main
from H3DELandmarksLib.errors import CheckpointError
from H3DELandmarksLib.inference import load_package
from H3DELandmarksLib.training.checkpoint_import import import_checkpoint

NAMES = ["a", "b", "c", "d", "e"]


def fixture_state(shared_dir, prefix):
    arrays = np.load(shared_dir / "reference" / "parity" / f"{prefix}_state_dict.npz")
    return {k: torch.from_numpy(arrays[k].astype(np.float32) if arrays[k].dtype == np.float16 else arrays[k])
            for k in arrays.files}


class Payload:
    """An arbitrary class: weights-only loading must refuse to construct it."""


def save_published_checkpoint(path, state):
    """The layout the authors' training script saves: DataParallel prefixes and an argparse Namespace."""
    torch.save({"epoch": 7, "args": argparse.Namespace(lr=1e-3, batch_size=4),
                "state_dict": collections.OrderedDict(("module." + k, v) for k, v in state.items())}, path)


@pytest.mark.parametrize("prefix,output,head", [("bif", "bif_output_stride2.npy", "heatmap"),
                                                ("pbif", "pbif_output.npy", "proposals")])
def test_imported_package_reproduces_published_output(shared_dir, tmp_path, prefix, output, head):
    checkpoint = tmp_path / "published.pth"
    save_published_checkpoint(checkpoint, fixture_state(shared_dir, prefix))
    package = import_checkpoint(checkpoint, NAMES, tmp_path / "pkg", spacing_mm=(0.5, 0.5, 0.5))
    meta = json.loads((shared_dir / "reference" / "parity" / f"{prefix}_meta.json").read_text(encoding="utf-8"))
    assert package.config.head == head
    assert list(package.config.embed_dims) == meta["embed_dim"]
    assert package.landmark_names == NAMES
    net = load_package(tmp_path / "pkg")
    x = torch.from_numpy(np.load(shared_dir / "reference" / "parity" / f"{prefix}_input.npy").astype(np.float32))
    with torch.inference_mode():
        out = net(x).numpy()
    if head == "heatmap":
        out = out[:, :, ::2, ::2, ::2]
    expected = np.load(shared_dir / "reference" / "parity" / output).astype(np.float32)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


def test_mismatched_shape_is_named(shared_dir, tmp_path):
    state = fixture_state(shared_dir, "bif")
    state["up1.conv2.0.weight"] = torch.zeros(3, 3, 3, 3, 3)
    save_published_checkpoint(tmp_path / "bad.pth", state)
    with pytest.raises(CheckpointError, match="up1.conv2.0.weight"):
        import_checkpoint(tmp_path / "bad.pth", NAMES, tmp_path / "pkg", spacing_mm=(1, 1, 1))


def test_missing_key_is_named(shared_dir, tmp_path):
    state = fixture_state(shared_dir, "bif")
    del state["stages.2.1.attn.wo.bias"]
    save_published_checkpoint(tmp_path / "bad.pth", state)
    with pytest.raises(CheckpointError, match="stages.2.1.attn.wo.bias"):
        import_checkpoint(tmp_path / "bad.pth", NAMES, tmp_path / "pkg", spacing_mm=(1, 1, 1))


def test_wrong_landmark_count_and_unsafe_pickles_are_refused(shared_dir, tmp_path):
    save_published_checkpoint(tmp_path / "ok.pth", fixture_state(shared_dir, "bif"))
    with pytest.raises(CheckpointError, match="5 landmarks"):
        import_checkpoint(tmp_path / "ok.pth", NAMES[:3], tmp_path / "pkg", spacing_mm=(1, 1, 1))
    torch.save({"state_dict": {}, "payload": Payload()}, tmp_path / "unsafe.pth")
    with pytest.raises(CheckpointError, match="more than weights"):
        import_checkpoint(tmp_path / "unsafe.pth", NAMES, tmp_path / "pkg", spacing_mm=(1, 1, 1))
    assert not (tmp_path / "pkg").exists()


def test_command_line_import_and_errors(shared_dir, tmp_path, capsys):
    save_published_checkpoint(tmp_path / "ok.pth", fixture_state(shared_dir, "pbif"))
    status = main(["import-checkpoint", str(tmp_path / "ok.pth"), "--landmarks", ",".join(NAMES),
                   "--out", str(tmp_path / "pkg"), "--spacing", "0.4"])
    assert status == 0 and "proposals" in capsys.readouterr().out
    status = main(["import-checkpoint", str(tmp_path / "missing.pth"), "--landmarks", "mmld",
                   "--out", str(tmp_path / "pkg2"), "--spacing", "0.4"])
    err = capsys.readouterr().err
    assert status == 2 and "missing.pth does not exist" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
