"""Model packages: a directory holding manifest.json and model.safetensors, or a .zip of the two.

Besides the networks' weights, model.safetensors may hold the reference patches the predictor
sharpens its positions with (`data.patch_matching`): tensors ``patches.<r>.<field>`` for the
r-th reference named in the manifest's ``patch_matching.references``. `ModelPackage.state_dict`
leaves them out; `ModelPackage.reference_patches` reads them.

Every write is atomic: a package is built in a temporary sibling directory and renamed into place,
so a reader never sees half a package.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from ..atomic import atomic_destination, remove_directory, temporary_sibling
from ..checksums import CHUNK_BYTES, sha256_of
from ..data.patch_matching import LandmarkPatches
from ..errors import ModelPackageError
from ..model.config import H3DEConfig
from .manifest import read_manifest, validate_manifest

MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"
PACKAGE_FILES = (MANIFEST_FILE, WEIGHTS_FILE)
WEIGHT_DTYPES = {"F16", "BF16", "F32", "F64", "I64"}
PATCHES_PREFIX = "patches."
PATCH_FIELDS = ("positions", "blocks", "origins", "spacing", "direction")
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)
# An archive unpacks to at most this many times its own size (floating-point weights barely
# compress), and never less than MIN_UNPACKED_LIMIT; a manifest is at most MANIFEST_LIMIT.
UNPACKED_RATIO_LIMIT = 20
MIN_UNPACKED_LIMIT = 256 << 20
MANIFEST_LIMIT = 16 << 20


@dataclass(frozen=True)
class ModelPackage:
    """A validated model package on disk; the weights are only read by `state_dict()`."""

    path: Path
    manifest: dict

    @property
    def id(self) -> str:
        return self.manifest["id"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def config(self) -> H3DEConfig:
        """The network's `H3DEConfig`, built from the manifest's architecture."""
        return H3DEConfig.from_dict(self.manifest["architecture"])

    @property
    def landmark_names(self) -> list[str]:
        return [landmark["name"] for landmark in self.manifest["landmarks"]]

    @property
    def landmark_descriptions(self) -> list[str]:
        return [landmark.get("description", "") for landmark in self.manifest["landmarks"]]

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The networks' weights as a flat state dict of CPU tensors (no reference patches)."""
        return {key: value for key, value in self._tensors().items() if not key.startswith(PATCHES_PREFIX)}

    def reference_patches(self) -> list[LandmarkPatches]:
        """The reference patches named in the manifest's ``patch_matching`` (none without it)."""
        names = self.manifest.get("patch_matching", {}).get("references", [])
        if not names:
            return []
        tensors = self._tensors()
        patches = []
        for index, name in enumerate(names):
            keys = [f"{PATCHES_PREFIX}{index}.{field}" for field in PATCH_FIELDS]
            if any(key not in tensors for key in keys):
                raise ModelPackageError(f"{self.weights_path} lacks the patches of reference {name!r} that its "
                                        "manifest names.")
            positions, blocks, origins, spacing, direction = (tensors[key].double().numpy() for key in keys)
            patches.append(LandmarkPatches(positions, blocks.astype(np.float32), origins,
                                           tuple(float(v) for v in spacing), direction))
        return patches

    def _tensors(self) -> dict[str, torch.Tensor]:
        try:
            return load_file(self.weights_path)
        except (SafetensorError, OSError) as error:
            raise ModelPackageError(f"{self.weights_path} cannot be read as safetensors ({error}).") from None


@dataclass(frozen=True)
class PackedPackage:
    """A package archive and the facts the registry records about it."""

    path: Path
    sha256: str
    size: int


