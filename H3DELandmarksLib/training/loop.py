"""The training loop: every stage of a model in turn, checkpointed and resumable, then the package.

Per stage: a fresh network (weights seeded), AdamW with linear warm-up then cosine decay, mixed
precision on a GPU only, gradient clipping, one validation per epoch (loss and mean radial error
in mm), early stopping on the validation loss, the best weights kept for the package.

Reproducibility: every random choice of a training sample comes from a generator seeded with
(seed, stage, epoch, sample), the epoch's case order from (seed, stage, epoch), and the initial
weights from (seed, stage), so a run resumed from a checkpoint (written after every epoch, and
when `max_minutes` runs out, mid-epoch) continues bit-exactly on the same device and thread
count as if it had never stopped (on a GPU, up to its non-deterministic kernels).

Several processes started by torchrun train one model with DistributedDataParallel (see
`distributed`): the same global batch, schedule and sample seeds; rank 0 validates and writes
every file; a checkpoint resumes with any number of processes.

Resuming a finished run writes its package again, from the same weights, with the inference-only
stage settings of the configuration it is given (see `StageConfig`).

Files in the output folder: ``checkpoint.pt``, ``training_log.csv`` (epoch, stage, train_loss,
val_loss, val_mre_mm, lr, seconds), ``cache/`` (the cases), ``package/`` (the model package).
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

from ..atomic import atomic_write_text, remove_directory
from ..data.landmarks import Landmarks
from ..data.preprocessing import IntensityMap
from ..device import autocast_dtype, resolve_device, set_threads
from ..errors import CheckpointError
from ..model.decoding import decode_heatmaps, decode_proposals
from ..model.network import H3DENet
from .checkpoint import load_checkpoint, save_checkpoint
from .config import StageConfig, TrainingConfig, TrainingConfigError
from .data import TrainingData
from .distributed import DistributedContext, distributed_context
from .initialization import InitialModel
from .losses import adaptive_wing_loss, hnm_heatmap_loss, proposal_loss, weighted_mse_loss
from .packaging import build_manifest, reference_patches, write_trained_package
from .sampling import Sample, StageSampler
from .targets import heatmap_targets, proposal_targets

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "training_log.csv"
CACHE_DIR = "cache"
PACKAGE_DIR = "package"
LOG_COLUMNS = ("epoch", "stage", "train_loss", "val_loss", "val_mre_mm", "lr", "seconds")


@dataclass(frozen=True)
class TrainingResult:
    """How a call to `train` ended.

    Attributes:
        finished: True when every stage is done and the package is written; False when the
            time limit stopped the run (resume it with ``resume=True``).
        output: the output folder; package: the package folder when finished, or when the time
            limit stopped the run after every stage had validated weights (written from the best
            of them); None otherwise.
        metrics: validation metrics per finished stage.
    """

    finished: bool
    output: Path
    package: Path | None
    metrics: dict


def train(config: TrainingConfig, output_dir: str | os.PathLike, data_root: str | os.PathLike | None = None,
          device: str = "auto", threads: int | None = None, max_minutes: float | None = None,
          resume: bool = False, overwrite: bool = False, progress: bool = True,
          command: object = "H3DELandmarksLib.training.loop.train",
          initial: InitialModel | None = None,
          pseudo_labels: dict[str, Landmarks] | None = None,
          cache_dir: str | os.PathLike | None = None) -> TrainingResult:
    """Train every stage of `config` and write the model package to ``output_dir/package``.

    Args:
        config: the training configuration.
        output_dir: folder for the checkpoint, log, cache and package.
        data_root: the dataset folder (``--data``); not needed for phantoms.
        device: "auto", "cuda", "mps" or "cpu".
        threads: CPU threads for PyTorch and SimpleITK (None: their defaults).
        max_minutes: stop cleanly (checkpoint written) once this much time has passed.
        resume: continue from ``output_dir/checkpoint.pt``.
        overwrite: start over even though a checkpoint or package exists.
        progress: show tqdm progress bars.
        command: recorded in the manifest (the command line; the CLI passes its own).
        initial: the model a fine-tuning run starts from (its stage weights and mean shape).
        pseudo_labels: landmarks of unannotated cases (few-shot training, see `TrainingData`).
        cache_dir: the case cache (default ``output_dir/cache``).

    Under torchrun (or in a process group the caller initialised) every process calls this with
    the same arguments; see `distributed`.
    """
    started = time.monotonic()
    deadline = None if max_minutes is None else started + 60.0 * max_minutes
    output = Path(output_dir)
    set_threads(threads)
    if threads is not None:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    with distributed_context(resolve_device(device)) as (context, torch_device):
        state = _initial_state(config, output / CHECKPOINT_FILE, resume, overwrite)
        with context.main_first():
            if context.is_main and overwrite and not resume:
                _remove_run(output)
            names = state["landmarks"]["names"] if state else None
            descriptions = state["landmarks"]["descriptions"] if state else None
            data = TrainingData(config, cache_dir or output / CACHE_DIR, data_root, names, descriptions,
                                None if initial is None else initial.mean_shape, pseudo_labels)
        if context.world_size > 1:
            for case in context.share(data.train_cases + data.validation_cases):
                data.case(case)
            context.barrier()
        if state is None:
            state = _fresh_state(config, data, initial)
        while state["stage_index"] < len(config.stages):
            trainer = _StageTrainer(config, state, data, torch_device, output, progress and context.is_main, context)
            if not trainer.run(deadline):
                return _stopped_early(config, state, data, output, command, torch_device, context)
        package = output / PACKAGE_DIR
        with context.main_first():
            if context.is_main and (resume or not package.exists()):
                _write_run_package(package, config, state, data, state["metrics"], command, torch_device, context)
    return TrainingResult(True, output, package, state["metrics"])


def _stopped_early(config: TrainingConfig, state: dict, data: TrainingData, output: Path, command: object,
                   device: torch.device, context: DistributedContext) -> TrainingResult:
    """The result of a run the time limit stopped. Once every stage has validated weights, the
    package is written from the best of them (a stage still training is marked
    ``stopped_early`` in its metrics), so a short run can be tried at once; resuming finishes it."""
    running = config.stages[state["stage_index"]].name
    package = None
    if all(stage.name in state["best"] for stage in config.stages):
        progress = state["progress"]
        metrics = {**state["metrics"], running: {"epochs_trained": progress["epoch"],
                                                 "best_epoch": progress["best_epoch"], "stopped_early": True,
                                                 **progress["best_metrics"]}}
        package = output / PACKAGE_DIR
        with context.main_first():
            if context.is_main:
                _write_run_package(package, config, state, data, metrics, command, device, context)
    return TrainingResult(False, output, package, state["metrics"])


def _write_run_package(package: Path, config: TrainingConfig, state: dict, data: TrainingData, metrics: dict,
                       command: object, device: torch.device, context: DistributedContext) -> None:
    """Write the run's package from the best weights of every stage, with reference patches."""
    matching, references = reference_patches(data)
    manifest = build_manifest(
        config, data.names, data.descriptions, metrics, data.provenance(), command,
        {"device": str(device), "seconds": round(state["elapsed_s"], 1), "seed": config.seed,
         "processes": context.world_size},
        data.mean_shape if config.shape_aligned else None, matching,
    )
    write_trained_package(package, manifest, state["best"], overwrite=True, references=references)


