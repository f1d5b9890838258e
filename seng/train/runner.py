"""One training run: the epoch loop, its log, checkpoints and resume."""

from __future__ import annotations

import copy
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._files import atomic_write, write_json
from .data import Dataset, augment_batch
from .optim import DampingDecay, Schedule, make_optimizer, set_lr
from .parallel import SINGLE, World, replica

ModelSource = nn.Module | Callable[[], nn.Module]


@dataclass(frozen=True)
class RunSpec:
    """One point of a study: optimizer, learning rate and seed."""

    optimizer: str
    lr: float
    seed: int

    @property
    def name(self) -> str:
        """File stem of the run's log and checkpoint, e.g. ``seng_lr0.05_seed0``."""
        return f"{self.optimizer}_lr{self.lr:g}_seed{self.seed}"


@dataclass
class RunSettings:
    """Everything a run needs besides its :class:`RunSpec` (shared by a study's runs)."""

    settings: dict[str, Any]       # JSON-able hyperparameters; a checkpoint must match them
    schedule: Schedule
    seng_options: dict[str, Any]
    device: torch.device
    out: Path | None
    checkpoint_every: int
    resume: bool
    progress: bool
    dist_mode: str = "global"      # SENG's curvature with several ranks
    world: World = SINGLE          # this process's rank (a single process by default)


def run(spec: RunSpec, model_source: ModelSource, data: Dataset, rs: RunSettings) -> dict:
    """Train one model and return its log (also written to ``<out>/runs/<name>.json``).

    The log's ``status`` is ``"running"`` while the run is in progress, ``"failed"`` if it
    raised, ``"diverged"`` if the training loss became NaN/Inf (the run stops there) and
    ``"complete"`` at the end. Global RNG states (torch, NumPy, Python) are seeded with
    ``spec.seed`` for the run and restored afterwards. With several ranks
    (``rs.world``), every rank calls this; only rank 0 writes.
    """
    s, world = rs.settings, rs.world
    log_path = ckpt_path = None
    if rs.out is not None:
        log_path = rs.out / "runs" / f"{spec.name}.json"
        ckpt_path = rs.out / "checkpoints" / f"{spec.name}.pt"
        if rs.resume and log_path.is_file():
            done = json.loads(log_path.read_text())
            if done.get("status") in ("complete", "diverged") and done["settings"] == s:
                return done
    log: dict[str, Any] = {"run": spec.name, "optimizer": spec.optimizer, "lr": spec.lr,
                           "seed": spec.seed, "status": "running", "settings": s,
                           "epochs": []}
    with _isolated_rng(rs.device):
        torch.manual_seed(spec.seed)
        np.random.seed(spec.seed)  # noqa: NPY002 (user models may draw from it)
        random.seed(spec.seed)
        model = _instantiate(model_source).to(rs.device)
        seng_options = dict(rs.seng_options)
        decay = seng_options.pop("damping_decay", None)
        if decay is not None:
            seng_options["damping"] = DampingDecay(
                seng_options["damping"], decay, steps_per_epoch(len(data.y_train),
                                                                s["batch_size"], world))
        if world.size > 1 and seng_options.get("curvature_batch") is not None:
            seng_options["curvature_batch"] //= world.size  # a global count, split evenly
        optimizer = make_optimizer(spec.optimizer, model, spec.lr, momentum=s["momentum"],
                                   weight_decay=s["weight_decay"], seng_options=seng_options,
                                   seed=spec.seed,
                                   dist_mode=rs.dist_mode if world.size > 1 else None)
        net = replica(model, spec.optimizer, world)
        loader = torch.Generator().manual_seed(spec.seed)
        state = {"epoch": 0, "step": 0, "time": 0.0}
        if rs.resume and ckpt_path is not None and ckpt_path.is_file():
            _load_checkpoint(ckpt_path, s, model, optimizer, loader, state, log, rs.device)
        try:
            _epochs(spec, model, net, optimizer, loader, data, rs, state, log, log_path,
                    ckpt_path)
        except BaseException as e:
            log["status"] = "failed"
            log["error"] = f"{type(e).__name__}: {e}"
            if log_path is not None and world.is_main:
                write_json(log_path, log)
            raise
    return log


