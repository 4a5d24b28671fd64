"""Load a model package (manifest + safetensors) as ready networks.

A package whose keys are plain state-dict keys holds one network, used by every stage (imported
reference checkpoints are like this). A two-stage package may instead hold one network per stage,
of the manifest's one architecture: stage ``coarse`` under ``coarse.<key>`` and stage ``fine``
under ``fine.<key>``.
"""

from __future__ import annotations

import os

import torch

from ..errors import ModelPackageError
from ..model.network import H3DENet
from ..model.weights import load_weights, state_dict_problem
from ..registry import read_package


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
    """Inverse of `split_stage_state_dicts`: one flat state dict, prefixed when there are two stages."""
    if len(networks) == 1:
        return dict(next(iter(networks.values())))
    return {f"{stage}.{key}": value for stage, state in networks.items() for key, value in state.items()}


def load_stage_networks(path: str | os.PathLike, device: str = "cpu") -> dict[str, H3DENet]:
    """Each stage's network of the package at `path`, by stage name, weights loaded strictly, in
    eval mode on `device` (stages sharing one set of weights share one network); each network keeps
    the package as ``net.package``."""
    package = read_package(path)
    networks, built = {}, {}
    for stage, state in split_stage_state_dicts(package.manifest, package.state_dict(), str(package.path)).items():
        if id(state) not in built:
            net = H3DENet(package.config)
            problem = state_dict_problem(net, state)
            if problem:
                raise ModelPackageError(f"The {stage} weights of {package.path} do not fit its architecture: {problem}.")
            load_weights(net, state)
            net.package = package
            built[id(state)] = net.to(device).eval()
        networks[stage] = built[id(state)]
    return networks


def load_package(path: str | os.PathLike, device: str = "cpu", stage: str | None = None) -> H3DENet:
    """The network of the package at `path`, ready for `forward`.

    For a two-stage package, `stage` picks "coarse" or "fine" (default: the last stage, whose
    output gives the final positions). The manifest stays available as ``net.package.manifest``.
    """
    networks = load_stage_networks(path, device)
    name = stage or list(networks)[-1]
    if name not in networks:
        raise ModelPackageError(f"The package at {path} has no stage {name!r} (it has {', '.join(networks)}).")
    return networks[name]
