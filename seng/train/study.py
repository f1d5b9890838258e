"""``train``: a study of optimizers x learning rates x seeds, with logs, table and plot."""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from seng import _hyper

from . import parallel, report
from ._files import write_json, write_text
from .data import DATASETS, Dataset, load_dataset
from .models import MODELS, build_model
from .optim import DIST_MODES, OPTIMIZERS, Schedule
from .runner import ModelSource, RunSettings, RunSpec, run, warm_up

#: Learning rate of each optimizer when none is given.
DEFAULT_LR = {"seng": 0.05, "sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}

#: Named recipes: keyword arguments of :func:`train`.
PRESETS: dict[str, dict[str, Any]] = {
    # Yang et al. 2022 (SENG), Section 5, as its authors' code runs it (the README's
    # ResNet-18 command, Pytorch/cifar10 of github.com/yangorwell/SENG): 65 epochs of a
    # poly decay over 70, constant damping.
    "cifar10-resnet18": {
        "model": "resnet18", "data": "cifar10", "optimizers": ("seng",), "lr": 0.05,
        "batch_size": 256, "epochs": 65, "momentum": 0.9, "weight_decay": 1e-2,
        "schedule": "poly", "decay_epochs": 70, "power": 6.0, "damping": 2.0,
        "update_freq": 200, "sketch": "auto", "sketch_size": 256 * 256, "augment": True,
        "target": 0.93,
    },
}


@dataclass
class StudyResult:
    """What :func:`train` returns.

    Attributes
    ----------
    logs : list of dict
        One log per run (see :func:`seng.train.runner.run`): ``run``, ``optimizer``,
        ``lr``, ``seed``, ``status``, ``settings`` and ``epochs`` (one dict per epoch:
        ``epoch``, ``lr``, ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``,
        ``time`` (cumulative training seconds), ``epoch_time``, ``step_time``,
        ``eval_time``).
    summary : list of dict
        :func:`seng.train.report.summarize` of the logs.
    best : list of dict
        The summary row of each optimizer's best learning rate.
    table : str
        The Markdown results.
    out : pathlib.Path or None
        The output folder.
    """

    logs: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    best: list[dict[str, Any]]
    table: str
    out: Path | None


def train(
    model: str | nn.Module | Callable[[], nn.Module] = "mlp",
    data: str | Dataset = "digits",
    *,
    optimizers: Sequence[str] = OPTIMIZERS,
    lr: float | Sequence[float] | Mapping[str, float | Sequence[float]] | None = None,
    seeds: Sequence[int] = (0,),
    epochs: int = 10,
    batch_size: int = 64,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    schedule: str = "constant",
    decay_epochs: float | None = None,
    power: float = 1.0,
    step_size: int = 30,
    gamma: float = 0.1,
    warmup: float = 0.0,
    damping: float = 1.0,
    damping_decay: float | None = None,
    damping_rule: str = "absolute",
    update_freq: int = 10,
    sketch: str | None = None,
    sketch_size: int = 16384,
    curvature_batch: int | None = None,
    curvature_memory: int = 1,
    augment: bool = False,
    subset: int | None = None,
    data_dir: str | Path | None = None,
    download: bool = False,
    target: float = 0.97,
    device: str | torch.device = "cpu",
    out: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    progress: bool = True,
    threads: int | None = None,
    nproc: int | None = None,
    dist_mode: str = "global",
) -> StudyResult:
    r"""Train a model with several optimizers, learning rates and seeds and compare them.

    Every combination of ``optimizers`` x learning rates x ``seeds`` is one run: the model
    is built (or copied) under ``torch.manual_seed(seed)``, the training set is shuffled
    each epoch by a generator seeded with ``seed``, and the loss is the mean cross-entropy.
    Each step sets the learning rate to ``lr * f(epoch, progress)``
    (:class:`seng.train.optim.Schedule`). After each epoch the test set is evaluated. A run
    whose training loss turns NaN/Inf stops and is reported as diverged.

    The comparison (:func:`seng.train.report.summarize`) picks, per optimizer, the learning
    rate with the fewest mean epochs to test accuracy ``>= target`` and reports epochs and
    training wall-clock (evaluation excluded) to the target, as mean ± std over seeds.

    Parameters
    ----------
    model : str, nn.Module or callable
        ``"mlp"``, ``"cnn"``, ``"resnet8"``, ``"resnet18"`` (:mod:`seng.train.models`); an
        ``nn.Module`` (deep-copied for each run: every seed starts from its weights); or a
        function returning a new module (called under each run's seed).
    data : str or Dataset
        ``"digits"`` (default), ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``,
        ``"synthetic"`` (see :func:`seng.train.data.load_dataset`) or a loaded
        :class:`~seng.train.data.Dataset`.
    optimizers : sequence of str
        Among ``"seng"``, ``"sgd"``, ``"adam"``, ``"adamw"``
        (:func:`seng.train.optim.make_optimizer`).
    lr : float, sequence of float, or dict
        One learning rate or a grid for every optimizer, or ``{optimizer: lr or grid}``;
        optimizers left out get :data:`DEFAULT_LR`. Each must be > 0.
    seeds : sequence of int
        One run per seed.
    epochs, batch_size : int
        Passes over the training set; samples per step (the last batch may be smaller).
    momentum, weight_decay : float
        Heavy-ball momentum (SENG, SGD); weight decay (L2 for SENG, SGD, Adam; decoupled
        for AdamW).
    schedule, decay_epochs, power, step_size, gamma, warmup :
        The learning-rate schedule (:class:`seng.train.optim.Schedule`); ``decay_epochs``
        defaults to ``epochs``.
    damping, damping_rule, update_freq, sketch, sketch_size, curvature_batch, curvature_memory :
        SENG's options (:class:`seng.SENGPreconditioner`; ``sketch_size = s*s`` for the
        paper's sample size ``s``).
    damping_decay : float, optional
        The damping's factor per epoch, in ``(0, 1]``, applied at every step: SENG's
        damping is ``damping * damping_decay ** t`` with ``t`` the training progress in
        epochs counting the current step (:class:`seng.train.optim.DampingDecay`; the
        ImageNet recipe of the SENG authors' code decays by 0.9 every 10 epochs:
        ``damping_decay = 0.9 ** 0.1``). None: a constant damping.
    augment : bool
        Random crop (padding 4) and horizontal flip of each training batch.
    subset : int, optional
        Use at most this many samples of each split (a fixed random subset).
    data_dir, download :
        Root folder of local data sets and whether to fetch them (needs torchvision).
    target : float
        Test accuracy in (0, 1] that "epochs / wall-clock to target" refer to.
    device : str or torch.device
        ``"cpu"`` or a CUDA device; the whole data set is moved there.
    out : str or pathlib.Path, optional
        Output folder: ``runs/<run>.json`` (per-epoch log of each run, rewritten after
        every epoch, ``status`` "complete" only at the end), ``checkpoints/<run>.pt``,
        ``results.md``, ``results.json`` and ``comparison.png`` (written last, atomically,
        only when every run has ended). None: nothing is written.
    checkpoint_every : int
        Save a checkpoint every this many epochs and at the end of a run (0: never).
    resume : bool
        Skip runs whose log is complete with the same settings and continue the others
        from their checkpoint (bit-identical on CPU).
    progress : bool
        Show a tqdm progress bar per run and one line per finished run.
    threads : int, optional
        ``torch.set_num_threads(threads)`` for the study (restored afterwards). On a busy
        machine one thread gives steadier timings for small models. A resumed run is
        bit-identical only with the same thread count. Workers spawned by ``nproc`` use
        ``max(1, cores / nproc)`` threads each when None.
    nproc : int, optional
        Data-parallel processes on this host (default 1, or the job's size when launched by
        ``torchrun``: then the processes exist already and none is spawned). ``nproc`` > 1
        spawns that many workers of one process group (gloo on the CPU; NCCL with
        ``device="cuda"``, rank ``r`` on ``cuda:r``, at most one process per GPU).
        ``batch_size`` stays the global batch and must be divisible by ``nproc``: rank
        ``r`` trains on rows ``[r b / W, (r + 1) b / W)`` of every global batch ``b`` of the
        shared permutation (the ``n mod W`` samples left at the end of each epoch's
        permutation are dropped), so the ranks together take the steps of one process.
        SENG runs as :class:`seng.distributed.DistributedSENG`, the first-order optimizers
        on a ``DistributedDataParallel`` replica. Rank 0 writes every file; the logged
        losses and accuracies are over all ranks. Not part of the settings a resumed
        checkpoint must match.
    dist_mode : {"global", "global-sharded", "global-auto", "local"}
        SENG's curvature with ``nproc`` > 1 (:class:`seng.distributed.DistributedSENG`):
        of the global batch (the one-process direction), the same with the sketched
        layers' per-sample factors kept on their rank (``factors="sharded"``, or per layer
        by bytes with ``"auto"``; both need a sketch family) or of each rank's slice
        (block-Jacobi). Part of the settings a checkpoint
        must match (with one process all are plain SENG).

    Returns
    -------
    StudyResult

    Raises
    ------
    ValueError, TypeError
        A bad argument (before anything is written); FileNotFoundError: missing local data.

    References
    ----------
    M. Yang, D. Xu, Z. Wen, M. Chen, P. Xu, "Sketchy empirical natural gradient methods for
    deep learning", J. Sci. Comput. 92 (2022), arXiv:2006.05924, Section 5 (experiments).
    """
    return _prepare(
        model, data, optimizers=optimizers, lr=lr, seeds=seeds, epochs=epochs,
        batch_size=batch_size, momentum=momentum, weight_decay=weight_decay,
        schedule=schedule, decay_epochs=decay_epochs, power=power, step_size=step_size,
        gamma=gamma, warmup=warmup, damping=damping, damping_decay=damping_decay,
        damping_rule=damping_rule, update_freq=update_freq, sketch=sketch,
        sketch_size=sketch_size, curvature_batch=curvature_batch,
        curvature_memory=curvature_memory, augment=augment,
        subset=subset, data_dir=data_dir, download=download, target=target, device=device,
        out=out, checkpoint_every=checkpoint_every, resume=resume, progress=progress,
        threads=threads, nproc=nproc, dist_mode=dist_mode,
    ).run()


@dataclass
class _Study:
    """A validated study, ready to run (nothing written yet)."""

    model_name: str
    model_source: ModelSource
    dataset: Dataset
    grid: dict[str, list[float]]
    seeds: list[int]
    target: float
    threads: int | None
    rs: RunSettings
    nproc: int
    launch: tuple[Any, Any, dict[str, Any]] | None  # what each worker prepares, if spawning

    @property
    def is_main(self) -> bool:
        """Whether this process reports (rank 0, or the one that spawns the workers)."""
        return self.rs.world.is_main

    def run(self) -> StudyResult:
        if self.launch is not None:
            try:
                return parallel.launch(self.nproc, self.rs.device, _run_worker, self.launch,
                                       self.threads)
            except parallel.WorkerError as e:
                self._mark_failed(str(e))
                raise
        previous = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            with parallel.joined(self.rs.world):
                return self._run()
        finally:
            if self.threads is not None:
                torch.set_num_threads(previous)

    def _mark_failed(self, error: str) -> None:
        """Logs left "running" by workers that were ended (rank 0 may be stopped inside a
        collective before it can record the failure) become "failed"."""
        if self.rs.out is None:
            return
        for spec in self._specs():
            path = self.rs.out / "runs" / f"{spec.name}.json"
            if path.is_file():
                log = json.loads(path.read_text())
                if log.get("status") == "running":
                    write_json(path, {**log, "status": "failed", "error": error})

    def _specs(self) -> list[RunSpec]:
        # Seeds outermost: a change in the machine's load hits every optimizer alike.
        return [RunSpec(opt, value, seed) for seed in self.seeds
                for opt, grid in self.grid.items() for value in grid]

    def _run(self) -> StudyResult:
        rs, settings, out_dir = self.rs, self.rs.settings, self.rs.out
        main = rs.world.is_main
        if out_dir is not None and main:
            out_dir.mkdir(parents=True, exist_ok=True)
            # Results of an earlier study in this folder would look like this one's.
            for stale in ("results.md", "results.json", "comparison.png"):
                (out_dir / stale).unlink(missing_ok=True)
            if not rs.resume:  # this study's runs start afresh
                for spec in self._specs():
                    (out_dir / "runs" / f"{spec.name}.json").unlink(missing_ok=True)
                    (out_dir / "checkpoints" / f"{spec.name}.pt").unlink(missing_ok=True)
        rs.world.barrier()  # no rank reads a log or checkpoint that rank 0 is deleting
        warm_up(self.model_source, self.dataset, self.grid, rs)
        logs = []
        for spec in self._specs():
            logs.append(run(spec, self.model_source, self.dataset, rs))
            if rs.progress and main:
                _announce(logs[-1], self.target)
        target = self.target
        summary = report.summarize(logs, target)
        best = report.best_per_optimizer(summary)
        title = (f"{self.model_name} on {self.dataset.name}, {settings['epochs']} epochs, "
                 f"batch {settings['batch_size']}")
        table = report.markdown(summary, target, title)
        if out_dir is not None and main:
            report.plot(logs, summary, target, out_dir / "comparison.png")
            write_json(out_dir / "results.json", {
                "target": target, "settings": settings, "threads": torch.get_num_threads(),
                "nproc": rs.world.size, "summary": summary, "best": best})
            write_text(out_dir / "results.md", table)
        return StudyResult(logs, summary, best, table, out_dir)


def _run_worker(model: Any, data: Any, kw: dict[str, Any]) -> StudyResult:
    """One spawned rank: prepare the study again (the process group is up), run it."""
    return _prepare(model, data, **kw).run()


def _prepare(model: Any, data: Any, **kw: Any) -> _Study:
    """Validate every argument of :func:`train` and load the data; writes nothing."""
    a = SimpleNamespace(**kw)
    grid = _lr_grid(a.lr, _names(a.optimizers, OPTIMIZERS, "optimizer"))
    seeds = _seeds(a.seeds)
    for name in ("epochs", "batch_size", "step_size"):
        _int(name, getattr(a, name), 1)
    _int("checkpoint_every", a.checkpoint_every, 0)
    for name in ("subset", "threads"):
        if getattr(a, name) is not None:
            _int(name, getattr(a, name), 1)
    for name in ("momentum", "weight_decay"):
        value = getattr(a, name)
        if not _hyper._is_real(value) or not math.isfinite(value) or value < 0:
            raise ValueError(f"Invalid {name}: {value!r} (must be a finite number >= 0)")
    if a.momentum >= 1:
        raise ValueError(f"Invalid momentum: {a.momentum!r} (must be in [0, 1))")
    if not _hyper._is_real(a.target) or not 0 < a.target <= 1:
        raise ValueError(f"Invalid target: {a.target!r} (a test accuracy in (0, 1])")
    for name in ("decay_epochs", "power", "gamma", "warmup"):
        value = getattr(a, name)
        if value is not None and not _hyper._is_real(value):
            raise TypeError(f"Invalid {name}: {value!r} (must be a number)")
    sched = Schedule(a.schedule, float(a.epochs if a.decay_epochs is None else a.decay_epochs),
                     float(a.power), a.step_size, float(a.gamma), float(a.warmup))
    seng_options = {
        "damping": _hyper.check_positive_float(a.damping, "damping"),
        "damping_decay": _damping_decay(a.damping_decay),
        "damping_rule": _hyper.check_damping_rule(a.damping_rule),
        "update_freq": _hyper.check_positive_int(a.update_freq, "update_freq"),
        "sketch": _hyper.check_sketch(a.sketch),
        "sketch_size": _hyper.check_positive_int(a.sketch_size, "sketch_size"),
        "curvature_batch": _hyper.check_positive_int(a.curvature_batch, "curvature_batch",
                                                     allow_none=True),
        "curvature_memory": _hyper.check_positive_int(a.curvature_memory, "curvature_memory"),
    }
    if a.dist_mode not in DIST_MODES:
        raise ValueError(f"Invalid dist_mode: {a.dist_mode!r} (valid: "
                         f"{', '.join(map(repr, DIST_MODES))})")
    if a.dist_mode.startswith("global-") and seng_options["sketch"] in (None, "auto"):
        raise ValueError(f"Invalid dist_mode: {a.dist_mode!r} with sketch "
                         f"{seng_options['sketch']!r} (sharding applies to sketched layers: "
                         "give a sketch family)")
    device = _device(a.device)
    nproc, world = parallel.plan(a.nproc, device)
    if a.batch_size % nproc:
        raise ValueError(f"Invalid batch_size: {a.batch_size} with nproc {nproc} (the global "
                         f"batch is split evenly over the processes: give a multiple of "
                         f"{nproc})")
    if seng_options["curvature_memory"] > 1 and seng_options["sketch"] is not None:
        raise ValueError(f"Invalid curvature_memory: {a.curvature_memory} with sketch "
                         f"{seng_options['sketch']!r} (pooling needs the exact route: give "
                         "--sketch none)")
    if nproc > 1 and seng_options["curvature_memory"] > 1:
        raise ValueError(f"Invalid curvature_memory: {a.curvature_memory} with nproc {nproc} "
                         "(pooled curvature is not available with seng.distributed yet: "
                         "give 1)")
    if nproc > 1 and a.curvature_batch is not None and a.curvature_batch % nproc:
        raise ValueError(f"Invalid curvature_batch: {a.curvature_batch} with nproc {nproc} "
                         f"(each process takes curvature_batch / nproc samples: give a "
                         f"multiple of {nproc})")
    if world is None:
        _picklable(model)
    model_name, model_source = _model(model)
    dataset = _dataset(data, a.data_dir, a.download)
    if a.subset is not None:
        dataset = dataset.subset(a.subset)
    if model_source is None:
        model_source = _factory(model_name, dataset)
    # nproc is left out: N ranks take the steps of one process on the same global batches.
    settings = json.loads(json.dumps({
        "model": model_name, "data": dataset.name, "subset": a.subset, "epochs": a.epochs,
        "batch_size": a.batch_size, "momentum": a.momentum, "weight_decay": a.weight_decay,
        "schedule": asdict(sched), "seng": {**seng_options, "dist_mode": a.dist_mode},
        "augment": bool(a.augment),
    }))
    out = None if a.out is None else Path(a.out)
    if world is None:  # the spawned workers load the data and build the runs themselves
        rs = RunSettings(settings, sched, seng_options, device, out, a.checkpoint_every,
                         bool(a.resume), bool(a.progress), a.dist_mode)
        return _Study(model_name, model_source, dataset, grid, seeds, a.target, a.threads,
                      rs, nproc, (model, data, kw))
    rs = RunSettings(settings, sched, seng_options, world.device, out, a.checkpoint_every,
                     bool(a.resume), bool(a.progress) and world.is_main, a.dist_mode, world)
    return _Study(model_name, model_source, dataset.to(world.device), grid, seeds, a.target,
                  a.threads, rs, nproc, None)


# -- validation -------------------------------------------------------------------------------
def _damping_decay(rate: Any) -> float | None:
    if rate is None:
        return None
    if not _hyper._is_real(rate) or not 0 < rate <= 1:
        raise ValueError(f"Invalid damping_decay: {rate!r} (a factor per epoch in (0, 1], or "
                         "None)")
    return float(rate)


def _names(values: Any, valid: Sequence[str], what: str) -> list[str]:
    if isinstance(values, str):
        values = [values]
    values = list(values)
    if not values:
        raise ValueError(f"Invalid {what}s: none given (valid: {', '.join(valid)})")
    for v in values:
        if v not in valid:
            raise ValueError(f"Invalid {what}: {v!r} (valid: {', '.join(valid)})")
    return list(dict.fromkeys(values))


def _lr_grid(lr: Any, optimizers: Sequence[str]) -> dict[str, list[float]]:
    if isinstance(lr, Mapping):
        unknown = set(lr) - set(optimizers)
        if unknown:
            raise ValueError(f"Invalid lr keys: {sorted(unknown)} are not among the "
                             f"optimizers {list(optimizers)}")
        per = {o: lr.get(o, DEFAULT_LR[o]) for o in optimizers}
    else:
        per = {o: DEFAULT_LR[o] if lr is None else lr for o in optimizers}
    grid = {}
    for o, values in per.items():
        values = [values] if _hyper._is_real(values) else list(values)
        if not values:
            raise ValueError(f"Invalid learning rate for {o}: an empty grid")
        for v in values:
            if not _hyper._is_real(v) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"Invalid learning rate for {o}: {v!r} (must be a finite "
                                 "number > 0)")
        grid[o] = [float(v) for v in dict.fromkeys(values)]
    return grid


