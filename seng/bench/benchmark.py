"""The whole study: the learning-rate grids over the seeds, step timing, and the files it
writes."""

from __future__ import annotations

import importlib.metadata
import inspect
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from seng.train._files import write_json

from .optimizers import SENG_VARIANTS, OptimizerSpec, all_optimizers, missing_requirement
from .problems import PROBLEMS, Data, Problem, missing_requirements
from .study import (
    Job,
    Runner,
    best_lr,
    grid_ratio,
    machine_load,
    selection_key,
    summarize_lr,
    time_steps,
)

#: The optimizers of the default study, in table order.
DEFAULT_OPTIMIZERS = ("sgd", "adam", "adamw", "muon", "kfac", "seng", "seng-uf1", "seng-sketch")


@dataclass(frozen=True)
class BenchConfig:
    """Settings of one benchmark study (:func:`run_benchmark`).

    Attributes
    ----------
    out : pathlib.Path
        Output folder.
    problems, optimizers : tuple of str
        Names in :data:`seng.bench.problems.PROBLEMS` and :func:`all_optimizers`;
        ``optimizers`` None means :data:`DEFAULT_OPTIMIZERS` plus every further SENG variant
        of the study (:func:`default_optimizer_names`).
    seeds : int
        Seeds 0..seeds-1, run at every learning rate of the grid; the best learning rate has
        the best mean over them, and its runs are the ones reported.
    batch_size : int
        Mini-batch size.
    epochs : int or None
        Epochs of every run; None uses each problem's own (its ``epochs``).
    grid_points : int or None
        Keep only the middle ``grid_points`` values of each initial grid (None: all).
    max_extend : int
        Grid extensions allowed per (problem, optimizer).
    timing_rounds : int
        Rounds of interleaved step timing.
    timing_warmup : bool
        One untimed block per optimizer before the timed rounds.
    workers : int
        Processes for the training runs (1: in this process).
    quick : bool
        Smoke size: the problems' quick data.
    progress : bool
        Show progress bars (tqdm, on stderr).
    targets : mapping of str to float
        Targets replacing the problems' own (and their quick targets), by problem name.
    lrs : mapping of str to tuple of float
        Initial learning-rate grids replacing the optimizers' own, by optimizer name
        (increasing, log-spaced; ``grid_points`` then applies to them).
    """

    out: Path
    problems: tuple[str, ...] = tuple(PROBLEMS)
    optimizers: tuple[str, ...] | None = None
    seeds: int = 3
    batch_size: int = 128
    epochs: int | None = None
    grid_points: int | None = None
    max_extend: int = 3
    timing_rounds: int = 8
    timing_warmup: bool = True
    workers: int = 2
    quick: bool = False
    progress: bool = True
    targets: Mapping[str, float] = field(default_factory=dict)
    lrs: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("seeds", "batch_size", "timing_rounds", "workers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Invalid {name}: {value!r} (must be an int >= 1)")
        for name in ("epochs", "grid_points"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"Invalid {name}: {value!r} (must be None or an int >= 1)")
        for name in ("quick", "progress", "timing_warmup"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.max_extend, int) or self.max_extend < 0:
            raise ValueError(f"Invalid max_extend: {self.max_extend!r} (must be an int >= 0)")
        unknown = [p for p in self.problems if p not in PROBLEMS]
        if unknown or not self.problems:
            raise ValueError(f"Invalid problems: {list(self.problems)!r} (valid: "
                             f"{', '.join(PROBLEMS)})")
        specs = all_optimizers()
        unknown = [o for o in self.optimizers or () if o not in specs]
        if unknown or self.optimizers == ():
            raise ValueError(f"Invalid optimizers: {list(self.optimizers or ())!r} (valid: "
                             f"{', '.join(specs)})")
        for name, target in self.targets.items():
            if name not in PROBLEMS or not isinstance(target, (int, float)) \
                    or not math.isfinite(target):
                raise ValueError(f"Invalid targets: {name!r}: {target!r} (a problem name and "
                                 "a finite number)")
        for name, grid in self.lrs.items():
            values = list(grid) if isinstance(grid, (tuple, list)) else []
            if name not in specs or not values or any(
                    not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0
                    for v in values) or values != sorted(set(values)):
                raise ValueError(f"Invalid lrs: {name!r}: {grid!r} (an optimizer name and an "
                                 "increasing tuple of positive learning rates)")


