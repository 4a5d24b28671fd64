"""Load a model package (manifest + safetensors) as ready networks, one per stage.

How the stages' weights are stored is `registry.stage_weights`'s business.
"""

from __future__ import annotations

import os

from ..errors import ModelPackageError
from ..model.network import H3DENet
from ..model.weights import load_weights, state_dict_problem
from ..registry import read_package
from ..registry.stage_weights import split_stage_state_dicts


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

    For a package of several stages, `stage` picks one by name ("coarse", "fine", "refine";
    default: the last stage, whose output gives the final positions). The manifest stays
    available as ``net.package.manifest``.
    """
    networks = load_stage_networks(path, device)
    name = stage or list(networks)[-1]
    if name not in networks:
        raise ModelPackageError(f"The package at {path} has no stage {name!r} (it has {', '.join(networks)}).")
    return networks[name]