def _remove_run(output: Path) -> None:
    """Delete the checkpoint, log and package of an earlier run in `output`."""
    for stale in (output / CHECKPOINT_FILE, output / LOG_FILE, output / PACKAGE_DIR):
        if stale.is_file():
            stale.unlink()
        elif stale.is_dir():
            remove_directory(stale)


def _initial_state(config: TrainingConfig, path: Path, resume: bool, overwrite: bool) -> dict | None:
    if resume:
        state = load_checkpoint(path)
        if state["config_sha256"] != config.sha256:
            raise CheckpointError(
                f"{path} was written by a different training configuration; resume with the same file or start "
                "over with --overwrite."
            )
        return state
    if path.exists() and not overwrite:
        raise CheckpointError(
            f"{path.parent} already holds a training run; pass --resume to continue it or --overwrite to start over."
        )
    return None


def _fresh_state(config: TrainingConfig, data: TrainingData, initial: InitialModel | None) -> dict:
    networks = {} if initial is None else {stage.name: dict(initial.networks[stage.name]) for stage in config.stages
                                           if stage.name in initial.networks}
    return {
        "config_sha256": config.sha256,
        "landmarks": {"names": data.names, "descriptions": data.descriptions},
        "stage_index": 0,
        "progress": _fresh_progress(),
        "networks": networks,
        "best": {},
        "optimizer": None,
        "scaler": None,
        "log": [],
        "metrics": {},
        "elapsed_s": 0.0,
    }


