"""woodbury_solve: (U U^T + lam I)^{-1} g against dense solves, its residual, the lam -> inf
limit, several lams and right-hand sides, the sketched Gram, the eigh fallback, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg

import sketchlinalg as sl
from helpers import assert_close, eps, matrix_with_spectrum
from sketchlinalg import backend as sl_backend

P, N = 300, 30
S_VALUES = np.logspace(0, 1, N)  # singular values of U in [1, 10]
EPS64 = float(np.finfo(np.float64).eps)


def problem(k=None, seed=0):
    U = matrix_with_spectrum(P, N, S_VALUES, rng=seed)
    g = np.random.default_rng(seed + 1).standard_normal((P,) if k is None else (P, k))
    return U, g


def dense_solve(U, g, lam):
    return np.linalg.solve(U @ U.T + lam * np.eye(U.shape[0]), g)


def tolerance_factor(lam, dtype):
    # The small n x n solve loses cond(G + lam I) (G = U^T U); the float64 dense reference
    # loses kappa = cond(U U^T + lam I) = (s_max^2 + lam) / lam, expressed in eps(dtype) units.
    cond_small = (S_VALUES.max() ** 2 + lam) / (S_VALUES.min() ** 2 + lam)
    kappa = (S_VALUES.max() ** 2 + lam) / lam
    return 4 * (cond_small + kappa * EPS64 / eps(dtype))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("lam", [1e2, 1.0, 1e-2])
@pytest.mark.parametrize("k", [None, 3])
def test_against_dense_solve(backend, dtype, lam, k):
    U, g = problem(k)
    x = sl.woodbury_solve(backend.asarray(U, dtype), backend.asarray(g, dtype), lam)
    assert x.dtype == backend.asarray(g, dtype).dtype
    assert type(x) is type(backend.asarray(g, dtype))
    assert_close(x, dense_solve(U, g, lam), factor=tolerance_factor(lam, dtype), dtype=dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("lam", [1e2, 1e-2, 1e-5])
def test_residual(backend, dtype, lam):
    # (U U^T + lam I) x - g = U r / lam with r the small solve's residual: a backward-stable
    # solve leaves |residual| <~ eps * kappa * |g| (kappa = (s_max^2 + lam) / lam); 10 covers
    # the length-n sums. The residual itself is evaluated in float64.
    U, g = problem(2)
    x = backend.to_numpy(sl.woodbury_solve(backend.asarray(U, dtype), backend.asarray(g, dtype),
                                            lam)).astype(np.float64)
    res = (U @ (U.T @ x) + lam * x) - g
    kappa = (S_VALUES.max() ** 2 + lam) / lam
    assert_close(res, np.zeros_like(g), factor=10 * kappa, dtype=dtype, scale=np.abs(g).max())


@pytest.mark.parametrize("lam", [1e3, 1e6, 1e12])
def test_large_lam_limit(backend, lam):
    # lam x - g = -U (G + lam I)^{-1} U^T g, whose norm is at most s_max^2 / lam * |g|;
    # it is also at least s_min^2 / (s_max^2 + lam) |P_U g| (P_U the projector on range(U)).
    U, g = problem()
    x = backend.to_numpy(sl.woodbury_solve(backend.asarray(U), backend.asarray(g), lam))
    gap = np.linalg.norm(lam * x - g) / np.linalg.norm(g)
    upper = S_VALUES.max() ** 2 / lam + 10 * EPS64
    Q = np.linalg.qr(U)[0]
    lower = S_VALUES.min() ** 2 / (S_VALUES.max() ** 2 + lam) * np.linalg.norm(Q.T @ g) \
        / np.linalg.norm(g) - 10 * EPS64
    assert lower <= gap <= upper


@pytest.mark.parametrize("k", [None, 4])
def test_several_lams(backend, k):
    U, g = problem(k)
    lams = np.array([1e-2, 1.0, 3.0, 1e3])
    X = sl.woodbury_solve(backend.asarray(U), backend.asarray(g), lams)
    assert tuple(X.shape) == (lams.size, *g.shape)
    for i, lam in enumerate(lams):
        assert_close(X[i, ...], dense_solve(U, g, lam), factor=tolerance_factor(lam, "float64"))
        single = sl.woodbury_solve(backend.asarray(U), backend.asarray(g), float(lam))
        assert_close(X[i, ...], single, factor=tolerance_factor(lam, "float64"))


def test_lams_as_backend_array_and_list(backend):
    U, g = problem()
    ref = sl.woodbury_solve(U, g, np.array([0.5, 2.0]))
    for lams in ([0.5, 2.0], (0.5, 2.0), backend.asarray(np.array([0.5, 2.0]))):
        X = sl.woodbury_solve(backend.asarray(U), backend.asarray(g), lams)
        assert_close(X, ref, factor=tolerance_factor(0.5, "float64"))


def test_info_and_one_eigendecomposition(monkeypatch):
    U, g = problem()
    _, info = sl.woodbury_solve(U, g, 0.1, return_info=True)
    assert info["factorization"] == "cholesky" and info["fallback"] is False
    assert info["gram"] == "exact"
    # The Cholesky-diagonal estimate is a lower bound of cond(G + lam I).
    exact_cond = (S_VALUES.max() ** 2 + 0.1) / (S_VALUES.min() ** 2 + 0.1)
    assert 1 <= info["cond"] <= exact_cond * (1 + 1e-10)

    calls = []
    real_eigh = np.linalg.eigh

    def counting_eigh(A, *args, **kw):
        calls.append(A.shape)
        return real_eigh(A, *args, **kw)

    monkeypatch.setattr(np.linalg, "eigh", counting_eigh)
    _, info = sl.woodbury_solve(U, g, np.logspace(-3, 3, 7), return_info=True)
    assert calls == [(N, N)]
    assert info["factorization"] == "eigh"
    smax2, smin2 = S_VALUES.max() ** 2, S_VALUES.min() ** 2
    assert info["cond"] == pytest.approx((smax2 + 1e-3) / (smin2 + 1e-3))


def test_forced_fallback_is_reported_and_exact(monkeypatch):
    U, g = problem(2)
    monkeypatch.setattr(sl_backend, "cholesky", lambda A: None)
    with pytest.warns(RuntimeWarning, match="Cholesky"):
        x, info = sl.woodbury_solve(U, g, 0.1, return_info=True)
    assert info["factorization"] == "eigh" and info["fallback"] is True
    assert_close(x, dense_solve(U, g, 0.1), factor=tolerance_factor(0.1, "float64"))


def test_natural_fallback_on_singular_gram(backend):
    # Duplicated columns make U^T U exactly singular; lam = 1e-14 lies below its rounding
    # level (eps * |G| ~ 1e-13), so Cholesky breaks down. The reference comes from the SVD.
    rng = np.random.default_rng(3)
    B = rng.standard_normal((P, 20))
    U = np.hstack([B, B])
    g = rng.standard_normal(P)
    lam = 1e-14
    W, s, _ = np.linalg.svd(U, full_matrices=False)
    W, s = W[:, :20], s[:20]
    ref = W @ ((W.T @ g) / (s**2 + lam)) + (g - W @ (W.T @ g)) / lam
    with pytest.warns(RuntimeWarning, match="eigendecomposition"):
        x, info = sl.woodbury_solve(backend.asarray(U), backend.asarray(g), lam, return_info=True)
    assert info["fallback"] is True
    # x is dominated by the component of g outside range(U), divided by lam: the error is the
    # rounding of g - U alpha relative to it (|g| / |g_perp| ~ 1.04); 100 eps covers 2 x 20 sums.
    assert_close(x, ref, factor=100)


@pytest.mark.parametrize("kind", ["gaussian", "sparse_sign", "countsketch", "srht", "sampling"])
def test_sketched_gram_is_exact_formula_with_perturbed_gram(kind):
    # Woodbury with G_s = U^T S^T S U in place of G solves exactly
    # (lam I + U C U^T) x = g with C = (I + (G_s - G) / lam)^{-1}; S is rebuilt from the seed.
    U, g = problem(2)
    lam, d = 5.0, 200
    x, info = sl.woodbury_solve(U, g, lam, sketch=kind, sketch_size=d, rng=7, return_info=True)
    assert info["gram"] == f"{kind}({d})"
    S = sl.sketch(kind, d, P, rng=7).to_dense()
    G, Gs = U.T @ U, (S @ U).T @ (S @ U)
    C = np.linalg.inv(np.eye(N) + (Gs - G) / lam)
    ref = np.linalg.solve(lam * np.eye(P) + U @ C @ U.T, g)
    cond_c = np.linalg.cond(np.eye(N) + (Gs - G) / lam)
    assert_close(x, ref, factor=tolerance_factor(lam, "float64") * cond_c)


def test_sketched_gram_full_sampling_is_exact():
    # Sampling all p rows without replacement is a permutation with scale sqrt(p/p) = 1.
    U, g = problem()
    x = sl.woodbury_solve(U, g, 0.3, sketch="sampling", sketch_size=P, rng=1)
    assert_close(x, dense_solve(U, g, 0.3), factor=tolerance_factor(0.3, "float64"))


@pytest.mark.slow
def test_sketched_gram_error_shrinks_with_sketch_size():
    # Gaussian S: |Q^T S^T S Q - I| <= 2 sqrt(n/d) + n/d w.h.p. (Davidson-Szarek), so the
    # mean error over seeds of the Woodbury result must fall as d grows (by ~ sqrt(4) = 2 per
    # 4x in d); we check a decrease by at least 1.5x per 4x.
    U, g = problem()
    ref = dense_solve(U, g, 1.0)
    errs = []
    for d in (60, 240, P):
        e = [np.linalg.norm(sl.woodbury_solve(U, g, 1.0, sketch="gaussian", sketch_size=d,
                                              rng=seed) - ref) for seed in range(20)]
        errs.append(np.mean(e))
    assert errs[0] > 1.5 * errs[1]


def test_sparse_and_operator_inputs():
    U, g = problem(2)
    ref = dense_solve(U, g, 0.5)
    for Ux in (scipy.sparse.csr_matrix(U), scipy.sparse.csc_array(U),
               scipy.sparse.linalg.aslinearoperator(U)):
        assert_close(sl.woodbury_solve(Ux, g, 0.5), ref, factor=tolerance_factor(0.5, "float64"))
        X = sl.woodbury_solve(Ux, g, [0.5, 1.0])
        assert_close(X[0], ref, factor=tolerance_factor(0.5, "float64"))


def test_half_precision_is_computed_in_float32():
    torch = pytest.importorskip("torch")
    U, g = problem()
    half = torch.float16
    x = sl.woodbury_solve(torch.tensor(U, dtype=half), torch.tensor(g, dtype=half), 1.0)
    assert x.dtype == torch.float16
    # The float16 inputs are rounded (eps16 relative), then the solve runs in float32.
    U16 = U.astype("float16").astype(np.float64)
    g16 = g.astype("float16").astype(np.float64)
    assert_close(x, dense_solve(U16, g16, 1.0), factor=2 * tolerance_factor(1.0, "float16"),
                 dtype="float16")


@pytest.mark.parametrize("lam", [0.0, -1.0, np.nan, np.inf, [1.0, 0.0], [], [[1.0]], "1"])
def test_bad_lam(lam):
    U, g = problem()
    with pytest.raises((ValueError, TypeError), match="lam"):
        sl.woodbury_solve(U, g, lam)


def test_bad_inputs(backend):
    U, g = problem()
    Ub, gb = backend.asarray(U), backend.asarray(g)
    with pytest.raises(ValueError, match="shape mismatch"):
        sl.woodbury_solve(Ub, gb[:-1], 1.0)
    for bad, where in ((np.nan, "U"), (np.inf, "U"), (-np.inf, "U")):
        Ubad = U.copy()
        Ubad[5, 3] = bad
        with pytest.raises(ValueError, match=where):
            sl.woodbury_solve(backend.asarray(Ubad), gb, 1.0)
        with pytest.raises(ValueError, match=where):
            sl.woodbury_solve(backend.asarray(Ubad), gb, 1.0, sketch="sampling", sketch_size=10)
    gbad = g.copy()
    gbad[7] = np.nan
    with pytest.raises(ValueError, match="g"):
        sl.woodbury_solve(Ub, backend.asarray(gbad), 1.0)
    with pytest.raises(ValueError, match="g must be"):
        sl.woodbury_solve(Ub, backend.asarray(np.ones((P, 2, 2))), 1.0)


def test_bad_sketch_arguments():
    U, g = problem()
    with pytest.raises(ValueError, match="sketch_size is required"):
        sl.woodbury_solve(U, g, 1.0, sketch="gaussian")
    with pytest.raises(ValueError, match="sketch_size must be <="):
        sl.woodbury_solve(U, g, 1.0, sketch="gaussian", sketch_size=P + 1)
    with pytest.raises(ValueError, match="unknown sketch kind 'fourier'"):
        sl.woodbury_solve(U, g, 1.0, sketch="fourier", sketch_size=10)
    with pytest.raises(ValueError, match="sketch is None"):
        sl.woodbury_solve(U, g, 1.0, sketch_size=10)
    with pytest.raises(TypeError, match="U must"):
        sl.woodbury_solve(U.tolist(), g, 1.0)
    with pytest.raises(TypeError, match="return_info"):
        sl.woodbury_solve(U, g, 1.0, return_info=1)


def test_mixed_backends_rejected():
    torch = pytest.importorskip("torch")
    U, g = problem()
    with pytest.raises(TypeError):
        sl.woodbury_solve(torch.tensor(U), g, 1.0)
    with pytest.raises(TypeError, match="NumPy"):
        sl.woodbury_solve(scipy.sparse.csr_matrix(U), torch.tensor(g), 1.0)


def test_no_warning_on_regular_problem():
    U, g = problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sl.woodbury_solve(U, g, 1e-6)
