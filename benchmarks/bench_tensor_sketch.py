"""TensorSketch from factors against its peer and against forming the products.

Two cases, float64, NumPy:

- the degree-2 polynomial feature map ``x (x) x`` of ``n`` samples with ``m`` features,
  sketched to ``d`` coordinates: ``TensorSketch(d, (m, m)).sketch_factors(X, X)`` (with a
  prebuilt operator, and drawing it in the call as the peer's ``fit`` does) against
  scikit-learn's ``PolynomialCountSketch(degree=2, n_components=d)`` (``fit`` + ``transform``,
  the same sketch: a CountSketch per factor, FFTs, their product), and against forming the
  ``n x m^2`` products and applying a CountSketch of length ``m^2`` (``sl.CountSketch``);
- SENG's per-sample gradients of a ``Linear(512, 128)`` with bias, ``g (x) a`` with
  ``g`` of 128 and ``a`` of 513 entries, ``N = 128``, ``d = 4096``: from the factors against
  forming ``vec(g a^T)`` and applying the CountSketch.

Every timing is the best of ``--repeats`` rounds in which the functions take turns, each
turn after a pause (the idle threads of the library that ran before spin for about 0.1 s).
The load average is printed; figures are only meaningful when it is well below the number
of cores. Run: ``python benchmarks/bench_tensor_sketch.py`` (``--quick`` for a smoke size).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from bench_sketch import best_times  # the same interleaved, paused timing
from sklearn.kernel_approximation import PolynomialCountSketch

import sketchlinalg as sl


def kron_rows(G: np.ndarray, A: np.ndarray) -> np.ndarray:
    """``(n, m1 m2)``: row ``i`` is ``kron(G[i], A[i])``."""
    return (G[:, :, None] * A[:, None, :]).reshape(G.shape[0], -1)


def report(title: str, times: dict[str, float], ours: str) -> None:
    print(f"\n{title}")
    print(f"{'method':<44} {'ms':>9} {'ours / this':>12}")
    for name, t in times.items():
        print(f"{name:<52} {1e3 * t:9.2f} {times[ours] / t:12.3f}")


def polynomial_case(n: int, m: int, d: int, repeats: int) -> None:
    X = np.random.default_rng(0).standard_normal((n, m))
    S = sl.TensorSketch(d, (m, m), rng=1)
    C = sl.CountSketch(d, m * m, rng=2)
    peer = PolynomialCountSketch(degree=2, n_components=d, random_state=3)
    ours = "TensorSketch.sketch_factors (x, x)"
    fns = {
        ours: lambda: S.sketch_factors(X[:, None], X[:, None]),
        "  the same, drawing the operator (build+apply)":
            lambda: sl.TensorSketch(d, (m, m), rng=1).sketch_factors(X[:, None], X[:, None]),
        "scikit-learn PolynomialCountSketch (fit+transform)": lambda: peer.fit(X).transform(X),
        "form x (x) x, then CountSketch": lambda: C @ kron_rows(X, X).T,
    }
    report(f"degree-2 feature map: n = {n}, m = {m}, d = {d}",
           best_times(fns, repeats, lambda: None), ours)


def seng_case(n: int, dg: int, da: int, d: int, repeats: int) -> None:
    rng = np.random.default_rng(4)
    G, A = rng.standard_normal((n, 1, dg)), rng.standard_normal((n, 1, da))
    S = sl.TensorSketch(d, (dg, da), rng=5)
    ours = "TensorSketch.sketch_factors (g, a)"
    fns = {
        ours: lambda: S.sketch_factors(G, A),
        "form vec(g a^T), then the same S (sparse)": lambda: S @ kron_rows(G[:, 0],
                                                                         A[:, 0]).T,
    }
    report(f"per-sample gradients g (x) a: N = {n}, d_g = {dg}, d_a = {da}, d = {d}",
           best_times(fns, repeats, lambda: None), ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke size")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()}, {os.cpu_count()} cores")
    if args.quick:
        polynomial_case(32, 16, 64, 1)
        seng_case(16, 8, 9, 64, 1)
        return
    polynomial_case(256, 256, 4096, args.repeats)
    seng_case(128, 128, 513, 4096, args.repeats)
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
