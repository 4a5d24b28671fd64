"""How patch matching's settings change the few-shot labels, on the atlas's `refined` cases.

Reads the registrations a 5-shot (or 1-shot) run of `fewshot_mouse.py` cached (``RUN/train``;
a pair not cached is registered first), sharpens each reference's landmarks with every setting of
the grid below (sizes in voxels of the scans), fuses them as `h3de train` does and prints the
mean error of the fused labels on the unannotated `refined` cases. Settings are chosen here; the
`exact` cases are only reported (`fewshot_mouse.py pseudo-labels`). The product's default
(template half-size 2.5, search 2, step 0.5 voxel) was chosen with this grid (on run 4's
registrations: 0.275 mm alone, 0.208 with the default, 0.210-0.239 with the others):

    python bench/patch_matching_sweep.py --shots 5 --run runs/fewshot-5
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from fewshot_mouse import ATLAS, FINE_SPACING_MM, REFERENCES, prepare, registered_estimates
from fewshot_report import case_error
from H3DELandmarksLib.data.patch_matching import MatchSettings
from H3DELandmarksLib.training.pseudo_labels import matched_estimates, registration_labels

GRID = [(2.5, 2.0, 0.5), (2.5, 2.0, 1.0), (1.5, 2.0, 0.5), (5.0, 2.0, 0.5), (2.5, 1.5, 0.5), (2.5, 3.0, 0.5),
        (7.0, 2.0, 1.0)]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    atlas, run = args.atlas.resolve(), args.run.resolve()
    data = prepare(atlas, run / "data", REFERENCES[args.shots])
    with open(atlas / "cases.csv", encoding="utf-8") as table:
        refined = [row["case"] for row in csv.DictReader(table) if row["landmarks"] == "refined"]
    references, targets, first, estimates = registered_estimates(data, run / "train", refined, args.threads)
    voxel = float(min(targets[0].load().spacing))
    rows = [("registration alone", estimates, 0.0)]
    for half, search, step in GRID:
        started = time.perf_counter()
        matched = matched_estimates(references, targets, estimates,
                                    MatchSettings(half * voxel, search * voxel, step * voxel), progress=False)
        rows.append((f"half {half:g}, search {search:g}, step {step:g} voxels", matched,
                     time.perf_counter() - started))
    print(f"{len(targets)} refined cases, {len(references)} references, voxels {voxel:.3f} mm")
    for name, found, seconds in rows:
        labels = registration_labels(first.names, first.descriptions, found, FINE_SPACING_MM)
        error = np.mean([case_error(labels[target.name], atlas, target.name) for target in targets])
        print(f"{name:42s} {error:.4f} mm   {seconds:5.1f} s")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, choices=sorted(REFERENCES), default=5)
    parser.add_argument("--run", type=Path, required=True, help="the fewshot_mouse.py run folder")
    parser.add_argument("--atlas", type=Path, default=ATLAS, help="mouse_ct_atlas folder (default: ../shared)")
    parser.add_argument("--threads", type=int, help="registration workers for pairs not cached")
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
