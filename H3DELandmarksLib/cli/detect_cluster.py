"""`h3de detect ... --cluster ADDRESS` or `--workers N`: the batch on a Dask distributed cluster.

``--workers N`` starts a local cluster of N single-threaded worker processes on 127.0.0.1 (each
with ``--threads`` PyTorch threads, by default the CPU cores shared out) and stops it at the end;
``--cluster`` connects to a running scheduler (``dask scheduler`` and ``dask worker``, or
dask-jobqueue's SLURMCluster: see the README) whose workers see the inputs, the model and --out
at the same paths. The batch itself is `inference.batch_cluster`; this module shows its progress
(one bar for the whole batch, or the same JSON ``progress`` events as one process) and hands
each result to the command's reporting as it comes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from ..errors import H3DEError
from ..inference.batch import FAILED, CaseResult
from ..progress_events import PROGRESS, START
from ..registry import read_package, resolve_model
from .model_options import positive_int, predictor_factory

CONNECT_TIMEOUT_S = 30
INSTALL_HINT = "pip install 'h3de-landmarks[cluster]'"


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """--cluster and --workers (one or the other)."""
    group = parser.add_argument_group(f"Dask distributed cluster ({INSTALL_HINT})")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--cluster", metavar="ADDRESS",
                       help="run the cases on the Dask cluster whose scheduler is at ADDRESS (e.g. tcp://node1:8786)")
    where.add_argument("--workers", type=positive_int, metavar="N",
                       help="run the cases on a local Dask cluster of N worker processes (on 127.0.0.1)")


def uses_cluster(args: argparse.Namespace) -> bool:
    """Whether the command line asks for a cluster."""
    return bool(args.cluster or args.workers)


def detect_cases_on_cluster(args: argparse.Namespace, cases: list, events,
                            report: Callable[[object, CaseResult], None]) -> tuple[float, list[CaseResult]]:
    """The time the cluster took to start with the model loaded on every worker, and the results
    of `cases` (the command's `Case` objects) computed there; ``report(case, result)`` is called
    for each as it comes (an input unusable as given is reported without going to the cluster).
    The ``start`` event comes once every worker has the model."""
    try:
        from ..inference.batch_cluster import detect_on_cluster, load_predictors
    except ImportError:
        raise H3DEError(f"--cluster and --workers need Dask distributed; install it with {INSTALL_HINT}.") from None
    results: list[CaseResult | None] = [None] * len(cases)
    runnable = [index for index, case in enumerate(cases) if not case.problem]
    threads = args.threads or (max(1, (os.cpu_count() or 1) // args.workers) if args.workers else None)
    manifest = read_package(resolve_model(args.model, cache_dir=args.cache_dir)).manifest
    loading = time.perf_counter()
    with _client(args) as client, _BatchProgress(args.progress, events, cases) as progress:
        load_predictors(client, predictor_factory(args, threads=threads, absolute=True))
        load_seconds = time.perf_counter() - loading
        if events:
            events.emit(START, cases=len(cases), model_id=manifest["id"], model_version=manifest["version"],
                        device=args.device, load_seconds=load_seconds, workers=len(client.scheduler_info()["workers"]))

        def finished(index: int, result: CaseResult) -> None:
            results[index] = result
            with progress.lock:
                progress.case_done(result.name)
                report(cases[index], result)

        for index, case in enumerate(cases):
            if case.problem:
                finished(index, CaseResult(case.name, str(case.path), FAILED, error=case.problem))
        detect_on_cluster(client, [(Path(cases[index].path).resolve(), cases[index].name) for index in runnable],
                          Path(args.out).resolve(), args.format, overwrite=args.overwrite,
                          skip_existing=args.skip_existing, on_progress=progress.update,
                          on_result=lambda position, result: finished(runnable[position], result))
    return load_seconds, results


@contextmanager
def _client(args: argparse.Namespace) -> Iterator[object]:
    """A client of the scheduler at --cluster, or of a local cluster of --workers processes."""
    import dask
    from distributed import Client, LocalCluster

    if args.cluster:
        try:
            client = Client(args.cluster, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as error:
            raise H3DEError(f"No Dask scheduler could be reached at {args.cluster} ({error}).") from None
        with client:
            yield client
        return
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               scheduler_kwargs={"dashboard": False}, silence_logs=logging.ERROR)
    with cluster, Client(cluster) as client:
        yield client


class _BatchProgress:
    """The batch's progress: one bar over all cases (each case's fraction counted), or the JSON
    ``progress`` events of a single-process run; updated from the client's event-loop thread."""

    def __init__(self, mode: str, events, cases: list) -> None:
        self.events = events
        self.numbers = {case.name: number for number, case in enumerate(cases, start=1)}
        self.total = len(cases)
        self.fractions: dict[str, float] = {}
        self.lock = threading.Lock()
        self.bar = (tqdm(total=self.total, desc="cases", unit="case", file=sys.stderr,
                         bar_format="{l_bar}{bar}| {n:.1f}/{total} [{elapsed}<{remaining}]")
                    if mode == "bar" and events is None else None)

    def __enter__(self) -> "_BatchProgress":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, case: str, step: str, fraction: float, worker: str) -> None:
        """A worker's progress event for `case` (the JSON event names the worker too)."""
        with self.lock:
            self.fractions[case] = fraction
            if self.events is not None:
                self.events.emit(PROGRESS, case=case, index=self.numbers.get(case), total=self.total,
                                 step=step, fraction=fraction, worker=worker)
            self._redraw()

    def case_done(self, case: str) -> None:
        """`case` has its final result (call it holding `lock`)."""
        self.fractions[case] = 1.0
        self._redraw()

    def _redraw(self) -> None:
        if self.bar is not None:
            self.bar.n = sum(self.fractions.values())
            self.bar.refresh()
