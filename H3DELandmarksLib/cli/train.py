"""`h3de train`: train every stage of a model, from the data alone or from a recipe file.

`h3de train --data DIR --output OUT` derives the recipe from the annotated cases of DIR (see
`training.recipe`) and writes it to ``OUT/recipe.json``; a recipe file (`--config`, or the
positional argument) that is complete is used as it is, a partial one overrides those parts of
the derived recipe; given both, the `--config` file overrides parts of the positional one
(``h3de train Resources/Training/mouse-skull-45.json --config bench/lever-refine.json``).
`--init-from MODEL` fine-tunes a model on DIR instead (its recipe, landmark set and weights). The
output folder keeps the checkpoint (after every epoch), the per-epoch CSV log, the case cache
and, at the end, the model package in ``OUT/package``. `--max-minutes` stops cleanly with a
checkpoint and `--resume` continues exactly where the run stopped, with the recipe in
``OUT/recipe.json``.

Under ``torchrun --nproc-per-node N -m H3DELandmarksLib.cli.main train ...`` the N processes train
one model with DistributedDataParallel; rank 0 alone prints and writes files.

When DIR has unannotated scans (volumes without a landmark file), or `--reference-template` is
given, the run is few-shot (`training.fewshot`): the annotated cases (or the template) are
registered onto the unannotated scans, the networks train on the pseudo-labels for `--rounds`
rounds, each round's model re-labelling the scans for the next; a derived recipe then plans the
first round's epochs in what `--max-minutes` leaves after the registration of the pairs not yet
registered and the re-labelling, less the later rounds, which train a third as long
(`fewshot.round_minutes`, from measured costs). A
few-shot run is one process (not under torchrun).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..atomic import atomic_write_text, check_writable_folder
from ..data.datasets import GenericDataset
from ..data.registration import RegistrationSettings
from ..device import DEVICES
from ..json_document import read_json_document
from ..registry.resolve import resolve_model
from ..training.cache import CaseCache
from ..training.config import TrainingConfig, TrainingConfigError, parse_training_config
from ..training.distributed import is_main_process
from ..training.fewshot import (
    ROUNDS_DIR,
    STATE_FILE,
    FewShotSettings,
    few_shot_outcome,
    few_shot_summary,
    needs_pseudo_labels,
    registration_workers,
    round_minutes,
    train_few_shot,
)
from ..training.initialization import InitialModel, fine_tuning_recipe, load_initial_model
from ..training.loop import CACHE_DIR, CHECKPOINT_FILE, train
from ..training.recipe import derive_recipe, merge_recipe, model_id_for, summarize_data
from .parent_guard import add_option as add_parent_guard_option
from .parent_guard import stop_when_stdin_closes

RECIPE_FILE = "recipe.json"
COMPLETE_SECTIONS = ("model", "architecture", "preprocessing", "stages", "data")


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    """Register the `train` sub-command."""
    parser = subparsers.add_parser(
        "train",
        help=summary,
        description="Train a model and write its model package to OUTPUT/package. With only --data, the recipe "
                    "is derived from the annotated cases.",
    )
    parser.add_argument("config", type=Path, nargs="?", help="recipe file (JSON), e.g. Resources/Training/phantom.json")
    parser.add_argument("--config", type=Path, dest="config_option", metavar="FILE",
                        help="recipe file; a partial one overrides those parts of the derived recipe, or of the "
                             "positional recipe file when one is given")
    parser.add_argument("--data", type=Path, metavar="DIR",
                        help="dataset folder: volumes/ and landmarks/ (a volume without landmarks is unannotated), "
                             "optional cases.csv")
    parser.add_argument("--output", type=Path, metavar="DIR",
                        help="folder for recipe, checkpoint, log, cache and package (default: runs/ID-VERSION)")
    parser.add_argument("--init-from", metavar="MODEL", help="fine-tune this model (id, ID@VERSION or package folder)")
    parser.add_argument("--drop-landmarks", action="store_true",
                        help="with --init-from: leave out the model's landmarks that the data does not have")
    parser.add_argument("--id", dest="model_id", metavar="ID", help="id of the new model (default: from --output)")
    parser.add_argument("--cache-dir", type=Path, metavar="DIR", help="model cache folder (for --init-from)")
    parser.add_argument("--resume", action="store_true", help="continue the run in the output folder")
    parser.add_argument("--overwrite", action="store_true", help="start over even if the output folder holds a run")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="where to train (default: auto)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads (few-shot: also the pairs registered at once; default: every core)")
    parser.add_argument("--max-minutes", type=float, metavar="M",
                        help="stop cleanly after M minutes (resume later with --resume); a derived recipe plans "
                             "its epochs to fit")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_parent_guard_option(parser)
    few_shot = parser.add_argument_group("few-shot training (when DIR has unannotated scans)")
    few_shot.add_argument("--rounds", type=int, default=2, metavar="N",
                          help="most training rounds, each re-labelling the unannotated scans into OUTPUT/labels "
                               "(default: 2; --resume with more continues a finished run)")
    few_shot.add_argument("--label-tolerance", type=float, metavar="MM",
                          help="stop once the pseudo-labels move less than this (median; default: half the finest "
                               "stage spacing)")
    few_shot.add_argument("--reference-template", nargs=2, type=Path, metavar=("VOLUME", "LANDMARKS"),
                          help="register this template and its landmarks, the only reference, onto the scans")
    few_shot.add_argument("--registration-spacing", type=float, metavar="MM",
                          help="working voxel size of the registration (default: the reference landmarks' spread / 85)")
    few_shot.add_argument("--registration-threshold", type=float, metavar="VALUE",
                          help="lowest intensity of the registered structure, e.g. bone (default: Otsu's threshold)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train; prints where the package is, or how to resume."""
    stop_when_stdin_closes(args.stop_when_stdin_closes)
    files = [file for file in (args.config, args.config_option) if file is not None]
    if not files and args.data is None:
        raise TrainingConfigError("Nothing to train on: give --data DIR (and optionally a recipe file).")
    if args.drop_landmarks and not args.init_from:
        raise TrainingConfigError("--drop-landmarks only applies with --init-from MODEL.")
    overrides = _recipe_document(files)
    output = args.output or _default_output(overrides)
    check_writable_folder(output, "--output")
    few_shot = _few_shot_settings(args)
    if few_shot is not None and args.init_from:
        raise TrainingConfigError("--init-from fine-tunes on annotated cases only; annotate the scans without "
                                  "landmark files or leave them out of DIR.")
    config, initial = _configuration(args, files, overrides, output, few_shot)
    command = _command(args, files, output, args.resume)
    if few_shot is not None:
        result = train_few_shot(config, output, args.data, few_shot, device=args.device, threads=args.threads,
                                max_minutes=args.max_minutes, resume=args.resume, overwrite=args.overwrite,
                                progress=not args.no_progress, command=command)
    else:
        result = train(config, output, data_root=args.data, device=args.device, threads=args.threads,
                       max_minutes=args.max_minutes, resume=args.resume, overwrite=args.overwrite,
                       progress=not args.no_progress, command=command, initial=initial)
    if not is_main_process():
        return 0
    metrics = ", ".join(f"{stage} {values['val_mre_mm']:.3g} mm" for stage, values in result.metrics.items()
                        if "val_mre_mm" in values)
    if result.finished:
        summary = f" (validation MRE: {metrics})" if metrics else ""
        print(f"Training finished; model package: {result.package}{summary}")
        print(f"Detect with: h3de detect SCANS --model {result.package} --out RESULTS")
    else:
        again = " ".join(_command(args, files, output, resume=True))
        if result.package:
            print(f"Stopped at the time limit; model package from the best weights so far: {result.package}")
            print(f"Try it with: h3de detect SCANS --model {result.package} --out RESULTS")
        else:
            print("Stopped at the time limit before every stage had finished an epoch; no model package yet.")
        print(f"The checkpoint is in {output}; continue with: {again}")
    if few_shot is not None:
        for line in few_shot_outcome(output):
            print(line)
    return 0


