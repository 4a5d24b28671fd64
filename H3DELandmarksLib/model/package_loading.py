"""Load a model package (manifest + safetensors) as a ready network."""

from __future__ import annotations

import os

from ..errors import ModelPackageError
from .network import H3DENet
from .weights import load_weights, state_dict_problem


def load_package(path: str | os.PathLike, device: str = "cpu") -> H3DENet:
    """The network of the package at `path`, weights loaded strictly, in eval mode on `device`.

    The package's manifest stays available as ``net.package.manifest``.
    """
    from ..registry import read_package

    package = read_package(path)
    net = H3DENet(package.config)
    state = package.state_dict()
    problem = state_dict_problem(net, state)
    if problem:
        raise ModelPackageError(f"The weights of {package.path} do not fit its manifest's architecture: {problem}.")
    load_weights(net, state)
    net.package = package
    return net.to(device).eval()
