"""Summaries of a study's runs: per-configuration statistics, a Markdown table, a plot."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._files import atomic_write


def to_target(log: dict[str, Any], target: float) -> tuple[int, float] | None:
    """``(epochs, training seconds)`` at the end of the first epoch whose test accuracy is
    ``>= target``; None if the run never got there."""
    for row in log["epochs"]:
        if row["test_acc"] >= target:
            return row["epoch"], row["time"]
    return None


def summarize(logs: Sequence[dict[str, Any]], target: float) -> list[dict[str, Any]]:
    """One row per (optimizer, lr) over its seeds.

    Each row has ``optimizer``, ``lr``, ``seeds``, ``reached`` (seeds that reached
    ``target``), ``epochs_to_target`` and ``time_to_target`` (mean, std over the seeds, None
    unless every seed reached it), ``final_acc`` and ``best_acc`` (mean, std of the last and
    of the best test accuracy), ``step_time`` (mean seconds per training step) and
    ``diverged`` (seeds whose loss became NaN/Inf). Population std; 0 for one seed.
    """
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for log in logs:
        groups.setdefault((log["optimizer"], log["lr"]), []).append(log)
    rows = []
    for (opt, lr), runs in groups.items():
        hits = [to_target(r, target) for r in runs]
        reached = [h for h in hits if h is not None]
        complete = len(reached) == len(runs)
        step_times = [e["step_time"] for r in runs for e in r["epochs"]]
        rows.append({
            "optimizer": opt, "lr": lr, "seeds": len(runs), "reached": len(reached),
            "epochs_to_target": _stats([h[0] for h in reached]) if complete else None,
            "time_to_target": _stats([h[1] for h in reached]) if complete else None,
            "final_acc": _stats([r["epochs"][-1]["test_acc"] if r["epochs"] else 0.0
                                 for r in runs]),
            "best_acc": _stats([max((e["test_acc"] for e in r["epochs"]), default=0.0)
                                for r in runs]),
            "step_time": statistics.fmean(step_times) if step_times else math.nan,
            "diverged": sum(r["status"] == "diverged" for r in runs),
        })
    return rows


def best_per_optimizer(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each optimizer, the learning rate with the fewest mean epochs to the target
    (ties: least mean time); when no learning rate reached it with every seed, the one with
    the highest mean final accuracy."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        cur = best.get(row["optimizer"])
        if cur is None or _key(row) < _key(cur):
            best[row["optimizer"]] = row
    return list(best.values())


def _key(row: dict[str, Any]) -> tuple[float, ...]:
    if row["epochs_to_target"] is not None:
        return (0, row["epochs_to_target"][0], row["time_to_target"][0])
    return (1, -row["final_acc"][0], 0)


def markdown(rows: Sequence[dict[str, Any]], target: float, title: str = "") -> str:
    """The Markdown results: the best learning rate per optimizer, then every
    configuration."""
    best = best_per_optimizer(rows)
    times = [r["time_to_target"][0] for r in best if r["time_to_target"] is not None]
    fastest = min(times) if times else None
    head = ("| optimizer | lr | epochs to {t} | wall-clock to {t} (s) | x fastest | "
            "final test acc | best test acc | reached | step (ms) |").format(t=f"{target:g}")
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|---:|"

    def line(r: dict[str, Any]) -> str:
        div = f", {r['diverged']} diverged" if r["diverged"] else ""
        t = r["time_to_target"]
        ratio = "—" if t is None or not fastest else f"{t[0] / fastest:.2f}"
        return (f"| {r['optimizer']} | {r['lr']:g} | {_pm(r['epochs_to_target'], 1)} | "
                f"{_pm(t, 2)} | {ratio} | {_pm(r['final_acc'], 4)} | "
                f"{_pm(r['best_acc'], 4)} | {r['reached']}/{r['seeds']}{div} | "
                f"{1e3 * r['step_time']:.2f} |")

    out = [f"# {title}", ""] if title else []
    out += [f"Best learning rate per optimizer (fewest mean epochs to test accuracy "
            f">= {target:g}; mean ± std over seeds; '—' when a seed missed it; "
            "'x fastest': mean wall-clock to the target over the fastest optimizer's):", "",
            head, rule, *map(line, best), "", "Every configuration:", "", head, rule,
            *map(line, sorted(rows, key=lambda r: (r["optimizer"], r["lr"]))), ""]
    return "\n".join(out)


def _stats(values: Sequence[float]) -> tuple[float, float] | None:
    if not values:
        return None
    return statistics.fmean(values), statistics.pstdev(values)


def _pm(stat: tuple[float, float] | None, digits: int) -> str:
    if stat is None:
        return "—"
    return f"{stat[0]:.{digits}f} ± {stat[1]:.{digits}f}"


def plot(logs: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], target: float,
         path: Path) -> None:
    """Training loss and test accuracy against epochs and against wall-clock, for each
    optimizer at its best learning rate (mean over seeds, band: min to max), as a PNG.

    The wall-clock axis is the mean over seeds of the cumulative training time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)
    for i, row in enumerate(best_per_optimizer(rows)):
        runs = [r for r in logs if r["optimizer"] == row["optimizer"] and r["lr"] == row["lr"]]
        n = min(len(r["epochs"]) for r in runs)
        if n == 0:
            continue
        color = f"C{i}"
        label = f"{row['optimizer']} (lr {row['lr']:g})"
        epochs = list(range(1, n + 1))
        clock = [statistics.fmean(r["epochs"][k]["time"] for r in runs) for k in range(n)]
        for col, key in enumerate(("train_loss", "test_acc")):
            series = [[_num(r["epochs"][k][key]) for r in runs] for k in range(n)]
            mean = [statistics.fmean(v) for v in series]
            lo, hi = [min(v) for v in series], [max(v) for v in series]
            for ax_row, x in enumerate((epochs, clock)):
                ax = axes[ax_row][col]
                ax.plot(x, mean, color=color, label=label, marker="." if n < 40 else None)
                ax.fill_between(x, lo, hi, color=color, alpha=0.2, linewidth=0)
    for ax in axes[0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax_row, xlabel in enumerate(("epoch", "training wall-clock (s)")):
        axes[ax_row][0].set_yscale("log")
        axes[ax_row][0].set_ylabel("training loss")
        axes[ax_row][1].set_ylabel("test accuracy")
        axes[ax_row][1].axhline(target, color="k", linestyle="--", linewidth=0.8)
        for ax in axes[ax_row]:
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
    axes[0][1].legend(loc="lower right")
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)


def _num(x: float | None) -> float:
    # Non-finite values are stored as null in the JSON logs.
    return math.nan if x is None else x
