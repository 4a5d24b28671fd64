"""The reference-compatible configurations match the published implementation exactly."""

import json

import numpy as np
import pytest
import torch

from H3DELandmarksLib.model import build_model
from H3DELandmarksLib.model.config import reference_config


def read_keys(path):
    """{key: shape} from a published *.keys.txt listing."""
    keys = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, shape, _ = line.split("\t")
        keys[name] = tuple(int(v) for v in shape.strip("()").split(",") if v.strip())
    return keys


@pytest.mark.parametrize("name,listing", [("reference", "BiFormer_Unet"), ("reference-proposals", "PBiFormer_Unet")])
def test_state_dict_keys_and_shapes_match_published(shared_dir, name, listing):
    expected = read_keys(shared_dir / "reference" / f"{listing}.keys.txt")
    state = build_model(name, n_landmarks=14).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def load_fixture(shared_dir, prefix, head):
    folder = shared_dir / "reference" / "parity"
    meta = json.loads((folder / f"{prefix}_meta.json").read_text(encoding="utf-8"))
    config = reference_config(meta["n_class"], embed_dims=meta["embed_dim"], qk_dims=meta["qk_dims"], head=head)
    assert config.n_regions == tuple(meta["n_win"]) and config.topks == tuple(meta["topks"])
    assert config.depths == tuple(meta["depth"]) and config.head_dim == meta["head_dim"]
    arrays = np.load(folder / f"{prefix}_state_dict.npz")
    state = {k: torch.from_numpy(arrays[k].astype(np.float32) if arrays[k].dtype == np.float16 else arrays[k])
             for k in arrays.files}
    net = build_model(config).eval()
    net.load_state_dict(state, strict=True)
    x = torch.from_numpy(np.load(folder / f"{prefix}_input.npy").astype(np.float32))
    assert list(x.shape) == meta["input_shape"]
    with torch.inference_mode():
        return net(x).numpy(), meta


def test_heatmap_network_reproduces_published_output(shared_dir):
    out, meta = load_fixture(shared_dir, "bif", "heatmap")
    assert list(out.shape) == meta["output_shape"]
    expected = np.load(shared_dir / "reference" / "parity" / "bif_output_stride2.npy").astype(np.float32)
    np.testing.assert_allclose(out[:, :, ::2, ::2, ::2], expected, atol=1e-4, rtol=0)
    flat = out.reshape(out.shape[1], -1)
    assert flat.argmax(1).tolist() == meta["channel_argmax_flat"]
    np.testing.assert_allclose(flat.mean(1), meta["channel_mean"], atol=1e-4)


def test_proposal_network_reproduces_published_output(shared_dir):
    out, meta = load_fixture(shared_dir, "pbif", "proposals")
    assert list(out.shape) == meta["output_shape"]
    expected = np.load(shared_dir / "reference" / "parity" / "pbif_output.npy").astype(np.float32)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


def test_reference_configuration_refuses_sizes_the_published_code_cannot_handle():
    net = build_model(reference_config(3, embed_dims=(16, 32, 64, 128))).eval()
    with pytest.raises(ValueError, match="multiples of 128"):
        with torch.inference_mode():
            net(torch.zeros(1, 1, 96, 96, 64))
