"""range_finder and adaptive_range_finder: mean errors over 20 seeds against the expectation
bounds of Halko, Martinsson and Tropp (2011), exactness on low-rank matrices, every input
kind and backend, the adaptive tolerance, bad input."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg

import sketchlinalg as sl
from helpers import assert_close, eps, matrix_with_spectrum

M_ROWS, N_COLS, K, P = 120, 100, 10, 5
SEEDS = range(20)
SPECTRA = {
    "slow": 1.0 / np.arange(1, N_COLS + 1),           # sigma_j = 1/j
    "fast": np.exp(-np.arange(N_COLS) / 3.0),          # sigma_j = e^{-(j-1)/3}
}


def spectral_norm(E):
    # gesvd without vectors: LAPACK's divide-and-conquer drivers (numpy.linalg.norm(E, 2))
    # are up to 100x slower on small matrices when the BLAS threads compete for the cores.
    return scipy.linalg.svd(E, compute_uv=False, lapack_driver="gesvd", check_finite=False)[0]


def hmt_spectral_bound(s, k, p, q):
    """HMT (2011) Theorem 10.6 (q = 0) and Corollary 10.10 (q power iterations): a bound on
    E ||(I - QQ^T) A||_2 for a Gaussian test matrix with k + p columns, p >= 2."""
    e = 2 * q + 1
    tail = s[k:]
    inner = ((1 + np.sqrt(k / (p - 1))) * tail[0] ** e
             + np.e * np.sqrt(k + p) / p * np.sqrt(np.sum(tail ** (2 * e))))
    return inner ** (1.0 / e)


def hmt_frobenius_bound(s, k, p):
    """HMT (2011) Theorem 10.5: E ||(I - QQ^T) A||_F <= (1 + k/(p-1))^{1/2} (sum_{j>k}
    sigma_j^2)^{1/2} for a Gaussian test matrix with k + p columns, p >= 2."""
    return np.sqrt(1 + k / (p - 1)) * np.sqrt(np.sum(s[k:] ** 2))


def mean_errors(A, q, kind="gaussian", p=P):
    e2, eF = [], []
    for seed in SEEDS:
        Q = sl.range_finder(A, K, p, q, sketch=kind, rng=seed)
        E = A - Q @ (Q.T @ A)
        e2.append(spectral_norm(E))
        eF.append(np.linalg.norm(E))
    return np.mean(e2), np.mean(eF)


@pytest.mark.slow
@pytest.mark.parametrize("spectrum", list(SPECTRA))
def test_gaussian_mean_error_within_hmt_bounds(spectrum):
    # The sample mean of 20 errors against the expectation bound: typical errors sit at
    # 15-70 % of the bound here, and the test fails if the oversampling or the power
    # iterations were dropped (q = 2 without its iterations exceeds its bound).
    s = SPECTRA[spectrum]
    A = matrix_with_spectrum(M_ROWS, N_COLS, s, rng=1)
    e2, eF = mean_errors(A, 0)
    assert e2 <= hmt_spectral_bound(s, K, P, 0)
    assert eF <= hmt_frobenius_bound(s, K, P)
    for q in (1, 2):
        e2, _ = mean_errors(A, q)
        assert e2 <= hmt_spectral_bound(s, K, P, q)


def test_power_iterations_reach_the_optimum_on_fast_decay():
    # With sigma_j = e^{-j/3} and q = 2, Corollary 10.10's bound is within a factor 1.1 of
    # sigma_{k+1}: the basis is near-optimal, and more iterations never make it worse.
    s = SPECTRA["fast"]
    A = matrix_with_spectrum(M_ROWS, N_COLS, s, rng=2)
    e0, _ = mean_errors(A, 0)
    e2, _ = mean_errors(A, 2)
    assert e2 <= e0
    assert e2 <= 1.1 * s[K]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["srht", "countsketch", "sparse_sign", "sampling"])
def test_other_families_within_twice_the_gaussian_bound(kind):
    # HMT's theorems are for Gaussian test matrices. For a matrix with Haar-random singular
    # vectors (incoherent), structured and sparse test matrices behave like Gaussian ones
    # (HMT Sec. 11); we assert the empirical claim that their mean error stays within a
    # factor 2 of the Gaussian expectation bound.
    for spectrum, q in (("slow", 0), ("fast", 1)):
        s = SPECTRA[spectrum]
        A = matrix_with_spectrum(M_ROWS, N_COLS, s, rng=3)
        e2, _ = mean_errors(A, q, kind)
        assert e2 <= 2 * hmt_spectral_bound(s, K, P, q), (spectrum, q)


@pytest.fixture
def svqb_everywhere(monkeypatch):
    """Let orthonormalize use SVQB on the small matrices of these tests (where it would pick
    Householder QR for speed), so that both of its paths run under the same oracles."""
    monkeypatch.setattr(sys.modules["sketchlinalg._lowrank"], "_SVQB_MIN_SIZE", 0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cond", [1e1, 1e3, 1e6, np.inf])
def test_orthonormalize_both_paths(dtype, cond, svqb_everywhere):
    # SVQB where eps cond^2 <= 1e-4, Householder QR beyond (and for rank-deficient Y). Either
    # way, after two passes: Z orthonormal to O(m eps); Y = Z C with residual
    # <= eps cond ||Y|| (SVQB) or O(eps) ||Y|| (Householder), and range(Z) = range(Y) up to
    # the same; the factor 10 m covers the length-m inner products.
    from sketchlinalg._lowrank import orthonormalize

    s = np.logspace(0, -np.log10(cond), 12) if np.isfinite(cond) else np.r_[np.ones(8), 0, 0, 0, 0]
    Y = matrix_with_spectrum(300, 12, s, rng=40).astype(dtype)
    Z, C = orthonormalize(np, Y, passes=2)
    assert Z.dtype == C.dtype == np.dtype(dtype) and Z.shape == (300, 12) and C.shape == (12, 12)
    svqb_ok = np.isfinite(cond) and eps(dtype) * cond**2 <= 1e-4
    amplification = cond if svqb_ok else 1.0
    assert_close(Z.T @ Z, np.eye(12), factor=10 * 300, dtype=dtype)
    assert_close(Z @ C, Y, factor=10 * 300 * amplification, dtype=dtype, scale=1.0)
    assert_close(Z @ (Z.T @ Y), Y, factor=10 * 300 * amplification, dtype=dtype, scale=1.0)


@pytest.mark.parametrize("kind", list(sl.KINDS))
@pytest.mark.parametrize("q", [0, 1, 3])
@pytest.mark.parametrize("svqb", [False, True])
def test_basis_spans_the_power_scheme_range(kind, q, svqb, monkeypatch):
    # Oracle: Q spans range((A A^T)^q A Omega) with Omega = S^T from the same seed, formed
    # directly in float64. Singular values in [1, 2] keep that product's condition number
    # below 2^(2q+1) cond(A Omega), so the two projectors agree to ~1e3 eps; a wrong q or a
    # wrong test matrix gives an O(1) difference.
    if svqb:
        monkeypatch.setattr(sys.modules["sketchlinalg._lowrank"], "_SVQB_MIN_SIZE", 0)
    A = matrix_with_spectrum(M_ROWS, N_COLS, np.linspace(1, 2, N_COLS), rng=30)
    l = K + P
    Y = A @ (sl.sketch(kind, l, N_COLS, rng=31).T @ np.eye(l))
    for _ in range(q):
        Y = A @ (A.T @ Y)
    Y, _ = np.linalg.qr(Y)
    Q = sl.range_finder(A, K, P, q, sketch=kind, rng=31)
    assert_close(Q @ Q.T, Y @ Y.T, factor=1e4)


@pytest.mark.parametrize("kind", list(sl.KINDS))
def test_exact_on_low_rank_and_orthonormal(kind):
    # rank(A) = 8 < l = 15: the sampled range is range(A), so the residual is rounding.
    # Householder QR keeps Q orthonormal to O(m eps); products add O(n eps ||A||) and the
    # q = 2 power iterations amplify by at most cond of the kept spectrum (here 10).
    s = np.logspace(0, -1, 8)
    A = matrix_with_spectrum(M_ROWS, N_COLS, s, rng=4)
    Q = sl.range_finder(A, K, P, 2, sketch=kind, rng=5)
    assert Q.shape == (M_ROWS, K + P)
    assert_close(Q.T @ Q, np.eye(K + P), factor=M_ROWS)
    assert_close(Q @ (Q.T @ A), A, factor=10 * N_COLS)


def test_oversampling_clipped_to_the_smaller_dimension():
    A = matrix_with_spectrum(30, 12, np.linspace(1, 2, 12), rng=6)
    Q = sl.range_finder(A, 8, 10, 0, rng=0)  # rank + oversample = 18 > min(m, n) = 12
    assert Q.shape == (30, 12)
    assert_close(Q @ (Q.T @ A), A, factor=100)


def test_same_seed_same_basis_and_generator_advances():
    A = matrix_with_spectrum(60, 50, SPECTRA["slow"][:50], rng=7)
    np.testing.assert_array_equal(sl.range_finder(A, 5, rng=3), sl.range_finder(A, 5, rng=3))
    gen = np.random.default_rng(3)
    Q1, Q2 = sl.range_finder(A, 5, rng=gen), sl.range_finder(A, 5, rng=gen)
    assert not np.allclose(Q1 @ Q1.T, Q2 @ Q2.T)


@pytest.mark.parametrize("kind", ["gaussian", "srht", "countsketch"])
def test_sparse_and_operator_inputs(kind):
    # Same low-rank oracle as above through a scipy.sparse matrix and a LinearOperator.
    s = np.logspace(0, -1, 8)
    A = matrix_with_spectrum(M_ROWS, N_COLS, s, rng=8)
    for X in (scipy.sparse.csr_array(A), scipy.sparse.linalg.aslinearoperator(A)):
        Q = sl.range_finder(X, K, P, 1, sketch=kind, rng=9)
        assert isinstance(Q, np.ndarray) and Q.dtype == np.float64
        assert_close(Q @ (Q.T @ A), A, factor=10 * N_COLS)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_backends_keep_dtype_and_device(backend, dtype):
    s = np.logspace(0, -1, 8)
    A = matrix_with_spectrum(M_ROWS, N_COLS, s, rng=10)
    X = backend.asarray(A, dtype=dtype)
    Q = sl.range_finder(X, K, P, 2, rng=11)
    assert type(Q) is type(X) and Q.dtype == X.dtype
    if backend.name.startswith("torch"):
        assert Q.device == X.device
    Qn = backend.to_numpy(Q).astype(np.float64)
    assert_close(Qn.T @ Qn, np.eye(K + P), factor=M_ROWS, dtype=dtype)
    assert_close(Qn @ (Qn.T @ A), A, factor=10 * N_COLS, dtype=dtype)


def test_half_precision_computed_in_float32_returned_in_input_dtype():
    torch = pytest.importorskip("torch")
    A = matrix_with_spectrum(40, 30, np.logspace(0, -1, 4), rng=12)
    Q = sl.range_finder(torch.as_tensor(A, dtype=torch.bfloat16), 4, 2, 1)
    assert Q.dtype == torch.bfloat16 and Q.shape == (40, 6)


# -- adaptive range finder ---------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("tol", [1e-2, 1e-6])
def test_adaptive_meets_its_tolerance(tol):
    # The estimator bounds the true error except with probability 10^-b per stop (b = 10),
    # so every one of the 2 x 10 runs must meet tol. The rank must also not be wasteful: once the
    # residual's Frobenius norm is below tol / (10 sqrt(2/pi) (1 + 6)), every probe norm is
    # below tol / (10 sqrt(2/pi)) except with probability 10 e^{-18} (||M w|| <= ||M||_F +
    # 6 ||M||_2, HMT Prop. 10.3), so the loop stops. With a geometric spectrum (ratio 0.7)
    # and one power iteration the basis is within a few columns of optimal; we allow two
    # blocks beyond the optimal rank for that and for the block granularity.
    s = 0.7 ** np.arange(N_COLS)
    A = matrix_with_spectrum(M_ROWS, N_COLS, s, rng=13)
    tail_F = np.sqrt(np.cumsum((s ** 2)[::-1])[::-1])  # tail_F[j] = (sum_{i>=j} s_i^2)^1/2
    k_needed = int(np.argmax(tail_F <= tol / (10 * np.sqrt(2 / np.pi) * 7)))
    for seed in range(10):
        Q, info = sl.adaptive_range_finder(A, tol, block_size=10, power_iters=1, rng=seed)
        err = spectral_norm(A - Q @ (Q.T @ A))
        assert err <= tol
        assert info["converged"] and info["rank"] == Q.shape[1]
        assert err <= info["error_estimate"] <= tol
        assert info["rank"] <= k_needed + 20
        assert_close(Q.T @ Q, np.eye(Q.shape[1]), factor=M_ROWS)


class _RecordingOperator(scipy.sparse.linalg.LinearOperator):
    """``A`` as an operator that keeps every block it is multiplied with."""

    def __init__(self, A):
        super().__init__(A.dtype, A.shape)
        self.A, self.blocks = A, []

    def _matvec(self, x):
        return self._matmat(x.reshape(-1, 1)).ravel()

    def _matmat(self, X):
        self.blocks.append(np.array(X, dtype=np.float64))
        return self.A @ X

    def _rmatmat(self, X):
        return self.A.T @ X


@pytest.mark.parametrize(("tol", "block_size", "max_rank"),
                         [(100.0, 10, None), (1e-2, 10, None), (1e-6, 7, None), (1e-6, 10, 25)])
def test_adaptive_error_estimate_is_the_hmt_bound_of_its_probes(tol, block_size, max_rank):
    # HMT (2011) Lemma 4.1 / eq. (4.3): for r standard Gaussian probes w_i,
    # ||(I - QQ^T) A||_2 <= 10 sqrt(2/pi) max_i ||(I - QQ^T) A w_i|| except with probability
    # 10^-r. The returned estimate must be that right-hand side for the returned Q and the
    # probes of the last pass, which are the last block the loop multiplies A with (it stops
    # right after the estimate). The constant is written here, not imported, so a wrong
    # factor fails; the probes' second moment is checked too, since scaled probes would
    # shrink the estimate as much. Cases: rank 0 (the first probes already meet tol), a few
    # blocks, a block size that does not divide the rank, and a stop at max_rank.
    s = 0.7 ** np.arange(N_COLS)
    A = matrix_with_spectrum(M_ROWS, N_COLS, s, rng=13)
    op = _RecordingOperator(A)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if max_rank else "error", RuntimeWarning)
        Q, info = sl.adaptive_range_finder(op, tol, block_size=block_size, power_iters=1,
                                           max_rank=max_rank, rng=21)
        # The dense input draws the same probes from the same seed: the same estimate.
        _, dense_info = sl.adaptive_range_finder(A, tol, block_size=block_size,
                                                 power_iters=1, max_rank=max_rank, rng=21)
    probes = op.blocks[-1]
    assert probes.shape == (N_COLS, block_size)
    # E w^2 = 1 and Var w^2 = 2: the sample mean of the r n squares is within 5 standard
    # errors of 1 (a fixed seed; the estimate scales with the probes, 10x smaller probes give
    # a mean of 0.01).
    assert abs(np.mean(probes ** 2) - 1.0) <= 5 * np.sqrt(2 / probes.size)
    residual = A @ probes - Q @ (Q.T @ (A @ probes))
    want = 10 * np.sqrt(2 / np.pi) * np.linalg.norm(residual, axis=0).max()
    # Both sides project the same products: the difference is rounding of length-n and
    # length-rank inner products, relative to the unprojected ||A w_i||.
    scale = 10 * np.sqrt(2 / np.pi) * np.linalg.norm(A @ probes, axis=0).max()
    assert_close(np.float64(info["error_estimate"]), np.float64(want),
                 factor=10 * (N_COLS + Q.shape[1]), scale=scale)
    assert info["rank"] == Q.shape[1] and info["converged"] == (want <= tol)
    assert spectral_norm(A - Q @ (Q.T @ A)) <= info["error_estimate"]
    assert dense_info["rank"] == info["rank"]
    assert_close(np.float64(dense_info["error_estimate"]), np.float64(want),
                 factor=10 * (N_COLS + Q.shape[1]), scale=scale)


def test_adaptive_rank_zero_when_A_already_meets_tol():
    A = 1e-3 * matrix_with_spectrum(50, 40, np.ones(40), rng=14)
    Q, info = sl.adaptive_range_finder(A, 1.0, rng=0)
    assert Q.shape == (50, 0) and info["rank"] == 0 and info["passes"] == 1


def test_adaptive_max_rank_warns_and_reports():
    A = matrix_with_spectrum(50, 40, np.ones(40), rng=15)  # flat spectrum: error 1 below rank 40
    with pytest.warns(RuntimeWarning, match="max_rank=15"):
        Q, info = sl.adaptive_range_finder(A, 1e-3, block_size=10, max_rank=15, rng=0)
    assert Q.shape == (50, 15) and not info["converged"] and info["error_estimate"] > 1e-3


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adaptive_backends_and_inputs(backend, dtype):
    s = 0.5 ** np.arange(30)
    A = matrix_with_spectrum(60, 30, s, rng=16)
    tol = 1e-3
    for X in (backend.asarray(A, dtype=dtype), scipy.sparse.csr_array(A.astype(dtype)),
              scipy.sparse.linalg.aslinearoperator(A.astype(dtype))):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            Q, info = sl.adaptive_range_finder(X, tol, block_size=5, rng=17)
        Qn = backend.to_numpy(Q) if not isinstance(Q, np.ndarray) else Q
        assert Qn.dtype == np.dtype(dtype)
        assert spectral_norm(A - Qn @ (Qn.T @ A)) <= tol + 100 * eps(dtype)
        assert info["rank"] == Qn.shape[1]


# -- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"rank": 41}, ValueError, "rank must be <= min"),
        ({"rank": 0}, ValueError, "rank must be >= 1"),
        ({"rank": 2.0}, TypeError, "rank must be an int"),
        ({"oversample": -1}, ValueError, "oversample must be >= 0"),
        ({"power_iters": -1}, ValueError, "power_iters must be >= 0"),
        ({"power_iters": True}, TypeError, "power_iters must be an int"),
        ({"sketch": "fourier"}, ValueError, "unknown sketch kind 'fourier'"),
        ({"sketch": None}, TypeError, "sketch must be a family name"),
        ({"rng": 1.5}, TypeError, "rng must be"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    A = np.ones((50, 40))
    args = {"rank": 5, **kwargs}
    with pytest.raises(exc, match=match):
        sl.range_finder(A, **args)


def test_bad_matrices():
    A = np.ones((20, 10))
    for bad in (np.nan, np.inf):
        B = A.copy()
        B[3, 4] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            sl.range_finder(B, 2)
        with pytest.raises(ValueError, match="NaN or Inf"):
            sl.range_finder(scipy.sparse.csr_array(B), 2)
        with pytest.raises(ValueError, match="not finite"):
            sl.range_finder(scipy.sparse.linalg.aslinearoperator(B), 2)
        with pytest.raises(ValueError, match="not finite"):
            sl.adaptive_range_finder(scipy.sparse.linalg.aslinearoperator(B), 1e-3)
    with pytest.raises(ValueError, match="2-D"):
        sl.range_finder(np.ones(10), 2)
    with pytest.raises(TypeError, match="floating"):
        sl.range_finder(np.ones((5, 4), dtype=int), 2)
    with pytest.raises(TypeError, match="A must be"):
        sl.range_finder([[1.0, 2.0]], 1)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"tol": 0.0}, ValueError, "tol must be > 0"),
        ({"tol": -1.0}, ValueError, "tol must be a finite number >= 0"),
        ({"tol": np.nan}, ValueError, "tol must be a finite number"),
        ({"tol": "1e-3"}, TypeError, "tol must be a real number"),
        ({"block_size": 0}, ValueError, "block_size must be >= 1"),
        ({"max_rank": 41}, ValueError, "max_rank must be <= min"),
        ({"max_rank": 0}, ValueError, "max_rank must be >= 1"),
    ],
)
def test_adaptive_bad_arguments(kwargs, exc, match):
    args = {"tol": 1e-3, **kwargs}
    with pytest.raises(exc, match=match):
        sl.adaptive_range_finder(np.ones((50, 40)), **args)
