"""TensorSketch beyond the shared property suite (tests/test_sketching.py): its definition as
a CountSketch with the hash ``h1(i) + h2(j) mod d``, the factor form against the dense
matrix on Kronecker and Khatri-Rao products, and its moments: unbiased inner products and
the exact variance formula, itself checked against every hash and sign of small operators."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import sketchlinalg as sl
from helpers import assert_close, tensor_sketch_variance


def definition_matrix(d, h1, s1, h2, s2) -> np.ndarray:
    """The d x (m1 m2) matrix of the definition, built entry by entry."""
    m1, m2 = len(h1), len(h2)
    S = np.zeros((d, m1 * m2))
    for i, j in itertools.product(range(m1), range(m2)):
        S[(h1[i] + h2[j]) % d, i * m2 + j] = s1[i] * s2[j]
    return S


def khatri_rao_sums(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """``sum_t kron(x_t, y_t)`` for ``X (..., T, m1)``, ``Y (..., T, m2)``: ``(..., m1 m2)``."""
    return np.einsum("...ti,...tj->...ij", X, Y).reshape(*X.shape[:-2], -1)


def test_dense_matrix_is_the_definition():
    S = sl.TensorSketch(7, (5, 4), rng=3)
    h1, h2 = S.hashes
    s1, s2 = S.signs
    assert S.shape == (7, 20) and S.factors == (5, 4)
    assert np.array_equal(S.to_dense(), definition_matrix(7, h1, s1, h2, s2))
    # vec order: S (x kron y) is S vec(x y^T) with vec the row-major reshape
    x, y = np.arange(1.0, 6.0), np.arange(1.0, 5.0)
    assert_close(S @ np.kron(x, y), S.to_dense() @ np.outer(x, y).reshape(-1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_factor_form_matches_dense(dtype, backend):
    # Sums over T pairs of N samples (the Khatri-Rao form of per-sample gradients), against
    # the dense matrix applied to the materialized sums of Kronecker products.
    d, (m1, m2), n, t = 64, (9, 13), 5, 3
    S = sl.TensorSketch(d, (m1, m2), rng=4)
    rng = np.random.default_rng(5)
    X_np, Y_np = rng.standard_normal((n, t, m1)), rng.standard_normal((n, t, m2))
    X, Y = backend.asarray(X_np, dtype), backend.asarray(Y_np, dtype)
    out = S.sketch_factors(X, Y)
    assert type(out) is type(X) and tuple(out.shape) == (n, d) and out.dtype == X.dtype
    dense = khatri_rao_sums(X_np, Y_np)  # (n, m1 m2)
    want = dense @ S.to_dense().T
    # FFT rounding: ~log2(d) eps per transform, on sums of t * m1 * m2 products
    scale = float(np.abs(X_np).max() * np.abs(Y_np).max() * t * np.sqrt(m1 * m2))
    assert_close(out, want, factor=10 * np.log2(d) * np.sqrt(d), dtype=dtype, scale=scale)
    # and S @ A on the dense sums (the sparse CountSketch product) agrees
    assert_close(S @ backend.asarray(dense.T, dtype), want.T, factor=10 * np.sqrt(m1 * m2),
                 dtype=dtype, scale=scale)
    # one pair, 1-D factors
    one = S.sketch_factors(X[0, 0, ...], Y[0, 0, ...])
    assert tuple(one.shape) == (d,)
    assert_close(one, S.to_dense() @ np.kron(X_np[0, 0], Y_np[0, 0]),
                 factor=10 * np.log2(d) * np.sqrt(d), dtype=dtype, scale=scale)


def test_factor_form_half_precision_and_empty():
    torch = pytest.importorskip("torch")
    S = sl.TensorSketch(16, (4, 6), rng=0)
    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((3, 2, 4)), rng.standard_normal((3, 2, 6))
    for half in (torch.float16, torch.bfloat16):
        Xh, Yh = torch.as_tensor(X, dtype=half), torch.as_tensor(Y, dtype=half)
        out = S.sketch_factors(Xh, Yh)
        assert out.dtype == half
        want = khatri_rao_sums(Xh.double().numpy(), Yh.double().numpy()) @ S.to_dense().T
        assert_close(out, want, factor=4.0, dtype=half)  # one rounding to the half format
    empty = S.sketch_factors(np.zeros((3, 0, 4)), np.zeros((3, 0, 6)))
    assert empty.shape == (3, 16) and not empty.any()


def test_variance_formula_is_exact():
    """The variance formula equals the exact variance over every hash and sign of small
    operators (odd and even d: the gcd(2, d) term), computed from the definition."""
    rng = np.random.default_rng(6)
    for m1, m2, d in [(2, 3, 3), (3, 2, 4), (2, 2, 2)]:
        X, Y = rng.standard_normal((m1, m2)), rng.standard_normal((m1, m2))
        values = []
        for h1, h2 in itertools.product(itertools.product(range(d), repeat=m1),
                                        itertools.product(range(d), repeat=m2)):
            for s1, s2 in itertools.product(itertools.product((-1, 1), repeat=m1),
                                            itertools.product((-1, 1), repeat=m2)):
                S = definition_matrix(d, h1, s1, h2, s2)
                values.append((S @ X.ravel()) @ (S @ Y.ravel()))
        values = np.array(values)
        assert_close(np.asarray(values.mean()), np.sum(X * Y), factor=100,
                     scale=np.abs(X * Y).sum())
        assert_close(np.asarray(tensor_sketch_variance(X, Y, d)), values.var(), factor=1000)


def moments_check(sketch_pairs, d, trials=3000):
    """Mean and variance of <S x, S y> (x = a (x) b, y = c (x) e, correlated factors) and
    of ||S x||^2 over ``trials`` seeds, against the truth and the variance formula:
    ``(mean ok, variance ok)``, each within 5 standard errors for both estimates.
    ``sketch_pairs(seed, X, Y)`` sketches the pairs ``(X[k], Y[k])`` (shape ``(k, d)``)."""
    rng = np.random.default_rng(10**6)  # inputs from a seed outside range(trials)
    a, b, c, e = (rng.standard_normal(8) for _ in range(4))
    c, e = a + 0.5 * c, b + 0.5 * e  # correlated: the mean and the spread both matter
    X, Y = np.stack([a, c])[:, None], np.stack([b, e])[:, None]  # (2 inputs, T = 1, m)
    sketches = np.array([sketch_pairs(seed, X, Y) for seed in range(trials)])
    mean_ok = var_ok = True
    for (p, q), (u, v, w, z) in {(0, 1): (a, b, c, e), (0, 0): (a, b, a, b)}.items():
        est = np.sum(sketches[:, p] * sketches[:, q], axis=1)
        truth = (u @ w) * (v @ z)
        var = tensor_sketch_variance(np.outer(u, v), np.outer(w, z), d)
        mean_ok &= abs(est.mean() - truth) <= 5 * est.std(ddof=1) / np.sqrt(trials)
        dev2 = (est - truth) ** 2  # E dev2 = var when unbiased
        var_ok &= abs(dev2.mean() - var) <= 5 * dev2.std(ddof=1) / np.sqrt(trials)
    return bool(mean_ok), bool(var_ok)


@pytest.mark.parametrize("d", [16, 17])
def test_inner_products_unbiased_with_the_formula_variance(d):
    def tensor_sketch(seed, X, Y):
        return sl.TensorSketch(d, (8, 8), rng=seed).sketch_factors(X, Y)

    assert moments_check(tensor_sketch, d) == (True, True)
    # A fully random CountSketch of the products has the right mean but a smaller variance
    # (||S x||^2: 2 ||x||^4 / d against about 6 ||x||^4 / d): the check tells them apart.
    def countsketch(seed, X, Y):
        return khatri_rao_sums(X, Y) @ sl.CountSketch(d, 64, rng=seed).to_dense().T

    assert moments_check(countsketch, d) == (True, False)


def test_same_seed_same_operator_in_factor_form(backend):
    S1, S2 = sl.TensorSketch(32, (6, 10), rng=42), sl.TensorSketch(32, (6, 10), rng=42)
    X = np.random.default_rng(0).standard_normal((4, 2, 6))
    Y = np.random.default_rng(1).standard_normal((4, 2, 10))
    ref = S1.sketch_factors(X, Y)
    other = backend.to_numpy(S2.sketch_factors(backend.asarray(X), backend.asarray(Y)))
    assert_close(other, ref, factor=10 * np.log2(32) * np.sqrt(32),
                 scale=float(np.abs(ref).max()))
    assert np.array_equal(S1.hashes[0], S2.hashes[0]) and np.array_equal(S1.signs[1],
                                                                         S2.signs[1])


def test_flops():
    assert sl.TensorSketch.apply_flops(64, 1000) == 2000.0
    one, many = (sl.TensorSketch.factor_flops(4096, 128, 513, pairs=p) for p in (1, 10))
    assert one > 2 * (128 + 513) and many < 10 * one  # the inverse FFT is paid once per output


def test_bad_input():
    with pytest.raises(TypeError, match="factors must be a pair of ints"):
        sl.TensorSketch(4, 12)
    with pytest.raises(TypeError, match="factors must be a pair of ints"):
        sl.TensorSketch(4, (2, 3, 2))
    with pytest.raises(TypeError, match=r"factors\[1\] must be an int"):
        sl.TensorSketch(4, (3, 4.0))
    with pytest.raises(ValueError, match=r"factors\[0\] must be >= 1"):
        sl.TensorSketch(1, (0, 4))
    with pytest.raises(ValueError, match="d must be <= m"):
        sl.TensorSketch(13, (3, 4))
    sl.TensorSketch(12, (3, 4))  # d = m1 m2 is allowed
    S = sl.TensorSketch(8, (3, 4), rng=0)
    x, y = np.ones((2, 3)), np.ones((2, 4))
    with pytest.raises(ValueError, match="shape mismatch: X has 4 entries along its last axis"):
        S.sketch_factors(np.ones((2, 4)), y)
    with pytest.raises(ValueError, match="shape mismatch: Y has 5 entries along its last axis"):
        S.sketch_factors(x, np.ones((2, 5)))
    with pytest.raises(ValueError, match="X and Y must have the same leading shape"):
        S.sketch_factors(x, np.ones((3, 4)))
    with pytest.raises(TypeError, match="Y must have a real floating dtype"):
        S.sketch_factors(x, np.ones((2, 4), dtype=np.int64))
    with pytest.raises(TypeError, match="X must be a NumPy, PyTorch or CuPy array"):
        S.sketch_factors([[1.0] * 3], y)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="X and Y must be arrays of one backend"):
        S.sketch_factors(torch.ones(2, 3, dtype=torch.float64), y)


def test_backend_without_fft_is_refused():
    strict = pytest.importorskip("array_api_strict")
    S = sl.TensorSketch(8, (3, 4), rng=0)
    strict.set_array_api_strict_flags(enabled_extensions=("linalg",))
    try:
        with pytest.raises(TypeError, match="has no FFT"):
            S.sketch_factors(strict.ones((2, 3)), strict.ones((2, 4)))
    finally:
        strict.reset_array_api_strict_flags()


def test_dask_rows_and_pickle():
    # A Dask task draws its own columns (host_columns, from the stored hashes): the lazy
    # result equals the in-memory one; a pickled operator is the same operator.
    import pickle

    dask_array = pytest.importorskip("dask.array")
    S = sl.TensorSketch(16, (6, 10), rng=3)
    A = np.random.default_rng(0).standard_normal((60, 4))
    lazy = S @ dask_array.from_array(A, chunks=(17, 4))
    assert_close(lazy.compute(), S.to_dense() @ A, factor=10 * np.sqrt(60),
                 scale=float(np.abs(A).sum(axis=0).max()))
    assert np.array_equal(pickle.loads(pickle.dumps(S)).to_dense(), S.to_dense())