QUICK = {"seeds": 2, "epochs": 2, "grid_points": 2, "max_extend": 1, "timing_rounds": 1,
         "timing_warmup": False, "workers": 1}


def quick_config(out: Path, **overrides: Any) -> BenchConfig:
    """The ``--quick`` settings: quick data and targets, 2 epochs, 2 grid points, one
    extension, 2 seeds, 1 timing round without warm-up, in this process."""
    return BenchConfig(out=Path(out), quick=True, **{**QUICK, **overrides})


def _optimizer_list(cfg: BenchConfig) -> list[OptimizerSpec]:
    specs = all_optimizers()
    if cfg.optimizers is not None:
        return [specs[o] for o in cfg.optimizers]
    return [specs[o] for o in default_optimizer_names()]


def default_optimizer_names() -> list[str]:
    """The study's optimizers without ``--optimizers``: :data:`DEFAULT_OPTIMIZERS` and every
    further SENG variant with ``in_study``."""
    names = list(DEFAULT_OPTIMIZERS)
    return names + [o for o, v in SENG_VARIANTS.items() if o not in names and v.in_study]


def _initial_grid(spec: OptimizerSpec, cfg: BenchConfig) -> list[float]:
    lrs, points = list(cfg.lrs.get(spec.name, spec.lrs)), cfg.grid_points
    if points is not None and points < len(lrs):
        start = (len(lrs) - points) // 2
        lrs = lrs[start:start + points]
    return lrs


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("mnist1d", "asdfghjkl", "seng-sketch"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _seng_defaults() -> dict[str, str]:
    """SENG's defaults in effect (a variant's options override them)."""
    from seng import SENGPreconditioner

    return {k: repr(v.default) for k, v in inspect.signature(SENGPreconditioner).parameters.items()
            if v.default is not inspect.Parameter.empty}


def _git_state() -> dict[str, Any] | None:
    """The checkout's commit and the files of seng/ and sketchlinalg/ changed since, if git
    and a repository are there (the study measures the working tree)."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "seng", "sketchlinalg"],
                               cwd=root, capture_output=True, text=True, timeout=10,
                               check=True).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "changed": [line[3:] for line in dirty]}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Progress:
    """A tqdm bar over runs whose total grows with grid extensions (a no-op when off)."""

    def __init__(self, enabled: bool, desc: str) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=0, desc=desc, unit="run", file=sys.stderr)

    def add(self, n: int) -> None:
        if self.bar is not None:
            self.bar.total += n
            self.bar.refresh()

    def done(self, label: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(label, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_benchmark(cfg: BenchConfig) -> dict[str, Any]:
    """Run the study of ``cfg`` and write its files under ``cfg.out``.

    Files: ``runs/<problem>/<optimizer>/lr<lr>_seed<seed>.json`` (every run's log),
    ``results.json`` (everything below), ``results.md`` (the tables) and
    ``plots/<problem>.png``, ``plots/<problem>_lr.png``. A problem or optimizer whose package
    is missing is skipped, with the reason printed and recorded under ``"skipped"``.

    Returns
    -------
    dict
        The content of ``results.json``.
    """
    t_start = time.perf_counter()
    cpu_start = _cpu_seconds()
    # the code measured is the one imported now: record its state before others change it
    environment = {**_versions(), "platform": platform.platform(), "git": _git_state(),
                   "seng_defaults": _seng_defaults(), "cpu_count": _cpu_count(),
                   "torch_threads": 1, "load_average_start": machine_load()}
    out = Path(cfg.out)
    skipped: list[dict[str, str]] = []
    problems: list[Problem] = []
    for name in cfg.problems:
        missing = missing_requirements(PROBLEMS[name])
        if missing:
            reason = (f"needs {', '.join(missing)} (pip install -e '.[bench]')")
            skipped.append({"problem": name, "reason": reason})
            _say(f"seng.bench: skipping problem {name}: {reason}")
        else:
            problem = PROBLEMS[name]
            target = problem.quick_target if cfg.quick else problem.target
            problems.append(replace(problem, target=cfg.targets.get(name, target)))
    specs: list[OptimizerSpec] = []
    for spec in _optimizer_list(cfg):
        reason = missing_requirement(spec)
        if reason:
            skipped.append({"optimizer": spec.name, "reason": reason})
            _say(f"seng.bench: skipping optimizer {spec.name}: {reason}")
        else:
            specs.append(spec)
    if not problems or not specs:
        raise RuntimeError("nothing to run: every problem or every optimizer was skipped "
                           f"({skipped})")

    loaded: dict[Any, Data] = {}  # the two MNIST-1D problems share one generated data set
    data: dict[str, Data] = {}
    for p in problems:
        if p.load not in loaded:
            loaded[p.load] = p.load(cfg.quick)
        data[p.name] = loaded[p.load]
    epochs = {p.name: cfg.epochs or p.epochs for p in problems}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _study(cfg, out, problems, specs, data, epochs, skipped, t_start, cpu_start,
                      environment)
    finally:
        torch.set_num_threads(threads)


def _study(cfg: BenchConfig, out: Path, problems: list[Problem], specs: list[OptimizerSpec],
           data: dict[str, Data], epochs: dict[str, int], skipped: list[dict[str, str]],
           t_start: float, cpu_start: float, environment: dict[str, Any]) -> dict[str, Any]:
    from .report import write_report

    # per (problem, optimizer): the grid and, per learning rate, the logs of every seed
    grids = {(p.name, s.name): _initial_grid(s, cfg) for p in problems for s in specs}
    extended: dict[tuple[str, str], list[float]] = {key: [] for key in grids}
    logs: dict[tuple[str, str], dict[float, list[dict[str, Any]]]] = {key: {} for key in grids}
    settled: dict[tuple[str, str], float] = {}
    spec_of = {s.name: s for s in specs}
    problem_of = {p.name: p for p in problems}
    seeds = range(cfg.seeds)

    def jobs_for(key: tuple[str, str], lr: float) -> list[Job]:
        return [(key[0], spec_of[key[1]], lr, seed, epochs[key[0]], cfg.batch_size)
                for seed in seeds]

    def store(log: dict[str, Any]) -> None:
        key = (log["problem"], log["optimizer"])
        path = out / "runs" / key[0] / key[1] / f"lr{log['lr']:.4g}_seed{log['seed']}.json"
        log["file"] = str(path.relative_to(out))
        write_json(path, log)
        logs[key].setdefault(log["lr"], []).append(log)
        bar.done(f"{key[0]} {key[1]} lr={log['lr']:.3g} seed={log['seed']} {log['status']}")

    bar = _Progress(cfg.progress, "seng.bench runs")
    runner = Runner(data, cfg.workers)
    try:
        jobs = [j for key, lrs in grids.items() for lr in lrs for j in jobs_for(key, lr)]
        while jobs:  # rounds: the grids, then one extension per unsettled optimizer
            bar.add(len(jobs))
            runner.map(jobs, store)
            jobs = []
            for key, by_lr in logs.items():
                if key in settled:
                    continue
                problem = problem_of[key[0]]
                lrs = sorted(by_lr)
                best = best_lr(problem, [summarize_lr(problem, by_lr[lr], epochs[key[0]])
                                         for lr in lrs])["lr"]
                edge = len(lrs) > 1 and lrs.index(best) in (0, len(lrs) - 1)
                if edge and len(extended[key]) < cfg.max_extend:
                    ratio = grid_ratio(grids[key])
                    new = lrs[0] / ratio if best == lrs[0] else lrs[-1] * ratio
                    extended[key].append(new)
                    jobs += jobs_for(key, new)
                else:
                    settled[key] = best
    finally:
        runner.close()
        bar.close()
    t_runs = time.perf_counter() - t_start

    # step times: interleaved, in this process, after the runs (the other core idle)
    timing: dict[str, dict[str, dict[str, Any]]] = {}
    tbar = _Progress(cfg.progress, "seng.bench step timing")
    tbar.add(len(problems))
    for p in problems:
        at_best = {s.name: (s, settled[(p.name, s.name)]) for s in specs}
        timing[p.name] = time_steps(p, data[p.name], at_best, cfg.batch_size, cfg.timing_rounds,
                                    warmup=cfg.timing_warmup)
        tbar.done(p.name)
    tbar.close()
    t_total = time.perf_counter() - t_start

    results: dict[str, Any] = {
        "config": {**{k: v for k, v in asdict(cfg).items() if k != "out"},
                   "epochs_per_problem": epochs},
        "environment": {**environment, "load_average_end": machine_load()},
        # CPU seconds of this process and its workers: divided by the cores, the wall time
        # the study would take on an idle machine
        "wall_time": {"runs": t_runs, "total": t_total, "cpu": _cpu_seconds() - cpu_start},
        "skipped": skipped,
        "optimizers": {s.name: {"kind": s.kind, "options": s.options, "note": s.note,
                                "initial_grid": _initial_grid(s, cfg)}
                       for s in specs},
        "problems": {},
    }
    for p in problems:
        results["problems"][p.name] = _problem_results(
            p, specs, epochs[p.name], len(data[p.name].y_train) // cfg.batch_size, logs,
            extended, settled, timing[p.name])
    write_json(out / "results.json", results)
    write_report(out, results)
    failed = [log["file"] for by_lr in logs.values() for runs in by_lr.values()
              for log in runs if log["status"] == "failed"]
    if failed:
        _say(f"seng.bench: {len(failed)} run(s) failed (see their logs): {failed[:5]}")
    return results


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its ended children (the workers)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return math.nan
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _cpu_count() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _problem_results(p: Problem, specs: list[OptimizerSpec], epochs: int, steps_per_epoch: int,
                     logs: dict, extended: dict, settled: dict,
                     timing: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rows = {}
    sgd_time = timing.get("sgd", {}).get("step_time", math.nan)
    for s in specs:
        key = (p.name, s.name)
        by_lr = {lr: sorted(runs, key=lambda log: log["seed"]) for lr, runs in logs[key].items()}
        lrs = sorted(by_lr)
        sweep = {lr: summarize_lr(p, by_lr[lr], epochs) for lr in lrs}
        best = settled[key]
        summary = sweep[best]
        step = timing[s.name]["step_time"]
        edge = len(lrs) > 1 and lrs.index(best) in (0, len(lrs) - 1)
        rows[s.name] = {
            "best_lr": best, "grid": lrs, "extended": extended[key],
            "best_at_edge": edge,
            "edge_side": ("low" if best == lrs[0] else "high") if edge else None,
            "sweep": [{"lr": lr, "epochs_to_target": sw["epochs_to_target"],
                       "mean_epochs_to_target": sw["mean_epochs"],
                       "final_target_metric": sw["final"].get(p.target_metric, {}).get("mean"),
                       "statuses": sw["statuses"], "key": list(selection_key(p, sw))}
                      for lr, sw in sweep.items()],
            "seeds": summary["seeds"],
            "epochs_to_target": summary["epochs_to_target"],
            "reached": summary["reached"],
            "mean_epochs_to_target": summary["mean_epochs"],
            "std_epochs_to_target": _std([epochs + 1 if h is None else h
                                          for h in summary["epochs_to_target"]]),
            "step_time": step,
            "step_time_blocks": timing[s.name]["blocks"],
            "step_time_ratio_sgd": step / sgd_time if sgd_time > 0 else math.nan,
            "time_to_target": summary["mean_epochs"] * steps_per_epoch * step,
            "final": summary["final"],
            "statuses": summary["statuses"],
            "runs": [log["file"] for log in by_lr[best]],
            "all_runs": [log["file"] for lr in lrs for log in by_lr[lr]],
            **({"timing_error": timing[s.name]["error"]} if "error" in timing[s.name] else {}),
        }
    return {"description": p.description, "kind": p.kind, "target_metric": p.target_metric,
            "target": p.target, "epochs": epochs, "steps_per_epoch": steps_per_epoch,
            "optimizers": rows}


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


__all__ = ["DEFAULT_OPTIMIZERS", "QUICK", "BenchConfig", "default_optimizer_names", "quick_config",
           "run_benchmark"]
