"""Data-parallel runs of the training studies: where this process stands (a rank of a
``torchrun`` job, a worker spawned by ``--nproc``, or a single process), the launch of ``N``
workers on this host, and the few collectives the epoch loop needs.

Each worker is one rank of a process group (gloo on CPU, NCCL with one GPU per rank,
``cuda:<local rank>``). Workers spawned here meet through a file store in a fresh temporary
folder; ``torchrun`` workers through torchrun's environment (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``).
"""

from __future__ import annotations

import datetime
import gc
import os
import pickle
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

# Imported before any process group exists, on purpose: its functions take
# ``group=group.WORLD`` as a default argument, evaluated at its first import, which
# DistributedDataParallel triggers on its first construction. Imported after
# init_process_group, those defaults hold the default group, so destroy_process_group
# leaves it (its gloo connections and threads) alive until interpreter shutdown, where each
# rank tears it down at its own time: the state in which gloo can abort a process at exit
# (SIGABRT; pytorch/pytorch#179291). Imported here, the defaults are None.
import torch.distributed.nn.functional
from torch import nn

#: Process-group timeout: a rank that stalls this long in a collective makes the others
#: raise (a rank that dies is noticed at once by the launcher, which ends the others).
TIMEOUT = datetime.timedelta(minutes=10)


_CPU = torch.device("cpu")


class WorkerError(RuntimeError):
    """A spawned worker failed; the message holds its rank and its traceback."""


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run: rank ``rank`` of ``size`` ranks, on
    ``device``. ``World()`` is a single process (every collective is then a no-op)."""

    size: int = 1
    rank: int = 0
    device: torch.device = _CPU

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes logs, checkpoints and results."""
        return self.rank == 0

    def shard(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of the rows of ``t``: rows
        ``[r n / W, (r + 1) n / W)`` (rounded down), equal shares when ``W`` divides ``n``."""
        n = len(t)
        return t[self.rank * n // self.size:(self.rank + 1) * n // self.size]

    def sum(self, *values: torch.Tensor) -> list[torch.Tensor]:
        """Each scalar summed over the ranks, in float64 (one all-reduce)."""
        if self.size == 1:
            return list(values)
        buf = torch.stack([v.to(self.device, torch.float64).reshape(()) for v in values])
        dist.all_reduce(buf)
        return list(buf.unbind())

    def barrier(self) -> None:
        """Wait for every rank (an all-reduce of one number, which every backend has)."""
        self.sum(torch.zeros((), device=self.device))

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
        if self.size > 1:
            with torch.no_grad():
                for b in model.buffers():
                    dist.broadcast(b, 0)

    def rng_seed(self, seed: int, epoch: int) -> int:
        """Seed of torch's global generator for ``epoch`` on this rank (dropout masks are
        then independent across ranks and do not depend on where a run was resumed)."""
        return int(np.random.SeedSequence([seed, epoch, self.rank]).generate_state(1)[0])


#: One process, no process group.
SINGLE = World()


def plan(nproc: Any, device: torch.device) -> tuple[int, World | None]:
    """Validate ``nproc`` against how this process was started and the devices.

    Returns ``(nproc, world)``: ``world`` is this process's rank (its device ``cuda:<local
    rank>`` for CUDA) when it already belongs to a job of ``nproc`` ranks (``torchrun``, an
    initialized default process group, a spawned worker) or runs alone (``nproc == 1``);
    None when ``nproc`` workers are still to be spawned (:func:`launch`).
    """
    job = _job()
    if nproc is None:
        nproc = job[0] if job else 1
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"Invalid nproc: {nproc!r} (must be an int >= 1)")
    if job and nproc != job[0]:
        raise ValueError(f"Invalid nproc: {nproc}: this process is rank {job[1]} of a job of "
                         f"{job[0]} processes (torchrun's WORLD_SIZE, or an initialized "
                         f"process group); leave nproc out or give {job[0]}")
    if nproc == 1:
        return 1, World(device=device)
    if device.type == "cuda":
        if device.index is not None:
            raise ValueError(f"Invalid device: {str(device)!r} with nproc {nproc}: give "
                             "'cuda' (rank r uses cuda:<local rank r>)")
        local = job[3] if job else nproc
        count = torch.cuda.device_count()
        if local > count:
            raise ValueError(f"Invalid nproc: {nproc}: one GPU per process on this host "
                             f"needs {local}, and {count} CUDA device(s) are visible")
    if job is None:
        return nproc, None
    if device.type == "cuda":
        device = torch.device("cuda", job[2])
    return nproc, World(nproc, job[1], device)


def _job() -> tuple[int, int, int, int] | None:
    """``(size, rank, local rank, local size)`` of the job this process belongs to."""
    if dist.is_available() and dist.is_initialized():
        size, rank = dist.get_world_size(), dist.get_rank()
    else:
        size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if size == 1:
        return None
    return (size, rank, int(os.environ.get("LOCAL_RANK", rank)),
            int(os.environ.get("LOCAL_WORLD_SIZE", size)))


def backend(device: torch.device) -> str:
    """NCCL for CUDA, gloo for the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


