"""Randomized SVD and Nystrom against the peers a user would reach for, in one run.

rsvd: ``sl.rsvd`` against ``torch.svd_lowrank`` and
``sklearn.utils.extmath.randomized_svd`` at equal rank (50), oversampling (10) and power
iterations (2), on two 3000 x 3000 float64 matrices: singular values ``1/j`` (slow decay,
where power iterations matter), and the input rSVD exists for, a numerically low-rank one
(rank 50 with singular values log-spaced from 1 to 1e-3, plus Gaussian noise of standard
deviation 1e-6: its power-iteration products have condition numbers ~1e4); and the latter
in float32, where those products are ill-conditioned (u cond^2 ~ 6: one Cholesky QR or SVQB
would lose all orthogonality, the case of shifted Cholesky QR). scikit-learn runs twice:
its default normalizer (none for two iterations) and ``power_iteration_normalizer="QR"``, the
re-orthonormalized scheme all the others run. nystrom: ``sl.nystrom`` and
``sl.eigh_randomized`` against ``scipy.sparse.linalg.eigsh`` (Lanczos, converged) at the
same rank on the PSD matrix with eigenvalues ``1/j``. One pass: ``sl.rsvd(...,
single_pass=True)`` (Tropp et al. 2017: range and co-range sketches from one read of A,
``2 x 60 + 1`` rows in the co-range sketch) against the two-pass forms without power
iterations, ``sl.rsvd`` with ``power_iters=0`` and ``torch.svd_lowrank`` with ``niter=0``,
on the float64 matrices of the rsvd tables.

Errors are ``||A - A_hat||_2 / sigma_{k+1}`` (1 is optimal) and the Frobenius analogue
``||A - A_hat||_F / (sum_{j>k} sigma_j^2)^{1/2}``. Times are the best over 3 turns of 3
back-to-back calls per method, the methods taking turns; each turn starts with a pause
(torch's OpenMP threads and OpenBLAS's threads spin for a while after a call and would
steal the cores from the next library) and one untimed call (waking the threads of this
library). The time floor is the 2q + 2 = 6 passes over A, one GEMM with 60 columns each,
that every method here makes. The last lines give, per matrix and backend, ``sl.rsvd``
over ``torch.svd_lowrank`` and over scikit-learn (default), the ratios of the targets, and
the one-pass rsvd over ``torch.svd_lowrank`` with ``niter=0``.
Run ``python benchmarks/bench_rsvd.py`` (``--quick`` for a small smoke size, ``--device
cuda`` to run the torch rows, ours and torch's, on the GPU).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import scipy.linalg
import scipy.sparse.linalg

import sketchlinalg as sl
from sketchlinalg.backend import to_host

# Seconds between two libraries' turns: OpenBLAS's idle threads spin for about 0.1 s and
# libgomp's (torch) for a few ms before they sleep.
PAUSE = 0.5


def best_times(fns: dict[str, Callable[[], object]], rounds: int, repeats: int,
               sync: Callable[[], None]) -> dict[str, float]:
    """Best wall time of each function over ``rounds`` rounds, the functions taking turns so
    that all of them see the same machine load. In each turn: a short sleep (the previous
    library's worker threads stop spinning), one untimed call (this library's threads wake
    up), then ``repeats`` timed calls back to back."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(PAUSE)
            fn()
            sync()
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                sync()
                best[name] = min(best[name], time.perf_counter() - t0)
    return best


