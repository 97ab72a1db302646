"""Data-parallel training: the process group, who this process is, the batch split.

    torchrun --nproc-per-node N -m hybrid train ...      (or: hybrid train --nproc N)

    every rank:  the global batch (train.batch_size sequences, the one a single process draws)
                 -> its slice of batch_size / N sequences -> DDP forward, backward (gradients averaged)
                 -> K-FAC's A, G and QNG's metric reduced over ranks (hybrid.optim.reduce)
                 -> the same update on every rank
    rank 0:      the run folder, evaluation, diagnostics, progress bar, sample

A run therefore does not depend on the world size (up to the order of float sums), and a
checkpoint written under one world size resumes under another. The collectives the
optimizers need live in ``hybrid.optim.reduce``; this module sets up what the training loop needs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from hybrid.backends import get_backend
from hybrid.errors import InputError
from hybrid.optim.reduce import sum_

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int  # this process, 0 .. size - 1
    size: int  # processes in the run
    device: torch.device  # this process's device: cpu, or cuda:LOCAL_RANK

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run folder and logs."""
        return self.rank == 0


def launched_size() -> int:
    """The world size torchrun gave this process (``WORLD_SIZE``), 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextmanager
def process_group(device: str) -> Iterator[World]:
    """This process's place in the run: join the process group torchrun describes (``env://``:
    gloo on CPU, NCCL on ``cuda:LOCAL_RANK``), use one already initialized, or run alone.

    A group joined here is left, after a barrier on success, on exit; one initialized by the
    caller stays.
    """
    device = torch.device(device)
    joined = dist.is_available() and dist.is_initialized()
    if not joined and launched_size() == 1:
        yield World(0, 1, device)
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not joined:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield World(dist.get_rank(), dist.get_world_size(), device)
        if not joined:
            dist.barrier()  # rank 0 finishes the run folder before anyone leaves
    finally:
        if not joined:
            dist.destroy_process_group()


def check_world(cfg, size: int) -> None:
    """Raise InputError, in one line with the fix, when ``cfg`` cannot train on ``size`` processes."""
    if size == 1:
        return
    batch = cfg.train.batch_size
    divisors = [n for n in range(2, batch + 1) if batch % n == 0][:4]
    if batch < size:
        raise InputError(f"train.batch_size={batch} gives fewer than one sequence to each of {size} processes; "
                         f"use --nproc {batch} or fewer, or --batch-size {size} or more")  # fmt: skip
    if batch % size:
        raise InputError(f"train.batch_size={batch} does not split evenly over {size} processes; use a --batch-size "
                         f"divisible by {size} ({batch + size - batch % size}) or --nproc "
                         f"{' or '.join(map(str, divisors)) or 1}")  # fmt: skip
    if cfg.model.quantum != "none" and get_backend(cfg.circuit.backend).engine.samples:
        name = cfg.circuit.backend
        raise InputError(f"data-parallel training runs on simulators only, and {name} samples its circuits as "
                         "jobs (every rank would send its own); use --nproc 1, or hybrid submit")  # fmt: skip
    if cfg.optim.roles()["circuit"] == "qng" and cfg.optim.qng.metric == "qnspsa":
        raise InputError("optim.qng.metric=qnspsa keeps a running estimate per process, so ranks would disagree; "
                         "use optim.qng.metric=exact with --nproc, or --nproc 1")  # fmt: skip


def shard(batch: tuple[torch.Tensor, ...], world: World) -> tuple[torch.Tensor, ...]:
    """This rank's consecutive ``B / size`` rows of a global batch (B, ...) -> (B / size, ...)."""
    if world.size == 1:
        return batch
    rows = batch[0].shape[0] // world.size
    return tuple(t[world.rank * rows : (world.rank + 1) * rows] for t in batch)


def wrap(model: torch.nn.Module, world: World) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel`` (gradients averaged over ranks in backward), or
    itself alone. Hooks and optimizers stay on ``model``, the inner module."""
    if world.size == 1:
        return model
    return DistributedDataParallel(model, device_ids=[world.device.index] if world.device.type == "cuda" else None)


def on_main(world: World, fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 alone, its result (or its InputError) on every rank: reading and
    writing the run folder, which other machines may not see."""
    result, error = None, None
    if world.main:
        try:
            result = fn()
        except InputError as exc:
            error = exc
    if world.size > 1:
        box = [(result, error)]
        dist.broadcast_object_list(box, src=0)
        result, error = box[0]
    if error is not None:
        raise error
    return result


def mean_over_ranks(value: float, world: World) -> float:
    """The mean of a float over ranks (each rank's loss of its slice -> the global batch's)."""
    if world.size == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=world.device)
    sum_([total])
    return total.item() / world.size


def relaunch(argv: list[str], nproc: int) -> int:
    """Run ``python -m hybrid <argv>`` as ``nproc`` processes on this machine under torchrun;
    its exit status."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "hybrid", *argv]  # fmt: skip
    return subprocess.call(command)