@contextmanager
def joined(world: World) -> Iterator[None]:
    """Inside, the default process group exists: initialized here from ``torchrun``'s
    environment (and destroyed on exit) unless it already was."""
    if world.size == 1 or dist.is_initialized():
        yield
        return
    if world.device.type == "cuda":
        torch.cuda.set_device(world.device)
    dist.init_process_group(backend(world.device), timeout=TIMEOUT)
    try:
        yield
    except BaseException:
        dist.destroy_process_group()
        raise
    teardown()


def replica(model: nn.Module, optimizer: str, world: World) -> nn.Module:
    """The module the training loop calls: ``model`` wrapped in ``DistributedDataParallel``
    for a first-order optimizer on several ranks; ``model`` itself otherwise (SENG's
    :class:`~seng.distributed.DistributedSENG` reduces the gradients itself)."""
    if world.size == 1 or optimizer == "seng":
        return model
    ids = [world.device.index] if world.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def launch(nproc: int, device: torch.device, fn: Callable[..., Any], args: tuple[Any, ...],
           threads: int | None) -> Any:
    """Run ``fn(*args)`` on ``nproc`` spawned workers of one process group; return rank 0's
    result.

    Worker ``r`` is rank ``r``, on ``cuda:r`` for CUDA; it uses ``threads`` torch threads,
    or ``max(1, cores / nproc)`` when None. A worker that raises or dies ends the others
    and raises :class:`WorkerError` here with the rank that failed first and its traceback
    (a peer's error about the closed connections is only named).
    """
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    with tempfile.TemporaryDirectory(prefix="seng-train-") as tmp:
        result = Path(tmp) / "result.pkl"
        try:
            mp.start_processes(_worker, args=(nproc, device.type, tmp, threads, fn, args),
                               nprocs=nproc, join=True, start_method="spawn")
        except ProcessException as e:
            raise WorkerError(_first_failure(Path(tmp), nproc)
                              or f"rank {e.error_index} of {nproc} failed: {e}") from None
        with result.open("rb") as f:
            return pickle.load(f)


def _worker(rank: int, nproc: int, device_type: str, tmp: str, threads: int | None,
            fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    torch.set_num_threads(threads or max(1, torch.get_num_threads() // nproc))
    device = torch.device(device_type, rank) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend(device), init_method=f"file://{tmp}/rendezvous",
                            rank=rank, world_size=nproc, timeout=TIMEOUT)
    try:
        out = fn(*args)
        if rank == 0:
            with (Path(tmp) / "result.pkl").open("wb") as f:
                pickle.dump(out, f)
        del out
        teardown()
    except BaseException:
        # Written before this rank closes its connections, hence before a peer can fail
        # because of them: the launcher reports the rank that failed first.
        (Path(tmp) / f"error{rank}.txt").write_text(f"{time.time()!r}\n{traceback.format_exc()}")
        raise
    finally:
        if dist.is_initialized():  # a failed rank: the launcher ends the others
            dist.destroy_process_group()


def _first_failure(tmp: Path, nproc: int) -> str | None:
    """The error of the rank that failed first, from the files its worker wrote, and which
    ranks failed after it (often only because it was gone); None if no worker wrote one
    (a rank killed by a signal)."""
    failures = []
    for rank in range(nproc):
        path = tmp / f"error{rank}.txt"
        if path.is_file():
            when, _, trace = path.read_text().partition("\n")
            failures.append((float(when), rank, trace))
    if not failures:
        return None
    _, rank, trace = min(failures)
    later = [r for _, r, _ in sorted(failures)[1:]]
    then = f" (then rank {', '.join(map(str, later))} failed too)" if later else ""
    return f"rank {rank} of {nproc} failed first{then}:\n{trace}"


def teardown() -> None:
    """End this rank's part of a run that succeeded on every rank: wait until all ranks are
    done (no rank closes its connections while a peer still uses them), free the objects
    that hold the process group (DDP reducers, SENG's communicators, often in reference
    cycles), then destroy it, so that nothing of gloo's is left to the interpreter's
    shutdown (the import of ``torch.distributed.nn.functional`` at the top of this module
    keeps PyTorch itself from holding the group)."""
    dist.barrier()
    gc.collect()
    dist.destroy_process_group()
