"""damped_gram_factor: the small system of the Woodbury identity (used by woodbury_solve and
by SENG) against dense solves, including the eigendecomposition fallback."""

from __future__ import annotations

import numpy as np
import pytest

import sketchlinalg as sl
from helpers import assert_close, eps


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cholesky_path_matches_dense_solve(backend, dtype):
    rng = np.random.default_rng(0)
    U = rng.standard_normal((200, 12))
    G, lam = U.T @ U, 0.5
    B = rng.standard_normal((12, 3))
    F = sl.damped_gram_factor(backend.asarray(G, dtype), lam)
    assert F.method == "cholesky" and not F.fallback
    X = F.solve(backend.asarray(B, dtype))
    cond = np.linalg.cond(G + lam * np.eye(12))
    assert_close(X, np.linalg.solve(G + lam * np.eye(12), B), factor=10 * cond * 12, dtype=dtype)
    assert F.cond <= cond * (1 + 1e-6)  # the Cholesky estimate is a lower bound
    assert_close(F.solve(backend.asarray(B[:, 0], dtype)), X[:, 0], factor=10, dtype=dtype)


def test_half_precision_round_trip(backend):
    # Regression: "cholesky_cpu" not implemented for 'BFloat16' / "array type float16 is
    # unsupported in linalg". The factors are computed in float32 and solve() returns the
    # input's half dtype; the oracle is the float64 solve of the rounded data.
    rng = np.random.default_rng(2)
    U = rng.standard_normal((100, 10)) / 10
    G, lam = U.T @ U, 0.5
    B = rng.standard_normal((10, 3))
    for dtype in backend.halves():
        Gh, Bh = backend.cast(G, dtype), backend.cast(B, dtype)
        G64, B64 = (backend.to_numpy(X).astype(np.float64) for X in (Gh, Bh))
        F = sl.damped_gram_factor(Gh, lam)
        assert F.method == "cholesky" and F.dtype == dtype
        X = F.solve(Bh)
        assert X.dtype == dtype and type(X) is type(Bh) and tuple(X.shape) == (10, 3)
        assert F.solve(Bh[:, 0]).dtype == dtype
        K = G64 + lam * np.eye(10)
        # float32 solve (10 cond n eps32) in units of the half eps, plus one rounding
        factor = 1 + 10 * np.linalg.cond(K) * 10 * np.finfo(np.float32).eps / eps(dtype)
        assert_close(X, np.linalg.solve(K, B64), factor=factor)
        # float32 right-hand sides with a half factor: float32 out
        B32 = backend.asarray(B, np.float32)
        assert F.solve(B32).dtype == B32.dtype


def test_eigh_fallback_when_cholesky_fails():
    # A rank-deficient Gram with ||G|| = 1e16 and lam = 1e-8: G + lam I rounds to an
    # indefinite matrix (its computed eigenvalues reach -eps ||G|| ~ -2), so Cholesky fails.
    # The fallback solves with the eigenvalues clipped at 0: every eigenvalue of the solved
    # matrix is >= lam, so ||x|| <= ||b|| / lam, and x solves that matrix to rounding.
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    G = (Q * np.array([1e16, 1e12, 1e8, 1e4, 1.0, 0.0, 0.0, 0.0])) @ Q.T
    lam = 1e-8
    F = sl.damped_gram_factor(G, lam)
    assert F.method == "eigh" and F.fallback
    b = rng.standard_normal(8)
    x = F.solve(b)
    assert np.all(np.isfinite(x))
    assert np.linalg.norm(x) <= np.linalg.norm(b) / lam * (1 + 1e-12)
    K = (F.V * (F.w + lam)) @ F.V.T
    bound = 100 * np.finfo(float).eps * np.linalg.norm(K, 2) * np.linalg.norm(x)
    assert np.linalg.norm(K @ x - b) <= bound


def test_bad_input():
    with pytest.raises(ValueError, match="lam must be finite and > 0"):
        sl.damped_gram_factor(np.eye(3), 0.0)
    with pytest.raises(ValueError, match="G must be square"):
        sl.damped_gram_factor(np.ones((3, 2)), 1.0)
    with pytest.raises(ValueError, match="G contains NaN or Inf"):
        sl.damped_gram_factor(np.full((2, 2), np.nan), 1.0)
    with pytest.raises(TypeError, match="G must have a real floating dtype"):
        sl.damped_gram_factor(np.eye(2, dtype=int), 1.0)
    # lam may be a 0-d array of any backend, never a longer array
    assert sl.damped_gram_factor(np.eye(2), np.array(0.5)).lam == 0.5
    with pytest.raises(ValueError, match=r"lam must be a scalar .* shape \(1,\)"):
        sl.damped_gram_factor(np.eye(2), np.array([0.5]))
