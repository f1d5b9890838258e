"""ridge against numpy.linalg.lstsq, scipy.linalg.lstsq (gelsd, gelsy) and Cholesky normal
equations on a tall dense least-squares problem (lam = 0), once well-conditioned and once with
condition number 1e8, both with a consistent right-hand side b = A x_true (solution known);
and on the sparse matrix ``scipy.sparse.random(20000, 300, density=3e-4)``, which has an
exactly zero column (rank-deficient: the minimum-norm solution is the answer), against
scipy.sparse.linalg.lsqr and lsmr (from x = 0 they converge to it) and the dense lstsq
drivers on ``A.toarray()``.

Prints, per problem, the best-of-repeats time of every solver, its ratio to gelsy and to the
fastest peer, and the relative error to x_true (to the minimum-norm solution of gelsd for
the sparse problem). The solvers take turns in each round, each turn after a pause (the
idle BLAS threads of the library that ran before spin for about 0.1 s).

    python benchmarks/bench_ridge.py            # 100000 x 400, and the sparse problem
    python benchmarks/bench_ridge.py --quick    # 20000 x 100 smoke size
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg

import sketchlinalg as sl

# Seconds of pause before each timed turn.
PAUSE = 0.3


def best_times(fns, repeats):
    """Best-of-``repeats`` time and the last output of each function, after a warm-up call;
    the repeats run in interleaved rounds so that load changes hit every solver alike, each
    turn after a pause."""
    outs = {name: fn() for name, fn in fns.items()}
    best = dict.fromkeys(fns, np.inf)
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(PAUSE)
            t0 = time.perf_counter()
            outs[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best, outs


def make_problem(m, n, cond, rng):
    # A = U diag(s) V^T with Haar U, V and log-spaced singular values 1 ... 1/cond.
    U = scipy.linalg.qr(rng.standard_normal((m, n)), mode="economic", check_finite=False)[0]
    V = scipy.linalg.qr(rng.standard_normal((n, n)), check_finite=False)[0]
    A = (U * np.logspace(0, -np.log10(cond), n)) @ V.T
    x_true = rng.standard_normal(n)
    return A, A @ x_true, x_true


def cholesky_normal_equations(A, b):
    c = scipy.linalg.cho_factor(A.T @ A, check_finite=False)
    return scipy.linalg.cho_solve(c, A.T @ b, check_finite=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20000 x 100, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    m, n = (20000, 100) if args.quick else (100000, 400)
    repeats = 1 if args.quick else args.repeats
    rng = np.random.default_rng(0)

    peers = {
        "numpy.linalg.lstsq (gelsd)": lambda A, b: np.linalg.lstsq(A, b, rcond=None)[0],
        "scipy lstsq gelsd": lambda A, b: scipy.linalg.lstsq(
            A, b, lapack_driver="gelsd", check_finite=False)[0],
        "scipy lstsq gelsy": lambda A, b: scipy.linalg.lstsq(
            A, b, lapack_driver="gelsy", check_finite=False)[0],
        "cholesky normal eq.": cholesky_normal_equations,
    }
    ours = {f"ridge {meth}": meth for meth in
            ("direct", "sketch_solve", "sketch_precondition", "auto")}

    for cond in (1e2, 1e8):
        A, b, x_true = make_problem(m, n, cond, rng)
        print(f"\n{m} x {n}, cond(A) = {cond:.0e}, lam = 0, b = A x_true, best of {repeats} "
              f"interleaved rounds")
        fns = {name: (lambda fn=fn, A=A, b=b: fn(A, b)) for name, fn in peers.items()}
        fns.update({name: (lambda meth=meth, A=A, b=b: sl.ridge(A, b, 0.0, method=meth, rng=1,
                                                                return_info=True))
                    for name, meth in ours.items()})
        times, outs = best_times(fns, repeats)
        rows = []
        for name in fns:
            x, detail = outs[name], ""
            if name in ours:
                x, info = x
                detail = info["method"] + ", " + info.get("factorization", "")
                if "iterations" in info:
                    detail += f", {info['iterations']} it"
            rows.append((name, times[name], x, detail))
        t_gelsy = next(t for name, t, _, _ in rows if name.endswith("gelsy"))
        t_peer = min(t for name, t, _, _ in rows[: len(peers)])
        t_ours = min(t for name, t, _, _ in rows if name in ("ridge direct",
                                                             "ridge sketch_precondition"))
        print(f"{'solver':28s} {'time [s]':>9s} {'/gelsy':>7s} {'/best peer':>10s} "
              f"{'rel. error':>10s}  details")
        for name, t, x, detail in rows:
            err = np.linalg.norm(x - x_true) / np.linalg.norm(x_true)
            print(f"{name:28s} {t:9.3f} {t / t_gelsy:7.2f} {t / t_peer:10.2f} {err:10.2e}  "
                  f"{detail}")
        t_auto = next(t for name, t, _, _ in rows if name == "ridge auto")
        print(f"auto / best of ridge's accurate methods (direct, sketch_precondition): "
              f"{t_auto / t_ours:.2f}")

    sparse_zero_column(repeats, ours)


def sparse_zero_column(repeats, ours):
    """The sparse problem with an exactly zero column, lam = 0, b = A x_true + noise (so the
    minimum-norm least-squares solution is not x_true), against the gelsd solution."""
    rng = np.random.default_rng(1)
    A = scipy.sparse.random(20000, 300, density=3e-4, random_state=0, format="csr")
    zero_cols = int(np.sum(np.asarray(abs(A).sum(axis=0)).ravel() == 0))
    b = A @ rng.standard_normal(300) + 1e-3 * rng.standard_normal(20000)
    x_ref = scipy.linalg.lstsq(A.toarray(), b, lapack_driver="gelsd", check_finite=False)[0]
    krylov = {"atol": 1e-14, "btol": 1e-14, "iter_lim": 10000}
    peers = {
        "numpy.linalg.lstsq (dense)": lambda: np.linalg.lstsq(A.toarray(), b, rcond=None)[0],
        "scipy lstsq gelsd (dense)": lambda: scipy.linalg.lstsq(
            A.toarray(), b, lapack_driver="gelsd", check_finite=False)[0],
        "scipy lstsq gelsy (dense)": lambda: scipy.linalg.lstsq(
            A.toarray(), b, lapack_driver="gelsy", check_finite=False)[0],
        "scipy.sparse.linalg.lsqr": lambda: scipy.sparse.linalg.lsqr(A, b, **krylov)[0],
        "scipy.sparse.linalg.lsmr": lambda: scipy.sparse.linalg.lsmr(
            A, b, atol=1e-14, btol=1e-14, maxiter=10000)[0],
    }
    fns = dict(peers)
    fns.update({name: (lambda meth=meth: sl.ridge(A, b, 0.0, method=meth, rng=1,
                                                  return_info=True))
                for name, meth in ours.items()})
    times, outs = best_times(fns, repeats)
    t_peer = min(times[name] for name in peers)
    t_sparse_peer = min(times["scipy.sparse.linalg.lsqr"], times["scipy.sparse.linalg.lsmr"])
    print(f"\nscipy.sparse.random(20000, 300, density=3e-4): nnz = {A.nnz}, {zero_cols} zero "
          f"column(s), lam = 0, b = A x + 1e-3 noise; error against gelsd's minimum-norm "
          f"solution; best of {repeats} interleaved rounds")
    print(f"{'solver':28s} {'time [s]':>9s} {'/best peer':>10s} {'/lsqr,lsmr':>10s} "
          f"{'rel. error':>10s}  details")
    for name in fns:
        x, detail = outs[name], ""
        if name in ours:
            x, info = x
            detail = info["method"] + ", " + info.get("factorization", "")
            if "iterations" in info:
                detail += f", {info['iterations']} it"
        err = np.linalg.norm(x - x_ref) / np.linalg.norm(x_ref)
        print(f"{name:28s} {times[name]:9.4f} {times[name] / t_peer:10.2f} "
              f"{times[name] / t_sparse_peer:10.2f} {err:10.2e}  {detail}")


if __name__ == "__main__":
    main()
