r"""Claim 5: the empirical claim at small scale. SENG needs fewer epochs than SGD and Adam.

A small CNN on scikit-learn's bundled digits (8 x 8 images, no download), trained by SGD
with momentum, Adam and SENG, each with its best learning rate from a small grid and several
seeds (the same initialization and batch order for every optimizer of a seed). Measured:
epochs (evaluated every quarter epoch) and wall-clock training time until the test accuracy
first reaches the target. The claim checked is the paper's: fewer epochs. Wall-clock is
reported; at this scale it measures per-step overhead on a CPU rather than the large-model
regime of the paper. ``docs/theory/empirical.md`` explains the protocol.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import scipy.stats

from ._config import Config, settings
from ._plot import figure, progress
from ._result import Check, Result
from ._threads import one_thread

NAME = "empirical"
CLAIM = "SENG reaches a target test accuracy in fewer epochs than SGD and Adam (small CNN)"
CURVATURE = ("empirical Fisher per layer (SENG, exact Gram, damping 1, curvature every "
             "step); SGD and Adam use none")

FULL: dict[str, Any] = {
    "target": 0.95,
    "max_epochs": 8,
    "evals_per_epoch": 4,
    "batch": 64,
    "seeds": 3,
    # factor-2 grids of equal size; each optimizer's best should lie inside its grid
    "grids": {"sgd": (0.05, 0.1, 0.2, 0.4), "adam": (0.01, 0.02, 0.04, 0.08),
              "seng": (0.1, 0.2, 0.4, 0.8)},
    "damping": 1.0,
    "update_freq": 1,
}
QUICK: dict[str, Any] = {
    "target": 0.9,
    "max_epochs": 4,
    "seeds": 2,
    "grids": {"sgd": (0.1,), "adam": (1e-2,), "seng": (0.2,)},
}


@one_thread(uses_torch=True)
def run(config: Config | None = None) -> Result:
    """Train the grid and compare epochs to the target accuracy (needs torch, scikit-learn)."""
    config = Config() if config is None else config
    p = settings(config, FULL, QUICK)
    t0 = time.perf_counter()
    import torch

    device = torch.device(config.device)
    data = _data(config.seed, device)
    jobs = [(opt, lr, s) for opt, lrs in p["grids"].items() for lr in lrs
            for s in range(p["seeds"])]
    runs: dict[tuple[str, float], list[dict]] = {}
    for opt, lr, s in progress(config, jobs, "empirical"):
        runs.setdefault((opt, lr), []).append(_train(opt, lr, config.seed + s, data, p))
    best = {opt: _best(runs, opt, lrs) for opt, lrs in p["grids"].items()}
    edge = [opt for opt, lrs in p["grids"].items()
            if len(lrs) > 2 and best[opt] in (lrs[0], lrs[-1])]
    rows = []
    for opt, lr in best.items():
        ep = np.array([r["epochs"] for r in runs[(opt, lr)]])
        wall = np.array([r["seconds"] for r in runs[(opt, lr)]])
        rows.append((opt, lr, ep, wall))
    checks = [_compare(rows, p, other) for other in ("sgd", "adam")]
    figures: list = []
    with figure(config, "empirical", figures) as ax:
        if ax is not None:
            for opt, lr in best.items():
                for i, r in enumerate(runs[(opt, lr)]):
                    ax.plot(r["curve_epochs"], r["curve_acc"], color=f"C{list(best).index(opt)}",
                            alpha=0.7, label=f"{opt} lr={lr:g}" if i == 0 else None)
            ax.axhline(p["target"], color="k", lw=0.8, ls="--")
            ax.set_xlabel("epoch")
            ax.set_ylabel("test accuracy")
            ax.set_ylim(0.5, 1.0)
            ax.set_title("digits CNN, best learning rate per optimizer")
            ax.legend(fontsize=7)
    lines = [
        f"Digits: {data['ntrain']} training and {data['ntest']} test images; CNN conv(1→8, 3x3) "
        f"- ReLU - conv(8→16, 3x3, stride 2) - ReLU - linear(256→10), float32, batch "
        f"{p['batch']}, {p['seeds']} seeds, target test accuracy {p['target']}, at most "
        f"{p['max_epochs']} epochs (a run that misses the target counts as "
        f"{p['max_epochs']} + 1 epochs, as does a diverged run). SGD and SENG use momentum "
        "0.9. Wall-clock is training time only (no evaluation), on this machine.",
        "",
        "| optimizer | lr | epochs to target (per seed) | wall-clock s (per seed) |",
        "|---|---|---|---|",
    ]
    for opt, lrs in p["grids"].items():
        for lr in lrs:
            ep = ", ".join("diverged" if r["diverged"] else f"{r['epochs']:.2f}"
                           for r in runs[(opt, lr)])
            wall = ", ".join(f"{r['seconds']:.2f}" for r in runs[(opt, lr)])
            mark = " (best)" if best[opt] == lr else ""
            lines.append(f"| {opt} | {lr:g}{mark} | {ep} | {wall} |")
    if edge:
        lines.append(f"\nThe best learning rate of {', '.join(edge)} lies at the edge of its grid.")
    return Result(NAME, CLAIM, CURVATURE, checks, figures, "\n".join(lines) + "\n",
                  time.perf_counter() - t0)


def _data(seed: int, device: Any) -> dict:
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X / 16.0, y, test_size=0.2, random_state=seed,
                                          stratify=y)

    def t(a: np.ndarray, dtype: Any) -> Any:
        return torch.as_tensor(a, dtype=dtype, device=device)

    return {"Xtr": t(Xtr.reshape(-1, 1, 8, 8), torch.float32), "ytr": t(ytr, torch.int64),
            "Xte": t(Xte.reshape(-1, 1, 8, 8), torch.float32), "yte": t(yte, torch.int64),
            "ntrain": len(ytr), "ntest": len(yte)}


def _model(seed: int, device: Any) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    ).to(device)


def _train(opt_name: str, lr: float, seed: int, data: dict, p: dict) -> dict:
    """Train until the test accuracy reaches the target or ``max_epochs`` pass."""
    import torch
    from torch import nn

    from seng import SENG

    model = _model(seed, data["Xtr"].device)
    if opt_name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    elif opt_name == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        opt = SENG(model, lr=lr, momentum=0.9, damping=p["damping"],
                   update_freq=p["update_freq"], rng=seed)
    n = data["ntrain"]
    steps_per_epoch = math.ceil(n / p["batch"])
    eval_every = max(1, steps_per_epoch // p["evals_per_epoch"])
    gen = np.random.default_rng(seed)
    seconds, step = 0.0, 0
    curve_e, curve_a = [0.0], [_accuracy(model, data)]
    for _ in range(p["max_epochs"]):
        order = torch.as_tensor(gen.permutation(n), device=data["Xtr"].device)
        for b in range(steps_per_epoch):
            idx = order[b * p["batch"]:(b + 1) * p["batch"]]
            t = time.perf_counter()
            model.train()
            loss = nn.functional.cross_entropy(model(data["Xtr"][idx]), data["ytr"][idx])
            opt.zero_grad()
            loss.backward()
            try:
                opt.step()
            except FloatingPointError:  # SENG's solve on a diverged model
                return _missed(p, curve_e, curve_a, diverged=True)
            seconds += time.perf_counter() - t
            if not math.isfinite(float(loss.detach())):
                return _missed(p, curve_e, curve_a, diverged=True)
            step += 1
            if step % eval_every == 0 or b == steps_per_epoch - 1:
                curve_e.append(step / steps_per_epoch)
                curve_a.append(_accuracy(model, data))
                if curve_a[-1] >= p["target"]:
                    return {"epochs": curve_e[-1], "seconds": seconds, "curve_epochs": curve_e,
                            "curve_acc": curve_a, "diverged": False}
    return _missed(p, curve_e, curve_a, diverged=False)


def _missed(p: dict, curve_e: list, curve_a: list, diverged: bool) -> dict:
    """A run that did not reach the target counts as ``max_epochs + 1`` epochs."""
    return {"epochs": p["max_epochs"] + 1.0, "seconds": math.inf, "curve_epochs": curve_e,
            "curve_acc": curve_a, "diverged": diverged}


def _accuracy(model: Any, data: dict) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        pred = model(data["Xte"]).argmax(dim=1)
    return float((pred == data["yte"]).double().mean())


def _best(runs: dict, opt: str, lrs: tuple) -> float:
    """The learning rate with the fewest mean epochs to the target (ties: less wall-clock)."""
    def key(lr: float) -> tuple[float, float]:
        rs = runs[(opt, lr)]
        return float(np.mean([r["epochs"] for r in rs])), float(np.mean([r["seconds"] for r in rs]))
    return min(lrs, key=key)


def _compare(rows: list, p: dict, other: str) -> Check:
    """Paired (same seed) difference of epochs to target, SENG minus ``other``."""
    by = {opt: (lr, ep, wall) for opt, lr, ep, wall in rows}
    lr_s, ep_s, wall_s = by["seng"]
    lr_o, ep_o, wall_o = by[other]
    diff = ep_s - ep_o
    k = diff.size
    se = float(diff.std(ddof=1)) / math.sqrt(k) if k > 1 else math.inf
    upper = float(diff.mean()) + float(scipy.stats.t.ppf(0.95, k - 1)) * se if k > 1 else math.inf
    return Check(
        f"SENG vs {other.upper() if other == 'sgd' else 'Adam'}: epochs to {p['target']:.0%}",
        "SENG needs fewer epochs",
        f"SENG {ep_s.mean():.2f} (lr {lr_s:g}) vs {ep_o.mean():.2f} (lr {lr_o:g}) epochs, paired "
        f"difference {diff.mean():+.2f}, 95% upper bound {upper:+.2f}; wall-clock "
        f"{np.mean(wall_s):.2f} s vs {np.mean(wall_o):.2f} s",
        upper < 0,
        "one-sided 95% upper confidence bound (paired t over seeds) of epochs(SENG) - "
        "epochs(other) below 0; wall-clock reported, not checked",
        {"epochs_seng": float(ep_s.mean()), f"epochs_{other}": float(ep_o.mean())},
    )
