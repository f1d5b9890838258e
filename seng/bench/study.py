"""The protocol: learning-rate grids, seeds, selection, grid extension and interleaved step
timing.

1. Every (problem, optimizer, learning rate, seed) is one training run (:func:`train_run`):
   batch 128 (the last incomplete batch of an epoch is dropped, for every optimizer alike),
   constant learning rate, the model's initial weights drawn from ``torch.manual_seed(seed)``
   and the batch order from a generator seeded with ``seed``, so every optimizer starts from
   the same weights and sees the same batches for a given seed. After each epoch (and before
   the first) the model is evaluated on the whole training and test sets.
2. Epochs to target: the first epoch whose target metric meets the problem's target; a seed
   that never reaches it counts as ``epochs + 1`` in the mean (a lower bound, flagged).
3. Every seed runs at every learning rate of the grid. The best learning rate has the fewest
   mean epochs to target over the seeds, ties broken by the mean final target metric (one
   seed alone is too noisy: the test accuracy of MNIST-1D moves by about 2% from epoch to
   epoch, which shifts the epoch of a crossing by several). When the best value is the
   smallest or largest of the grid, the grid is extended by one point beyond that edge (same
   log spacing) and the selection repeats, at most ``max_extend`` times per optimizer; a best
   value still at an edge is flagged. The runs shown are those of the best value (selected
   on the same seeds: an optimistic bias shared by every optimizer).
4. The runs' results do not depend on time, so they may run in parallel worker processes.
   Step times are measured afterwards in this one process (:func:`time_steps`), with every
   optimizer at its best learning rate taking whole curvature cycles in turn, round after
   round, so that drifting machine load hits all of them alike; wall-clock to target is
   ``epochs to target x steps per epoch x step time`` (training steps only, no evaluation).
"""

from __future__ import annotations

import math
import os
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import Any

import torch

from .optimizers import OptimizerSpec, make_stepper
from .problems import PROBLEMS, Data, Problem

Job = tuple[str, OptimizerSpec, float, int, int, int]  # problem, spec, lr, seed, epochs, batch


# -- one run -----------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: torch.nn.Module, problem: Problem, data: Data) -> dict[str, float]:
    """Loss (and accuracy for classification) on the whole training and test sets."""
    was_training = model.training
    model.eval()
    row = {}
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        out = model(x)
        row[f"{split}_loss"] = float(problem.loss(out, y))
        if problem.kind == "classification":
            row[f"{split}_acc"] = float((out.argmax(1) == y).float().mean())
    model.train(was_training)
    return row