def steps_per_epoch(n_all: int, batch_size: int, world: World) -> int:
    """Global batches per epoch: ranks get equal slices, so the ``n_all mod world.size``
    samples left at the end of each epoch's permutation are dropped."""
    return math.ceil((n_all - n_all % world.size) / batch_size)


def _epochs(spec: RunSpec, model: nn.Module, net: nn.Module, optimizer: torch.optim.Optimizer,
            loader: torch.Generator, data: Dataset, rs: RunSettings, state: dict[str, Any],
            log: dict[str, Any], log_path: Path | None, ckpt_path: Path | None) -> None:
    """The epoch loop; ``net`` is what the forward calls (``model``, or its DDP replica)."""
    s, world = rs.settings, rs.world
    n_all, bs = len(data.y_train), s["batch_size"]
    n = n_all - n_all % world.size  # ranks get equal slices: the remainder is dropped
    steps = steps_per_epoch(n_all, bs, world)
    epochs = s["epochs"]
    bar = _progress(rs.progress, spec.name, epochs * steps, state["step"])
    try:
        for epoch in range(state["epoch"], epochs):
            model.train()
            if world.size > 1:  # each rank its own dropout stream, whatever the resume point
                torch.manual_seed(world.rng_seed(spec.seed, epoch))
            perm = torch.randperm(n_all, generator=loader)[:n].to(rs.device)
            loss_sum = torch.zeros((), device=rs.device)
            correct = torch.zeros((), device=rs.device, dtype=torch.int64)
            _sync(rs.device)
            start = time.perf_counter()
            for i in range(steps):
                lr = spec.lr * rs.schedule.factor(epoch, (state["step"] + 1) / steps)
                set_lr(optimizer, lr)
                idx = perm[i * bs:(i + 1) * bs]
                if s["augment"]:  # the global batch: every rank draws what one process does
                    x = world.shard(augment_batch(data.x_train[idx], loader))
                    idx = world.shard(idx)
                else:
                    idx = world.shard(idx)
                    x = data.x_train[idx]
                y = data.y_train[idx]
                out = net(x)
                loss = F.cross_entropy(out, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                try:
                    optimizer.step()
                except FloatingPointError as e:  # SENG: a blown-up curvature
                    if world.size > 1:  # other ranks may be inside a collective: fail fast
                        raise
                    log["status"], log["error"] = "diverged", f"step {state['step']}: {e}"
                    break
                loss_sum += loss.detach() * len(y)
                correct += (out.detach().argmax(1) == y).sum()
                state["step"] += 1
                bar.update(1)
            if log["status"] == "diverged":
                break
            loss_sum, correct = world.sum(loss_sum, correct)
            _sync(rs.device)
            epoch_time = time.perf_counter() - start
            state["time"] += epoch_time
            state["epoch"] = epoch + 1
            t0 = time.perf_counter()
            world.broadcast_buffers(model)  # rank 0's running statistics, as DDP does
            test_loss, test_acc = _evaluate(model, data.x_test, data.y_test, world)
            row = {"epoch": epoch + 1, "lr": lr, "train_loss": float(loss_sum) / n,
                   "train_acc": round(float(correct)) / n, "test_loss": test_loss,
                   "test_acc": test_acc, "time": state["time"], "epoch_time": epoch_time,
                   "step_time": epoch_time / steps, "eval_time": time.perf_counter() - t0,
                   "nproc": world.size}
            log["epochs"].append(row)
            bar.set_postfix(loss=f"{row['train_loss']:.3g}", acc=f"{test_acc:.3f}")
            if not math.isfinite(row["train_loss"]):
                log["status"] = "diverged"
                break
            last = epoch + 1 == epochs
            if ckpt_path is not None and world.is_main and rs.checkpoint_every and (
                    last or (epoch + 1) % rs.checkpoint_every == 0):
                _save_checkpoint(ckpt_path, s, model, optimizer, loader, state, log, rs.device)
            if log_path is not None and world.is_main and not last:
                write_json(log_path, log)
        else:
            log["status"] = "complete"
    finally:
        bar.close()
    if log_path is not None and world.is_main:
        write_json(log_path, log)


def warm_up(model_source: ModelSource, data: Dataset, grid: dict[str, list[float]],
            rs: RunSettings) -> None:
    """Two untimed, unlogged steps of each optimizer, so that one-off costs (library
    loading, first-call allocations) do not land in the first timed run."""
    tiny = data.subset(2 * rs.settings["batch_size"])
    quiet = replace(rs, settings={**rs.settings, "epochs": 1}, out=None, resume=False,
                    checkpoint_every=0, progress=False)
    for opt, lrs in grid.items():
        run(RunSpec(opt, lrs[0], 0), model_source, tiny, quiet)


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, world: World = SINGLE,
              batch: int = 1000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (in eval mode) on ``(x, y)``; with
    several ranks each evaluates its contiguous share and the sums are all-reduced."""
    model.eval()
    total = len(y)
    x, y = world.shard(x), world.shard(y)
    loss = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for i in range(0, len(y), batch):
        out = model(x[i:i + batch])
        loss += F.cross_entropy(out, y[i:i + batch], reduction="sum")
        correct += (out.argmax(1) == y[i:i + batch]).sum()
    model.train()
    loss, correct = world.sum(loss, correct)
    return float(loss) / total, round(float(correct)) / total


def _instantiate(source: ModelSource) -> nn.Module:
    if isinstance(source, nn.Module):
        return copy.deepcopy(source)
    model = source()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model factory returned {type(model).__name__}, expected an "
                        "nn.Module")
    return model


# -- checkpoints ----------------------------------------------------------------------------
def _save_checkpoint(path: Path, settings: dict[str, Any], model: nn.Module,
                     optimizer: torch.optim.Optimizer, loader: torch.Generator,
                     state: dict[str, Any], log: dict[str, Any], device: torch.device) -> None:
    np_state = np.random.get_state(legacy=True)  # noqa: NPY002 (the global state)
    assert isinstance(np_state, tuple)  # legacy=True: (name, keys, pos, has_gauss, gauss)
    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "loader": loader.get_state(),
           "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                     *np_state[2:]),
           "python": random.getstate()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    # The schedule is a pure function of (epoch, step): its state is ``state``.
    ckpt = {"settings": settings, "state": dict(state), "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "rng": rng, "log": log["epochs"]}
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def _load_checkpoint(path: Path, settings: dict[str, Any], model: nn.Module,
                     optimizer: torch.optim.Optimizer, loader: torch.Generator,
                     state: dict[str, Any], log: dict[str, Any], device: torch.device) -> None:
    ckpt = torch.load(path, map_location=device, weights_only=True)
    if ckpt["settings"] != settings:
        diff = sorted(k for k in set(settings) | set(ckpt["settings"])
                      if settings.get(k) != ckpt["settings"].get(k))
        raise ValueError(f"cannot resume from {path}: it was written with different settings "
                         f"({', '.join(diff)}); use another --out or drop --resume")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    rng = ckpt["rng"]
    torch.set_rng_state(rng["torch"].cpu())
    loader.set_state(rng["loader"].cpu())
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), *rest))  # noqa: NPY002
    random.setstate(_tuples(rng["python"]))
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"].cpu(), device)
    state.update(ckpt["state"])
    log["epochs"] = list(ckpt["log"])


def _tuples(x: Any) -> Any:
    # random.setstate wants tuples; a round trip may hand back lists.
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# -- helpers ----------------------------------------------------------------------------------
@contextmanager
def _isolated_rng(device: torch.device) -> Iterator[None]:
    """Seed freely inside; the caller's torch / NumPy / Python RNG states come back after."""
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _NoBar:
    def update(self, n: int) -> None: ...
    def set_postfix(self, **kwargs: Any) -> None: ...
    def close(self) -> None: ...


def _progress(enabled: bool, name: str, total: int, initial: int) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=name, unit="step", leave=False,
                dynamic_ncols=True)
