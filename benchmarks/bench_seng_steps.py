"""Step time of each optimizer on the optimizer benchmark's problems, as a ratio to SGD.

The step timing of ``python -m seng.bench`` (:func:`seng.bench.study.time_steps`: every
optimizer trains its own copy of the model on the same batches, timed interleaved in blocks of
whole curvature cycles, median over blocks) without the training runs around it: the figure
of issue 11's per-step target ("SENG between refreshes, curvature steps included at
update_freq 10, at most 1.5x an SGD step"). One thread; learning rates are fixed (the time of
a step does not depend on them).

Run: ``python benchmarks/bench_seng_steps.py [--problems mnist1d-cnn,...]
[--optimizers sgd,adam,seng] [--rounds 6]`` (MNIST-1D problems need ``.[bench]``;
``--quick``: one round).
"""

from __future__ import annotations

import argparse
import os

import torch

from seng.bench.optimizers import all_optimizers
from seng.bench.problems import PROBLEMS, missing_requirements
from seng.bench.study import time_steps

LRS = {"sgd": 0.1, "adam": 1e-3, "adamw": 1e-3, "muon": 0.01, "kfac": 1e-3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--optimizers", default="sgd,adam,seng")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="one round")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    torch.set_num_threads(1)
    specs = all_optimizers()
    names = args.optimizers.split(",")
    if "sgd" not in names:
        names.insert(0, "sgd")
    print(f"load average {os.getloadavg()[0]:.1f}; batch {args.batch_size}; one thread")
    for pname in args.problems.split(","):
        problem = PROBLEMS[pname]
        missing = missing_requirements(problem)
        if missing:
            print(f"{pname}: skipped (missing {', '.join(missing)})")
            continue
        data = problem.load()
        at = {n: (specs[n], LRS.get(n, 0.1)) for n in names}
        times = time_steps(problem, data, at, args.batch_size, rounds)
        sgd = times["sgd"]["step_time"]
        cells = [f"{n} {times[n]['step_time'] * 1e3:.2f} ms ({times[n]['step_time'] / sgd:.2f}x)"
                 for n in names]
        print(f"{pname}: " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    main()