def _fresh_progress() -> dict:
    return {"epoch": 0, "step": 0, "global_step": 0, "best_loss": math.inf, "best_epoch": -1,
            "bad_epochs": 0, "loss_sum": 0.0, "loss_count": 0, "seconds": 0.0, "best_metrics": {}}


class _StageTrainer:
    """Trains the stage ``state["stage_index"]`` from wherever `state` left it."""

    def __init__(self, config: TrainingConfig, state: dict, data: TrainingData, device: torch.device,
                 output: Path, progress: bool, context: DistributedContext) -> None:
        self.config, self.state, self.data, self.device = config, state, data, device
        self.output, self.show_progress, self.context = output, progress, context
        self.index = state["stage_index"]
        self.stage: StageConfig = config.stages[self.index]
        self.progress = state["progress"]
        torch.manual_seed(_seed(config.seed, self.index))
        self.net = H3DENet(config.network_config(len(data.names)))
        if self.stage.name in state["networks"]:
            self.net.load_state_dict(state["networks"][self.stage.name])
        self.net.to(device)
        self.model = context.wrap(self.net, device)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=self.stage.lr,
                                           weight_decay=self.stage.weight_decay)
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.amp_dtype = autocast_dtype(device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        if state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        preprocessing = config.preprocessing
        self.sampler = StageSampler(self.stage, preprocessing["orientation"],
                                    IntensityMap.from_manifest(preprocessing["intensity"]),
                                    config.stage_augmentation(self.stage),
                                    data.mean_shape if self.stage.orientation == "shape-aligned" else None)
        self.cases = [case for case in data.train_cases
                      if not self.stage.local or data.case(case)[1].present.any()]
        per_case = self.stage.patches_per_case if self.stage.local else 1
        self.samples_per_epoch = self.stage.samples_per_epoch or len(self.cases) * per_case
        self.steps_per_epoch = math.ceil(self.samples_per_epoch / self.stage.batch_size)
        self.total_steps = self.stage.epochs * self.steps_per_epoch
        self.warmup_steps = self.stage.warmup_epochs * self.steps_per_epoch

    def run(self, deadline: float | None) -> bool:
        """Train until the stage ends (True) or the deadline passes (False); checkpoints either way."""
        validation = self._validation_samples() if self.context.is_main else []
        if not self.context.from_main(len(validation)):
            raise TrainingConfigError(
                f"The validation cases give no {self.stage.name}-stage patches (no present landmarks).")
        clock = time.monotonic()
        while True:
            epoch = self.progress["epoch"]
            order = self._epoch_order(epoch)
            with tqdm(total=self.steps_per_epoch, initial=self.progress["step"], disable=not self.show_progress,
                      desc=f"{self.stage.name} {epoch + 1}/{self.stage.epochs}", unit="step", leave=False) as bar:
                while self.progress["step"] < self.steps_per_epoch:
                    step_started = time.monotonic()
                    loss, count = self._train_step(order, epoch)
                    self.progress["seconds"] += time.monotonic() - step_started
                    self.progress["loss_sum"] += loss * count
                    self.progress["loss_count"] += count
                    self.progress["step"] += 1
                    self.progress["global_step"] += 1
                    bar.update()
                    bar.set_postfix(loss=f"{self.progress['loss_sum'] / self.progress['loss_count']:.4f}")
                    if deadline is not None and self.context.any(time.monotonic() > deadline, self.device):
                        self._save(clock)
                        return False
            finished = self._end_epoch(validation)
            clock = self._save(clock)
            if finished:
                return True

    def _train_step(self, order: list[str], epoch: int) -> tuple[float, int]:
        """One optimiser step on the global batch; returns its mean loss and size.

        With several processes each takes its share of the batch, its loss weighted by that
        share (a rank left without a sample runs the batch's first with weight 0, so that every
        rank joins the gradient exchange)."""
        first = self.progress["step"] * self.stage.batch_size
        numbers = range(first, min(first + self.stage.batch_size, self.samples_per_epoch))
        mine = self.context.share(numbers)
        weight = len(mine) * self.context.world_size / len(numbers)
        samples = [self.sampler.training_sample(*self.data.case(order[number]),
                                                np.random.default_rng([self.config.seed, self.index, epoch, number]))
                   for number in mine or numbers[:1]]
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(self.progress["global_step"])
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            output = self.model(_batch(samples, self.device))
        loss = self._loss(output.float(), samples)
        self.scaler.scale(loss * weight).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.stage.gradient_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return self.context.mean(float(loss.detach()), len(mine), self.device), len(numbers)

    def _lr(self, step: int) -> float:
        """Linear warm-up to lr, then cosine decay to lr x min_lr_fraction."""
        stage = self.stage
        if step < self.warmup_steps:
            return stage.lr * (step + 1) / (self.warmup_steps + 1)
        progress = (step - self.warmup_steps) / max(1.0, self.total_steps - self.warmup_steps)
        floor = stage.lr * stage.min_lr_fraction
        return floor + (stage.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def _loss(self, output: torch.Tensor, samples: list[Sample]) -> torch.Tensor:
        stage = self.stage
        weights = torch.from_numpy(np.stack([sample.weights for sample in samples])).float()
        if stage.loss == "proposals":
            if bool((weights != 1).any()):
                raise TrainingConfigError("The proposal head cannot weight pseudo-labels; use a heatmap loss.")
            targets = [proposal_targets(torch.from_numpy(s.points), torch.from_numpy(s.present),
                                        tuple(output.shape[1:4]), self.net.config.anchor_radii,
                                        self.net.output_stride) for s in samples]
            return proposal_loss(output, targets)
        target = stage.heatmap_target
        targets = torch.stack([heatmap_targets(torch.from_numpy(s.points), torch.from_numpy(s.present),
                                               tuple(output.shape[2:]), self.net.output_stride, target)
                               for s in samples]).to(output.device)
        if stage.loss == "hnm":
            return hnm_heatmap_loss(output, targets, target.radius, weights=weights)
        if stage.loss == "weighted_mse":
            return weighted_mse_loss(output, targets, weights=weights)
        return adaptive_wing_loss(output, targets, weights=weights)

    def _epoch_order(self, epoch: int) -> list[str]:
        """The case of every sample of the epoch: shuffled passes over the training cases."""
        rng = np.random.default_rng([self.config.seed, self.index, epoch])
        passes = math.ceil(self.samples_per_epoch / len(self.cases))
        order = [self.cases[i] for _ in range(passes) for i in rng.permutation(len(self.cases))]
        return order[:self.samples_per_epoch]

    def _validation_samples(self) -> list[Sample]:
        samples = []
        for number, case in enumerate(self.data.validation_cases):
            samples += self.sampler.validation_samples(*self.data.case(case), _seed(self.config.seed, 1000 + number))
        return samples

    def _validate(self, samples: list[Sample]) -> tuple[float, float]:
        """Mean validation loss and mean radial error (mm) of the stage's validation patches."""
        self.net.eval()
        total, errors = 0.0, []
        with torch.no_grad():
            for first in range(0, len(samples), self.stage.batch_size):
                batch = samples[first:first + self.stage.batch_size]
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    output = self.net(_batch(batch, self.device))
                output = output.float()
                total += float(self._loss(output, batch)) * len(batch)
                errors += [self._radial_error(prediction, sample) for prediction, sample in zip(output, batch)]
        errors = [error for error in errors if np.isfinite(error)]
        return total / max(1, len(samples)), float(np.mean(errors)) if errors else math.nan

    def _radial_error(self, prediction: torch.Tensor, sample: Sample) -> float:
        """Mean error (mm) over the sample's present landmarks, or of its focus landmark."""
        if self.stage.loss == "proposals":
            coordinates, _ = decode_proposals(prediction, self.net.config.anchor_radii, self.net.output_stride)
        else:
            coordinates, _ = decode_heatmaps(prediction, self.net.output_stride, self.stage.heatmap_target.peak)
        errors = np.linalg.norm((coordinates.cpu().numpy() - sample.points) * sample.spacing, axis=1)
        scored = sample.present.copy()
        if sample.focus is not None:
            scored[:] = False
            scored[sample.focus] = sample.present[sample.focus]
        return float(errors[scored].mean()) if scored.any() else math.nan

    def _end_epoch(self, validation: list[Sample]) -> bool:
        """Validate, log, keep the best weights; True when the stage is over."""
        progress = self.progress
        validation_started = time.monotonic()
        val_loss, val_mre = self.context.from_main(self._validate(validation) if self.context.is_main else None)
        seconds = progress["seconds"] + time.monotonic() - validation_started
        train_loss = progress["loss_sum"] / max(1, progress["loss_count"])
        row = {"epoch": progress["epoch"] + 1, "stage": self.stage.name, "train_loss": f"{train_loss:.6g}",
               "val_loss": f"{val_loss:.6g}", "val_mre_mm": f"{val_mre:.4g}",
               "lr": f"{self.optimizer.param_groups[0]['lr']:.3g}", "seconds": f"{seconds:.1f}"}
        self.state["log"].append(row)
        if self.context.is_main:
            _write_log(self.output / LOG_FILE, self.state["log"])
        if self.show_progress:
            tqdm.write(f"{self.stage.name} epoch {row['epoch']}/{self.stage.epochs}: train loss {row['train_loss']}, "
                       f"validation loss {row['val_loss']}, MRE {row['val_mre_mm']} mm")
        if val_loss < progress["best_loss"] or self.stage.name not in self.state["best"]:
            progress.update(best_loss=val_loss, best_epoch=progress["epoch"] + 1, bad_epochs=0,
                            best_metrics={"val_loss": val_loss, "val_mre_mm": val_mre})
            self.state["best"][self.stage.name] = {key: value.detach().cpu().clone()
                                                   for key, value in self.net.state_dict().items()}
        else:
            progress["bad_epochs"] += 1
        progress.update(epoch=progress["epoch"] + 1, step=0, loss_sum=0.0, loss_count=0, seconds=0.0)
        over = progress["epoch"] >= self.stage.epochs or progress["bad_epochs"] >= self.stage.patience
        if over:
            self.state["metrics"][self.stage.name] = {
                "epochs_trained": progress["epoch"],
                "best_epoch": progress["best_epoch"],
                "validation_patches": len(validation),
                "validation_cases": len(self.data.validation_cases),
                "training_cases": len(self.cases),
                **progress["best_metrics"],
            }
        return over

    def _save(self, since: float) -> float:
        """Checkpoint the run (the next stage's start when this one is over); returns the time."""
        now = time.monotonic()
        state = self.state
        state["elapsed_s"] += now - since
        over = self.stage.name in state["metrics"]
        if over:
            state.update(stage_index=self.index + 1, progress=_fresh_progress(), optimizer=None, scaler=None)
            state["networks"].pop(self.stage.name, None)
        else:
            state["networks"][self.stage.name] = {key: value.detach().cpu()
                                                  for key, value in self.net.state_dict().items()}
            state.update(optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict())
        if self.context.is_main:
            save_checkpoint(self.output / CHECKPOINT_FILE, state)
        return now


def _batch(samples: list[Sample], device: torch.device) -> torch.Tensor:
    """(B, 1, X, Y, Z) float32 input on `device`."""
    return torch.from_numpy(np.stack([sample.image for sample in samples])[:, None]).to(device)


def _seed(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def _write_log(path: Path, rows: list[dict]) -> None:
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=LOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, stream.getvalue(), overwrite=True)
