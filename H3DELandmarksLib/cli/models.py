"""`h3de models`: list, show, download, verify and remove the registered models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..registry import (
    ModelCache,
    download_model,
    check_package,
    load_registry,
    model_status,
    package_folder,
    read_package,
    resolve_model,
    verify_model,
)
from ..errors import ModelPackageError
from ..registry.resolve import BUNDLED, NOT_DOWNLOADED

MODEL_HELP = 'model id (newest version) or "ID@VERSION"'
PACKAGE_HELP = MODEL_HELP + ", or a package folder"


def add_parser(subparsers, summary: str) -> None:
    """Register `h3de models` and its actions."""
    parser = subparsers.add_parser(
        "models", help=summary,
        description="Manage the landmark models: the registry lists them, downloads go to a local cache.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", type=Path, default=None,
                        help="model cache folder (default: $H3DE_CACHE_DIR or the platform's cache folder)")
    actions = parser.add_subparsers(dest="models_action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="table of the registered models and their status")
    listing.set_defaults(func=list_models)
    for name, func, help_text in (
        ("show", show_model, "landmarks, preprocessing, metrics and licence of a model"),
        ("download", download, "download a model into the cache and verify it"),
        ("verify", verify, "check a bundled or downloaded model (non-zero exit when damaged)"),
        ("remove", remove, "delete a downloaded model from the cache"),
    ):
        action = actions.add_parser(name, parents=[common], help=help_text)
        takes_folder = name in ("show", "verify")
        action.add_argument("model", metavar="ID|PATH" if takes_folder else "ID",
                            help=PACKAGE_HELP if takes_folder else MODEL_HELP)
        action.set_defaults(func=func)


def list_models(args: argparse.Namespace) -> int:
    registry, cache = load_registry(), ModelCache.at(args.cache_dir)
    if not registry.entries:
        print(f"No models are registered in {registry.path}.")
        return 0
    rows = [("ID", "VERSION", "TITLE", "SIZE", "STATUS")]
    rows += [(entry.id, entry.version, entry.title, format_size(entry.size), model_status(entry, registry, cache))
             for entry in registry.entries]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def show_model(args: argparse.Namespace) -> int:
    folder = package_folder(args.model)
    if folder is not None:
        package = read_package(folder)
        print(f"{package.manifest['id']}@{package.manifest['version']}: {package.manifest['title']}")
        print("Status: package folder")
    else:
        registry, cache = load_registry(), ModelCache.at(args.cache_dir)
        entry = registry.find(args.model)
        status = model_status(entry, registry, cache)
        print(f"{entry.spec}: {entry.title}")
        print(f"Status: {status}")
        if status == NOT_DOWNLOADED:
            print(f"Download: {entry.url} ({format_size(entry.size)})")
            print(f"Run `h3de models download {entry.spec}` to see its landmarks, preprocessing and metrics.")
            return 0
        package = read_package(resolve_model(entry.spec, cache_dir=cache.root, registry=registry))
    for line in manifest_summary(package.manifest):
        print(line)
    print(f"Path: {package.path}")
    return 0


def download(args: argparse.Namespace) -> int:
    registry, cache = load_registry(), ModelCache.at(args.cache_dir)
    entry = registry.find(args.model)
    status = model_status(entry, registry, cache)
    path = download_model(entry.spec, cache_dir=cache.root, registry=registry)
    if status == BUNDLED:
        print(f"{entry.spec} is bundled with H3DE Landmarks ({path}); nothing to download.")
    elif status == NOT_DOWNLOADED:
        print(f"Downloaded and verified {entry.spec}: {path}")
    else:
        print(f"{entry.spec} is already downloaded: {path}")
    return 0


def verify(args: argparse.Namespace) -> int:
    folder = package_folder(args.model)
    if folder is not None:
        name, advice = str(folder), "write or download it again"
        problems = folder_problems(folder)
    else:
        registry, cache = load_registry(), ModelCache.at(args.cache_dir)
        entry = registry.find(args.model)
        problems = verify_model(entry.spec, cache_dir=cache.root, registry=registry)
        name, advice = entry.spec, f"run `h3de models remove {entry.spec}` and download it again"
    if not problems:
        state = "package folder" if folder is not None else model_status(entry, registry, cache)
        print(f"{name} is intact ({state}).")
        return 0
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{name} is damaged; {advice}.", file=sys.stderr)
    return 1


def folder_problems(folder: Path) -> list[str]:
    """The problem of the package in `folder` (manifest, weights header), or none."""
    try:
        check_package(folder)
    except ModelPackageError as error:
        return [str(error)]
    return []


def remove(args: argparse.Namespace) -> int:
    registry, cache = load_registry(), ModelCache.at(args.cache_dir)
    entry = registry.find(args.model)
    if cache.remove(entry.id, entry.version):
        print(f"Removed {entry.spec} from {cache.root}.")
    elif model_status(entry, registry, cache) == BUNDLED:
        print(f"{entry.spec} is bundled with H3DE Landmarks; there is no download to remove.")
    else:
        print(f"{entry.spec} is not downloaded; nothing to remove.")
    return 0


def manifest_summary(manifest: dict) -> list[str]:
    """Human-readable lines: modality, landmarks, preprocessing, metrics, licence."""
    lines = [f"Modality: {manifest['modality']}"]
    if manifest["description"]:
        lines.append(f"Description: {manifest['description']}")
    lines.append(f"Landmarks ({len(manifest['landmarks'])}):")
    for number, landmark in enumerate(manifest["landmarks"], start=1):
        description = landmark.get("description")
        lines.append(f"  {number:3d}. {landmark['name']}" + (f" - {description}" if description else ""))
    preprocessing = manifest["preprocessing"]
    intensity = preprocessing["intensity"]
    lines.append(f"Preprocessing: orientation {preprocessing['orientation']}; intensities clipped to "
                 f"[{intensity['clip_min']:g}, {intensity['clip_max']:g}], then mapped linearly onto "
                 f"[{intensity['scale_min']:g}, {intensity['scale_max']:g}]")
    for stage in preprocessing["stages"]:
        spacing = " x ".join(f"{value:g}" for value in stage["spacing_mm"])
        patch = " x ".join(str(value) for value in stage["patch_size"])
        lines.append(f"  {stage['name']} stage: spacing {spacing} mm, patch {patch} voxels")
    lines.append(f"Confidence threshold: {manifest['confidence_threshold']}")
    metrics = dict(manifest["training"]["metrics"])
    evaluation = metrics.pop("evaluation", None)
    if evaluation:
        lines += evaluation_lines(evaluation)
    lines.append("Validation during training:" if metrics else "Validation during training: none recorded")
    lines += [f"  {name}: {stage_metrics(values) if isinstance(values, dict) else metric_value(values)}"
              for name, values in metrics.items()]
    lines.append(f"Licence: {manifest['license']}")
    if manifest.get("citation"):
        lines.append(f"Citation: {manifest['citation']}")
    lines.append(f"Created: {manifest['created']}")
    return lines


def evaluation_lines(evaluation: dict) -> list[str]:
    """The model card's headline numbers (``training.metrics.evaluation``) as lines."""
    errors = f"MRE {evaluation['mre_mm']:g}"
    if "mre_sd_mm" in evaluation:
        errors += f" ± {evaluation['mre_sd_mm']:g}"
    errors += " mm"
    spread = [f"{label} {evaluation[key]:g}" for key, label in (("median_mm", "median"), ("max_mm", "largest"))
              if key in evaluation]
    if spread:
        errors += f" ({', '.join(spread)} mm)"
    parts = [errors]
    if evaluation.get("sdr_percent"):
        rates = evaluation["sdr_percent"]
        parts.append(f"SDR {' / '.join(f'{value:g}' for value in rates.values())} % "
                     f"at {' / '.join(rates)} mm")
    if "seconds_per_case" in evaluation:
        parts.append(f"{evaluation['seconds_per_case']:g} s per case")
    lines = [f"Evaluation on {evaluation['data']}: " + "; ".join(parts)]
    if evaluation.get("baseline"):
        lines.append(f"  Baseline: {evaluation['baseline']}")
    if evaluation.get("report"):
        lines.append(f"  Report: {evaluation['report']}")
    return lines


