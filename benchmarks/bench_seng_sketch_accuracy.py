"""Accuracy of SENG's sketched route: the relative error of the preconditioned direction
against the exact route, per sketch family, at a fixed budget of kept coordinates.

The case of issue 12: one ``Linear(512, 128)`` with bias (a 128 x 513 block, 65664
coordinates), N = 128 samples, damping 1, ``sketch_size = 4096``, ``update_freq = 1``. The
inputs are those of a hidden layer, ``relu`` of standard normals (nonnegative, so the
samples' inputs are correlated: the case where a Kronecker-structured ``S_out (x) S_in``
errs most), the loss ``c * mse_loss`` against standard normal targets with ``c = 2``
(``--loss-scale``), the scale at which the Kronecker sketch of the previous versions
gives the issue's error of about 0.2. The error grows with the Gram's size against the
damping, i.e. with ``c^2``. For each family and
seed, ``||d_sketch - d_exact|| / ||d_exact||`` with ``d`` the preconditioned gradient of the
layer (weight and bias together); the mean and the range over the seeds are printed, with the
seconds of one preconditioner step (sketch and solve) per family. It uses the public API
only, so the same script measures any version of the package (``PYTHONPATH``). Run:
``python benchmarks/bench_seng_sketch_accuracy.py`` (``--seeds``, ``--size``).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn

import sketchlinalg as sl
from seng import SENGPreconditioner


def direction(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sketch: str | None,
              size: int, seed: int, loss_scale: float) -> tuple[torch.Tensor, float]:
    pre = SENGPreconditioner(model, damping=1.0, update_freq=1, sketch=sketch,
                             sketch_size=size, rng=seed)
    model.zero_grad()
    (loss_scale * nn.functional.mse_loss(model(x), y)).backward()
    t0 = time.perf_counter()
    pre.step()
    seconds = time.perf_counter() - t0
    pre.remove_hooks()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--loss-scale", type=float, default=2.0)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()}, {os.cpu_count()} cores")
    errors: dict[str, list[float]] = {kind: [] for kind in sl.KINDS}
    seconds: dict[str, float] = dict.fromkeys(sl.KINDS, float("inf"))
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        model = nn.Linear(512, 128).double()
        x = torch.relu(torch.randn(128, 512, dtype=torch.float64))
        y = torch.randn(128, 128, dtype=torch.float64)
        exact, _ = direction(model, x, y, None, args.size, seed, args.loss_scale)
        for kind in sl.KINDS:
            d, t = direction(model, x, y, kind, args.size, seed, args.loss_scale)
            errors[kind].append(float((d - exact).norm() / exact.norm()))
            seconds[kind] = min(seconds[kind], t)
    print(f"Linear(512, 128) + bias, N = 128, sketch_size = {args.size}, damping 1, "
          f"loss scale {args.loss_scale}, {args.seeds} seeds")
    print(f"{'family':<12} {'mean error':>11} {'min':>7} {'max':>7} {'step s':>8}")
    for kind, errs in errors.items():
        print(f"{kind:<12} {sum(errs) / len(errs):11.3f} {min(errs):7.3f} {max(errs):7.3f} "
              f"{seconds[kind]:8.3f}")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
