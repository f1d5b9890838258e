"""The study's Markdown tables and plots, from ``results.json`` and the run logs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from seng.train._files import atomic_write, write_text

_METRIC_LABEL = {"test_acc": "test accuracy", "train_loss": "training loss",
                 "test_loss": "test loss"}


def format_epochs(row: dict[str, Any], epochs: int) -> str:
    """Mean epochs to target (± std), with ``>=`` and ``k/n`` when a seed missed."""
    n, k = len(row["seeds"]), row["reached"]
    if k == 0:
        return f"> {epochs} (0/{n})"
    mean, std = row["mean_epochs_to_target"], row["std_epochs_to_target"]
    text = f"{mean:.1f} ± {std:.1f}" if n > 1 else f"{mean:.0f}"
    return text if k == n else f"≥ {text} ({k}/{n})"


def _pm(stats: dict[str, float] | None, digits: int = 3) -> str:
    if not stats or stats.get("mean") is None or not math.isfinite(stats["mean"]):
        return "diverged"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def _lr_cell(row: dict[str, Any]) -> str:
    text = f"{row['best_lr']:.3g}"
    if row["best_at_edge"]:
        text += f" (**{row['edge_side']} edge**)"
    if row["extended"]:
        text += f", +{len(row['extended'])} ext."
    return text


def _time_cell(row: dict[str, Any], epochs: int) -> str:
    t = row["time_to_target"]
    if not math.isfinite(t):
        return "—"
    if row["reached"] == 0:
        return f"> {t:.1f}"
    return f"{t:.1f}" if row["reached"] == len(row["seeds"]) else f"≥ {t:.1f}"


def markdown(results: dict[str, Any]) -> str:
    """The overview table (epochs and wall-clock to target per problem and optimizer) and one
    detailed table per problem."""
    cfg, env = results["config"], results["environment"]
    seeds = cfg["seeds"]
    lines = ["# seng.bench results", ""]
    lines.append(
        f"Batch {cfg['batch_size']}, constant learning rate, {seeds} seeds (same initial "
        "weights and batch order per seed for every optimizer) at every value of a log-spaced "
        f"learning-rate grid, extended at an edge (at most {cfg['max_extend']} times); the "
        "best value has the fewest mean epochs to target (ties: the best mean final target "
        "metric), and its runs are the ones shown. Epochs to target: mean ± std over the "
        "seeds; a seed that never "
        "reached the target counts as epochs + 1 (shown as ≥ with the count that reached it). "
        "Wall-clock to target = epochs to target × steps per epoch × step time, the step time "
        "measured interleaved in one process (median of blocks of whole curvature cycles); "
        "evaluation is not counted.")
    lines.append("")
    load = (env.get("load_average_start"), env.get("load_average_end"))
    lines.append(
        f"torch {env['torch']}, mnist1d {env.get('mnist1d')}, asdfghjkl {env.get('asdfghjkl')}; "
        f"{env.get('cpu_count')} CPUs, 1 torch thread per run, {cfg['workers']} worker "
        f"process(es); load average (1, 5, 15 min) {load[0]} at the start, {load[1]} at the "
        f"end; wall time {results['wall_time']['runs']:.0f} s of runs, "
        f"{results['wall_time']['total']:.0f} s in all, "
        f"{results['wall_time'].get('cpu', math.nan):.0f} CPU seconds"
        + (" (quick smoke settings: not a measurement)." if cfg.get("quick") else "."))
    lines.append("")
    for s in results["skipped"]:
        what = s.get("problem") or s.get("optimizer")
        lines.append(f"- **Skipped** {what}: {s['reason']}")
    if results["skipped"]:
        lines.append("")

    problems = results["problems"]
    names = list(next(iter(problems.values()))["optimizers"]) if problems else []
    lines += ["## Overview", "",
              "Epochs to target (wall-clock to target in seconds).", "",
              "| problem (target) | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]
    for pname, pr in problems.items():
        cells = []
        for o in names:
            row = pr["optimizers"][o]
            cells.append(f"{format_epochs(row, pr['epochs'])} ({_time_cell(row, pr['epochs'])})")
        lines.append(f"| {pname} ({_target_text(pr)}) | " + " | ".join(cells) + " |")
    lines.append(f"| step time / SGD ({', '.join(problems)}) | " + " | ".join(
        ", ".join(f"{pr['optimizers'][o]['step_time_ratio_sgd']:.2f}" for pr in problems.values())
        for o in names) + " |")
    lines.append("")

    for pname, pr in problems.items():
        cls = pr["kind"] == "classification"
        lines += [f"## {pname}", "",
                  f"{pr['description']}; target {_target_text(pr)}; {pr['epochs']} epochs of "
                  f"{pr['steps_per_epoch']} steps.", ""]
        head = ["optimizer", "best lr", "grid", "epochs to target", "wall-clock to target [s]",
                "step [ms]", "step / SGD", "final train loss",
                "final test acc" if cls else "final test loss"]
        lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for o, row in pr["optimizers"].items():
            final = row["final"]
            lines.append("| " + " | ".join([
                o, _lr_cell(row), ", ".join(f"{lr:.3g}" for lr in row["grid"]),
                format_epochs(row, pr["epochs"]), _time_cell(row, pr["epochs"]),
                f"{1e3 * row['step_time']:.2f}", f"{row['step_time_ratio_sgd']:.2f}",
                _pm(final.get("train_loss"), 4),
                _pm(final.get("test_acc") if cls else final.get("test_loss"), 3 if cls else 4),
            ]) + " |")
        notes = [f"{o}: {', '.join(sorted(set(row['statuses'])))}"
                 for o, row in pr["optimizers"].items() if set(row["statuses"]) != {"complete"}]
        if notes:
            lines += ["", "Reported runs not complete: " + "; ".join(notes) + "."]
        lines.append("")
    lines += ["## Optimizers", ""]
    for name, o in results["optimizers"].items():
        lines.append(f"- **{name}**: {o['note']}" + (f" `{o['options']}`" if o["options"] else ""))
    lines.append("")
    return "\n".join(lines)


def _target_text(pr: dict[str, Any]) -> str:
    op = "≥" if pr["target_metric"].endswith("acc") else "≤"
    return f"{_METRIC_LABEL.get(pr['target_metric'], pr['target_metric'])} {op} {pr['target']:g}"


def write_report(out: Path, results: dict[str, Any], plots: bool = True) -> None:
    """Write ``results.md`` and (with ``plots``) the figures under ``out/plots``."""
    write_text(out / "results.md", markdown(results))
    if plots:
        for pname, pr in results["problems"].items():
            plot_curves(out, pname, pr)
            plot_lr_sweep(out, pname, pr)


def _curves(out: Path, files: list[str], metric: str) -> tuple[list[int], list[list[float]]]:
    runs = [json.loads((out / f).read_text())["epochs"] for f in files]
    length = min((len(r) for r in runs), default=0)
    epochs = [r["epoch"] for r in runs[0][:length]] if runs else []
    values = [[_num(r[i].get(metric)) for r in runs] for i in range(length)]
    return epochs, values


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) else math.nan


def plot_curves(out: Path, pname: str, pr: dict[str, Any]) -> Path:
    """Training loss and the second metric (test accuracy, or test loss) against epochs and
    against wall-clock, mean over the seeds with their min-max band, at each
    optimizer's best learning rate."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    second = "test_acc" if pr["kind"] == "classification" else "test_loss"
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.07, top=0.93, wspace=0.22, hspace=0.25)
    for name, row in pr["optimizers"].items():
        for col, metric in enumerate(("train_loss", second)):
            epochs, values = _curves(out, row["runs"], metric)
            if not epochs:
                continue
            mean = [_mean(v) for v in values]
            lo = [min(v) for v in values]
            hi = [max(v) for v in values]
            seconds = [e * pr["steps_per_epoch"] * row["step_time"] for e in epochs]
            for ax_row, x in enumerate((epochs, seconds)):
                ax = axes[ax_row][col]
                (line,) = ax.plot(x, mean, label=f"{name} (lr {row['best_lr']:.3g})",
                                  ls=_style(name))
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
    for ax_row, xlabel in enumerate(("epoch", "wall-clock [s] (interleaved step times)")):
        for col, metric in enumerate(("train_loss", second)):
            ax = axes[ax_row][col]
            ax.set_xlabel(xlabel)
            ax.set_ylabel(_METRIC_LABEL[metric])
            if metric.endswith("loss"):
                _log_axis(ax, "y")
            if metric == pr["target_metric"]:
                ax.axhline(pr["target"], color="k", lw=0.8, ls="--")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{pname}: {pr['description']}")
    path = out / "plots" / f"{pname}.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)
    return path