def read_package(directory: str | os.PathLike) -> ModelPackage:
    """Open the package in `directory`, validating its manifest; raises ModelPackageError."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelPackageError(f"{directory} is not a model package directory.")
    for name in PACKAGE_FILES:
        if not (directory / name).is_file():
            raise ModelPackageError(f"{directory} is not a model package: {name} is missing.")
    return ModelPackage(path=directory, manifest=read_manifest(directory / MANIFEST_FILE))


def check_package(directory: str | os.PathLike) -> ModelPackage:
    """`read_package` plus a check of the weights file header: readable, float tensors only."""
    package = read_package(directory)
    try:
        with safe_open(package.weights_path, framework="pt") as weights:
            for key in weights.keys():
                dtype = weights.get_slice(key).get_dtype()
                if dtype not in WEIGHT_DTYPES:
                    raise ModelPackageError(f"{package.weights_path}: tensor {key!r} is {dtype}, not a weight type.")
    except (SafetensorError, OSError) as error:
        raise ModelPackageError(f"{package.weights_path} cannot be read as safetensors ({error}).") from None
    return package


def write_package(directory: str | os.PathLike, manifest: dict, state_dict: dict[str, torch.Tensor],
                  overwrite: bool = False, references: Sequence[LandmarkPatches] = ()) -> ModelPackage:
    """Write a validated package to `directory` atomically; refuses to replace one unless `overwrite`.
    `references` are the patches of the manifest's ``patch_matching.references``, in order."""
    directory = Path(directory)
    validate_manifest(manifest)
    _check_state_dict(state_dict)
    named = manifest.get("patch_matching", {}).get("references", [])
    if len(named) != len(references):
        raise ModelPackageError(f"The manifest names {len(named)} reference patch sets, but {len(references)} "
                                "were given.")
    state_dict = {**state_dict, **_patch_tensors(references)}
    if directory.exists() and not overwrite:
        raise ModelPackageError(f"{directory} already exists; pass overwrite (--overwrite) to replace it.")
    directory.parent.mkdir(parents=True, exist_ok=True)
    building = temporary_sibling(directory, ".tmp", directory=True)
    try:
        (building / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in state_dict.items()}
        # Serialized in memory and written by Python: safetensors' own file writer creates 0600.
        (building / WEIGHTS_FILE).write_bytes(save(tensors, metadata={"format": "pt"}))
        _move_into_place(building, directory, overwrite)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return read_package(directory)


def pack_package(directory: str | os.PathLike, zip_path: str | os.PathLike,
                 overwrite: bool = False) -> PackedPackage:
    """Zip the package in `directory` for distribution; returns the archive's sha256 and size.

    The archive is reproducible (fixed member order and timestamps), so packing the same package
    twice gives the same checksum.
    """
    package = check_package(directory)
    zip_path = Path(zip_path)
    if zip_path.exists() and not overwrite:
        raise ModelPackageError(f"{zip_path} already exists; pass overwrite (--overwrite) to replace it.")
    with atomic_destination(zip_path, overwrite=True) as temporary:
        with zipfile.ZipFile(temporary, "w") as archive:
            for name in PACKAGE_FILES:
                info = zipfile.ZipInfo(name, date_time=ZIP_TIMESTAMP)
                info.compress_type = zipfile.ZIP_DEFLATED
                with open(package.path / name, "rb") as source, archive.open(info, "w") as target:
                    shutil.copyfileobj(source, target, CHUNK_BYTES)
    return PackedPackage(path=zip_path, sha256=sha256_of(zip_path), size=zip_path.stat().st_size)


