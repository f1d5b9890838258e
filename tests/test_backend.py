"""sketchlinalg.backend, the layer for what the array API standard lacks, on every backend:
each operation against a NumPy/SciPy oracle, the generic (padded-rows) sparse product on
every backend, failure reported as documented, and the public module's contract (the old
private name is the same module)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse

from helpers import assert_close
from sketchlinalg import backend as sl_backend


def coo(rows, cols, nnz, seed):
    rng = np.random.default_rng(seed)
    r, c = rng.integers(0, rows, nnz), rng.integers(0, cols, nnz)
    return r, c, rng.standard_normal(nnz)


def test_names_and_namespace(backend):
    x = backend.asarray(np.ones(3))
    name = sl_backend.backend_name(x)
    assert name == {"torch-cpu": "torch", "torch-cuda": "torch",
                    "array-api-strict": "array_api_strict"}.get(backend.name, backend.name)
    assert sl_backend.namespace(x, x) is sl_backend.namespace(x)
    with pytest.raises(TypeError, match="expected an array of an array-API backend"):
        sl_backend.backend_name([1.0])
    with pytest.raises(TypeError, match="expected arrays of one array-API backend"):
        sl_backend.namespace([1.0])


def test_host_round_trip(backend):
    x = np.arange(6.0).reshape(2, 3)
    like = backend.asarray(np.zeros(1))
    y = sl_backend.from_host(x, like, like.dtype)
    assert type(y) is type(like) and y.dtype == like.dtype
    assert np.array_equal(sl_backend.to_host(y), x)


@pytest.mark.parametrize("shape", [(7, 40), (40, 7), (5, 5)])
def test_sparse_from_coo_product(backend, shape):
    rows, cols, vals = coo(*shape, nnz=60, seed=1)  # duplicates included: they are summed
    dense = np.zeros(shape)
    np.add.at(dense, (rows, cols), vals)
    X = np.random.default_rng(2).standard_normal((shape[1], 3))
    like = backend.asarray(X)
    S = sl_backend.sparse_from_coo(rows, cols, vals, shape, like, like.dtype)
    assert_close(S @ like, dense @ X, factor=10 * shape[1])


@pytest.mark.parametrize("n", [0, 1, 5])
def test_padded_rows_layout(n, monkeypatch):
    # The generic layout (JAX and every backend without its own sparse type), on NumPy
    # arrays: an empty row, a full row, duplicates summed, no columns, and chunked columns.
    shape = (6, 9)
    rows, cols, vals = coo(*shape, nnz=30, seed=3)
    rows[rows == 2] = 3  # row 2 empty
    host = scipy.sparse.csr_array((vals, (rows, cols)), shape=shape)
    host.sum_duplicates()
    monkeypatch.setattr(sl_backend._PaddedRows, "MAX_ENTRIES", 2 * 6 * 9)  # two columns a chunk
    P = sl_backend._PaddedRows(host, np.zeros(1), np.float64)
    X = np.random.default_rng(4).standard_normal((9, n))
    Y = P @ X
    assert Y.shape == (6, n)
    assert_close(Y, host.toarray() @ X, factor=100, scale=9 * float(np.abs(X).max(initial=1)))


def test_scatter_add_rows(backend):
    index = np.array([3, 0, 3, 1])
    values = np.random.default_rng(5).standard_normal((4, 2))
    expected = np.ones((5, 2))
    np.add.at(expected, index, values)
    like = backend.asarray(values)
    idx = sl_backend.from_host(index, like, backend.xp.int64)
    out = sl_backend.scatter_add_rows(backend.asarray(np.ones((5, 2))), idx, like)
    assert_close(out, expected, factor=10)
    vec = sl_backend.scatter_add_rows(backend.asarray(np.ones(5)), idx, like[:, 0])
    assert_close(vec, expected[:, 0], factor=10)


def test_put_rows(backend):
    index = np.array([4, 0, 2])
    values = np.random.default_rng(6).standard_normal((3, 2))
    expected = np.zeros((6, 2))
    expected[index] = values
    out = sl_backend.put_rows(index, backend.asarray(values), 6)
    assert np.array_equal(backend.to_numpy(out), expected)


@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("trans", [False, True])
def test_solve_triangular(backend, lower, trans):
    rng = np.random.default_rng(7)
    T = np.tril(rng.standard_normal((6, 6))) + 6 * np.eye(6)
    T = T if lower else T.T
    B = rng.standard_normal((6, 2))
    want = scipy.linalg.solve_triangular(T, B, lower=lower, trans=1 if trans else 0)
    X = sl_backend.solve_triangular(backend.asarray(T), backend.asarray(B), lower=lower,
                                    trans=trans)
    assert_close(X, want, factor=100)
    x = sl_backend.solve_triangular(backend.asarray(T), backend.asarray(B[:, 0]), lower=lower,
                                    trans=trans)
    assert tuple(x.shape) == (6,)
    assert_close(x, want[:, 0], factor=100)


def test_cholesky_and_its_failure(backend):
    A = np.array([[4.0, 2.0], [2.0, 3.0]])
    L = sl_backend.cholesky(backend.asarray(A))
    assert_close(L, np.linalg.cholesky(A), factor=10)
    # Just past the boundary: the smallest eigenvalue -1e-3 (NumPy raises, JAX and CuPy
    # return NaN, torch reports it): None on every backend.
    assert sl_backend.cholesky(backend.asarray(np.array([[1.0, 0.0], [0.0, -1e-3]]))) is None


def test_qr_and_qr_r(backend):
    A = np.random.default_rng(8).standard_normal((9, 4))
    Q, R = sl_backend.qr(backend.asarray(A))
    assert_close(Q @ R, A, factor=100)
    assert_close(Q.T @ Q, np.eye(4), factor=100)
    R_only = backend.to_numpy(sl_backend.qr_r(backend.asarray(A)))
    assert R_only.shape == (4, 4)
    # R is unique up to the signs of its rows
    assert_close(np.abs(R_only), np.abs(backend.to_numpy(R)), factor=100,
                 scale=float(np.abs(A).sum()))


def test_all_finite(backend):
    x = np.ones(5)
    assert sl_backend.all_finite(backend.asarray(x))
    x[3] = np.nan
    assert not sl_backend.all_finite(backend.asarray(x))


def test_private_name_is_the_same_module():
    import sketchlinalg._backend as old

    assert old is sl_backend
    assert sl_backend.normalize_rng(3).integers(10) == np.random.default_rng(3).integers(10)


def test_jax_tracers_get_a_clear_error():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    import sketchlinalg as sl

    A = jnp.ones((10, 4))
    sl.rsvd(A, 2)  # concrete arrays work
    for f in (lambda a: sl.rsvd(a, 2)[1], lambda a: sl.sketch("srht", 2, 10) @ a,
              lambda a: sl.lsqr(a, a[:, 0])[0]):
        with pytest.raises(TypeError, match=r"JAX tracer .* sketchlinalg runs eagerly"):
            jax.jit(f)(A)