STAGE_METRICS = ("val_mre_mm", "val_loss", "best_epoch", "epochs_trained", "validation_cases", "training_cases")


def stage_metrics(values: dict) -> str:
    """One stage's validation metrics as a phrase; other keys follow as "key value"."""
    parts = []
    if "val_mre_mm" in values:
        parts.append(f"MRE {values['val_mre_mm']:.3g} mm")
    if "val_loss" in values:
        parts.append(f"loss {values['val_loss']:.3g}")
    if "best_epoch" in values:
        parts.append(f"best epoch {values['best_epoch']}"
                     + (f" of {values['epochs_trained']}" if "epochs_trained" in values else ""))
    if "validation_cases" in values or "training_cases" in values:
        parts.append(f"{values.get('validation_cases', '?')} validation / {values.get('training_cases', '?')} "
                     "training cases")
    parts += [f"{key.replace('_', ' ')} {metric_value(value)}" for key, value in values.items()
              if key not in STAGE_METRICS]
    return ", ".join(parts)


def metric_value(value) -> str:
    """A metric value with four significant digits (other values as they are)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_size(size: int | None) -> str:
    """Bytes as a short human-readable size ("-" when unknown)."""
    if size is None:
        return "-"
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    value, unit = float(size), 0
    while value >= 1024 and unit < len(units) - 1:
        value /= 1024
        unit += 1
    return f"{size} B" if unit == 0 else f"{value:.1f} {units[unit]}"
