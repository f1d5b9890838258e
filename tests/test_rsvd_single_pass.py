"""rsvd(single_pass=True), the single-pass low-rank approximation of Tropp, Yurtsever, Udell
and Cevher (2017): mean errors over 20 seeds against their expectation bounds (Theorem 4.3
for the approximation Q X, Theorem 5.1 for its rank-k truncation) and against the exact
expectation of the co-range step, exactness on low-rank matrices, every input kind and
backend, bad input. The Dask form is tested in test_dask.py."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
from test_range_finder import SEEDS, SPECTRA
from test_rsvd import M_ROWS, N_COLS, K, P, check_factors

import sketchlinalg as sl
from helpers import assert_close, matrix_with_spectrum

L = K + P  # columns of the range sketch (Tropp et al.'s k)
L_CO = 2 * L + 1  # rows of the co-range sketch (their l), the documented rule


def f(s: int, t: int) -> float:
    """Tropp et al. (2017), (4.4) for real matrices: ``s / (t - s - 1)``."""
    return s / (t - s - 1)


def tail2(s: np.ndarray, j: int) -> float:
    """``tau_{j+1}^2 = sum_{i > j} sigma_i^2``."""
    return float(np.sum(s[j:] ** 2))


def theorem_4_3(s: np.ndarray, k: int, l: int) -> float:
    """The bound on ``E ||A - QX||_F^2`` for Gaussian test matrices, ``k`` columns in the
    range sketch and ``l > k + 1`` rows in the co-range sketch:
    ``(1 + f(k, l)) min_{rho <= k - 2} (1 + f(rho, k)) tau_{rho+1}^2``."""
    return (1 + f(k, l)) * min((1 + f(rho, k)) * tail2(s, rho) for rho in range(k - 1))


def untruncated(A, seed, kind="gaussian"):
    """``Q X``: with rank = l and no oversampling the truncation keeps all of it."""
    U, s, Vh = sl.rsvd(A, L, 0, sketch=kind, rng=seed, single_pass=True)
    return U, (U * s) @ Vh


@pytest.mark.parametrize("spectrum", list(SPECTRA))
def test_mean_errors_within_tropp_bounds(spectrum):
    # Measured at 23-57 % (Theorem 4.3) and 27-31 % (Theorem 5.1) of the bounds; solving
    # for X by (Psi Q)^T W instead of the least-squares solution gives 2.1 and 121 times the
    # Theorem 4.3 bound, a co-range sketch of l + 2 rows instead of 2l + 1 about 3.5 times.
    s_true = SPECTRA[spectrum]
    A = matrix_with_spectrum(M_ROWS, N_COLS, s_true, rng=23)
    e_full, e_fixed = [], []
    for seed in SEEDS:
        _, A_hat = untruncated(A, seed)
        e_full.append(np.linalg.norm(A - A_hat) ** 2)
        U, s, Vh = sl.rsvd(A, K, P, rng=seed, single_pass=True)
        check_factors(U, s, Vh, K, "float64")
        e_fixed.append(np.linalg.norm(A - (U * s) @ Vh))
    bound = theorem_4_3(s_true, L, L_CO)
    assert np.mean(e_full) <= bound
    # Theorem 5.1: ||A - [[QX]]_K||_F <= tau_{K+1} + 2 ||A - QX||_F, in mean by Jensen.
    assert np.mean(e_fixed) <= np.sqrt(tail2(s_true, K)) + 2 * np.sqrt(bound)


@pytest.mark.parametrize("spectrum", list(SPECTRA))
def test_co_range_step_has_its_exact_expectation(spectrum):
    # Given Q, A - QX = (I - QQ^T)A - Q (Psi Q)^+ Psi (I - QQ^T)A with a Gaussian Psi
    # independent of Q, whose parts on range(Q) and its complement are independent
    # Gaussians: E[||A - QX||_F^2 | Q] = (1 + f(l, l')) ||(I - QQ^T)A||_F^2 exactly (the
    # identity behind Theorem 4.3). The sample mean of the excess ratio is within 4
    # standard errors of f(l, l') = 1 (measured: within 0.5); the broken solve
    # X = (Psi Q)^T W gives 6.5 and 1185.
    A = matrix_with_spectrum(M_ROWS, N_COLS, SPECTRA[spectrum], rng=23)
    excess = []
    for seed in SEEDS:
        Q, A_hat = untruncated(A, seed)  # U spans range(Q) when nothing is truncated
        excess.append(np.linalg.norm(A - A_hat) ** 2
                      / np.linalg.norm(A - Q @ (Q.T @ A)) ** 2 - 1)
    stderr = np.std(excess, ddof=1) / np.sqrt(len(excess))
    assert abs(np.mean(excess) - f(L, L_CO)) <= 4 * stderr


@pytest.mark.parametrize("kind", ["srht", "countsketch", "sparse_sign", "sampling"])
def test_other_families_within_the_gaussian_bound(kind):
    # No theorem for these operators (a co-range sketch of 2l + 1 rows is a weak embedding
    # for the sparse ones); on an incoherent matrix (Haar singular vectors) their mean
    # error stays within the Gaussian bound of Theorem 4.3, the empirical claim we assert
    # (measured: 16-54 % of it).
    for spectrum, s_true in SPECTRA.items():
        A = matrix_with_spectrum(M_ROWS, N_COLS, s_true, rng=24)
        errs = [np.linalg.norm(A - untruncated(A, seed, kind)[1]) ** 2 for seed in range(10)]
        assert np.mean(errs) <= theorem_4_3(s_true, L, L_CO), spectrum


def test_exact_on_low_rank_matrices():
    # rank(A) = 6 <= l: range(Y) = range(A), so Q Q^T A = A and X = (Psi Q)^+ Psi Q Q^T A
    # = Q^T A: the factorization reproduces A to rounding (conditioning of Psi Q ~ 6).
    s_true = np.array([5.0, 4.0, 2.0, 1.0, 0.5, 0.25])
    A = matrix_with_spectrum(M_ROWS, N_COLS, s_true, rng=22)
    U, s, Vh = sl.rsvd(A, 6, P, rng=1, single_pass=True)
    check_factors(U, s, Vh, 6, "float64")
    assert_close(s, s_true, factor=100, scale=s_true[0])
    assert_close((U * s) @ Vh, A, factor=10 * N_COLS, scale=s_true[0])


@pytest.mark.parametrize("shape", [(30, 12), (12, 30)])
def test_clipped_sketches_are_exact(shape):
    # rank + oversample > min(m, n): the range sketch spans range(A); the co-range sketch is
    # clipped to m rows when 2l + 1 > m (the wide case: l = 12 = m, Psi Q square).
    A = matrix_with_spectrum(*shape, np.linspace(1, 3, 12), rng=25)
    U, s, Vh = sl.rsvd(A, 12, 10, rng=0, single_pass=True)
    assert_close(s, np.linalg.svd(A, compute_uv=False), factor=100)
    assert_close((U * s) @ Vh, A, factor=100)


def test_same_range_sketch_as_the_two_pass_form():
    # One rng draws Omega first, as the two-pass form does: with rank = l and no
    # oversampling both span range(A Omega).
    A = matrix_with_spectrum(M_ROWS, N_COLS, SPECTRA["slow"], rng=26)
    U1, _, _ = sl.rsvd(A, L, 0, rng=7, single_pass=True)
    U2, _, _ = sl.rsvd(A, L, 0, power_iters=0, rng=7)
    assert_close(U1 @ U1.T, U2 @ U2.T, factor=1e3)


def test_float16_computed_in_float32():
    A = matrix_with_spectrum(M_ROWS, N_COLS, np.array([4.0, 2.0, 1.0]), rng=28)
    U, s, Vh = sl.rsvd(A.astype(np.float16), 3, P, rng=0, single_pass=True)
    assert U.dtype == s.dtype == Vh.dtype == np.float16
    # the input's own rounding (float16, 2^-11 relative) dominates
    assert_close((U.astype(np.float64) * s) @ Vh, A, factor=N_COLS, dtype=np.float16,
                 scale=4.0)


def test_sparse_and_operator_inputs_match_dense():
    # The same rng gives the same Omega and Psi for every input kind: equal to rounding.
    A = matrix_with_spectrum(M_ROWS, N_COLS, 0.5 ** np.arange(N_COLS), rng=29)
    Ud, sd, Vhd = sl.rsvd(A, K, P, rng=4, single_pass=True)
    for X in (scipy.sparse.csr_array(A), scipy.sparse.linalg.aslinearoperator(A)):
        U, s, Vh = sl.rsvd(X, K, P, rng=4, single_pass=True)
        check_factors(U, s, Vh, K, "float64")
        assert_close(s, sd, factor=1e3, scale=1.0)
        assert_close((U * s) @ Vh, (Ud * sd) @ Vhd, factor=1e3, scale=1.0)


# -- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"power_iters": 1}, ValueError, r"power_iters=1 cannot be combined with single_pass"),
        ({"power_iters": -1}, ValueError, "power_iters must be >= 0"),
        ({"power_iters": 1.0}, TypeError, "power_iters must be an int"),
        ({"single_pass": "yes"}, TypeError, "single_pass must be True or False"),
        ({"single_pass": 1}, TypeError, "single_pass must be True or False"),
        ({"sketch": sl.GaussianSketch(15, 40)}, TypeError,
         "sketch must be a family name or a factory when single_pass=True"),
        ({"sketch": lambda d, m, rng: sl.GaussianSketch(d, m + 1, rng=rng)}, ValueError,
         r"sketch has shape \(15, 41\) but this call needs a sketch of shape \(15, 40\)"),
        ({"rank": 41}, ValueError, r"rank must be <= min\(m, n\) = 40"),
        ({"oversample": -1}, ValueError, "oversample must be >= 0"),
        ({"rng": "seed"}, TypeError, "rng must be"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    args = {"rank": 5, "oversample": 10, "single_pass": True, **kwargs}
    with pytest.raises(exc, match=match):
        sl.rsvd(np.ones((50, 40)), **args)


def test_power_iters_zero_is_accepted_and_none_means_two_passes_by_default():
    A = matrix_with_spectrum(M_ROWS, N_COLS, SPECTRA["slow"], rng=30)
    a = sl.rsvd(A, K, P, power_iters=0, rng=2, single_pass=True)
    b = sl.rsvd(A, K, P, rng=2, single_pass=True)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    c = sl.rsvd(A, K, P, rng=2)  # the two-pass form's default: 2 power iterations
    d = sl.rsvd(A, K, P, power_iters=2, rng=2)
    assert all(np.array_equal(x, y) for x, y in zip(c, d, strict=True))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_input_raises(bad, backend):
    A = np.ones((20, 10))
    A[7, 3] = bad
    with pytest.raises(ValueError, match="A contains NaN or Inf"):
        sl.rsvd(backend.asarray(A), 2, sketch="countsketch", single_pass=True)
    with pytest.raises(ValueError, match="A @ x is not finite"):  # a Gaussian: in Y = A Omega
        sl.rsvd(backend.asarray(A), 2, single_pass=True)
    with pytest.raises(ValueError, match="not finite"):
        sl.rsvd(scipy.sparse.linalg.aslinearoperator(A), 2, single_pass=True)