def train_run(problem: Problem, data: Data, spec: OptimizerSpec, lr: float, seed: int,
              epochs: int, batch_size: int) -> dict[str, Any]:
    """Train one model; return its log.

    The log holds ``problem``, ``optimizer``, ``lr``, ``seed``, ``status`` (``"complete"``,
    ``"diverged"`` when the loss became NaN/Inf or SENG raised ``FloatingPointError``, or
    ``"failed"`` with ``error``), ``steps_per_epoch``, ``wall_time`` (seconds, informative
    only: runs may share the machine) and ``epochs``: one row per epoch from 0 (the initial
    model) with ``train_loss``, ``test_loss`` (and ``train_acc``, ``test_acc``) on the whole
    sets and ``batch_loss``, the mean mini-batch loss of the epoch. Torch's global RNG state
    is seeded for the run and restored afterwards.
    """
    n = len(data.y_train)
    steps = n // batch_size
    if steps < 1:
        raise ValueError(f"Invalid batch_size: {batch_size} (larger than the {n} training "
                         "samples)")
    log: dict[str, Any] = {"problem": problem.name, "optimizer": spec.name, "lr": lr,
                           "seed": seed, "status": "running", "batch_size": batch_size,
                           "steps_per_epoch": steps, "epochs": []}
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = problem.build()
        order = torch.Generator().manual_seed(seed)
        try:
            stepper = make_stepper(spec, model, lr, problem, batch_size, seed)
            log["epochs"].append({"epoch": 0, **evaluate(model, problem, data),
                                  "batch_loss": math.nan})
            for epoch in range(1, epochs + 1):
                perm = torch.randperm(n, generator=order)
                total = torch.zeros(())
                for i in range(steps):
                    idx = perm[i * batch_size:(i + 1) * batch_size]
                    total += stepper.step(data.x_train[idx], data.y_train[idx])
                row = {"epoch": epoch, **evaluate(model, problem, data),
                       "batch_loss": float(total) / steps}
                log["epochs"].append(row)
                if not (math.isfinite(row["batch_loss"]) and math.isfinite(row["train_loss"])):
                    log["status"] = "diverged"
                    break
            else:
                log["status"] = "complete"
        except FloatingPointError as e:  # SENG refuses a non-finite curvature
            log["status"], log["error"] = "diverged", f"FloatingPointError: {e}"
        except Exception as e:  # recorded, never silent: the report lists failed runs
            # a library tripping over blown-up weights (ASDL's sampler or Cholesky) diverged
            finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
            numerical = isinstance(e, torch.linalg.LinAlgError) or not finite
            log["status"] = "diverged" if numerical else "failed"
            log["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    log["wall_time"] = time.perf_counter() - start
    return log


# -- summaries and selection -------------------------------------------------------------------
def epochs_to_target(problem: Problem, log: dict[str, Any]) -> int | None:
    """The first epoch (>= 1) whose target metric meets the target, or None."""
    for row in log["epochs"][1:]:
        if problem.reached(row.get(problem.target_metric, math.nan)):
            return row["epoch"]
    return None


def _stats(values: Sequence[float]) -> dict[str, float]:
    vals = [v for v in values if math.isfinite(v)]
    if len(vals) < len(values) or not vals:
        return {"mean": math.nan, "std": math.nan}
    return {"mean": statistics.fmean(vals),
            "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}


def summarize_lr(problem: Problem, logs: Sequence[dict[str, Any]], epochs: int) -> dict[str, Any]:
    """Over the seeds of one learning rate: ``epochs_to_target`` (per seed, None where not
    reached), ``reached`` (count), ``mean_epochs`` (mean with unreached seeds counted as
    ``epochs + 1``), ``final`` (mean, std of the last logged value of each metric; NaN when a
    seed diverged) and ``statuses``."""
    hits = [epochs_to_target(problem, log) for log in logs]
    metrics = [k for k in logs[0]["epochs"][0] if k not in ("epoch", "batch_loss")] \
        if logs and logs[0]["epochs"] else []
    final = {}
    for m in metrics:
        final[m] = _stats([log["epochs"][-1].get(m, math.nan)
                           if log["status"] == "complete" else math.nan for log in logs])
    return {
        "lr": logs[0]["lr"], "seeds": [log["seed"] for log in logs],
        "epochs_to_target": hits, "reached": sum(h is not None for h in hits),
        "mean_epochs": statistics.fmean(epochs + 1 if h is None else h for h in hits),
        "final": final, "statuses": [log["status"] for log in logs],
    }


def selection_key(problem: Problem, summary: dict[str, Any]) -> tuple[float, float]:
    """Smaller is better: mean epochs to target, then the final target metric."""
    final = summary["final"].get(problem.target_metric, {"mean": math.nan})["mean"]
    if not math.isfinite(final):
        return (summary["mean_epochs"], math.inf)
    return (summary["mean_epochs"], -final if problem.higher_is_better else final)


def best_lr(problem: Problem, summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The summary with the smallest :func:`selection_key` (the smaller lr on a tie)."""
    return min(sorted(summaries, key=lambda s: s["lr"]), key=lambda s: selection_key(problem, s))


def grid_ratio(lrs: Sequence[float]) -> float:
    """The factor between consecutive values of an increasing log-spaced grid, from its end
    points (less sensitive to rounded values); sqrt(10) for a single value."""
    if len(lrs) < 2:
        return math.sqrt(10)
    return (lrs[-1] / lrs[0]) ** (1 / (len(lrs) - 1))


# -- many runs ---------------------------------------------------------------------------------
_WORKER_DATA: dict[str, Data] = {}


def _init_worker(data: dict[str, Data], threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER_DATA.update(data)


def _run_job(job: Job) -> dict[str, Any]:
    name, spec, lr, seed, epochs, batch_size = job
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log = train_run(PROBLEMS[name], _WORKER_DATA[name], spec, lr, seed, epochs, batch_size)
    # kept in the log rather than printed: hundreds of runs would bury the progress bar
    log["warnings"] = sorted({f"{w.category.__name__}: {w.message}" for w in caught})[:10]
    return log


class Runner:
    """Runs jobs inline (``workers=1``) or in ``workers`` spawned processes of one torch
    thread each."""

    def __init__(self, data: dict[str, Data], workers: int, threads: int = 1) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"Invalid workers: {workers!r} (must be an int >= 1)")
        self.data = data
        self.workers = workers
        self.threads = threads
        self.pool: ProcessPoolExecutor | None = None
        if workers > 1:
            self.pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                            initializer=_init_worker, initargs=(data, threads))

    def map(self, jobs: Sequence[Job], done: Callable[[dict[str, Any]], None]) -> None:
        """Run ``jobs``, calling ``done(log)`` as each finishes."""
        if self.pool is None:
            _init_worker(self.data, self.threads)
            for job in jobs:
                done(_run_job(job))
            return
        # longest first: a worker left with one slow run at the end wastes the other core
        _WORKER_DATA.update(self.data)  # for _job_cost's step counts
        pending: set[Future] = {self.pool.submit(_run_job, j)
                                for j in sorted(jobs, key=_job_cost, reverse=True)}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                done(f.result())

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


#: Rough cost of a step relative to SGD's, to start the longest runs first (Muon's
#: Newton-Schulz runs in bfloat16, slow on CPUs).
_RELATIVE_COST = {"muon": 8.0, "seng": 2.5, "kfac": 2.0}


def _job_cost(job: Job) -> float:
    name, spec, _, _, epochs, batch_size = job
    steps = len(_WORKER_DATA[name].y_train) // batch_size if name in _WORKER_DATA else 1
    weight = 5.0 if spec.kind == "seng" and spec.cycle == 1 else _RELATIVE_COST.get(spec.kind, 1.0)
    return epochs * steps * weight


# -- step timing -------------------------------------------------------------------------------
def time_steps(problem: Problem, data: Data, specs: dict[str, tuple[OptimizerSpec, float]],
               batch_size: int, rounds: int, seed: int = 0,
               warmup: bool = True) -> dict[str, dict[str, Any]]:
    """Seconds per training step of each optimizer, measured interleaved in this process.

    Each optimizer trains its own copy of the model (seed ``seed``) at its learning rate on
    the seed's batches. One block is a whole number of every optimizer's curvature cycles (the
    least common multiple), so a block holds the same share of curvature steps as training.
    After one untimed block each (unless ``warmup`` is False: a smoke run's figures mean
    nothing anyway), ``rounds`` rounds give every optimizer one block in turn,
    the order rotated each round. The step time is the median over the blocks (robust to a
    burst of load from elsewhere); ``blocks`` keeps every block's time per step.
    """
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"Invalid rounds: {rounds!r} (must be an int >= 1)")
    block = math.lcm(*(s.cycle for s, _ in specs.values())) if specs else 1
    n = len(data.y_train)
    steppers, cursors = {}, {}
    with torch.random.fork_rng(devices=[]):
        for name, (spec, lr) in specs.items():
            torch.manual_seed(seed)
            model = problem.build()
            steppers[name] = make_stepper(spec, model, lr, problem, batch_size, seed)
            cursors[name] = _batches(n, batch_size, seed)
        names = list(steppers)

        def run_block(name: str) -> float:
            stepper, cursor = steppers[name], cursors[name]
            batches = [next(cursor) for _ in range(block)]
            t0 = time.perf_counter()
            for idx in batches:
                stepper.step(data.x_train[idx], data.y_train[idx])
            return (time.perf_counter() - t0) / block

        times: dict[str, list[float]] = {name: [] for name in names}
        failed: dict[str, str] = {}
        for name in names if warmup else ():  # untimed: first-call allocations, lazy imports
            try:
                run_block(name)
            except Exception as e:
                failed[name] = f"{type(e).__name__}: {e}"
        live = [nm for nm in names if nm not in failed]
        for r in range(rounds):
            for k in range(len(live)):
                name = live[(r + k) % len(live)]
                if name in failed:
                    continue
                try:
                    times[name].append(run_block(name))
                except Exception as e:
                    failed[name] = f"{type(e).__name__}: {e}"
    out = {}
    for name in names:
        ok = times[name] and name not in failed
        out[name] = {"step_time": statistics.median(times[name]) if ok else math.nan,
                     "blocks": times[name], "block_steps": block,
                     **({"error": failed[name]} if name in failed else {})}
    return out


def _batches(n: int, batch_size: int, seed: int):
    """The training run's batch indices for ``seed``, epoch after epoch, forever."""
    order = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=order)
        for i in range(n // batch_size):
            yield perm[i * batch_size:(i + 1) * batch_size]


def machine_load() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


__all__ = ["Runner", "best_lr", "epochs_to_target", "evaluate", "grid_ratio", "machine_load",
           "selection_key", "summarize_lr", "time_steps", "train_run"]
