"""ridge: every method against SciPy's dense solution of the augmented problem, well- and
ill-conditioned; sketch-and-solve against its embedding bound; sketch-and-precondition's
iteration count against the LSRN prediction; auto's visible choice; inputs; bad input."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg

import sketchlinalg as sl
from helpers import assert_close, eps, matrix_with_spectrum

ridge_module = importlib.import_module("sketchlinalg.drivers.ridge")

M_ROWS, N = 2000, 40
EXACT = ("direct", "sketch_precondition", "auto")
STOP = {"float64": 10, "float32": 100}  # LSQR's default tolerance in units of eps


def spectrum(cond):
    return np.logspace(0, -np.log10(cond), N)


def problem(cond, *, consistent=False, m=M_ROWS, seed=0):
    A = matrix_with_spectrum(m, N, spectrum(cond), rng=seed)
    rng = np.random.default_rng(seed + 1)
    x_true = rng.standard_normal(N)
    b = A @ x_true if consistent else A @ x_true + 0.1 * rng.standard_normal(m)
    return A, b, x_true


def augmented(A, b, lam):
    n = A.shape[1]
    return np.vstack([A, np.sqrt(lam) * np.eye(n)]), np.concatenate([b, np.zeros(n)])


def dense_reference(A, b, lam):
    Aa, ba = augmented(A, b, lam)
    return scipy.linalg.lstsq(Aa, ba, lapack_driver="gelsd")[0]


def ls_factor(A, b, lam, x, dtype="float64"):
    # Wedin's bound: a relative backward error tau moves x by tau (k + k^2 |r| / (|A| |x|))
    # with k = cond([A; sqrt(lam) I]); tau is LSQR's stopping tolerance (10 or 100 eps), or
    # ~n eps for QR/Cholesky; the normal equations are only used when eps k^2 <= sqrt(eps),
    # which this bound (with the k^2 term) also covers for the problems below. The float64
    # reference adds eps64 (k + ...), negligible in float32 units.
    Aa, ba = augmented(A, b, lam)
    s = np.linalg.svd(Aa, compute_uv=False)
    return wedin(s[0] / s[-1], np.linalg.norm(ba - Aa @ x), s[0], np.linalg.norm(x), dtype)


def wedin(k, r, norm_a, norm_x, dtype="float64"):
    return 2 * max(STOP[dtype], N) * (k + k**2 * r / (norm_a * norm_x))


@pytest.mark.parametrize("method", EXACT)
@pytest.mark.parametrize("lam", [0.0, 1e-2])
def test_well_conditioned_against_dense(method, lam):
    A, b, _ = problem(1e2)
    ref = dense_reference(A, b, lam)
    x, info = sl.ridge(A, b, lam, method=method, return_info=True)
    assert_close(x, ref, factor=ls_factor(A, b, lam, ref))
    if method == "direct":
        assert info["factorization"] == "cholesky"  # cond 1e2 <= eps^(-1/4) ~ 8e3
    assert info["residual"] == pytest.approx(
        np.linalg.norm(np.concatenate([A @ x - b, np.sqrt(lam) * x])))


@pytest.mark.parametrize("method", [*EXACT, "sketch_solve"])
@pytest.mark.parametrize("cond", [1e8, 1e10])
def test_ill_conditioned_consistent_known_solution(method, cond):
    # b = A x_true with lam = 0: every backward-stable solver (and sketch-and-solve, exact
    # for consistent b) gets x_true within ~ eps cond; the dense reference would be no
    # better, so x_true is the oracle. 10 cond eps (measured: <= 0.1 cond eps).
    A, b, x_true = problem(cond, consistent=True)
    x, info = sl.ridge(A, b, 0.0, method=method, return_info=True)
    assert_close(x, x_true, factor=10 * cond)
    if method == "direct":
        assert info["factorization"] == "qr"  # cond > eps^(-1/4): normal equations refused
    # The estimate is a lower bound within the sketch's distortion (1 + e)/(1 - e) <= 3.
    assert cond / 3 <= info["cond"] <= 3 * cond


@pytest.mark.parametrize("method", EXACT)
@pytest.mark.parametrize("cond", [1e8, 1e10])
def test_ill_conditioned_regularized_against_dense(method, cond):
    # lam = 1e-6 makes cond([A; sqrt(lam) I]) ~ 1e3, so the dense reference is exact enough.
    A, b, _ = problem(cond)
    lam = 1e-6
    ref = dense_reference(A, b, lam)
    x = sl.ridge(A, b, lam, method=method)
    assert_close(x, ref, factor=ls_factor(A, b, lam, ref))


def test_ill_conditioned_inconsistent_lsqr_restart_matches_qr():
    # cond 1e8, inconsistent b: the refinement restart must bring sketch_precondition to the
    # Wedin bound (which QR also obeys); the dense reference is accurate to that bound too.
    A, b, _ = problem(1e8)
    ref = dense_reference(A, b, 0.0)
    x, info = sl.ridge(A, b, method="sketch_precondition", return_info=True)
    assert info["restarts"] == 1 and len(info["iterations_per_run"]) == 2
    assert_close(x, ref, factor=ls_factor(A, b, 0.0, ref))


@pytest.mark.parametrize("lam", [0.0, 1e-2])
def test_sketch_solve_embedding_bound(lam):
    # With S embedding range([A_bar, b_bar]) with distortion eps_S (measured from the dense S),
    # f(x_sketch) <= ((1 + eps_S) / (1 - eps_S))^2 f(x_opt), f the ridge objective (Sarlos 2006).
    A, b, _ = problem(1e2)
    d = 4 * N
    x = sl.ridge(A, b, lam, method="sketch_solve", sketch="gaussian", sketch_size=d, rng=5)
    S = sl.sketch("gaussian", d, M_ROWS, rng=5).to_dense()
    Q = np.linalg.qr(np.column_stack([A, b]))[0]  # the sketch acts on the rows of A only
    sv = np.linalg.svd(S @ Q, compute_uv=False)
    # [S 0; 0 I] on range([A_bar b_bar]) distorts at most as much as S on range([A b]).
    distortion = max(sv[0] - 1, 1 - sv[-1])
    ref = dense_reference(A, b, lam)

    def f(z):
        return np.linalg.norm(A @ z - b) ** 2 + lam * np.linalg.norm(z) ** 2

    assert distortion < 1
    assert f(ref) <= f(x) <= ((1 + distortion) / (1 - distortion)) ** 2 * f(ref)


def test_iterations_match_lsrn_prediction_and_ignore_conditioning():
    # Gaussian S with d = 4n: singular values of S Q lie in 1 -+ sqrt(n/d) (Marchenko-Pastur),
    # cond(A R^-1) <= (1 + a)/(1 - a), a = sqrt(n/d) = 1/2, and LSQR gains a factor a per step:
    # k_pred = log(tol / 2) / log(a) with tol = 10 eps.
    d = 4 * N
    tol = 10 * eps("float64")
    k_pred = np.log(tol / 2) / np.log(np.sqrt(N / d))
    first_runs = []
    for cond in (1e2, 1e6, 1e10):
        A, b, _ = problem(cond)
        _, info = sl.ridge(A, b, method="sketch_precondition", sketch="gaussian",
                           sketch_size=d, rng=1, return_info=True)
        assert info["converged"]
        first_runs.append(info["iterations_per_run"][0])
        assert k_pred / 3 <= info["iterations_per_run"][0] <= 1.5 * k_pred
        assert info["iterations"] <= 2 * 1.5 * k_pred  # with the refinement restart
    # Independent of cond(A): the first runs differ by at most 20 %.
    assert max(first_runs) <= 1.2 * min(first_runs)


def test_cg_solver_on_a_well_conditioned_problem():
    # CG on the preconditioned normal equations: normal-equation accuracy eps k^2.
    A, b, _ = problem(1e2)
    ref = dense_reference(A, b, 1e-2)
    x, info = sl.ridge(A, b, 1e-2, method="sketch_precondition", solver="cg", return_info=True)
    assert info["solver"] == "cg" and info["converged"]
    Aa, _ = augmented(A, b, 1e-2)
    k = np.linalg.cond(Aa)
    assert_close(x, ref, factor=2 * STOP["float64"] * k**2)


def test_rank_deficient_gives_minimum_norm_solution():
    # rank 20 of 40 with lam = 0: QR's R is singular, the truncated SVD of R gives pinv(A) b.
    rng = np.random.default_rng(3)
    B = matrix_with_spectrum(M_ROWS, 20, np.logspace(0, -1, 20), rng=3)
    A = np.hstack([B, B @ rng.standard_normal((20, 20))])
    b = rng.standard_normal(M_ROWS)
    ref = np.linalg.pinv(A, rcond=1e-10) @ b
    s = np.linalg.svd(A, compute_uv=False)
    fac = wedin(s[0] / s[19], np.linalg.norm(b - A @ ref), s[0], np.linalg.norm(ref))
    for method in ("direct", "sketch_precondition"):
        x, info = sl.ridge(A, b, method=method, return_info=True)
        assert "truncated SVD of R (rank 20 of 40)" in info["factorization"]
        assert_close(x, ref, factor=fac)


def test_auto_rule_is_visible_and_sensible(monkeypatch):
    A, b, _ = problem(1e2)  # m n = 80000 < 2^20: direct
    _, info = sl.ridge(A, b, method="auto", return_info=True)
    assert info["method"] == "direct" and "not tall and large" in info["auto_reason"]
    _, info = sl.ridge(scipy.sparse.csr_array(A), b, method="auto", return_info=True)
    assert info["method"] == "sketch_precondition"

    # The sketching regime (m >= 8 n and m n >= 2^20) at a test-sized problem.
    monkeypatch.setattr(ridge_module, "AUTO_MIN_SIZE", 1)
    x, info = sl.ridge(A, b, method="auto", return_info=True)
    assert info["method"] == "direct" and info["factorization"] == "cholesky"
    assert "sampled rows" in info["auto_reason"]
    assert_close(x, dense_reference(A, b, 0.0), factor=ls_factor(A, b, 0.0, x))

    A, b, x_true = problem(1e8, consistent=True)
    x, info = sl.ridge(A, b, method="auto", return_info=True)
    assert info["method"] == "sketch_precondition"
    assert_close(x, x_true, factor=10 * 1e8)

    _, info = sl.ridge(A[: 4 * N], b[: 4 * N], method="auto", return_info=True)  # m < 8 n
    assert info["method"] == "direct"


def test_auto_falls_back_when_cholesky_check_rejects(monkeypatch):
    # If the sampled-row probe underestimates cond(A) (a coherent A), the Cholesky factor's own
    # estimate catches it and auto switches to sketch_precondition, saying so.
    monkeypatch.setattr(ridge_module, "_auto_method",
                        lambda P, gen: ("cholesky_or_sketch", "forced by the test"))
    A, b, x_true = problem(1e8, consistent=True)
    x, info = sl.ridge(A, b, method="auto", return_info=True)
    assert info["method"] == "sketch_precondition"
    assert "-> sketch_precondition" in info["auto_reason"]
    assert_close(x, x_true, factor=10 * 1e8)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("method", EXACT)
def test_backends_and_dtypes(backend, dtype, method):
    # cond 10 keeps the float32 normal equations inside eps^(-1/4) ~ 54.
    A, b, _ = problem(10.0)
    lam = 1e-2
    ref = dense_reference(A, b, lam)
    x = sl.ridge(backend.asarray(A, dtype), backend.asarray(b, dtype), lam, method=method)
    assert type(x) is type(backend.asarray(b)) and x.dtype == backend.asarray(b, dtype).dtype
    assert_close(x, ref, factor=ls_factor(A, b, lam, ref, dtype), dtype=dtype)


def test_sketch_solve_on_backends_is_exact_for_consistent_b(backend):
    A, b, x_true = problem(1e3, consistent=True)
    x = sl.ridge(backend.asarray(A), backend.asarray(b), method="sketch_solve", sketch="srht")
    assert_close(x, x_true, factor=10 * 1e3)


@pytest.mark.parametrize("method", ["direct", "sketch_solve", "sketch_precondition", "auto"])
def test_sparse_and_operator_inputs(method):
    # Consistent b, lam = 0: every method (sketch_solve too) returns x_true to ~ eps cond.
    A, _, x_true = problem(1e2)
    A[np.random.default_rng(0).random(A.shape) < 0.5] = 0.0  # a genuinely sparse matrix
    b = A @ x_true
    cond = np.linalg.cond(A)
    for Ax in (scipy.sparse.csr_array(A), scipy.sparse.csc_matrix(A),
               scipy.sparse.linalg.aslinearoperator(A)):
        x = sl.ridge(Ax, b, method=method)
        assert isinstance(x, np.ndarray)
        assert_close(x, x_true, factor=10 * STOP["float64"] * cond)


def test_wide_problem_with_lam():
    A = np.random.default_rng(0).standard_normal((30, 60))
    b = np.random.default_rng(1).standard_normal(30)
    x, info = sl.ridge(A, b, 0.5, return_info=True)
    assert info["method"] == "direct"
    assert_close(x, dense_reference(A, b, 0.5), factor=ls_factor(A, b, 0.5, x))


def test_bad_input():
    A, b, _ = problem(10.0)
    with pytest.raises(ValueError, match="lam"):
        sl.ridge(A, b, -1.0)
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match="lam"):
            sl.ridge(A, b, bad)
    with pytest.raises(ValueError, match="shape mismatch"):
        sl.ridge(A, b[:-1])
    for bad in (np.nan, np.inf):
        Ab = A.copy()
        Ab[3, 4] = bad
        with pytest.raises(ValueError, match="A contains NaN"):
            sl.ridge(Ab, b)
        with pytest.raises(ValueError, match="A contains NaN"):
            sl.ridge(scipy.sparse.csr_array(Ab), b)
        bb = b.copy()
        bb[5] = bad
        with pytest.raises(ValueError, match="b contains NaN"):
            sl.ridge(A, bb)
    with pytest.raises(ValueError, match="underdetermined"):
        sl.ridge(A[:10], b[:10])
    with pytest.raises(ValueError, match="needs m >= n"):
        sl.ridge(A[:10], b[:10], 1.0, method="sketch_precondition")
    with pytest.raises(ValueError, match="method must be one of"):
        sl.ridge(A, b, method="qr")
    with pytest.raises(ValueError, match="sketch must be one of"):
        sl.ridge(A, b, sketch="fourier")
    with pytest.raises(ValueError, match="solver must be one of"):
        sl.ridge(A, b, solver="gmres")
    with pytest.raises(ValueError, match="sketch_size"):
        sl.ridge(A, b, method="sketch_solve", sketch_size=N - 1)
    with pytest.raises(ValueError, match="sketch_size"):
        sl.ridge(A, b, method="sketch_solve", sketch_size=M_ROWS + 1)
    with pytest.raises(ValueError, match="tol"):
        sl.ridge(A, b, tol=2.0)
    with pytest.raises(ValueError, match="maxiter"):
        sl.ridge(A, b, maxiter=-3)
    with pytest.raises(ValueError, match="b must be 1-D"):
        sl.ridge(A, np.ones((M_ROWS, 2)))
    with pytest.raises(TypeError, match="A must"):
        sl.ridge(A.tolist(), b)
    with pytest.raises(TypeError, match="return_info"):
        sl.ridge(A, b, return_info="yes")


def test_mixed_backends_rejected():
    torch = pytest.importorskip("torch")
    A, b, _ = problem(10.0)
    with pytest.raises(TypeError):
        sl.ridge(torch.tensor(A), b)
    with pytest.raises(TypeError, match="NumPy"):
        sl.ridge(scipy.sparse.csr_array(A), torch.tensor(b))
