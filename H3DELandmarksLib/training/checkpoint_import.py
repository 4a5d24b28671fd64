"""Import a published H3DE-Net checkpoint (BiFormer_Unet / PBiFormer_Unet) as a model package.

The checkpoint is a pickled dict holding `state_dict` (possibly with `module.` prefixes from
DataParallel) and often an `argparse.Namespace` of training options. It is loaded weights-only:
tensors and plain containers, plus `argparse.Namespace` explicitly allowed, nothing executable.
The architecture (head, widths, depths, landmark count, anchors) is read off the tensor shapes.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from pathlib import Path

import torch

from ..checksums import sha256_of
from ..errors import CheckpointError
from ..model.config import H3DEConfig, reference_config
from ..model.network import H3DENet
from ..model.weights import load_weights, state_dict_problem
from ..registry import Manifest, write_package


def read_checkpoint_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a published checkpoint, `module.` prefixes removed, loaded weights-only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).splitlines()[0][:160]
        raise CheckpointError(f"Checkpoint {path} holds more than weights and was not loaded ({reason}).") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f"Checkpoint {path} cannot be read ({str(error).splitlines()[0][:160]}).") from None
    state = content.get("state_dict", content) if isinstance(content, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"Checkpoint {path} has no state_dict of tensors.")
    return {key.removeprefix("module."): value for key, value in state.items()}


def infer_config(state: dict[str, torch.Tensor], head_dim: int = 8) -> H3DEConfig:
    """The reference-compatible configuration whose tensors have these shapes."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointError(f"The checkpoint has no tensor {key!r}; it is not an H3DE-Net checkpoint.")
        return tuple(state[key].shape)

    embed_dims = tuple(shape(f"downsample_layers.{0 if i == 0 else i}.{3 if i == 0 else 0}.weight")[0]
                       for i in range(4))
    depths = tuple(len({m.group(1) for key in state if (m := re.match(rf"stages\.{i}\.(\d+)\.", key))})
                   for i in range(4))
    qk_dims = tuple((shape(f"stages.{i}.0.attn.qkv.qkv.weight")[0] - embed_dims[i]) // 2 for i in range(4))
    mlp_ratio = shape("stages.0.0.mlp.0.weight")[0] / embed_dims[0]
    n_landmarks = shape("head.weight")[0]
    head = "proposals" if "pre_layer.weight" in state else "heatmap"
    changes = {"depths": depths, "head_dim": head_dim, "mlp_ratio": mlp_ratio}
    if head == "proposals":
        outputs = shape("pre_layer.weight")[0]
        if outputs % (3 + n_landmarks):
            raise CheckpointError(
                f"Tensor 'pre_layer.weight' has {outputs} outputs, not a multiple of 3 + {n_landmarks} landmarks."
            )
        n_anchors = outputs // (3 + n_landmarks)
        if n_anchors != 4:
            raise CheckpointError(f"Tensor 'pre_layer.weight' implies {n_anchors} anchors; the published head has 4.")
    try:
        return reference_config(n_landmarks, embed_dims=embed_dims, qk_dims=qk_dims, head=head, **changes)
    except Exception as error:
        raise CheckpointError(f"The checkpoint's shapes do not form a valid H3DE-Net ({error}).") from None


def load_reference_weights(config: H3DEConfig, state: dict[str, torch.Tensor]) -> H3DENet:
    """Build the network and load `state` strictly; a mismatch names the key."""
    net = H3DENet(config)
    problem = state_dict_problem(net, state)
    if problem:
        raise CheckpointError(f"The checkpoint does not fit the architecture read off its shapes: {problem}.")
    load_weights(net, state)
    return net.eval()


def import_checkpoint(checkpoint: str | os.PathLike, landmark_names: list[str], out: str | os.PathLike, *,
                      spacing_mm: tuple[float, float, float], patch_size: tuple[int, int, int] = (128, 128, 64),
                      model_id: str | None = None, version: str = "1.0.0", head_dim: int = 8,
                      confidence_threshold: float = 0.5, license_name: str = "unknown",
                      overwrite: bool = False):
    """Turn a published checkpoint into a model package at `out`; returns the `ModelPackage`."""
    checkpoint = Path(checkpoint)
    state = read_checkpoint_state_dict(checkpoint)
    config = infer_config(state, head_dim=head_dim)
    if len(landmark_names) != config.n_landmarks:
        raise CheckpointError(
            f"{len(landmark_names)} landmark names were given but the checkpoint predicts {config.n_landmarks} landmarks."
        )
    net = load_reference_weights(config, state)
    digest = sha256_of(checkpoint)
    model_id = model_id or re.sub(r"[^a-z0-9-]+", "-", Path(out).name.lower()).strip("-") or "imported"
    variant = "PBiFormer_Unet" if config.head == "proposals" else "BiFormer_Unet"
    manifest = Manifest(
        id=model_id,
        version=version,
        title=f"Imported {variant} ({config.n_landmarks} landmarks)",
        description=f"Published H3DE-Net {variant} weights imported from {checkpoint.name}.",
        config=config,
        landmark_names=landmark_names,
        orientation="native",
        intensity={"clip_min": 0.0, "clip_max": 255.0, "scale_min": 0.0, "scale_max": 1.0},
        stages=[{"name": "fine", "spacing_mm": list(map(float, spacing_mm)), "patch_size": list(map(int, patch_size))}],
        confidence_threshold=confidence_threshold,
        heatmap_peak=2.0,
        provenance={"imported_from": checkpoint.name, "sha256": digest},
        data={"note": "trained by the checkpoint's authors; data not recorded in the checkpoint"},
        recipe={"note": "published H3DE-Net recipe"},
        command="h3de import-checkpoint",
        license=license_name,
    )
    return write_package(out, manifest.to_dict(), net.state_dict(), overwrite=overwrite)