def unpack_package(zip_path: str | os.PathLike, directory: str | os.PathLike,
                   overwrite: bool = False, expected_spec: str | None = None) -> ModelPackage:
    """Extract a package archive into `directory` atomically, validating it before it appears there.

    The unpacked size is bounded (see UNPACKED_RATIO_LIMIT), counted as it is written, so a
    compression bomb is refused; with `expected_spec` ("ID@VERSION", from the registry) the
    manifest must name that model.
    """
    zip_path, directory = Path(zip_path), Path(directory)
    if directory.exists() and not overwrite:
        raise ModelPackageError(f"{directory} already exists; pass overwrite (--overwrite) to replace it.")
    directory.parent.mkdir(parents=True, exist_ok=True)
    building = temporary_sibling(directory, ".tmp", directory=True)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            names = sorted(archive.namelist())
            if names != sorted(PACKAGE_FILES):
                raise ModelPackageError(
                    f"{zip_path} is not a model package archive: it holds {', '.join(names) or 'nothing'} "
                    f"instead of {' and '.join(PACKAGE_FILES)}."
                )
            limit = max(MIN_UNPACKED_LIMIT, UNPACKED_RATIO_LIMIT * zip_path.stat().st_size)
            limits = {MANIFEST_FILE: min(limit, MANIFEST_LIMIT), WEIGHTS_FILE: limit}
            for name in PACKAGE_FILES:
                _extract_bounded(archive, name, building / name, limits[name], zip_path)
            manifest = _read_json_file(building / MANIFEST_FILE, zip_path)
            validate_manifest(manifest, source=f"{zip_path.name}/{MANIFEST_FILE}")
            _check_spec(manifest, expected_spec, zip_path)
        check_package(building)
        _move_into_place(building, directory, overwrite)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as error:
        raise ModelPackageError(f"{zip_path} is not a readable zip archive ({error}).") from None
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return read_package(directory)


def _extract_bounded(archive: zipfile.ZipFile, name: str, target: Path, limit: int, zip_path: Path) -> None:
    """Copy member `name` to `target`, refusing more than `limit` bytes (declared or actual)."""
    too_large = ModelPackageError(f"{zip_path} is refused: its {name} unpacks to more than {limit} bytes "
                                  f"(the limit for an archive of {zip_path.stat().st_size} bytes).")
    if archive.getinfo(name).file_size > limit:
        raise too_large
    written = 0
    with archive.open(name) as source, open(target, "wb") as stream:
        while chunk := source.read(CHUNK_BYTES):
            written += len(chunk)
            if written > limit:
                raise too_large
            stream.write(chunk)


def _read_json_file(path: Path, zip_path: Path) -> object:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        reason = "it nests too deeply" if isinstance(error, RecursionError) else str(error)
        raise ModelPackageError(f"{zip_path.name}/{MANIFEST_FILE} is not valid JSON ({reason}).") from None


def _check_spec(manifest: dict, expected_spec: str | None, zip_path: Path) -> None:
    """Refuse a manifest naming another model than the registry entry it was downloaded for."""
    found = f"{manifest['id']}@{manifest['version']}"
    if expected_spec is not None and found != expected_spec:
        raise ModelPackageError(f"{zip_path} holds the model {found}, not {expected_spec} as the registry says.")


def _patch_tensors(references: Sequence[LandmarkPatches]) -> dict[str, torch.Tensor]:
    """The reference patches as tensors (blocks in half precision, geometry in double)."""
    tensors = {}
    for index, patches in enumerate(references):
        values = (patches.positions, patches.blocks, patches.origins, np.asarray(patches.spacing), patches.direction)
        for field, value in zip(PATCH_FIELDS, values):
            dtype = torch.float16 if field == "blocks" else torch.float64
            tensors[f"{PATCHES_PREFIX}{index}.{field}"] = torch.as_tensor(np.asarray(value, float), dtype=dtype)
    return tensors


def _check_state_dict(state_dict: dict) -> None:
    if not state_dict:
        raise ModelPackageError("The state dict to package is empty.")
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor) or (
                not value.is_floating_point() and value.dtype != torch.int64):
            raise ModelPackageError(f"State dict entry {key!r} is not a float (or int64 counter) tensor.")


def _move_into_place(built: Path, directory: Path, overwrite: bool) -> None:
    if directory.exists():
        if not overwrite:
            raise ModelPackageError(f"{directory} already exists; pass overwrite (--overwrite) to replace it.")
        remove_directory(directory)
    os.replace(built, directory)
