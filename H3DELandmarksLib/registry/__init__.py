"""Model packages, the model registry, verified downloads and the local cache."""

from .cache import ModelCache, default_cache_dir
from .catalog import Registry, RegistryEntry, default_registry_path, load_registry, parse_model_spec
from .download import download_file, download_model
from .manifest import SCHEMA_VERSION, Manifest, read_manifest, validate_manifest
from .package import (
    ModelPackage,
    PackedPackage,
    check_package,
    pack_package,
    read_package,
    sha256_of,
    unpack_package,
    write_package,
)
from .resolve import model_status, package_folder, resolve_model
from .verify import verify_model

__all__ = [
    "SCHEMA_VERSION",
    "Manifest",
    "ModelCache",
    "ModelPackage",
    "PackedPackage",
    "Registry",
    "RegistryEntry",
    "check_package",
    "default_cache_dir",
    "default_registry_path",
    "download_file",
    "download_model",
    "load_registry",
    "model_status",
    "pack_package",
    "package_folder",
    "parse_model_spec",
    "read_manifest",
    "read_package",
    "resolve_model",
    "sha256_of",
    "unpack_package",
    "validate_manifest",
    "verify_model",
    "write_package",
]
