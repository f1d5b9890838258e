"""woodbury_solve against its lower limit, the Gram GEMM U^T U, for U of shape (p, n).

The solve needs the Gram (O(p n^2)) plus two passes over U (U^T g and U alpha, O(p n k))
and an n x n Cholesky; the ratio to the bare GEMM is the overhead of everything else.
Also times one call with several lams (one eigendecomposition) and several right-hand sides.

    python benchmarks/bench_woodbury.py            # p = 10^6, n = 256
    python benchmarks/bench_woodbury.py --quick    # p = 10^5, n = 128
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import sketchlinalg as sl


def best_times(fns, repeats):
    """Best-of-``repeats`` time of each function after a warm-up call, in interleaved rounds
    so that load changes hit every case alike."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, np.inf)
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="p = 10^5, n = 128")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    p, n = (10**5, 128) if args.quick else (10**6, 256)
    rng = np.random.default_rng(0)
    print(f"woodbury_solve, U of shape ({p}, {n}), best of {args.repeats} interleaved rounds")
    print(f"{'dtype':8s} {'case':26s} {'time [s]':>9s} {'/ GEMM U^T U':>13s}")
    for dtype in (np.float64, np.float32):
        U = rng.standard_normal((p, n)).astype(dtype) / np.sqrt(n)
        g = rng.standard_normal(p).astype(dtype)
        G = rng.standard_normal((p, 8)).astype(dtype)
        cases = {
            "Gram GEMM U^T U (peer)": lambda U=U: U.T @ U,
            "one rhs, lam = 1e-3": lambda U=U, g=g: sl.woodbury_solve(U, g, 1e-3),
            "8 rhs, lam = 1e-3": lambda U=U, G=G: sl.woodbury_solve(U, G, 1e-3),
            "one rhs, 8 lams (eigh)": lambda U=U, g=g: sl.woodbury_solve(
                U, g, np.logspace(-4, 1, 8)),
        }
        times = best_times(cases, args.repeats)
        t_gemm = times["Gram GEMM U^T U (peer)"]
        for name, t in times.items():
            print(f"{np.dtype(dtype).name:8s} {name:26s} {t:9.3f} {t / t_gemm:13.2f}")
        del U


if __name__ == "__main__":
    main()
