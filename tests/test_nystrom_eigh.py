"""nystrom against its trace-norm expectation bound and exactness on low-rank PSD matrices;
eigh_randomized against numpy.linalg.eigh; every input kind and backend, float32, bad input."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg
from test_range_finder import spectral_norm

import sketchlinalg as sl
from helpers import assert_close, eps, orthonormal

N, K, P = 100, 10, 5
SEEDS = range(20)
SPECTRA = {
    "slow": 1.0 / np.arange(1, N + 1),
    "fast": np.exp(-np.arange(N) / 3.0),
}


def symmetric(eigenvalues, seed, n=N):
    """``V diag(lam) V^T`` with Haar-random orthonormal ``V`` (n x len(lam))."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    V = orthonormal(n, lam.size, rng=seed)
    A = (V * lam) @ V.T
    return 0.5 * (A + A.T)


def trace_norm(S):
    return float(scipy.linalg.svd(S, compute_uv=False, lapack_driver="gesvd",
                                  check_finite=False).sum())


def nystrom_mean_error(A, rank, oversample, kind="gaussian"):
    errs = []
    for seed in SEEDS:
        U, lam = sl.nystrom(A, rank, oversample, sketch=kind, rng=seed)
        errs.append(trace_norm(A - (U * lam) @ U.T))
    return np.mean(errs)


@pytest.mark.slow
@pytest.mark.parametrize("spectrum", list(SPECTRA))
def test_nystrom_mean_error_within_bound(spectrum):
    # A - A_nys = A^{1/2} (I - P) A^{1/2} with P the projector on range(A^{1/2} Omega), so
    # ||A - A_nys||_* = ||(I - P) A^{1/2}||_F^2 and HMT Theorem 10.5 (its squared form) for
    # A^{1/2} gives E||A - A_nys||_* <= (1 + r/(l - r - 1)) sum_{j>r} lam_j for every
    # r <= l - 2 (Tropp et al. 2017, Thm 4.1). Untruncated (oversample 0, rank l): take the
    # best r. Truncated to k = l - p: add sum_{j>k} lam_j (the dropped Nystrom eigenvalues
    # are dominated by A's), so E <= (2 + k/(p - 1)) sum_{j>k} lam_j.
    lam = SPECTRA[spectrum]
    A = symmetric(lam, seed=1)
    ell = K + P
    untruncated = min((1 + r / (ell - r - 1)) * lam[r:].sum() for r in range(1, ell - 1))
    assert nystrom_mean_error(A, ell, 0) <= untruncated
    assert nystrom_mean_error(A, K, P) <= (2 + K / (P - 1)) * lam[K:].sum()


@pytest.mark.parametrize("kind", ["srht", "countsketch", "sparse_sign", "sampling"])
def test_nystrom_other_families_within_twice_the_gaussian_bound(kind):
    # No theorem for these test matrices; for an incoherent PSD matrix we assert the
    # empirical claim that their mean error stays within twice the Gaussian bound.
    lam = SPECTRA["slow"]
    A = symmetric(lam, seed=2)
    assert nystrom_mean_error(A, K, P, kind) <= 2 * (2 + K / (P - 1)) * lam[K:].sum()


@pytest.mark.parametrize("kind", list(sl.KINDS))
def test_nystrom_matches_the_direct_formula(kind):
    # Oracle: with Omega = qr(S^T) from the same seed, A_nys = Y (Omega^T Y)^{-1} Y^T,
    # Y = A Omega, formed directly. Eigenvalues in [1, 2] keep Omega^T A Omega well
    # conditioned (cond <= 2); the shift moves the result by O(nu) = O(sqrt(n l) eps).
    A = symmetric(np.linspace(1, 2, N), seed=17)
    ell = K + P
    Omega, _ = np.linalg.qr(sl.sketch(kind, ell, N, rng=18).T @ np.eye(ell))
    Y = A @ Omega
    direct = Y @ np.linalg.solve(Omega.T @ Y, Y.T)
    U, lam = sl.nystrom(A, ell, 0, sketch=kind, rng=18)
    assert_close((U * lam) @ U.T, direct, factor=4 * (np.sqrt(N * ell) + N))