def plot_lr_sweep(out: Path, pname: str, pr: dict[str, Any]) -> Path:
    """Mean epochs to target (a missed seed counting as epochs + 1) and mean final target
    metric against the learning rate, per optimizer, the chosen value circled."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.88, wspace=0.22)
    for name, row in pr["optimizers"].items():
        lrs = [s["lr"] for s in row["sweep"]]
        ep = [s["mean_epochs_to_target"] for s in row["sweep"]]
        fin = [_num(s["final_target_metric"]) for s in row["sweep"]]
        (line,) = axes[0].plot(lrs, ep, marker="o", label=name, ls=_style(name))
        axes[1].plot(lrs, fin, marker="o", color=line.get_color(), ls=_style(name))
        i = lrs.index(row["best_lr"])
        axes[0].plot([lrs[i]], [ep[i]], "o", ms=12, mfc="none", color=line.get_color())
        axes[1].plot([lrs[i]], [fin[i]], "o", ms=12, mfc="none", color=line.get_color())
    axes[0].set_ylabel(f"mean epochs to target ({pr['epochs'] + 1} = not reached)")
    axes[1].set_ylabel(f"mean final {_METRIC_LABEL[pr['target_metric']]}")
    if pr["target_metric"].endswith("loss"):
        _log_axis(axes[1], "y")
    axes[1].axhline(pr["target"], color="k", lw=0.8, ls="--")
    for ax in axes:
        _log_axis(ax, "x")
        ax.set_xlabel("learning rate")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{pname}: learning-rate sweep (best circled)")
    path = out / "plots" / f"{pname}_lr.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)
    return path


def _log_axis(ax: Any, which: str) -> None:
    """A log scale with plain tick labels (matplotlib's default typesets each as math, which
    takes most of the time of drawing these figures)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    getattr(ax, f"set_{which}scale")("log")
    axis = ax.yaxis if which == "y" else ax.xaxis
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _style(name: str) -> str:
    # SENG variants dashed: several of them can coincide with SGD's curve
    return "--" if name.startswith("seng") else "-"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


__all__ = ["format_epochs", "markdown", "plot_curves", "plot_lr_sweep", "write_report"]