def _seeds(seeds: Any) -> list[int]:
    seeds = [seeds] if _hyper._is_int(seeds) else list(seeds)
    if not seeds or not all(_hyper._is_int(s) and s >= 0 for s in seeds):
        raise ValueError(f"Invalid seeds: {seeds!r} (a non-empty list of ints >= 0)")
    return [int(s) for s in dict.fromkeys(seeds)]


def _int(name: str, value: Any, low: int) -> None:
    if not _hyper._is_int(value) or value < low:
        raise ValueError(f"Invalid {name}: {value!r} (must be an int >= {low})")


def _picklable(model: Any) -> None:
    try:
        pickle.dumps(model)
    except (pickle.PicklingError, AttributeError, TypeError) as e:
        raise TypeError(f"with nproc > 1 the model goes to spawned processes and must be "
                        f"picklable (a name, an nn.Module or a module-level function), got "
                        f"{model!r}: {e}") from e


def _device(device: Any) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"Invalid device: {device!r} (e.g. 'cpu', 'cuda', 'cuda:1')") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Invalid device: {device!r}: CUDA is not available here "
                         "(use 'cpu')")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"Invalid device: {device!r} (valid: 'cpu', 'cuda[:index]')")
    return dev


def _model(model: Any) -> tuple[str, ModelSource | None]:
    if isinstance(model, str):
        if model not in MODELS:
            raise ValueError(f"Invalid model: {model!r} (valid: {', '.join(MODELS)}, or an "
                             "nn.Module, or a function returning one)")
        return model, None
    if isinstance(model, nn.Module):
        return type(model).__name__, model
    if callable(model):
        return getattr(model, "__name__", type(model).__name__), model
    raise TypeError(f"model must be a name, an nn.Module or a function returning one, got "
                    f"{type(model).__name__}")


def _dataset(data: Any, data_dir: Any, download: bool) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if not isinstance(data, str) or data not in DATASETS:
        raise ValueError(f"Invalid data set: {data!r} (valid: {', '.join(DATASETS)}, or a "
                         "seng.train.data.Dataset)")
    return load_dataset(data, data_dir, download=download)


def _factory(name: str, data: Dataset) -> Callable[[], nn.Module]:
    def factory() -> nn.Module:
        return build_model(name, data.input_shape, data.num_classes)
    return factory


def _announce(log: dict[str, Any], target: float) -> None:
    from tqdm.auto import tqdm

    last = log["epochs"][-1] if log["epochs"] else {"test_acc": float("nan"), "time": 0.0}
    hit = report.to_target(log, target)
    reach = (f"{target:g} at epoch {hit[0]} ({hit[1]:.2f} s)" if hit
             else f"{target:g} not reached")
    tqdm.write(f"{log['run']:<28} {log['status']:<9} test acc {last['test_acc']:.4f}  "
               f"{reach}  train {last['time']:.2f} s")