@pytest.mark.parametrize("kind", list(sl.KINDS))
def test_nystrom_exact_on_low_rank_psd(kind):
    # rank(A) = 6 <= l = 15: the Nystrom approximation is A itself, up to the shift
    # nu = sqrt(n) eps ||Y||_F <= sqrt(n l) eps ||A|| and O(n eps) rounding in the products.
    lam_true = np.array([4.0, 3.0, 2.0, 1.0, 0.5, 0.25])
    A = symmetric(lam_true, seed=3)
    U, lam = sl.nystrom(A, 6, P, sketch=kind, rng=4)
    factor = 4 * (np.sqrt(N * (6 + P)) + N)
    assert_close(lam, lam_true, factor=factor, scale=lam_true[0])
    assert_close((U * lam) @ U.T, A, factor=factor, scale=lam_true[0])
    assert_close(U.T @ U, np.eye(6), factor=N)


def test_svqb_path(monkeypatch):
    # The direct-formula, exactness and eigh oracles with every orthonormalization allowed to
    # take the SVQB path (normally reserved to larger matrices than these).
    monkeypatch.setattr(sys.modules["sketchlinalg._lowrank"], "_SVQB_MIN_SIZE", 0)
    test_nystrom_matches_the_direct_formula("gaussian")
    test_nystrom_exact_on_low_rank_psd("gaussian")
    test_eigh_against_numpy_eigh(2)


def test_nystrom_output_order_and_psd():
    A = symmetric(SPECTRA["slow"], seed=5)
    U, lam = sl.nystrom(A, K, P, rng=0)
    assert U.shape == (N, K) and lam.shape == (K,)
    assert np.all(lam >= 0) and np.all(np.diff(lam) <= 0)
    assert np.all(lam <= SPECTRA["slow"][:K] + 100 * eps(np.float64))  # A_nys <= A (Loewner)


def test_nystrom_zero_matrix():
    U, lam = sl.nystrom(np.zeros((20, 20)), 3, rng=0)
    np.testing.assert_array_equal(lam, np.zeros(3))
    assert_close(U.T @ U, np.eye(3), factor=20)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nystrom_backends(backend, dtype):
    lam_true = np.array([4.0, 3.0, 2.0, 1.0, 0.5, 0.25])
    A = symmetric(lam_true, seed=6)
    X = backend.asarray(A, dtype=dtype)
    U, lam = sl.nystrom(X, 6, P, rng=7)
    for Z in (U, lam):
        assert type(Z) is type(X) and Z.dtype == X.dtype
        if backend.name.startswith("torch"):
            assert Z.device == X.device
    U, lam = backend.to_numpy(U), backend.to_numpy(lam)
    factor = 4 * (np.sqrt(N * (6 + P)) + N)
    assert_close(lam, lam_true, factor=factor, scale=lam_true[0], dtype=dtype)
    assert_close((U * lam) @ U.T, A, factor=factor, scale=lam_true[0], dtype=dtype)


def test_nystrom_sparse_and_operator_inputs():
    lam_true = np.array([4.0, 3.0, 2.0, 1.0, 0.5, 0.25])
    A = symmetric(lam_true, seed=8)
    for X in (scipy.sparse.csr_array(A), scipy.sparse.linalg.aslinearoperator(A)):
        U, lam = sl.nystrom(X, 6, P, rng=9)
        assert isinstance(U, np.ndarray)
        assert_close(lam, lam_true, factor=4 * (np.sqrt(N * (6 + P)) + N), scale=lam_true[0])


