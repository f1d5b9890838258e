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
METHODS = ridge_module.METHODS

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
    with pytest.raises(ValueError, match="unknown sketch kind 'fourier'"):
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
    with pytest.raises(ValueError, match="b must be 1-D or 2-D"):
        sl.ridge(A, np.ones((M_ROWS, 2, 1)))
    with pytest.raises(ValueError, match="lam must be a scalar"):
        sl.ridge(A, b, np.array([1.0]))
    with pytest.raises(TypeError, match="lam must be a real number"):
        sl.ridge(A, b, np.array(True))
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


# -- inputs of every kind: rank deficiency, zero columns, half precision, several right-hand
# -- sides, scalar arrays for lam, empty problems (regressions of issue 13) ------------------
def rank_deficient(m=400, seed=7):
    """A of rank 12 with 24 columns: 12 independent, 10 combinations of them, 2 exactly zero
    (a zero column made ridge(A, b, 0) raise LinAlgError on NumPy and scipy.sparse)."""
    rng = np.random.default_rng(seed)
    B = matrix_with_spectrum(m, 12, np.logspace(0, -1, 12), rng=seed)
    B[rng.random(B.shape) < 0.3] = 0.0  # sparse enough to be worth a scipy.sparse input
    A = np.hstack([B[:, :5], np.zeros((m, 1)), B[:, 5:], B @ rng.standard_normal((12, 10)),
                   np.zeros((m, 1))])
    return A, rng.standard_normal(m)


def lstsq_min_norm(A, b):
    # The oracle with the documented rank rule: singular values <= max(m, n) eps sigma_1 are 0.
    return scipy.linalg.lstsq(A, b, cond=max(A.shape) * eps("float64"))[0]


def min_norm_factor(A, b, ref, rank):
    s = np.linalg.svd(A, compute_uv=False)
    r = np.linalg.norm(b - A @ ref, axis=0).max()
    return wedin(s[0] / s[rank - 1], r, s[0], np.linalg.norm(ref, axis=0).min())


def as_input(kind, A, backend=None):
    if kind == "dense":
        return A if backend is None else backend.asarray(A)
    if kind == "csr":
        return scipy.sparse.csr_array(A)
    if kind == "csc_matrix":
        return scipy.sparse.csc_matrix(A)
    return scipy.sparse.linalg.aslinearoperator(A)


@pytest.mark.parametrize("method", [*EXACT, "sketch_solve"])
def test_rank_deficient_zero_columns_minimum_norm_dense(backend, method):
    A, b = rank_deficient()
    if method == "sketch_solve":  # exact only for a consistent b
        b = A @ np.random.default_rng(8).standard_normal(A.shape[1])
    ref = lstsq_min_norm(A, b)
    x, info = sl.ridge(backend.asarray(A), backend.asarray(b), 0.0, method=method,
                       return_info=True)
    assert type(x) is type(backend.asarray(b))
    assert "truncated SVD of R (rank 12 of 24)" in info["factorization"]
    assert_close(x, ref, factor=min_norm_factor(A, b, ref, 12))


@pytest.mark.parametrize("kind", ["csr", "csc_matrix", "operator"])
@pytest.mark.parametrize("method", [*EXACT, "sketch_solve"])
def test_rank_deficient_zero_columns_minimum_norm_sparse_and_operator(kind, method):
    A, b = rank_deficient()
    if method == "sketch_solve":
        b = A @ np.random.default_rng(8).standard_normal(A.shape[1])
    ref = lstsq_min_norm(A, b)
    x, info = sl.ridge(as_input(kind, A), b, 0.0, method=method, return_info=True)
    assert isinstance(x, np.ndarray)
    assert "truncated SVD of R (rank 12 of 24)" in info["factorization"]
    assert_close(x, ref, factor=min_norm_factor(A, b, ref, 12))


def test_sparse_random_with_a_zero_column_default_method():
    # The input: scipy.sparse.random(20000, 300, density=3e-4) has an empty column
    # and failed with the default method (singular triangular solve).
    As = scipy.sparse.random(20000, 300, density=3e-4, random_state=0, format="csr")
    assert np.any(np.asarray(abs(As).sum(axis=0)).ravel() == 0)
    b = np.random.default_rng(0).standard_normal(20000)
    x, info = sl.ridge(As, b, 0.0, return_info=True)
    A = As.toarray()
    ref = lstsq_min_norm(A, b)
    rank = int(np.linalg.matrix_rank(A))
    assert info["method"] == "sketch_precondition" and info["converged"]
    assert f"rank {rank} of 300" in info["factorization"]
    assert_close(x, ref, factor=min_norm_factor(A, b, ref, rank))


@pytest.mark.parametrize("method", EXACT)
def test_half_precision_round_trip(backend, method):
    # float16 (and bfloat16 on torch) are computed in float32 and returned in the input's
    # dtype (regression: NumPy float16 raised TypeError). Oracle: the float64 solution for the
    # rounded data; bound: the float32 Wedin bound in half eps units plus one rounding.
    A, b, _ = problem(10.0)
    lam = 1e-2
    for dtype in backend.halves():
        Ah, bh = backend.cast(A, dtype), backend.cast(b, dtype)
        A64, b64 = backend.to_numpy(Ah).astype(np.float64), backend.to_numpy(bh).astype(np.float64)
        ref = dense_reference(A64, b64, lam)
        x = sl.ridge(Ah, bh, lam, method=method)
        assert x.dtype == dtype and type(x) is type(bh)
        factor = 1 + ls_factor(A64, b64, lam, ref, "float32") * eps("float32") / eps(dtype)
        assert_close(x, ref, factor=factor)


