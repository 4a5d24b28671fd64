"""A batch of cases on a Dask distributed cluster: `detect_case` run by the cluster's workers.

Dask distributed, not Ray: it is pure Python from PyPI (the ``[cluster]`` extra), a local cluster
is a few processes on 127.0.0.1, a remote one is a scheduler address, and dask-jobqueue starts
workers as SLURM / PBS / SGE / LSF jobs from Python, which is how the clusters of the
morphometrics groups and hospitals this serves are run. Ray would bring its own object store and
daemons, and only a shell-script recipe for SLURM.

- Each worker loads the model once, when it joins the cluster (`PredictorPlugin`; also a worker
  that joins or restarts later), and keeps it for every case it runs, one case at a time (a
  worker started with several threads still shares its one predictor between none of them).
- Each worker writes its cases' outputs into the output folder itself, which all workers share
  (`detect_case`: a case's files appear together or not at all).
- A case that fails is run once more, on another worker when there is one; its second result
  stands. A case whose worker dies (killed, out of memory) is given to another worker by the
  scheduler, as often as its ``distributed.scheduler.allowed-failures`` allows (the local
  cluster allows one), then reported failed. So a worker killed mid-batch loses no case, and the
  case it was writing is either complete or absent.
- The workers report each case's progress as events (topic PROGRESS_TOPIC); the caller gets
  them, and each result, as they come.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from distributed import Client, WorkerPlugin, as_completed, get_worker
from distributed.client import FutureCancelledError
from distributed.scheduler import KilledWorker

from .batch import FAILED, FORMATS, CaseResult, detect_case
from .predictor import Predictor

PLUGIN_NAME = "h3de-predictor"
PROGRESS_TOPIC = "h3de-progress"

ProgressHandler = Callable[[str, str, float, str], None]
ResultHandler = Callable[[int, CaseResult], None]


class PredictorPlugin(WorkerPlugin):
    """Loads the model on each worker as it joins (``factory()``) and keeps it there, with the
    lock its cases take turns on."""

    def __init__(self, factory: Callable[[], Predictor]) -> None:
        self.factory = factory
        self.predictor: Predictor | None = None
        self.lock: threading.Lock | None = None

    def setup(self, worker) -> None:
        self.predictor = self.factory()
        self.lock = threading.Lock()


def load_predictors(client: Client, factory: Callable[[], Predictor]) -> None:
    """Have every worker of `client`'s cluster, now and joining later, build its predictor with
    `factory` (picklable, e.g. a partial of `Predictor.from_model`) and keep it; returns when
    the present workers have theirs."""
    client.register_plugin(PredictorPlugin(factory), name=PLUGIN_NAME)


def detect_on_cluster(client: Client, cases: Sequence[tuple[str | os.PathLike, str]], out_dir: str | os.PathLike,
                      formats: Sequence[str] = FORMATS, *, overwrite: bool = False, skip_existing: bool = False,
                      on_progress: ProgressHandler | None = None,
                      on_result: ResultHandler | None = None) -> list[CaseResult]:
    """Run `detect_case` for every ``(source, name)`` of `cases` on `client`'s cluster, whose
    workers have their predictors (`load_predictors`).

    Args:
        client: a client of the cluster; its workers must reach the inputs and `out_dir` at the
            same paths as this process (a shared file system).
        out_dir, formats, overwrite, skip_existing: as for `detect_case`.
        on_progress: ``on_progress(case, step, fraction, worker_address)`` for the workers'
            progress events (called on the client's event-loop thread).
        on_result: ``on_result(index, result)`` for each case's final result, as it comes.

    Returns the results in the order of `cases`. Cancelled work is cancelled on the cluster.
    """
    if on_progress is not None:
        client.subscribe_topic(PROGRESS_TOPIC, lambda event: on_progress(*event[1]))
    run = _CaseRunner(str(Path(out_dir)), list(formats), overwrite, skip_existing)
    attempts = {client.submit(run, str(source), name, key=_key(name), pure=False): (index, 1)
                for index, (source, name) in enumerate(cases)}
    results: list[CaseResult | None] = [None] * len(cases)
    finished = as_completed(list(attempts))
    try:
        for future in finished:
            index, attempt = attempts.pop(future)
            source, name = cases[index]
            worker, result, retry_allowed = _outcome(future, str(source), name)
            if result.status == FAILED and attempt == 1 and retry_allowed:
                others = [address for address in client.scheduler_info()["workers"] if address != worker]
                retry = client.submit(run, str(source), name, key=_key(name), pure=False,
                                      workers=others or None, allow_other_workers=True)
                attempts[retry] = (index, 2)
                finished.add(retry)
                continue
            results[index] = result
            if on_result is not None:
                on_result(index, result)
    finally:
        if attempts:
            client.cancel(list(attempts))
        if on_progress is not None:
            client.unsubscribe_topic(PROGRESS_TOPIC)
    return results


class _CaseRunner:
    """The task of one case on a worker: the worker's predictor, progress sent as events."""

    def __init__(self, out_dir: str, formats: list[str], overwrite: bool, skip_existing: bool) -> None:
        self.out_dir, self.formats = out_dir, formats
        self.overwrite, self.skip_existing = overwrite, skip_existing

    def __call__(self, source: str, name: str) -> tuple[str, CaseResult]:
        worker = get_worker()
        plugin = worker.plugins[PLUGIN_NAME]

        def progress(step: str, fraction: float) -> None:
            worker.log_event(PROGRESS_TOPIC, [name, step, float(fraction), worker.address])

        with plugin.lock:
            result = detect_case(plugin.predictor, source, name, self.out_dir, self.formats,
                                 overwrite=self.overwrite, skip_existing=self.skip_existing, progress=progress)
        return worker.address, result


def _outcome(future, source: str, name: str) -> tuple[str | None, CaseResult, bool]:
    """The worker (when known) and result of a finished task, and whether a failure may be
    retried: not when its workers died (the scheduler has retried it already) or it was cancelled."""
    try:
        worker, result = future.result()
        return worker, result, True
    except KilledWorker:
        error = (f"Case {name} was lost with every worker that ran it (they died: killed, or out of memory); "
                 "nothing of it was kept.")
        return None, CaseResult(name, source, FAILED, error=error), False
    except FutureCancelledError:
        return None, CaseResult(name, source, FAILED, error=f"Case {name} was cancelled on the cluster."), False
    except Exception as failure:  # noqa: BLE001 - the cluster may fail a task in many ways; the batch goes on
        error = f"Case {name} could not be run on the cluster ({type(failure).__name__}: {failure})."
        return None, CaseResult(name, source, FAILED, error=error), True


def _key(name: str) -> str:
    """A task key unique to this submission, readable on the dashboard."""
    return f"h3de-detect-{name}-{uuid.uuid4().hex[:8]}"
