"""What SENG's capture costs under ``torch.compile``: graphs per step and step times, compiled
against eager, with and without SENG, in one run.

SENG records each layer's input and output gradient with a forward hook that registers a
tensor hook on the output. torch.compile cannot trace that (a hook with side effects needs
compiled autograd), so the compiled forward breaks into one graph per recorded layer. The
break structure is fixed when the forward is first compiled (torch.compile does not guard on
module hooks), so steps that capture nothing run the same graphs.

The model is an MLP (three Linear layers, 512 wide, Tanh) on random inputs, batch 128,
float32, CPU, one thread; each step is ``zero_grad, forward, cross-entropy, backward,
[pre.step()], opt.step()`` with ``torch.optim.SGD``. SENG refreshes its curvature every 10
steps; a timed window is 10 consecutive steps (one refresh), per step, best of several
windows, by the process CPU time (one thread: the step's work, little disturbed by other
processes). Graphs per step are counted with a backend that counts the compiled graphs it
runs (Dynamo's graph capture alone); times use the default backend (Inductor).

Run: ``python benchmarks/bench_seng_compile.py`` (``--quick``: fewer windows).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from seng import SENGPreconditioner

BATCH, WIDTH, CLASSES, UPDATE_FREQ = 128, 512, 10, 10


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh(), nn.Linear(WIDTH, WIDTH),
                         nn.Tanh(), nn.Linear(WIDTH, CLASSES))


def trainer(compiled: bool, seng: bool, backend: object = "inductor"):
    """``(step, preconditioner or None)``: one training step of a fresh model."""
    model = mlp()
    forward = torch.compile(model, backend=backend) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    pre = SENGPreconditioner(forward, update_freq=UPDATE_FREQ) if seng else None
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, WIDTH, generator=g)
    y = torch.randint(0, CLASSES, (BATCH,), generator=g)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(forward(x), y).backward()
        if pre is not None:
            pre.step()
        opt.step()

    return step, pre


def graphs_per_step(seng: bool) -> tuple[int, int]:
    """Compiled graphs run by a curvature step and by a step between refreshes."""
    runs = [0]

    def counting(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        def run(*args: object) -> object:
            runs[0] += 1
            return gm.forward(*args)
        return run

    torch.compiler.reset()
    step, _ = trainer(True, seng, counting)
    counts = []
    for _ in range(2):  # step 0 refreshes the curvature, step 1 does not
        before = runs[0]
        step()
        counts.append(runs[0] - before)
    return counts[0], counts[1]


def window_time(step, windows: int) -> float:
    """Best mean CPU time per step over ``windows`` windows of ``UPDATE_FREQ`` steps."""
    best = float("inf")
    for _ in range(windows):
        t0 = time.process_time()
        for _ in range(UPDATE_FREQ):
            step()
        best = min(best, (time.process_time() - t0) / UPDATE_FREQ)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 windows per configuration")
    parser.add_argument("--windows", type=int, default=5)
    args = parser.parse_args()
    windows = 2 if args.quick else args.windows
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", UserWarning)  # Dynamo's notices about the graph breaks

    graphs = {"SGD": graphs_per_step(False), "SENG": graphs_per_step(True)}
    times = {}
    for seng in (False, True):
        for compiled in (False, True):
            torch.compiler.reset()
            step, _ = trainer(compiled, seng)
            window_time(step, 1)  # compiles (and a first refresh)
            times[seng, compiled] = window_time(step, windows)
            time.sleep(1.0)  # let the machine settle between configurations

    print(f"MLP 3 x Linear({WIDTH}) + Tanh, batch {BATCH}, float32, CPU, 1 thread, "
          f"SENG update_freq {UPDATE_FREQ}; CPU ms per step, best of {windows} windows of "
          f"{UPDATE_FREQ} steps")
    print(f"{'':<8}{'graphs/step (refresh, plain)':>30}{'eager ms':>10}{'compiled ms':>13}"
          f"{'compiled/eager':>16}")
    for name, seng in (("SGD", False), ("SENG", True)):
        eager, comp = times[seng, False], times[seng, True]
        refresh, plain = graphs[name]
        print(f"{name:<8}{f'{refresh}, {plain}':>30}{eager * 1e3:>10.2f}{comp * 1e3:>13.2f}"
              f"{comp / eager:>16.2f}")
    print(f"SENG/SGD: eager {times[True, False] / times[False, False]:.2f}, compiled "
          f"{times[True, True] / times[False, True]:.2f}")


if __name__ == "__main__":
    main()
