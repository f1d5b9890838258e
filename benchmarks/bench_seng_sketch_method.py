"""Does SENG's cost model pick the faster way to CountSketch a Kronecker block?

``seng.cost.block_sketch_method`` sketches a ``d_g x d_a`` block over ``T`` positions by the
TensorSketch of its factors (FFTs, ``O(d_g + d_a + d log d)`` per position) or by forming the
per-sample gradients (a GEMM) and applying a plain CountSketch (a sparse scatter, charged
``seng.cost.SCATTER_COST`` flops per flop). This times both methods of
``seng.persample.BlockSketch`` on the same factors (``N`` samples of convolution-like shapes,
``d = 4096``, float32, one thread, best of 5 after one untimed call) and prints, per case,
both times, the cost model's choice and whether it is the faster one; the last line counts
the cases it gets right. The flops it compares are printed too, so a wrong choice shows
which side the model misprices.

Run: ``python benchmarks/bench_seng_sketch_method.py`` (``--quick``: one shape, ``T`` of 1
and 4).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import sketchlinalg as sl
from seng import cost
from seng.persample import BlockSketch

D = 4096
#: (d_g, d_a, N): a 3 x 3 convolution with 64 -> 64 channels, a Linear(512, 128), a
#: 3 x 3 convolution with 32 -> 32 channels (bias columns included).
SHAPES = ((64, 577, 32), (128, 513, 32), (32, 289, 64))
POSITIONS = (1, 4, 16, 64, 256)


def best_time(fn, repeats: int = 5) -> float:
    fn()  # untimed: first-call allocations
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one shape, T = 1 and 4")
    args = parser.parse_args()
    shapes, positions = (SHAPES[1:2], POSITIONS[:2]) if args.quick else (SHAPES, POSITIONS)
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.1f}; d = {D}; float32; one thread; "
          f"SCATTER_COST = {cost.SCATTER_COST}")
    print(f"{'d_g x d_a':>10} {'N':>3} {'T':>4} {'dense ms':>9} {'tensor ms':>10} "
          f"{'dense flops':>12} {'tensor flops':>12} {'model':>7} {'faster':>7}")
    right = total = 0
    for dg, da, n in shapes:
        for t in positions:
            gen = torch.Generator().manual_seed(0)
            G, A = torch.randn(n, t, dg, generator=gen), torch.randn(n, t, da, generator=gen)
            times = {}
            for method in ("dense", "tensorsketch"):
                sketch = BlockSketch("countsketch", D, dg, da, np.random.default_rng(0),
                                     positions=t, method=method)
                times[method] = best_time(lambda s=sketch, G=G, A=A: s.apply(G, A))
            dense = 2.0 * t * da * dg + cost.SCATTER_COST * cost.sketch_apply_flops(
                "countsketch", D, da * dg)
            tensor = sl.TensorSketch.factor_flops(D, dg, da, pairs=t)
            chosen = cost.block_sketch_method("countsketch", t, da, dg, D)
            faster = min(times, key=times.get)
            right += chosen == faster
            total += 1
            print(f"{dg:>4} x {da:<4} {n:>3} {t:>4} {times['dense'] * 1e3:9.2f} "
                  f"{times['tensorsketch'] * 1e3:10.2f} {dense:12.3g} {tensor:12.3g} "
                  f"{chosen[:6]:>7} {faster[:6]:>7}", flush=True)
    print(f"the cost model picks the faster method in {right} of {total} cases")


if __name__ == "__main__":
    main()
