"""Data-parallel training over several processes (`torchrun`, DistributedDataParallel).

``torchrun --nproc-per-node N -m H3DELandmarksLib.cli.main train ...`` starts N processes and
sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; `distributed_context` then joins them in a
process group: NCCL with one GPU per process (``cuda:LOCAL_RANK``) or gloo on CPUs. A caller that
has initialised a process group itself (another launcher) has it used as it is.

The loop keeps the single-process meaning of every setting: a stage's ``batch_size`` is the
global batch, whose samples (numbered as in one process, so seeded the same) are dealt out over
the ranks; the ranks' losses are weighted by their share of the batch, so the gradients that
DistributedDataParallel averages are those of the whole batch. Rank 0 validates, logs and writes
the checkpoint and the package; the others receive its validation results, so every rank keeps
the same bookkeeping (early stopping, stage changes). Nothing in a checkpoint depends on the
number of processes, so a run can be resumed with a different one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..errors import H3DEError

T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    """This process's place among the training processes (rank 0 of 1 when alone)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process validates and writes files."""
        return self.rank == 0

    def share(self, numbers: Sequence[T]) -> list[T]:
        """This rank's items of `numbers` (every world_size-th, from its rank)."""
        return list(numbers[self.rank::self.world_size])

    def wrap(self, net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """`net` as DistributedDataParallel when there are several processes, else itself."""
        if self.world_size == 1:
            return net
        return DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None,
                                       static_graph=True)

    def sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Element-wise sum of `values` over the ranks."""
        if self.world_size == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def mean(self, value: float, weight: int, device: torch.device) -> float:
        """Mean of the ranks' `value`s weighted by their `weight`s (`value` itself when alone)."""
        if self.world_size == 1:
            return value
        total, weights = self.sum([value * weight, weight], device)
        return total / weights

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when `flag` is true on one of them."""
        return self.sum([float(flag)], device)[0] > 0

    def from_main(self, value: T) -> T:
        """Rank 0's `value` on every rank (a picklable object; others may pass None)."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.world_size > 1:
            dist.barrier()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block before the other ranks do (files it writes, they then read)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


@contextmanager
def distributed_context(device: torch.device) -> Iterator[tuple[DistributedContext, torch.device]]:
    """This process's context and training device; joins (and at the end leaves) the process
    group that torchrun's environment describes, unless the caller initialised one."""
    if dist.is_available() and dist.is_initialized():
        yield DistributedContext(dist.get_rank(), dist.get_world_size()), _rank_device(device)
        return
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        yield DistributedContext(), device
        return
    device = _rank_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    try:
        yield DistributedContext(dist.get_rank(), world_size), device
    finally:
        dist.destroy_process_group()


def is_main_process() -> bool:
    """Whether this process is rank 0 of a training run (or the only process)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def _rank_device(device: torch.device) -> torch.device:
    """One GPU per process on CUDA (``LOCAL_RANK``); CPUs as they are; no Apple GPU."""
    if device.type == "cuda":
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(local)
        return local
    if device.type != "cpu":
        raise H3DEError(f"Distributed training runs on CUDA GPUs (NCCL) or CPUs (gloo), not on {device.type}.")
    return device
