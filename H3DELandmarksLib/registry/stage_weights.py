"""How a package stores its stages' weights in one safetensors file.

A package whose keys are plain state-dict keys holds one network, used by every stage (imported
reference checkpoints are like this). A package of several stages may instead hold one network per
stage, of the manifest's one architecture, each under its stage's name: ``coarse.<key>``,
``fine.<key>`` (and ``refine.<key>``).
"""

from __future__ import annotations

import torch

from ..errors import ModelPackageError


def stage_names(manifest: dict) -> list[str]:
    """Names of the package's stages, in inference order."""
    return [stage["name"] for stage in manifest["preprocessing"]["stages"]]


def split_stage_state_dicts(manifest: dict, state: dict[str, torch.Tensor], source: str) -> dict[str, dict]:
    """The weights of each stage, by stage name, from a package's flat state dict."""
    stages = stage_names(manifest)
    if len(stages) == 1 or not any(key.startswith(f"{stage}.") for key in state for stage in stages):
        return {stage: state for stage in stages}
    split = {stage: {key[len(stage) + 1:]: value for key, value in state.items() if key.startswith(f"{stage}.")}
             for stage in stages}
    stray = [key for key in state if not any(key.startswith(f"{stage}.") for stage in stages)]
    if stray:
        raise ModelPackageError(f"{source}: tensor {stray[0]!r} belongs to no stage ({', '.join(stages)}).")
    return split


def join_stage_state_dicts(networks: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Inverse of `split_stage_state_dicts`: one flat state dict, prefixed when there are several stages."""
    if len(networks) == 1:
        return dict(next(iter(networks.values())))
    return {f"{stage}.{key}": value for stage, state in networks.items() for key, value in state.items()}