def matrices(n: int, s: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (U * s) @ V.T, (V * s) @ V.T


def low_rank_plus_noise(n: int, rank: int, rng: np.random.Generator) -> np.ndarray:
    """``U diag(s) V^T + 1e-6 G``: ``rank`` singular values log-spaced from 1 to 1e-3,
    Haar ``U``, ``V`` (``n x rank``), standard Gaussian ``G``."""
    U, _ = np.linalg.qr(rng.standard_normal((n, rank)))
    V, _ = np.linalg.qr(rng.standard_normal((n, rank)))
    return (U * np.logspace(0, -3, rank)) @ V.T + 1e-6 * rng.standard_normal((n, n))


def errors(A: np.ndarray, L: np.ndarray, R: np.ndarray, s: np.ndarray, k: int) -> tuple[float, ...]:
    """Spectral and Frobenius error of ``A - L @ R`` (in float64) relative to the optimal
    rank-k error."""
    E = A.astype(np.float64) - L.astype(np.float64) @ R.astype(np.float64)
    spec = scipy.sparse.linalg.svds(E, k=1, return_singular_vectors=False, rng=0)[0]
    return spec / s[k], np.linalg.norm(E) / np.sqrt(np.sum(s[k:] ** 2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small smoke size")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="device of the torch rows")
    ap.add_argument("--rounds", type=int, default=None, help="turns per method")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per turn")
    args = ap.parse_args()
    n, k, p, q = (600, 20, 10, 2) if args.quick else (3000, 50, 10, 2)
    rounds = args.rounds or (1 if args.quick else 3)

    import torch
    from sklearn.utils.extmath import randomized_svd

    rng = np.random.default_rng(0)
    s = 1.0 / np.arange(1, n + 1)
    A, A_psd = matrices(n, s, rng)
    B = low_rank_plus_noise(n, k, rng)
    s_B = scipy.linalg.svdvals(B, check_finite=False)  # the reference for B's errors
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def svd_lr(r: tuple) -> tuple:
        U, S, Vh = (to_host(x) for x in r)
        return U[:, :k] * S[:k], Vh[:k]

    def eig_lr(r: tuple) -> tuple:
        U, lam = (to_host(x) for x in r)
        return U * lam, U.T

    def eigh_lr(r: tuple) -> tuple:
        w, V = (to_host(x) for x in r)
        return V * w, V.T

    # name -> (table, function, factors to a low-rank product, the matrix, its spectrum)
    Method = tuple[str, Callable[[], tuple], Callable[[tuple], tuple], np.ndarray, np.ndarray]
    methods: dict[str, Method] = {}
    tables = {"slow": ("sigma_j = 1/j", A, s),
              "noise": (f"rank {k} (1 ... 1e-3) + 1e-6 noise", B, s_B),
              "noise f32": (f"rank {k} (1 ... 1e-3) + 1e-6 noise, float32", B.astype(np.float32),
                            s_B)}
    for key, (_, M, sM) in tables.items():
        Mt = torch.as_tensor(M, device=dev)
        methods.update({
            f"sl.rsvd (numpy) [{key}]": (
                key, lambda M=M: sl.rsvd(M, k, p, q, rng=1), svd_lr, M, sM),
            f"sklearn randomized_svd (default: no normalizer) [{key}]": (
                key, lambda M=M: randomized_svd(M, k, n_oversamples=p, n_iter=q, random_state=1),
                svd_lr, M, sM),
            f"sklearn randomized_svd (QR normalizer) [{key}]": (
                key, lambda M=M: randomized_svd(M, k, n_oversamples=p, n_iter=q, random_state=1,
                                                power_iteration_normalizer="QR"), svd_lr, M, sM),
            f"sl.rsvd (torch {dev.type}) [{key}]": (
                key, lambda Mt=Mt: sl.rsvd(Mt, k, p, q, rng=1), svd_lr, M, sM),
            f"torch.svd_lowrank ({dev.type}) [{key}]": (
                key, lambda Mt=Mt: torch.svd_lowrank(Mt, q=k + p, niter=q),
                lambda r: svd_lr((r[0], r[1], r[2].mT)), M, sM),
        })
    one_pass = {"1pass slow": ("sigma_j = 1/j", A, s),
                "1pass noise": (f"rank {k} (1 ... 1e-3) + 1e-6 noise", B, s_B)}
    for key, (_, M, sM) in one_pass.items():
        Mt = torch.as_tensor(M, device=dev)
        methods.update({
            f"sl.rsvd single_pass (numpy), 1 pass [{key}]": (
                key, lambda M=M: sl.rsvd(M, k, p, rng=1, single_pass=True), svd_lr, M, sM),
            f"sl.rsvd single_pass (torch {dev.type}), 1 pass [{key}]": (
                key, lambda Mt=Mt: sl.rsvd(Mt, k, p, rng=1, single_pass=True), svd_lr, M, sM),
            f"sl.rsvd q=0 (numpy), 2 passes [{key}]": (
                key, lambda M=M: sl.rsvd(M, k, p, 0, rng=1), svd_lr, M, sM),
            f"torch.svd_lowrank niter=0 ({dev.type}), 2 passes [{key}]": (
                key, lambda Mt=Mt: torch.svd_lowrank(Mt, q=k + p, niter=0),
                lambda r: svd_lr((r[0], r[1], r[2].mT)), M, sM),
        })
    methods.update({
        "sl.nystrom (numpy)": ("nystrom", lambda: sl.nystrom(A_psd, k, p, rng=1), eig_lr, A_psd, s),
        "sl.eigh_randomized (numpy, q=2)": (
            "nystrom", lambda: sl.eigh_randomized(A_psd, k, p, q, rng=1), eigh_lr, A_psd, s),
        "scipy eigsh (Lanczos)": (
            "nystrom", lambda: scipy.sparse.linalg.eigsh(A_psd, k=k, rng=0), eigh_lr, A_psd, s),
    })
    X = rng.standard_normal((n, k + p))

    def floor() -> None:  # the 2q + 2 passes over A that every method above makes
        for _ in range(q + 1):
            A @ X
            A.T @ X

    load_before = os.getloadavg()[0]
    fns = {name: m[1] for name, m in methods.items()}
    times = best_times({**fns, "floor": floor}, rounds, args.repeats, sync)
    load_after = os.getloadavg()[0]
    errs = {name: errors(M, *to_lr(fn()), sM, k)
            for name, (_, fn, to_lr, M, sM) in methods.items()}

    print(f"n = {n}, rank {k}, oversample {p}, power iterations {q}; "
          f"best of {rounds} x {args.repeats}, {PAUSE} s pause before each turn; "
          f"torch threads {torch.get_num_threads()}; "
          f"load average {load_before:.1f} before, {load_after:.1f} after")
    headers = {key: f"rsvd, {label}" for key, (label, *_) in tables.items()}
    refs = {key: f"sl.rsvd (numpy) [{key}]" for key in tables}
    for key, (label, *_) in one_pass.items():
        headers[key] = f"rsvd in one pass against two passes (q = 0), {label}"
        refs[key] = f"sl.rsvd single_pass (numpy), 1 pass [{key}]"
    headers["nystrom"] = "nystrom, PSD with eigenvalues 1/j"
    refs["nystrom"] = "sl.nystrom (numpy)"
    for table, title in headers.items():
        ref = refs[table]
        print(f"\n{title}\n{'method':56s} {'time [s]':>9s} {'ours/this':>9s} {'err2/opt':>9s} "
              f"{'errF/opt':>9s}")
        for name, (t_name, *_) in methods.items():
            if t_name == table:
                print(f"{name:56s} {times[name]:9.4f} {times[ref] / times[name]:9.2f} "
                      f"{errs[name][0]:9.4f} {errs[name][1]:9.4f}")
        if table == "slow":
            print(f"{'floor: 2q + 2 = ' + str(2 * q + 2) + ' products A @ X (numpy)':56s} "
                  f"{times['floor']:9.4f} {times[ref] / times['floor']:9.2f}")
    print("\ntargets: sl.rsvd <= 1.0x torch.svd_lowrank and <= 0.5x scikit-learn (default)")
    for key in tables:
        for ours in ("numpy", f"torch {dev.type}"):
            t = times[f"sl.rsvd ({ours}) [{key}]"]
            t_torch = times[f"torch.svd_lowrank ({dev.type}) [{key}]"]
            t_skl = times[f"sklearn randomized_svd (default: no normalizer) [{key}]"]
            print(f"  [{key}] sl.rsvd ({ours}): {t / t_torch:.2f}x torch.svd_lowrank, "
                  f"{t / t_skl:.2f}x scikit-learn")
    print("one pass (no target: 1.5x the flops of the two-pass forms at q = 0, in one read)")
    for key in one_pass:
        t_torch = times[f"torch.svd_lowrank niter=0 ({dev.type}), 2 passes [{key}]"]
        for ours in ("numpy", f"torch {dev.type}"):
            t = times[f"sl.rsvd single_pass ({ours}), 1 pass [{key}]"]
            print(f"  [{key}] sl.rsvd single_pass ({ours}): {t / t_torch:.2f}x "
                  f"torch.svd_lowrank niter=0")


if __name__ == "__main__":
    main()