def _few_shot_settings(args: argparse.Namespace) -> FewShotSettings | None:
    """The few-shot settings when the run is few-shot, else None."""
    if args.rounds < 1:
        raise TrainingConfigError("--rounds must be at least 1.")
    settings = FewShotSettings(
        rounds=args.rounds, tolerance_mm=args.label_tolerance,
        registration=RegistrationSettings(working_spacing_mm=args.registration_spacing,
                                          threshold=args.registration_threshold),
        template=tuple(args.reference_template) if args.reference_template else None)
    if settings.template is not None and args.data is None:
        raise TrainingConfigError("--reference-template needs --data DIR with the scans to label.")
    return settings if needs_pseudo_labels(args.data, settings) else None


def _configuration(args: argparse.Namespace, files: list[Path], overrides: dict | None, output: Path,
                   few_shot: FewShotSettings | None) -> tuple[TrainingConfig, InitialModel | None]:
    """The run's configuration (recorded in OUTPUT/recipe.json) and the model it starts from;
    `overrides` is the recipe files' content."""
    initial = None
    if args.init_from:
        names = _data_landmark_names(args.data) if args.data else None
        initial = load_initial_model(resolve_model(args.init_from, args.cache_dir), names, args.drop_landmarks)
    recorded = output / RECIPE_FILE
    if args.resume and recorded.is_file():
        raw = read_json_document(recorded, TrainingConfigError, "Recorded recipe")
        return parse_training_config(raw, str(recorded)), initial
    if overrides is not None and initial is None and all(section in overrides for section in COMPLETE_SECTIONS):
        raw = overrides
    else:
        raw = _derived(args, output, initial, few_shot)
        if overrides is not None:
            raw = merge_recipe(raw, overrides)
    config = parse_training_config(raw, " with ".join(map(str, files)) or "the derived recipe")
    if is_main_process() and not args.resume and (args.overwrite or not _holds_run(output)):
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_text(recorded, json.dumps(raw, indent=2) + "\n", overwrite=True)
    return config, initial


