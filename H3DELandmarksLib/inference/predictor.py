"""The landmark predictor: whole volume at the coarse spacing, then local patches, stage by stage.

Stage 1 (the manifest's "coarse" stage) runs on the whole volume resampled to the coarse spacing,
in overlapping windows when it is larger than the coarse patch, and gives a coarse position per
landmark. Each local stage after it ("fine", then the optional "refine" at a still finer spacing)
resamples patches at its spacing centred on the previous stage's positions, a few landmarks per
patch when they fit, and decodes each landmark from its own channel in its own patch: the refined
position and the confidence; with ``passes`` > 1 it runs again centred on its own positions. The
last stage's positions and confidences are the detection's, and its reliability signals are
those of the detection. A shape-aligned local stage fits the manifest's mean shape to the
positions found so far (`data.shape`) before each pass: its patches take the fitted pose, the
outliers of the fit start from their fitted positions, and with ``shape_prior_mm`` each landmark's
peak is chosen under a Gaussian prior around its fitted position (look-alikes such as a
structure's mirror image lose against the peak where the skull's shape expects the landmark).
With ``tta_rotations`` the last pass runs again with its patch axes tilted by ``tta_degrees``;
each position is the median of those runs and their spread a signal of its reliability.
A package with reference patches (``patch_matching``) then moves each position to the median of
the references' best patch matches around it at native resolution (`data.patch_matching`; on the
mouse atlas's held-out cases 0.205 -> 0.14 mm), their spread another reliability signal.
A manifest with a single stage runs it in windows over the whole volume. Each detection also gives
per-point signals of its own reliability (`uncertainty`), which a manifest's fitted error model
turns into an expected error in millimetres. No ground truth is used
anywhere. Positions are LPS millimetres; the network sees (B, 1, X, Y, Z) with X, Y, Z the patch's
i, j, k axes.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from torch import nn

from ..data.landmark_fusion import fuse_estimates
from ..data.landmarks import Landmarks
from ..data.patch_matching import LandmarkPatches, MatchSettings, match_patches, target_regions
from ..data.preprocessing import IntensityMap, extract_patch, grid_window_centre, stage_direction, stage_grid
from ..data.shape import robust_shape_fit
from ..data.volume import Volume
from ..device import default_threads, precision_context, resolve_device, set_threads
from ..errors import DetectionCancelled, H3DEError
from ..model.config import H3DEConfig
from ..model.decoding import decode_heatmaps, decode_proposals
from ..model.heatmap_grid import squared_distances
from ..registry import resolve_model
from ..registry.manifest import validate_manifest
from .package_loading import load_stage_networks
from .plausibility import check_volume_fits_model
from .tiling import PeakSelection, group_landmarks, plan_windows
from .uncertainty import ErrorModel

ProgressCallback = Callable[[str, float], None]
# Share of the progress bar taken by the coarse stage when local stages follow (they share the rest).
COARSE_SHARE = 0.3
GPU_BATCH_SIZE = 4


@dataclass
class Detection:
    """What one detection found.

    Attributes:
        landmarks: names, LPS positions, confidence and present/absent (an absent landmark keeps
            its best-guess position).
        model_id, model_version: the model that found them.
        timings: seconds per step: "<stage>_preprocessing" (resampling and intensity mapping),
            "<stage>_network", "<stage>_decoding" for each stage name, and "total".
        coarse_positions: (L, 3) LPS positions of the coarse stage, None without one.
        signals: per-landmark reliability signals by name (see `uncertainty`), from the last
            stage; empty for a single-stage model.
    """

    landmarks: Landmarks
    model_id: str
    model_version: str
    timings: dict[str, float] = field(default_factory=dict)
    coarse_positions: np.ndarray | None = None
    signals: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class _Peaks:
    """Positions (L, 3) LPS and confidences (L,) of one stage."""

    positions: np.ndarray
    confidence: np.ndarray


class _Progress:
    """Reports monotonically increasing overall fractions and raises when cancelled."""

    def __init__(self, callback: ProgressCallback | None, cancel: threading.Event | None) -> None:
        self.callback = callback
        self.cancel = cancel
        self.fraction = 0.0

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise DetectionCancelled("Landmark detection was cancelled.")

    def report(self, step: str, fraction: float) -> None:
        self.check()
        self.fraction = max(self.fraction, min(1.0, float(fraction)))
        if self.callback is not None:
            self.callback(step, self.fraction)


class Predictor:
    """Runs a model package's network on volumes of any orientation, spacing and size.

    Args:
        net: the network, or a dict of networks by stage name (a package of several stages has
            one per stage); ``net(x)`` maps (B, 1, X, Y, Z) to heatmaps (B, L, X/s, Y/s, Z/s) or
            proposals (B, X/4, Y/4, Z/4, A, 3 + L); ``net.output_stride`` is s.
        manifest: the package manifest (validated here): landmarks, preprocessing, threshold.
        device: "auto" (cuda, mps, cpu), "cuda", "mps" or "cpu".
        threads: CPU threads for PyTorch (None: `default_threads()`, the cores not kept busy).
        confidence_threshold: overrides the manifest's threshold below which a landmark is absent.
        batch_size: patches per forward pass (default: 1 on CPU, 4 on a GPU).
        references: the package's reference patches (`ModelPackage.reference_patches`), matched
            with the manifest's ``patch_matching`` settings; none: positions stay the network's.
    """

    def __init__(self, net: nn.Module | dict[str, nn.Module], manifest: dict, device: str = "auto",
                 threads: int | None = None,
                 confidence_threshold: float | None = None, batch_size: int | None = None,
                 references: Sequence[LandmarkPatches] = ()) -> None:
        validate_manifest(manifest)
        set_threads(default_threads() if threads is None else threads)
        self.device = resolve_device(device)
        self.manifest = manifest
        stages = [stage["name"] for stage in manifest["preprocessing"]["stages"]]
        networks = net if isinstance(net, dict) else {stage: net for stage in stages}
        missing = [stage for stage in stages if stage not in networks]
        if missing:
            raise H3DEError(f"No network was given for the {missing[0]} stage of model {manifest['id']}.")
        self.nets = {stage: networks[stage].to(self.device).eval() for stage in stages}
        self.config = H3DEConfig.from_dict(manifest["architecture"])
        self.names = [landmark["name"] for landmark in manifest["landmarks"]]
        self.descriptions = [landmark.get("description", "") for landmark in manifest["landmarks"]]
        preprocessing = manifest["preprocessing"]
        self.orientation = preprocessing["orientation"]
        self.intensity = IntensityMap.from_manifest(preprocessing["intensity"])
        self.stages = preprocessing["stages"]
        self.heatmap_peak = float(manifest.get("heatmap_peak", 1.0))
        self.mean_shape = np.array([[np.nan] * 3 if point is None else point
                                    for point in preprocessing.get("mean_shape", [])], float).reshape(-1, 3)
        threshold = manifest["confidence_threshold"] if confidence_threshold is None else confidence_threshold
        if not 0.0 <= threshold <= 1.0:
            raise H3DEError(f"The confidence threshold must lie between 0 and 1, not {threshold}.")
        self.confidence_threshold = float(threshold)
        self.batch_size = batch_size or (1 if self.device.type == "cpu" else GPU_BATCH_SIZE)
        uncertainty = manifest.get("uncertainty")
        self.error_model = None if uncertainty is None else ErrorModel.from_manifest(uncertainty)
        self.references = list(references)
        matching = manifest.get("patch_matching")
        self.match_settings = None if matching is None else MatchSettings(
            matching["half_size_mm"], matching["search_mm"], matching["step_mm"])
        if self.references and self.match_settings is None:
            raise H3DEError(f"Model {manifest['id']} has reference patches but no patch_matching settings.")

    @classmethod
    def from_model(cls, id_or_path: str | os.PathLike, device: str = "auto", threads: int | None = None,
                   cache_dir: str | os.PathLike | None = None, confidence_threshold: float | None = None,
                   batch_size: int | None = None, patch_matching: bool = True) -> "Predictor":
        """Predictor for a model package path, "ID" or "ID@VERSION" (bundled or cached, offline);
        `patch_matching` False leaves the package's reference patches unused."""
        networks = load_stage_networks(resolve_model(id_or_path, cache_dir=cache_dir))
        package = next(iter(networks.values())).package
        return cls(networks, package.manifest, device=device, threads=threads,
                   confidence_threshold=confidence_threshold, batch_size=batch_size,
                   references=package.reference_patches() if patch_matching else ())

    @property
    def model_id(self) -> str:
        return self.manifest["id"]

    @property
    def model_version(self) -> str:
        return self.manifest["version"]

    def predict(self, volume: Volume, progress: ProgressCallback | None = None,
                cancel: threading.Event | None = None) -> Detection:
        """Detect the model's landmarks in `volume`.

        `progress(step, fraction)` gets increasing overall fractions, the last one 1.0; `cancel`
        is checked between windows and patches and raises `DetectionCancelled` once set. A constant
        volume, or one whose extent is implausible for the model, is refused (`VolumeError`)
        before anything is allocated.
        """
        started = time.perf_counter()
        check_volume_fits_model(volume, self.stages[0], self.model_id)
        reporter = _Progress(progress, cancel)
        timings: dict[str, float] = defaultdict(float)
        reporter.report("start", 0.0)
        coarse_positions, signals = None, {}
        if len(self.stages) > 1:
            final = self._whole_volume(volume, self.stages[0], reporter, (0.0, COARSE_SHARE), timings)
            coarse_positions = final.positions
            local = self.stages[1:]
            share = (1.0 - COARSE_SHARE) / len(local)
            for number, stage in enumerate(local):
                span = (COARSE_SHARE + number * share, COARSE_SHARE + (number + 1) * share)
                before, final, spread = self._refine(volume, stage, final, reporter, span, timings)
            signals = self._signals(before, final, spread)
        else:
            final = self._whole_volume(volume, self.stages[0], reporter, (0.0, 1.0), timings)
        if self.references:
            with _timed(timings, "patch matching"):
                final, signals["match_spread_mm"] = self._match(volume, final, reporter)
        expected_error = None
        if self.error_model is not None and signals and set(self.error_model.features) <= set(signals):
            expected_error = self.error_model.expected_error(signals)
        landmarks = Landmarks(
            names=list(self.names),
            positions=final.positions,
            present=final.confidence >= self.confidence_threshold,
            confidence=final.confidence,
            descriptions=list(self.descriptions),
            expected_error=expected_error,
        )
        timings["total"] = time.perf_counter() - started
        reporter.report("done", 1.0)
        return Detection(landmarks, self.model_id, self.model_version, dict(timings), coarse_positions, signals)

    def _signals(self, before: _Peaks, final: _Peaks, spread: np.ndarray | None) -> dict[str, np.ndarray]:
        """Per-landmark reliability signals of the last stage of a detection (see `uncertainty`)."""
        residual = np.full(len(self.names), np.nan)
        if len(self.mean_shape):
            try:
                residual = robust_shape_fit(self.mean_shape, final.positions, final.confidence).residuals
            except ValueError:
                pass  # fewer known points than a shape fit needs: the residual stays unknown
        signals = {
            "pass_shift_mm": np.linalg.norm(final.positions - before.positions, axis=1),
            "shape_residual_mm": residual,
            "confidence": final.confidence.copy(),
        }
        if spread is not None:
            signals["tta_spread_mm"] = spread
        return signals

    def _match(self, volume: Volume, found: _Peaks, reporter: _Progress) -> tuple[_Peaks, np.ndarray]:
        """`found` moved to the median of the references' patch matches, and their spread
        (positions no reference matched stay; their spread is unknown)."""
        matched = []
        regions = target_regions(volume, found.positions, self.match_settings)
        for reference in self.references:
            reporter.check()
            moved, scores = match_patches(reference, volume, found.positions, self.match_settings, regions)
            matched.append(np.where(np.isfinite(scores)[:, None], moved, np.nan))
        fused = fuse_estimates(self.names, matched)
        positions = np.where(fused.landmarks.present[:, None], fused.landmarks.positions, found.positions)
        return dataclasses.replace(found, positions=positions), fused.spread_mm

    def _whole_volume(self, volume: Volume, stage: dict, reporter: _Progress, span: tuple[float, float],
                      timings: dict[str, float]) -> _Peaks:
        """Run `stage` over all of `volume` in windows; the best in-core peak per landmark."""
        name, size = stage["name"], np.asarray(stage["patch_size"], int)
        grid = stage_grid(volume, stage["spacing_mm"], self.orientation)
        windows = plan_windows(grid.shape_ijk, size)
        selection = PeakSelection(len(self.names))
        everyone = list(range(len(self.names)))
        for done, batch in _batches(windows, self.batch_size):
            reporter.check()
            with _timed(timings, f"{name}_preprocessing"):
                patches = [extract_patch(volume, grid_window_centre(grid, window.start, size), size,
                                         grid.spacing, grid.direction, self.intensity.clip_min)
                           for window in batch]
            outputs = self._forward(patches, timings, name)
            with _timed(timings, f"{name}_decoding"):
                for window, patch, output in zip(batch, patches, outputs):
                    coordinates, confidence, score = self._decode(output, everyone, name)
                    in_core = window.owns(window.start + coordinates)
                    selection.offer(everyone, patch.index_to_physical(coordinates), confidence, score, in_core)
            reporter.report(name, _within(span, (done + len(batch)) / len(windows)))
        return _Peaks(selection.positions, selection.confidence)

    def _refine(self, volume: Volume, stage: dict, start: _Peaks, reporter: _Progress,
                span: tuple[float, float], timings: dict[str, float]) -> tuple[_Peaks, _Peaks, np.ndarray | None]:
        """Run the local `stage` in patches centred on the previous stage's positions `start`,
        `passes` times, each pass centred on the previous one's positions; each landmark from its
        own channel. Returns the positions before the last pass (`start` with a single pass), after
        it (the median of its test-time rotations when it has some) and the rotations' spread
        (None without)."""
        orientation = stage.get("orientation", self.orientation)
        direction = None if orientation == "shape-aligned" else stage_direction(volume, orientation)
        passes, rotations = int(stage.get("passes", 1)), int(stage.get("tta_rotations", 0))
        share = (span[1] - span[0]) / (passes + rotations)
        found, expected = start, None
        for number in range(passes):
            before = found
            pass_span = (span[0] + number * share, span[0] + (number + 1) * share)
            if orientation == "shape-aligned":
                centres, direction, expected = self._shape_aligned_start(found)
            else:
                centres = found.positions
            found = self._refine_pass(volume, stage, centres, direction, expected, reporter, pass_span, timings)
        if not rotations:
            return before, found, None
        runs = [found]
        for number, tilt in enumerate(tilts(rotations, float(stage.get("tta_degrees", 6.0))), start=passes):
            pass_span = (span[0] + number * share, span[0] + (number + 1) * share)
            runs.append(self._refine_pass(volume, stage, centres, direction @ tilt, expected, reporter, pass_span,
                                          timings))
        combined, spread = _median_of(runs)
        return before, combined, spread

    def _shape_aligned_start(self, found: _Peaks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patch centres, axes and expected positions of a shape-aligned pass.

        The mean shape is fitted to the positions found so far (weighted by confidence, outliers
        dropped); the patches take its pose, outliers restart from their fitted positions, and the
        fitted positions are where each landmark is expected (a landmark caught by a look-alike,
        such as its mirror image, gets another chance)."""
        fit = robust_shape_fit(self.mean_shape, found.positions, found.confidence)
        fitted = fit.apply(self.mean_shape)
        keep = fit.inliers | ~np.all(np.isfinite(fitted), axis=1)
        return np.where(keep[:, None], found.positions, fitted), fit.rotation, fitted

    def _refine_pass(self, volume: Volume, stage: dict, centres: np.ndarray, direction: np.ndarray,
                     expected: np.ndarray | None, reporter: _Progress, span: tuple[float, float],
                     timings: dict[str, float]) -> _Peaks:
        """One pass of `stage` over patches (axes `direction`) grouping landmarks around `centres`;
        with the stage's ``shape_prior_mm`` each landmark's peak is chosen under a Gaussian prior
        of that width around its `expected` position."""
        name, size = stage["name"], np.asarray(stage["patch_size"], int)
        spacing = np.asarray(stage["spacing_mm"], float)
        prior_mm = stage.get("shape_prior_mm") if expected is not None else None
        groups = group_landmarks(centres, direction, spacing, size)
        refined = _Peaks(np.full_like(centres, np.nan), np.full(len(self.names), np.nan))
        for done, batch in _batches(groups, self.batch_size):
            reporter.check()
            with _timed(timings, f"{name}_preprocessing"):
                patches = [extract_patch(volume, group.centre, size, spacing, direction, self.intensity.clip_min)
                           for group in batch]
            outputs = self._forward(patches, timings, name)
            with _timed(timings, f"{name}_decoding"):
                for group, patch, output in zip(batch, patches, outputs):
                    weights = None if prior_mm is None else self._prior_weights(
                        patch, output.shape[1:4], expected[group.landmarks], float(prior_mm), name)
                    coordinates, confidence, _ = self._decode(output, group.landmarks, name, weights)
                    refined.positions[group.landmarks] = patch.index_to_physical(coordinates)
                    refined.confidence[group.landmarks] = confidence
            reporter.report(name, _within(span, (done + len(batch)) / len(groups)))
        return refined

    def _prior_weights(self, patch: Volume, grid: Sequence[int], expected: np.ndarray, sigma_mm: float,
                       stage_name: str) -> torch.Tensor:
        """(n, X, Y, Z) Gaussian weights on the output grid around `expected` LPS positions
        (uniform where a position is unknown)."""
        stride = self.nets[stage_name].output_stride
        centres = torch.from_numpy(patch.physical_to_index(expected) / stride)
        squared = squared_distances(centres, grid, stride * np.asarray(patch.spacing, float))
        known = torch.from_numpy(np.all(np.isfinite(expected), axis=1)).reshape(-1, 1, 1, 1)
        return torch.where(known, torch.exp(-squared / (2 * sigma_mm ** 2)), 1.0).to(self.device)

    def _forward(self, patches: list[Volume], timings: dict[str, float], stage_name: str) -> torch.Tensor:
        """Network output (float32, on the device) for a batch of patches of equal size."""
        with _timed(timings, f"{stage_name}_preprocessing"):
            arrays = [self.intensity.apply(patch.array).transpose(2, 1, 0) for patch in patches]
            x = torch.from_numpy(np.ascontiguousarray(np.stack(arrays)[:, None])).to(self.device)
        with _timed(timings, f"{stage_name}_network"):
            with torch.inference_mode(), precision_context(self.device):
                output = self.nets[stage_name](x)
            output = output.float()
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            elif self.device.type == "mps":
                torch.mps.synchronize()
        return output

    def _decode(self, output: torch.Tensor, landmarks: list[int], stage_name: str,
                peak_weights: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coordinates (n, 3) in patch voxels (i, j, k), confidences and comparable scores of
        `landmarks` from one patch's output (heatmap peaks chosen under `peak_weights`)."""
        stride = self.nets[stage_name].output_stride
        with torch.inference_mode():
            if self.config.head == "proposals":
                coordinates, confidence = decode_proposals(output, self.config.anchor_radii, stride)
                logits = output[..., 3:].reshape(-1, output.shape[-1] - 3)
                score = logits.amax(0)
                coordinates, confidence, score = coordinates[landmarks], confidence[landmarks], score[landmarks]
            else:
                maps = output[landmarks]
                coordinates, confidence = decode_heatmaps(maps, stride, self.heatmap_peak, peak_weights)
                score = maps.reshape(len(landmarks), -1).amax(1)
        return (coordinates.cpu().double().numpy(), confidence.cpu().double().numpy(),
                score.cpu().double().numpy())


def tilts(count: int, degrees: float) -> list[np.ndarray]:
    """`count` rotation matrices of `degrees` about +x, +y, +z, -x, -y, -z, +x, ... (patch axes)."""
    axes = np.vstack([np.eye(3), -np.eye(3)])
    return [Rotation.from_rotvec(np.radians(degrees) * axes[index % 6]).as_matrix() for index in range(count)]


def _median_of(runs: list[_Peaks]) -> tuple[_Peaks, np.ndarray]:
    """Per landmark: the median position and mean confidence of the runs, and the median
    distance of the runs' positions from that median."""
    positions = np.stack([run.positions for run in runs])
    median = np.median(positions, axis=0)
    spread = np.median(np.linalg.norm(positions - median, axis=2), axis=0)
    return _Peaks(median, np.mean([run.confidence for run in runs], axis=0)), spread


def _batches(items: Sequence, size: int) -> Iterator[tuple[int, list]]:
    """(number of items before the batch, batch) for consecutive batches of `size` items."""
    for first in range(0, len(items), size):
        yield first, list(items[first:first + size])


def _within(span: tuple[float, float], fraction: float) -> float:
    return span[0] + (span[1] - span[0]) * fraction


@contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Add the seconds spent in the block to ``timings[key]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[key] += time.perf_counter() - started