@pytest.mark.parametrize("method,solver", [("direct", "lsqr"), ("auto", "lsqr"),
                                           ("sketch_precondition", "lsqr"),
                                           ("sketch_precondition", "cg"),
                                           ("sketch_solve", "lsqr")])
def test_several_right_hand_sides(backend, method, solver):
    # A 2-D b of shape (m, k) gives x of shape (n, k), column j the solution for b[:, j]
    # (as scipy.linalg.lstsq); the Krylov entries of info become per-column lists.
    A, _, _ = problem(1e2)
    rng = np.random.default_rng(9)
    B = rng.standard_normal((M_ROWS, 3))
    if method == "sketch_solve":
        B = A @ rng.standard_normal((N, 3))  # exact only for consistent right-hand sides
    lam = 0.0 if method == "sketch_solve" else 1e-2
    ref = np.column_stack([dense_reference(A, B[:, j], lam) for j in range(3)])
    X, info = sl.ridge(backend.asarray(A), backend.asarray(B), lam, method=method,
                       solver=solver, rng=3, return_info=True)
    assert tuple(X.shape) == (N, 3) and type(X) is type(backend.asarray(B))
    factor = max(ls_factor(A, B[:, j], lam, ref[:, j]) for j in range(3))
    if solver == "cg":
        factor = 2 * STOP["float64"] * np.linalg.cond(augmented(A, B[:, 0], lam)[0]) ** 2
    assert_close(X, ref, factor=factor)
    # the same as one column at a time (same rng: same sketch)
    for j in range(3):
        xj = sl.ridge(backend.asarray(A), backend.asarray(B[:, j]), lam, method=method,
                      solver=solver, rng=3)
        assert_close(X[:, j], xj, factor=factor)
    assert info["residual"].shape == (3,)
    Aa = np.vstack([A, np.sqrt(lam) * np.eye(N)])
    Ba = np.vstack([B, np.zeros((N, 3))])
    Xh = backend.to_numpy(X)
    true_res = np.linalg.norm(Aa @ Xh - Ba, axis=0)
    # rounding of the residual: eps (|A_bar| |x| + |b|) per entry, sqrt(m) entries
    scale = np.linalg.norm(Aa, 2) * np.linalg.norm(Xh, axis=0).max() + np.abs(B).max()
    assert_close(info["residual"], true_res, factor=10 * np.sqrt(M_ROWS), scale=scale)
    if info["method"] == "sketch_precondition":
        assert len(info["iterations"]) == 3 and isinstance(info["converged"], bool)


def test_several_right_hand_sides_sparse_and_operator():
    A, _, x_true = problem(1e2)
    A[np.random.default_rng(0).random(A.shape) < 0.5] = 0.0
    Xt = np.column_stack([x_true, -x_true])
    B = A @ Xt
    for kind in ("csr", "operator"):
        for method in ("direct", "sketch_precondition", "auto"):
            X = sl.ridge(as_input(kind, A), B, method=method)
            assert isinstance(X, np.ndarray) and X.shape == (N, 2)
            assert_close(X, Xt, factor=10 * STOP["float64"] * np.linalg.cond(A))


def test_lam_as_a_scalar_array(backend):
    # Regression: a 0-d NumPy array or torch tensor lam raised TypeError.
    A, b, _ = problem(10.0)
    want = sl.ridge(A, b, 0.5)
    for lam in (np.array(0.5), np.float32(0.5), backend.asarray(np.array(0.5))):
        assert_close(sl.ridge(A, b, lam), want, factor=1)
    with pytest.raises(ValueError, match=r"lam must be a scalar .* shape \(2,\)"):
        sl.ridge(A, b, backend.asarray(np.array([0.5, 0.5])))


@pytest.mark.parametrize("kind", ["dense", "csr", "operator"])
def test_zero_columns_and_empty_problems(backend, kind):
    # Regression: an A with no columns hit NumPy's concatenate error (or divided by zero).
    if kind != "dense" and backend.name != "numpy":
        pytest.skip("sparse and operator inputs take NumPy b")
    for method in METHODS:
        b = backend.asarray(np.ones(10))
        x, info = sl.ridge(as_input(kind, np.zeros((10, 0)), backend), b, 0.0, method=method,
                           return_info=True)
        assert tuple(x.shape) == (0,) and type(x) is type(b) and x.dtype == b.dtype
        assert info["residual"] == pytest.approx(np.sqrt(10))
        X = sl.ridge(as_input(kind, np.zeros((10, 0)), backend),
                     backend.asarray(np.ones((10, 4))), 0.0, method=method)
        assert tuple(X.shape) == (0, 4)
        X = sl.ridge(as_input(kind, np.ones((10, 3)), backend), backend.asarray(np.ones((10, 0))),
                     0.0, method=method)
        assert tuple(X.shape) == (3, 0)
    # no rows, lam > 0: x = (0 + lam I)^{-1} 0 = 0
    x = sl.ridge(as_input(kind, np.zeros((0, 5)), backend), backend.asarray(np.zeros(0)), 1.0)
    assert tuple(x.shape) == (5,) and np.all(backend.to_numpy(x) == 0)
    # an all-zero A: rank 0, the minimum-norm solution is 0
    x = sl.ridge(as_input(kind, np.zeros((10, 5)), backend), backend.asarray(np.ones(10)), 0.0)
    assert np.all(backend.to_numpy(x) == 0)
