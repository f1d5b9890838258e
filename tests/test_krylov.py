"""LSQR and preconditioned CG: against SciPy and dense solves, their residual estimates, the
monotone A-norm error of CG and its condition-number bound, every backend, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg

import sketchlinalg as sl
from helpers import assert_close, eps, matrix_with_spectrum, orthonormal

M_ROWS, N = 200, 30
EPS64 = float(np.finfo(np.float64).eps)
EPS32 = float(np.finfo(np.float32).eps)


def ls_problem(cond, seed=0, consistent=False):
    A = matrix_with_spectrum(M_ROWS, N, np.logspace(0, -np.log10(cond), N), rng=seed)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal(N)
    b = A @ x if consistent else A @ x + 0.1 * rng.standard_normal(M_ROWS)
    return A, b


def ls_factor(A, b, x, dtype="float64"):
    # Least-squares perturbation bound (Wedin): a relative backward error tau moves x by
    # tau (kappa + kappa^2 |r| / (|A| |x|)) relative. LSQR stops at a backward error of its
    # default atol = 10 eps (float64) or 100 eps (float32); 2 absorbs the rest.
    s = np.linalg.svd(A, compute_uv=False)
    kappa = s[0] / s[-1]
    r = np.linalg.norm(b - A @ x)
    stop = 10 if dtype == "float64" else 100
    return 2 * stop * (kappa + kappa**2 * r / (s[0] * np.linalg.norm(x)))


def spd_problem(cond, n=80, seed=0):
    Q = orthonormal(n, n, rng=seed)
    ev = np.logspace(0, np.log10(cond), n)
    A = (Q * ev) @ Q.T
    A = (A + A.T) / 2
    b = np.random.default_rng(seed + 1).standard_normal(n)
    return A, b


# ---------------------------------------------------------------- LSQR


@pytest.mark.parametrize("k", [1, 3, 8])
def test_lsqr_iterates_match_scipy(k):
    # The same Golub-Kahan process: the k-th iterates agree to rounding while the Lanczos
    # vectors are still orthogonal (small k, cond 10): 100 k eps.
    A, b = ls_problem(10)
    x, info = sl.lsqr(A, b, maxiter=k, atol=0, btol=0)
    ref = scipy.sparse.linalg.lsqr(A, b, atol=0, btol=0, iter_lim=k)[0]
    assert info["iterations"] == k and not info["converged"]
    assert_close(x, ref, factor=100 * k)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cond", [1e1, 1e3])
def test_lsqr_converges_to_lstsq(backend, dtype, cond):
    A, b = ls_problem(cond)
    ref = np.linalg.lstsq(A, b, rcond=None)[0]
    x, info = sl.lsqr(backend.asarray(A, dtype), backend.asarray(b, dtype), maxiter=20 * N)
    assert info["converged"] and info["reason"] == "least_squares"
    assert x.dtype == backend.asarray(b, dtype).dtype
    assert_close(x, ref, factor=ls_factor(A, b, ref, dtype), dtype=dtype)


def test_lsqr_consistent_system_stops_on_residual():
    A, b = ls_problem(1e2, consistent=True)
    ref = np.linalg.lstsq(A, b, rcond=None)[0]
    x, info = sl.lsqr(A, b, maxiter=20 * N)
    assert info["reason"] == "consistent"
    assert_close(x, ref, factor=ls_factor(A, b, ref))


def test_lsqr_residual_estimates_are_exact():
    # |r_k| and |A^T r_k| from the recurrences equal the true ones in exact arithmetic; the
    # rounding of the recurrence is a few eps relative to |b| (resp. |A| |b|).
    A, b = ls_problem(1e2)
    xs = []
    _, info = sl.lsqr(A, b, maxiter=25, atol=0, btol=0, callback=lambda x: xs.append(x.copy()))
    true_r = np.array([np.linalg.norm(b - A @ x) for x in xs])
    true_ar = np.array([np.linalg.norm(A.T @ (b - A @ x)) for x in xs])
    assert_close(info["residuals"][1:], true_r, factor=100, scale=np.linalg.norm(b))
    assert_close(info["normal_residuals"][1:], true_ar, factor=100,
                 scale=np.linalg.norm(A, 2) * np.linalg.norm(b))
    assert info["residuals"][0] == pytest.approx(np.linalg.norm(b))
    # LSQR's residual norm is monotonically non-increasing (Paige and Saunders 1982, Sec. 5).
    assert np.all(np.diff(info["residuals"]) <= 1e-12 * np.linalg.norm(b))


def test_lsqr_convergence_rate_bound():
    # LSQR is CG on A^T A: |A (x_k - x*)| <= 2 ((kappa - 1) / (kappa + 1))^k |A (x_0 - x*)|.
    cond = 10.0
    A, b = ls_problem(cond)
    xstar = np.linalg.lstsq(A, b, rcond=None)[0]
    xs = []
    sl.lsqr(A, b, maxiter=30, atol=0, btol=0, callback=lambda x: xs.append(x.copy()))
    e0 = np.linalg.norm(A @ xstar)
    rate = (cond - 1) / (cond + 1)
    for k, x in enumerate(xs, start=1):
        bound = 2 * rate**k * e0
        assert np.linalg.norm(A @ (x - xstar)) <= bound + 100 * EPS64 * e0


def test_lsqr_x0_and_callables():
    A, b = ls_problem(1e2)
    ref = np.linalg.lstsq(A, b, rcond=None)[0]
    x, info = sl.lsqr((lambda v: A @ v, lambda u: A.T @ u), b, x0=ref + 1e-6, maxiter=20 * N)
    assert info["converged"]
    assert_close(x, ref, factor=ls_factor(A, b, ref))
    # Starting from the solution: A^T r0 = 0 up to rounding, stop at once.
    _, info = sl.lsqr(A, b, x0=ref)
    assert info["iterations"] <= 1


def test_lsqr_miniter_defers_the_stopping_tests():
    A, b = ls_problem(1e2)
    ref = np.linalg.lstsq(A, b, rcond=None)[0]
    x, info = sl.lsqr(A, b, x0=ref, miniter=5, maxiter=50)
    assert info["iterations"] >= 5 and info["converged"]
    assert_close(x, ref, factor=ls_factor(A, b, ref))


def test_lsqr_sparse_and_operator():
    A, b = ls_problem(1e2)
    ref = np.linalg.lstsq(A, b, rcond=None)[0]
    for Ax in (scipy.sparse.csr_matrix(A), scipy.sparse.linalg.aslinearoperator(A)):
        x, info = sl.lsqr(Ax, b, maxiter=20 * N)
        assert info["converged"]
        assert_close(x, ref, factor=ls_factor(A, b, ref))


def test_lsqr_zero_rhs():
    A, _ = ls_problem(10)
    x, info = sl.lsqr(A, np.zeros(M_ROWS))
    assert info["iterations"] == 0 and np.all(x == 0)


def test_lsqr_bad_input():
    A, b = ls_problem(10)
    with pytest.raises(ValueError, match="shape mismatch"):
        sl.lsqr(A, b[:-1])
    bad = b.copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="b contains NaN"):
        sl.lsqr(A, bad)
    Abad = A.copy()
    Abad[1, 1] = np.inf
    with pytest.raises(ValueError, match="A contains NaN"):
        sl.lsqr(Abad, b)
    with pytest.raises(TypeError, match="matvec, rmatvec"):
        sl.lsqr((lambda v: A @ v,), b)
    with pytest.raises(ValueError, match="maxiter"):
        sl.lsqr(A, b, maxiter=-1)
    with pytest.raises(ValueError, match="atol"):
        sl.lsqr(A, b, atol=-1.0)
    with pytest.raises(ValueError, match="x0"):
        sl.lsqr(A, b, x0=np.zeros(N + 1))
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        sl.lsqr((lambda v: A @ v * np.nan, lambda u: A.T @ u), b)


def half_dtypes(backend):
    """The half-precision dtypes of a backend (float16 everywhere, bfloat16 on torch and JAX;
    skipped where there are none)."""
    return backend.halves()


def rounded(backend, X, dtype):
    """``X`` on the backend in ``dtype``, and its exact float64 value on the host."""
    Xh = backend.cast(X, dtype)
    return Xh, backend.to_numpy(Xh).astype(np.float64)


def half_factor(solve_factor, dtype):
    # Computed in float32, then rounded once to the half format: the float32 error bound in
    # units of the half format's eps, plus one rounding.
    return 1 + solve_factor * EPS32 / eps(dtype)


def test_lsqr_half_precision_round_trip(backend):
    # Half inputs are computed in float32 and the result comes back in the input's dtype
    # (regression: float32 was returned); the oracle is lstsq of the rounded data.
    A, b = ls_problem(10)
    for dtype in half_dtypes(backend):
        Ah, A64 = rounded(backend, A, dtype)
        bh, b64 = rounded(backend, b, dtype)
        ref = np.linalg.lstsq(A64, b64, rcond=None)[0]
        Aw = backend.asarray(A64, np.float32)  # callables see the float32 working vectors
        for op in (Ah, (lambda v, Aw=Aw: Aw @ v, lambda u, Aw=Aw: Aw.T @ u)):
            x, info = sl.lsqr(op, bh, maxiter=20 * N)
            assert info["converged"] and x.dtype == dtype and type(x) is type(bh)
            assert_close(x, ref, factor=half_factor(ls_factor(A64, b64, ref, "float32"), dtype))
    # Mixed half and float32 inputs promote to float32.
    x, _ = sl.lsqr(backend.asarray(A, np.float16), backend.asarray(b, np.float32))
    assert x.dtype == backend.asarray(b, np.float32).dtype


def test_lsqr_rmatvec_of_the_wrong_shape_is_named():
    # Regression: a raw matmul error from the user's matvec on rmatvec's output.
    A, b = ls_problem(10)
    with pytest.raises(ValueError, match=r"rmatvec must return a vector of shape \(n,\)"):
        sl.lsqr((lambda v: A @ v, lambda u: A[:, :-1].T @ u), b)
    with pytest.raises(ValueError, match=r"rmatvec returned shape \(30, 1\)"):
        sl.lsqr((lambda v: A @ v, lambda u: (A.T @ u)[:, None]), b)
    with pytest.raises(ValueError, match=r"x0 has shape \(30,\) but rmatvec returned shape"):
        sl.lsqr((lambda v: A @ v, lambda u: A[:, :-1].T @ u), b, x0=np.zeros(N))
    calls = []

    def drifting(u):  # right at first, one entry short afterwards
        calls.append(1)
        return A.T @ u if len(calls) == 1 else A[:, :-1].T @ u

    with pytest.raises(ValueError, match=r"rmatvec\(u\) returned shape \(29,\), expected"):
        sl.lsqr((lambda v: A @ v, drifting), b)


# ---------------------------------------------------------------- PCG


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_pcg_against_dense_solve(backend, dtype):
    # Stopping at |r| <= rtol |b| leaves a forward error <= kappa * rtol; rtol defaults to
    # 10 eps (float64) or 100 eps (float32), so 200 kappa eps covers it and the solve's rounding.
    cond = 1e3
    A, b = spd_problem(cond)
    x, info = sl.pcg(backend.asarray(A, dtype), backend.asarray(b, dtype))
    assert info["converged"] and x.dtype == backend.asarray(b, dtype).dtype
    assert_close(x, np.linalg.solve(A, b), factor=200 * cond, dtype=dtype)


def test_pcg_a_norm_error_monotone_and_within_bound():
    # CG minimizes |e_k|_A over a growing Krylov space: monotone, and
    # |e_k|_A <= 2 ((sqrt(k) - 1) / (sqrt(k) + 1))^t |e_0|_A (Saad, Thm 6.29).
    cond = 1e4
    A, b = spd_problem(cond)
    xstar = np.linalg.solve(A, b)
    xs = []
    _, info = sl.pcg(A, b, rtol=1e-12, callback=lambda x: xs.append(x.copy()))

    def anorm(e):
        return float(np.sqrt(e @ A @ e))

    err = np.array([anorm(xstar)] + [anorm(x - xstar) for x in xs])
    floor = 1e3 * EPS64 * err[0] * np.sqrt(cond)  # rounding level of |e|_A
    above = err > floor
    assert np.all(np.diff(err)[above[1:]] <= 0)
    rate = (np.sqrt(cond) - 1) / (np.sqrt(cond) + 1)
    bound = 2 * rate ** np.arange(err.size) * err[0]
    assert np.all(err <= bound + floor)
    assert info["residuals"].size == info["iterations"] + 1


def test_pcg_preconditioner_reduces_iterations_to_its_bound():
    # A badly scaled SPD matrix D B D: Jacobi makes it well conditioned, and the iteration
    # count must then obey the bound with kappa(M^{1/2} A M^{1/2}).
    n = 80
    B, b = spd_problem(10.0, n=n)
    D = np.diag(np.logspace(0, 3, n))
    A = D @ B @ D
    Minv = np.diag(1 / np.diag(A))
    _, plain = sl.pcg(A, b, rtol=1e-10)
    x, pre = sl.pcg(A, b, M=Minv, rtol=1e-10)
    Ms = np.sqrt(Minv)
    ev = np.linalg.eigvalsh(Ms @ A @ Ms)
    kappa = ev[-1] / ev[0]
    rate = (np.sqrt(kappa) - 1) / (np.sqrt(kappa) + 1)
    # From x0 = 0, |r_k| / |b| <= sqrt(cond(A)) |e_k|_A / |e_0|_A <= 2 sqrt(cond(A)) rate^k.
    cond_a = np.linalg.cond(A)
    predicted = np.log(1e-10 / (2 * np.sqrt(cond_a))) / np.log(rate)
    assert pre["iterations"] <= predicted + 1
    assert pre["iterations"] < plain["iterations"]
    # Forward error <= cond(A) * rtol.
    assert_close(x, np.linalg.solve(A, b), factor=1e-10 / EPS64 * cond_a)
    # The exact inverse as preconditioner: one step (to rounding, eps cond(A) ~ 1e-9).
    _, one = sl.pcg(A, b, M=lambda r: np.linalg.solve(A, r), rtol=1e-6)
    assert one["iterations"] == 1


def test_pcg_callable_sparse_and_x0():
    A, b = spd_problem(1e2)
    ref = np.linalg.solve(A, b)
    for Ax in (lambda v: A @ v, scipy.sparse.csr_matrix(A),
               scipy.sparse.linalg.aslinearoperator(A)):
        x, info = sl.pcg(Ax, b)
        assert info["converged"]
        assert_close(x, ref, factor=200 * 1e2)
    _, info = sl.pcg(A, b, x0=ref)
    assert info["iterations"] <= 1


def test_pcg_detects_indefinite():
    A, b = spd_problem(10)
    with pytest.raises(FloatingPointError, match="not symmetric positive definite"):
        sl.pcg(-A, b)
    with pytest.raises(FloatingPointError, match="preconditioner"):
        sl.pcg(A, b, M=-np.eye(A.shape[0]))


def test_pcg_bad_input():
    A, b = spd_problem(10)
    with pytest.raises(ValueError, match="shape mismatch"):
        sl.pcg(A[:, :-1], b)
    with pytest.raises(ValueError, match="shape mismatch"):
        sl.pcg(A, b, M=np.eye(3))
    bad = b.copy()
    bad[3] = np.inf
    with pytest.raises(ValueError, match="b contains NaN"):
        sl.pcg(A, bad)
    with pytest.raises(ValueError, match="rtol"):
        sl.pcg(A, b, rtol=-1.0)
    with pytest.raises(ValueError, match="x0"):
        sl.pcg(A, b, x0=np.ones(2))


def test_pcg_half_precision_round_trip(backend):
    # Regression: pcg returned float32 for half inputs.
    cond = 10.0
    A, b = spd_problem(cond, n=30)
    for dtype in half_dtypes(backend):
        Ah, A64 = rounded(backend, A, dtype)
        bh, b64 = rounded(backend, b, dtype)
        ref = np.linalg.solve(A64, b64)
        Aw = backend.asarray(A64, np.float32)  # a callable sees the float32 working vectors
        for op in (Ah, lambda v, Aw=Aw: Aw @ v):
            x, info = sl.pcg(op, bh)
            assert info["converged"] and x.dtype == dtype and type(x) is type(bh)
            assert_close(x, ref, factor=half_factor(200 * np.linalg.cond(A64), dtype))