def _holds_run(output: Path) -> bool:
    """Whether `output` holds a training run whose recorded recipe a new run must not replace
    (a recipe alone, left by a run stopped before its first checkpoint, is replaced)."""
    return any((output / name).exists() for name in (CHECKPOINT_FILE, STATE_FILE, ROUNDS_DIR))


def _derived(args: argparse.Namespace, output: Path, initial: InitialModel | None,
             few_shot: FewShotSettings | None) -> dict:
    """The recipe derived from --data (retargeted from the initial model when fine-tuning)."""
    source = GenericDataset(args.data)
    cache = CaseCache(source, output / CACHE_DIR)
    model_id = args.model_id or model_id_for(output.name)
    if few_shot is None:
        recipe = derive_recipe(summarize_data(cache.get, source.cases()), model_id, args.max_minutes)
    else:
        budget = None if args.max_minutes is None else round_minutes(
            source, few_shot, output, args.max_minutes, registration_workers(args.threads))
        recipe = derive_recipe(few_shot_summary(source, cache.get, few_shot), model_id, budget)
    if initial is None:
        return recipe
    return fine_tuning_recipe(initial, recipe["data"], model_id)


def _data_landmark_names(root: Path) -> set[str]:
    """Landmark names that every annotated case of the dataset at `root` has."""
    source = GenericDataset(root)
    names = None
    for case in source.cases():
        case_names = set(source.load_landmarks(case).names)
        names = case_names if names is None else names & case_names
    return names or set()


def _recipe_document(files: list[Path]) -> dict | None:
    """The recipe files' JSON objects, each later one overriding parts of the one before (None
    without a file)."""
    document = None
    for file in files:
        part = read_json_document(file, TrainingConfigError, "Training configuration")
        if not isinstance(part, dict):
            raise TrainingConfigError(f"{file} must hold a JSON object.")
        document = part if document is None else merge_recipe(document, part)
    return document


def _default_output(recipe: dict | None) -> Path:
    model = (recipe or {}).get("model", {})
    if isinstance(model, dict) and "id" in model and "version" in model:
        return Path("runs") / f"{model['id']}-{model['version']}"
    raise TrainingConfigError("Give --output DIR: the folder for the run and its model package.")


def _command(args: argparse.Namespace, files: list[Path], output: Path, resume: bool) -> list[str]:
    """The command line of this run (recorded in the manifest), resuming or not."""
    recipes = [str(file) for file in files[:1]] + [part for file in files[1:] for part in ("--config", str(file))]
    command = ["h3de", "train", *recipes, "--output", str(output)]
    for flag, value in (("--data", args.data), ("--init-from", args.init_from), ("--id", args.model_id),
                        ("--threads", args.threads)):
        if value:
            command += [flag, str(value)]
    if args.drop_landmarks:
        command.append("--drop-landmarks")
    if args.rounds != 2:
        command += ["--rounds", str(args.rounds)]
    for flag, value in (("--label-tolerance", args.label_tolerance), ("--registration-spacing",
                        args.registration_spacing), ("--registration-threshold", args.registration_threshold)):
        if value is not None:
            command += [flag, f"{value:g}"]
    if args.reference_template:
        command += ["--reference-template", *(str(path) for path in args.reference_template)]
    if args.device != "auto":
        command += ["--device", args.device]
    if args.max_minutes is not None:
        command += ["--max-minutes", f"{args.max_minutes:g}"]
    if resume:
        command.append("--resume")
    return command
