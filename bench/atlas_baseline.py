"""Multi-atlas registration baseline for landmark detection (the field's classic method).

For each target scan, every atlas (another annotated scan of the dataset) is registered to it by
`H3DELandmarksLib.data.registration` (skull-only images, bone from 30; rigid start search, rigid,
affine, B-spline; see that module), with the settings below (300 random rotations, 12 optimised
starts, 100 B-spline iterations: slower than the few-shot defaults). The prediction is
`fuse_estimates`: the per-landmark, per-coordinate median of the transferred points. The target's
own landmarks are never used. An atlas landmark with no bone within 2 voxels in its own scan
(KK.HlJ_ landmark 28, outside the scanned data) is not used. Leave-one-out: atlases are the other cases, exact ones first, in
cases.csv order (--atlases K takes the first K). Writes ``<case>.mrk.json`` per target and
``timing.csv`` (case, seconds, ...) into --out, for

    h3de evaluate --predictions OUT --truth DATA/landmarks --out REPORT

Development run (measured: 1.5-1.7 min per scan, one thread, MRE 0.23 mm on 2 scans):

    python bench/atlas_baseline.py --data ../shared/data/mouse_ct_atlas --out atlas_dev \
        --cases 129X1_SVJ_,C57BL6_J_ --atlases 3

Full leave-one-out on the 22 exact cases, the 42 other cases as atlases (~30 s per atlas and
CPU core at --spacing 0.28, so ~1.5 min per scan with 16 workers):

    python bench/atlas_baseline.py --data ../shared/data/mouse_ct_atlas --out atlas_loo \
        --cases exact --workers 16
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from H3DELandmarksLib.atomic import atomic_write_text
from H3DELandmarksLib.data.landmark_files import read_landmarks, write_landmarks
from H3DELandmarksLib.data.landmark_fusion import fuse_estimates
from H3DELandmarksLib.data.registration import RegistrationSettings, prepare_image, transfer_landmarks
from H3DELandmarksLib.data.volume_io import read_volume

BONE_THRESHOLD = 30.0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = RegistrationSettings(working_spacing_mm=args.spacing, threshold=BONE_THRESHOLD,
                                    bspline_mesh=args.mesh, sampling=args.sampling, random_rotations=300,
                                    optimised_starts=12, bspline_iterations=100)
    kinds = _case_kinds(args.data / "cases.csv")
    targets = _targets(kinds, args.cases)
    pool = [case for case, kind in kinds.items() if kind == "exact"] + [
        case for case, kind in kinds.items() if kind != "exact"
    ]
    timing = []
    with ProcessPoolExecutor(args.workers, initializer=_set_threads, initargs=(args.threads,)) as workers:
        for target in targets:
            start = time.perf_counter()
            atlases = [case for case in pool if case != target][: args.atlases]
            jobs = [(args.data, target, atlas, settings) for atlas in atlases]
            transferred = []
            for atlas, (points, metric) in zip(atlases, workers.map(transfer_job, jobs)):
                transferred.append(points)
                unused = int(np.isnan(points[:, 0]).sum())
                print(f"  {target} <- {atlas}: metric {metric:.4f}, {unused} landmarks not transferred", flush=True)
            names = read_landmarks(args.data / "landmarks" / f"{atlases[0]}.mrk.json").names
            write_landmarks(args.out / f"{target}.mrk.json", fuse_estimates(names, transferred).landmarks,
                            overwrite=args.overwrite)
            seconds = time.perf_counter() - start
            print(f"{target}: {seconds / 60:.1f} min with {len(atlases)} atlases", flush=True)
            timing.append({"case": target, "seconds": round(seconds, 1), "atlases": len(atlases),
                           "spacing_mm": settings.working_spacing_mm, "workers": args.workers,
                           "threads": args.threads})
            _write_timing(args.out / "timing.csv", timing)
    return 0


def transfer_job(job: tuple[Path, str, str, RegistrationSettings]) -> tuple[np.ndarray, float]:
    """`transfer_landmarks` of the atlas case onto the target case, in the target's landmark order."""
    data, target, atlas, settings = job
    target_volume = read_volume(data / "volumes" / f"{target}.nii.gz")
    atlas_volume = read_volume(data / "volumes" / f"{atlas}.nii.gz")
    landmarks = read_landmarks(data / "landmarks" / f"{atlas}.mrk.json")
    return transfer_landmarks(prepare_image(target_volume, settings), prepare_image(atlas_volume, settings),
                              atlas_volume, landmarks, settings)


def _set_threads(threads: int) -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _case_kinds(path: Path) -> dict[str, str]:
    """case -> "exact" / "refined" from cases.csv."""
    with path.open(newline="", encoding="utf-8") as stream:
        return {row["case"]: row["landmarks"] for row in csv.DictReader(stream)}


def _targets(kinds: dict[str, str], selection: str) -> list[str]:
    items = [item.strip() for item in selection.split(",") if item.strip()]
    targets = [case for case in kinds if case in items or kinds[case] in items]
    if not targets:
        raise SystemExit(f"No case matches --cases {selection!r}.")
    return targets


def _write_timing(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue(), overwrite=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="mouse_ct_atlas folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for <case>.mrk.json and timing.csv")
    parser.add_argument("--cases", default="exact", help="target cases: names or 'exact' (default)")
    parser.add_argument("--atlases", type=int, help="use at most K atlases per target (default: all others)")
    parser.add_argument("--spacing", type=float, default=0.28, help="working voxel size (mm)")
    parser.add_argument("--mesh", type=int, default=5, help="B-spline control mesh size per axis")
    parser.add_argument("--sampling", type=float, default=0.1, help="fraction of mask voxels sampled")
    parser.add_argument("--workers", type=int, default=1, help="atlases registered in parallel processes")
    parser.add_argument("--threads", type=int, default=1, help="ITK threads per worker")
    parser.add_argument("--overwrite", action="store_true", help="replace existing predictions")
    return parser


if __name__ == "__main__":
    sys.exit(main())
