"""rsvd: against the exact SVD (Weyl bounds from the computed basis, exactness on low-rank
matrices), mean errors over 20 seeds against the HMT expectation bounds for fast and slowly
decaying spectra, every input kind and backend, float32, bad input."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
from test_range_finder import (
    SEEDS,
    SPECTRA,
    hmt_frobenius_bound,
    hmt_spectral_bound,
    spectral_norm,
)

import sketchlinalg as sl
from helpers import assert_close, eps, matrix_with_spectrum

M_ROWS, N_COLS, K, P = 120, 100, 10, 5


def check_factors(U, s, Vh, k, dtype, m=M_ROWS, n=N_COLS):
    assert U.shape == (m, k) and s.shape == (k,) and Vh.shape == (k, n)
    assert U.dtype == s.dtype == Vh.dtype == np.dtype(dtype)
    assert np.all(np.diff(s) <= 0) and np.all(s >= 0)
    # Orthonormality from Householder QR and the small SVD: O(m eps).
    assert_close(U.T @ U, np.eye(k), factor=m, dtype=dtype)
    assert_close(Vh @ Vh.T, np.eye(k), factor=n, dtype=dtype)


@pytest.mark.parametrize("spectrum", list(SPECTRA))
@pytest.mark.parametrize("q", [0, 2])
def test_singular_values_against_exact_svd(spectrum, q):
    # Weyl: with the same basis Q (same rng), 0 <= sigma_j - s_j <= ||(I - QQ^T) A||_2 for
    # every j; a rounding slack of 100 eps sigma_1 (products of length n = 100).
    s_true = SPECTRA[spectrum]
    A = matrix_with_spectrum(M_ROWS, N_COLS, s_true, rng=20)
    for seed in range(5):
        U, s, Vh = sl.rsvd(A, K, P, q, rng=seed)
        check_factors(U, s, Vh, K, "float64")
        Q = sl.range_finder(A, K, P, q, rng=seed)
        resid = spectral_norm(A - Q @ (Q.T @ A))
        slack = 100 * eps(np.float64) * s_true[0]
        assert np.all(s <= s_true[:K] + slack)
        assert np.all(s_true[:K] - s <= resid + slack)
        # The factors are the truncated SVD of Q Q^T A: U^T A V = diag(s), and U diag(s) V^T
        # is the best rank-k approximation of Q Q^T A computed directly.
        assert_close(U.T @ A @ Vh.T, np.diag(s), factor=100, scale=s_true[0])
        X, sx, Yh = np.linalg.svd(Q.T @ A, full_matrices=False)
        assert_close(s, sx[:K], factor=100, scale=s_true[0])
        if spectrum == "fast":  # a gap s_k / s_{k+1} > 1.3: the truncation is well-posed
            assert_close((U * s) @ Vh, (Q @ X[:, :K] * sx[:K]) @ Yh[:K], factor=1e3,
                         scale=s_true[0])


def test_svqb_path_against_exact_svd(monkeypatch):
    # The same Weyl and projection oracles with every orthonormalization allowed to take the
    # SVQB path (normally reserved to larger matrices): its extra error is bounded by
    # 1e-4 sigma_l, far below the residual here.
    monkeypatch.setattr(sys.modules["sketchlinalg._lowrank"], "_SVQB_MIN_SIZE", 0)
    test_singular_values_against_exact_svd("slow", 2)
    test_exact_on_low_rank_matrices()


def test_fast_decay_with_power_iterations_matches_exact_svd_closely():
    # sigma_j = e^{-j/3}, q = 2: Corollary 10.10 puts the residual near sigma_{k+1}
    # (mean below 1.1 sigma_{k+1}, see test_range_finder); leading singular values are then
    # accurate to far better than that, and the leading singular vectors match.
    s_true = SPECTRA["fast"]
    A = matrix_with_spectrum(M_ROWS, N_COLS, s_true, rng=21)
    U, s, Vh = sl.rsvd(A, K, P, 2, rng=0)
    U0, _, Vh0 = np.linalg.svd(A, full_matrices=False)
    assert np.all(np.abs(s - s_true[:K]) <= 1.1 * s_true[K])
    # sin of the angle between the top-3 singular subspaces: gap ratio (s_3/s_4)^{-(2q+1)}.
    for X, X0 in ((U[:, :3], U0[:, :3]), (Vh[:3].T, Vh0[:3].T)):
        sin = spectral_norm(X0 - X @ (X.T @ X0))
        assert sin <= 1e-2


def test_exact_on_low_rank_matrices():
    # rank(A) = 6 <= k: the factorization reproduces A and its singular values to rounding.
    s_true = np.array([5.0, 4.0, 2.0, 1.0, 0.5, 0.25])
    A = matrix_with_spectrum(M_ROWS, N_COLS, s_true, rng=22)
    U, s, Vh = sl.rsvd(A, 6, P, 1, rng=1)
    assert_close(s, s_true, factor=100, scale=s_true[0])
    assert_close((U * s) @ Vh, A, factor=10 * N_COLS, scale=s_true[0])


@pytest.mark.slow
@pytest.mark.parametrize("spectrum", list(SPECTRA))
def test_mean_error_within_hmt_bounds(spectrum):
    # Truncating Q Q^T A to rank k adds at most ||A - A_k|| (HMT Sec. 9.4) in both norms:
    # E||A - U S V^T||_2 <= sigma_{k+1} + (Cor. 10.10 bound), and for q = 0
    # E||A - U S V^T||_F <= (sum_{j>k} sigma_j^2)^{1/2} + (Thm 10.5 bound).
    s_true = SPECTRA[spectrum]
    A = matrix_with_spectrum(M_ROWS, N_COLS, s_true, rng=23)
    tail_F = np.sqrt(np.sum(s_true[K:] ** 2))
    for q in (0, 1, 2):
        e2, eF = [], []
        for seed in SEEDS:
            U, s, Vh = sl.rsvd(A, K, P, q, rng=seed)
            E = A - (U * s) @ Vh
            e2.append(spectral_norm(E))
            eF.append(np.linalg.norm(E))
        assert np.mean(e2) <= s_true[K] + hmt_spectral_bound(s_true, K, P, q), q
        if q == 0:
            assert np.mean(eF) <= tail_F + hmt_frobenius_bound(s_true, K, P)


@pytest.mark.parametrize("kind", ["srht", "countsketch", "sparse_sign", "sampling"])
def test_other_families_near_optimal_with_power_iterations(kind):
    # No HMT theorem for these test matrices; on an incoherent matrix (Haar singular
    # vectors) with q = 2 their mean spectral error stays within a factor 2 of the Gaussian
    # bound sigma_{k+1} + Cor. 10.10, the empirical claim we assert.
    s_true = SPECTRA["slow"]
    A = matrix_with_spectrum(M_ROWS, N_COLS, s_true, rng=24)
    errs = []
    for seed in range(10):
        U, s, Vh = sl.rsvd(A, K, P, 2, sketch=kind, rng=seed)
        check_factors(U, s, Vh, K, "float64")
        errs.append(spectral_norm(A - (U * s) @ Vh))
    assert np.mean(errs) <= 2 * (s_true[K] + hmt_spectral_bound(s_true, K, P, 2))


def test_clipped_oversampling_is_exact():
    # rank + oversample > min(m, n): the whole range is sampled, so rsvd is a full SVD.
    A = matrix_with_spectrum(30, 12, np.linspace(1, 3, 12), rng=25)
    U, s, Vh = sl.rsvd(A, 12, 10, 0, rng=0)
    assert_close(s, np.linalg.svd(A, compute_uv=False), factor=100)
    assert_close((U * s) @ Vh, A, factor=100)


def test_wide_matrix():
    s_true = np.logspace(0, -2, 40)
    A = matrix_with_spectrum(40, 90, s_true, rng=26)
    U, s, Vh = sl.rsvd(A, 5, 5, 2, rng=0)
    check_factors(U, s, Vh, 5, "float64", m=40, n=90)
    Q = sl.range_finder(A, 5, 5, 2, rng=0)
    resid = spectral_norm(A - Q @ (Q.T @ A))
    assert np.all(np.abs(s_true[:5] - s) <= resid + 100 * eps(np.float64))  # Weyl


@pytest.mark.parametrize("single_pass", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_backends(backend, dtype, single_pass):
    # Same seed, same test matrix on every backend: singular values agree with the exact
    # ones of a rank-6 matrix to rounding of the dtype, factors keep dtype and device; in
    # either form (the single pass is exact here too: its sketches capture the rank).
    s_true = np.array([5.0, 4.0, 2.0, 1.0, 0.5, 0.25])
    A = matrix_with_spectrum(M_ROWS, N_COLS, s_true, rng=27)
    X = backend.asarray(A, dtype=dtype)
    U, s, Vh = sl.rsvd(X, 6, P, None, rng=3, single_pass=single_pass)
    for Z in (U, s, Vh):
        assert type(Z) is type(X) and Z.dtype == X.dtype
        if backend.name.startswith("torch"):
            assert Z.device == X.device
    U, s, Vh = (backend.to_numpy(Z) for Z in (U, s, Vh))
    check_factors(U, s, Vh, 6, dtype)
    assert_close(s, s_true, factor=100, scale=s_true[0])
    assert_close((U * s) @ Vh, A.astype(dtype), factor=10 * N_COLS, scale=s_true[0])


def test_float32_error_within_bound_plus_rounding():
    s_true = SPECTRA["slow"]
    A = matrix_with_spectrum(M_ROWS, N_COLS, s_true, rng=28).astype(np.float32)
    errs = []
    for seed in range(10):
        U, s, Vh = sl.rsvd(A, K, P, 2, rng=seed)
        assert U.dtype == np.float32
        errs.append(spectral_norm(A.astype(np.float64) - (U * s).astype(np.float64) @ Vh))
    bound = s_true[K] + hmt_spectral_bound(s_true, K, P, 2)
    assert np.mean(errs) <= bound + 10 * N_COLS * eps(np.float32) * s_true[0]


def test_sparse_and_operator_inputs_match_dense():
    # The same rng gives the same Gaussian test matrix for every input kind; the results
    # differ by rounding only, amplified by the power iterations through the gap
    # sigma_k / sigma_{k+1} (here 0.5^-5): compare with a 1e4 eps factor.
    s_true = 0.5 ** np.arange(N_COLS)
    A = matrix_with_spectrum(M_ROWS, N_COLS, s_true, rng=29)
    _, s_dense, _ = sl.rsvd(A, K, P, 2, rng=4)
    for X in (scipy.sparse.csr_array(A), scipy.sparse.linalg.aslinearoperator(A)):
        U, s, Vh = sl.rsvd(X, K, P, 2, rng=4)
        check_factors(U, s, Vh, K, "float64")
        assert_close(s, s_dense, factor=1e4, scale=1.0)


def test_small_torch_tensors_repeatedly():
    # The SENG use: many small per-sample matrices; results stay torch on the input device.
    torch = pytest.importorskip("torch")
    G = torch.as_tensor(matrix_with_spectrum(64, 576, np.logspace(0, -3, 64), rng=30))
    for seed in range(3):
        U, s, _ = sl.rsvd(G, 16, 10, 1, rng=seed)
        assert U.shape == (64, 16) and isinstance(s, torch.Tensor)


# -- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"rank": 41}, ValueError, r"rank must be <= min\(m, n\) = 40"),
        ({"rank": 0}, ValueError, "rank must be >= 1"),
        ({"rank": None}, TypeError, "rank must be an int"),
        ({"oversample": -2}, ValueError, "oversample must be >= 0"),
        ({"power_iters": 1.5}, TypeError, "power_iters must be an int"),
        ({"sketch": "GAUSSIAN"}, ValueError, "unknown sketch kind"),
        ({"rng": "seed"}, TypeError, "rng must be"),
        ({"rng": -1}, ValueError, "non-negative seed"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    args = {"rank": 5, **kwargs}
    with pytest.raises(exc, match=match):
        sl.rsvd(np.ones((50, 40)), **args)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_input_raises(bad, backend):
    A = np.ones((20, 10))
    A[7, 3] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        sl.rsvd(backend.asarray(A), 2)
    with pytest.raises(ValueError, match="NaN or Inf"):
        sl.rsvd(scipy.sparse.csr_array(A), 2)
    with pytest.raises(ValueError, match="not finite"):
        sl.rsvd(scipy.sparse.linalg.aslinearoperator(A), 2)


def test_overflow_raises_instead_of_nan():
    A = np.full((20, 10), 1e308)
    with np.errstate(over="ignore", invalid="ignore"), pytest.raises(ValueError, match="overflow"):
        sl.rsvd(A, 2)


def test_wrong_kinds_of_A():
    with pytest.raises(ValueError, match="2-D"):
        sl.rsvd(np.ones((2, 3, 4)), 1)
    with pytest.raises(TypeError, match="floating"):
        sl.rsvd(np.ones((5, 4), dtype=np.int64), 1)
    with pytest.raises(TypeError, match="A must be"):
        sl.rsvd("matrix", 1)
