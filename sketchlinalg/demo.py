"""A short sketching demo: ``python -m sketchlinalg.demo``.

Embeds a random subspace (orthonormal U, m x n) with each sketch family and prints, per family,
the distortion of the embedding (extreme singular values of S U, which are 1 for a perfect
isometry on the subspace), the second moment E||U^T S^T S U - I||_F^2 over a few seeds against
the theory's (n^2 + n)/d, and the time to apply the operator.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import sketchlinalg as sl


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Sketch a random subspace with every family.")
    p.add_argument("--m", type=int, default=1 << 14, help="ambient dimension")
    p.add_argument("--n", type=int, default=20, help="subspace dimension")
    p.add_argument("--d", type=int, default=800, help="sketch size")
    p.add_argument("--seeds", type=int, default=10, help="seeds averaged for the second moment")
    args = p.parse_args(argv)
    m, n, d = args.m, args.n, args.d
    U, _ = np.linalg.qr(np.random.default_rng(12345).standard_normal((m, n)))
    print(f"subspace: m = {m}, n = {n}; sketch size d = {d}; theory (n^2+n)/d = "
          f"{(n * n + n) / d:.4f}")
    print(f"{'family':<12} {'sigma_min':>9} {'sigma_max':>9} {'E||M||_F^2':>11} {'apply ms':>9}")
    for kind in sl.KINDS:
        moments, svals, times = [], [], []
        for seed in range(args.seeds):
            S = sl.sketch(kind, d, m, rng=seed)
            t0 = time.perf_counter()
            SU = S @ U
            times.append(time.perf_counter() - t0)
            svals.append(np.linalg.svd(SU, compute_uv=False))
            moments.append(np.linalg.norm(SU.T @ SU - np.eye(n)) ** 2)
        s = np.array(svals)
        print(f"{kind:<12} {s.min():9.3f} {s.max():9.3f} {np.mean(moments):11.4f}"
              f" {1e3 * np.median(times):9.2f}")


if __name__ == "__main__":
    main()
