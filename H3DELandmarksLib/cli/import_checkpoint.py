"""`h3de import-checkpoint`: a published H3DE-Net checkpoint → the project's model package."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..atomic import check_writable_folder
from ..errors import H3DEError

MMLD_NAMES = ["L0", "La", "Lb", "Lc", "Ld", "Le", "Lf", "R0", "Ra", "Rb", "Rc", "Rd", "Re", "Rf"]


def add_parser(subparsers, summary: str) -> None:
    parser = subparsers.add_parser(
        "import-checkpoint", help=summary,
        description="Import a published BiFormer_Unet / PBiFormer_Unet checkpoint (loaded weights-only) "
                    "as a model package (manifest.json + model.safetensors).")
    parser.add_argument("checkpoint", type=Path, help="the .pth/.pt checkpoint file")
    parser.add_argument("--landmarks", required=True,
                        help="landmark names: comma-separated, a text file with one name per line, "
                             "or 'mmld' for the 14 MMLD names (L0, La..Lf, R0, Ra..Rf)")
    parser.add_argument("--out", required=True, type=Path, help="package directory to create")
    parser.add_argument("--spacing", required=True, type=float_triple,
                        help="voxel spacing (mm) the model was trained at: S or SX,SY,SZ")
    parser.add_argument("--patch-size", type=int_triple, default=(128, 128, 64),
                        help="input patch size in voxels (default 128,128,64)")
    parser.add_argument("--id", dest="model_id", help="model id (default: from the output folder name)")
    parser.add_argument("--version", default="1.0.0", help="model version (default 1.0.0)")
    parser.add_argument("--head-dim", type=int, default=8, help="attention head width (not stored in weights)")
    parser.add_argument("--threshold", type=float, default=0.5, help="confidence below which a landmark is absent")
    parser.add_argument("--license", default="unknown", help="licence of the weights")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing package")
    parser.set_defaults(func=run)


def parse_landmark_names(value: str) -> list[str]:
    """Names from 'mmld', a text file (one per line) or a comma-separated list."""
    if value.lower() == "mmld":
        return list(MMLD_NAMES)
    path = Path(value)
    if path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise H3DEError(f"No landmark names were found in {value!r}.")
    return names


def float_triple(value: str) -> tuple[float, float, float]:
    parts = [float(v) for v in value.split(",")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or min(parts) <= 0:
        raise argparse.ArgumentTypeError("expected one or three positive numbers")
    return tuple(parts)


def int_triple(value: str) -> tuple[int, int, int]:
    parts = [int(v) for v in value.split(",")]
    if len(parts) != 3 or min(parts) <= 0:
        raise argparse.ArgumentTypeError("expected three positive integers")
    return tuple(parts)


def run(args: argparse.Namespace) -> int:
    from ..training.checkpoint_import import import_checkpoint

    check_writable_folder(args.out, "--out")
    package = import_checkpoint(
        args.checkpoint, parse_landmark_names(args.landmarks), args.out, spacing_mm=args.spacing,
        patch_size=args.patch_size, model_id=args.model_id, version=args.version, head_dim=args.head_dim,
        confidence_threshold=args.threshold, license_name=args.license, overwrite=args.overwrite,
    )
    config = package.config
    print(f"Imported {config.head} model {package.id} {package.version}: {config.n_landmarks} landmarks, "
          f"embed dims {list(config.embed_dims)}, written to {package.path}.")
    return 0