def test_nystrom_bad_input():
    A = symmetric(SPECTRA["slow"], seed=10)
    with pytest.raises(ValueError, match="square"):
        sl.nystrom(np.ones((20, 10)), 3)
    with pytest.raises(ValueError, match="symmetric"):
        sl.nystrom(A + np.triu(np.ones((N, N)), 1) * 0.1, 3)
    with pytest.raises(ValueError, match="not positive semidefinite"):
        sl.nystrom(-A, 3)
    with pytest.raises(ValueError, match="rank must be <= min"):
        sl.nystrom(A, N + 1)
    B = A.copy()
    B[0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        sl.nystrom(B, 3)
    with pytest.raises(ValueError, match="not finite"):
        sl.nystrom(scipy.sparse.linalg.aslinearoperator(B), 3)
    with pytest.raises(ValueError, match="oversample must be >= 0"):
        sl.nystrom(A, 3, -1)


# -- eigh_randomized ---------------------------------------------------------------------

# Indefinite, magnitudes e^{-j/3} with alternating signs: the top-k by magnitude mixes both.
INDEFINITE = np.exp(-np.arange(N) / 3.0) * (-1.0) ** np.arange(N)


def top_by_magnitude(lam, k):
    return np.sort(lam[np.argsort(np.abs(lam))[-k:]])


@pytest.mark.parametrize("q", [1, 2])
def test_eigh_against_numpy_eigh(q):
    # With eps = ||(I - QQ^T) A||_2 for the same basis (same rng), ||A - Q B Q^T|| <= 2 eps,
    # so by Weyl each kept Ritz value is within 2 eps of its eigenvalue (magnitudes here are
    # separated by far more than 4 eps), and ||A - V diag(w) V^T|| <= 2 eps + |lam|_(k+1).
    A = symmetric(INDEFINITE, seed=11)
    lam_np = np.linalg.eigh(A)[0]
    for seed in range(5):
        w, V = sl.eigh_randomized(A, K, P, q, rng=seed)
        Q = sl.range_finder(A, K, P, q, rng=seed)
        err = spectral_norm(A - Q @ (Q.T @ A))
        slack = 100 * eps(np.float64)
        assert np.all(np.diff(w) >= 0)
        assert np.all(np.abs(w - top_by_magnitude(lam_np, K)) <= 2 * err + slack)
        assert_close(V.T @ V, np.eye(K), factor=N)
        # Oracle for the Rayleigh-Ritz step: the eigenvalues of Q^T A Q of largest magnitude.
        assert_close(w, top_by_magnitude(np.linalg.eigvalsh(Q.T @ A @ Q), K), factor=10 * N,
                     scale=1.0)
        resid = spectral_norm(A - (V * w) @ V.T)
        assert resid <= 2 * err + np.sort(np.abs(lam_np))[-K - 1] + slack


def test_eigh_exact_on_low_rank_indefinite():
    lam_true = np.array([-3.0, -1.0, 0.5, 2.0, 4.0])
    A = symmetric(lam_true, seed=12)
    w, V = sl.eigh_randomized(A, 5, P, 1, rng=0)
    assert_close(w, lam_true, factor=10 * N, scale=4.0)
    assert_close((V * w) @ V.T, A, factor=10 * N, scale=4.0)


def test_eigh_subset_of_largest_magnitudes():
    lam_true = np.array([-5.0, -0.1, 0.2, 3.0])
    A = symmetric(lam_true, seed=13)
    w, _ = sl.eigh_randomized(A, 2, 2, 2, rng=0)
    assert_close(w, np.array([-5.0, 3.0]), factor=10 * N, scale=5.0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_eigh_backends(backend, dtype):
    lam_true = np.array([-3.0, -1.0, 0.5, 2.0, 4.0])
    A = symmetric(lam_true, seed=14)
    X = backend.asarray(A, dtype=dtype)
    w, V = sl.eigh_randomized(X, 5, P, 1, rng=0)
    for Z in (w, V):
        assert type(Z) is type(X) and Z.dtype == X.dtype
        if backend.name.startswith("torch"):
            assert Z.device == X.device
    w, V = backend.to_numpy(w), backend.to_numpy(V)
    assert_close(w, lam_true, factor=10 * N, scale=4.0, dtype=dtype)
    assert_close((V * w) @ V.T, A, factor=10 * N, scale=4.0, dtype=dtype)


def test_eigh_sparse_and_operator_inputs():
    lam_true = np.array([-3.0, -1.0, 0.5, 2.0, 4.0])
    A = symmetric(lam_true, seed=15)
    for X in (scipy.sparse.csr_array(A), scipy.sparse.linalg.aslinearoperator(A)):
        w, V = sl.eigh_randomized(X, 5, P, 1, rng=1)
        assert isinstance(V, np.ndarray)
        assert_close(w, lam_true, factor=10 * N, scale=4.0)


def test_eigh_bad_input():
    A = symmetric(INDEFINITE, seed=16)
    with pytest.raises(ValueError, match="square"):
        sl.eigh_randomized(np.ones((20, 10)), 3)
    with pytest.raises(ValueError, match="symmetric"):
        sl.eigh_randomized(A + np.triu(np.ones((N, N)), 1) * 0.1, 3)
    with pytest.raises(ValueError, match="rank must be <= min"):
        sl.eigh_randomized(A, N + 1)
    with pytest.raises(TypeError, match="power_iters must be an int"):
        sl.eigh_randomized(A, 3, power_iters=None)
    B = A.copy()
    B[2, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        sl.eigh_randomized(B, 3)
