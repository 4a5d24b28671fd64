"""Give a trained model package the reference patches of its own training cases, as a new version.

Packages trained since patch matching (`data.patch_matching`) carry them already; this brings an
older package up to date without training again: the patches of up to `MAX_REFERENCES` of the
training cases (the manifest's ``train_cases``, read from the dataset with the recipe's
absences), spread evenly over them. The weights and everything else stay; the version changes.
This is how mouse-skull-45 2.0.0 was made from 1.1.0 (in the git history before 2.0.0 replaced it):

    python bench/add_reference_patches.py --model Resources/Models/mouse-skull-45-1.1.0 \\
        --data ../shared/data/mouse_ct_atlas --version 2.0.0 --out Resources/Models/mouse-skull-45-2.0.0
"""

from __future__ import annotations

import argparse
import copy
import sys

from H3DELandmarksLib.data.datasets import GenericDataset, mark_absent, match_landmarks
from H3DELandmarksLib.errors import H3DEError
from H3DELandmarksLib.registry import read_package, write_package
from H3DELandmarksLib.training.packaging import MAX_REFERENCES, case_patches


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        package = read_package(args.model)
        manifest = copy.deepcopy(package.manifest)
        training = manifest["training"]
        absent = training["recipe"].get("data", {}).get("absent", {})
        dataset = GenericDataset(args.data)
        cases = sorted(training["data"].get("train_cases", []))

        def load(case: str):
            volume, landmarks = dataset.load(case)
            landmarks = match_landmarks(landmarks, package.landmark_names, case)
            return volume, mark_absent(landmarks, absent.get(case, []), case)

        matching, references = case_patches(cases, load)
        if matching is None:
            raise H3DEError(f"{args.data} has no training case of {package.id} to take reference patches from.")
        manifest.update(version=args.version, patch_matching=matching)
        write_package(args.out, manifest, package.state_dict(), overwrite=args.overwrite, references=references)
    except H3DEError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.out}: {package.id} {args.version} with the patches of {len(references)} of its "
          f"{len(cases)} training cases ({', '.join(matching['references'])}).")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the package to start from")
    parser.add_argument("--data", required=True, help="its training dataset (generic layout)")
    parser.add_argument("--version", required=True, help="the new package's version")
    parser.add_argument("--out", required=True, help="folder of the new package")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.epilog = f"At most {MAX_REFERENCES} references are kept."
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
