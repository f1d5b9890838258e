"""The ``sketch`` argument of the routines and drivers: a family name, a SketchingOperator
instance or a factory give the operator they name (checked against dense oracles built from
that operator's own matrix), factory options such as ``nnz`` reach the operator, and a wrong
shape or type is rejected naming the argument."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import sketchlinalg as sl
from helpers import assert_close, matrix_with_spectrum

M, N, RANK, OVER = 120, 40, 5, 3
L = RANK + OVER
LOWRANK = {
    "range_finder": lambda A, **kw: sl.range_finder(A, RANK, oversample=OVER, **kw),
    "rsvd": lambda A, **kw: sl.rsvd(A, RANK, oversample=OVER, **kw),
    "eigh_randomized": lambda A, **kw: sl.eigh_randomized(A, RANK, oversample=OVER, **kw),
    "nystrom": lambda A, **kw: sl.nystrom(A, RANK, oversample=OVER, **kw),
}


def matrix(name):
    """A general matrix, or a PSD one for the symmetric drivers (n x n, n = N)."""
    if name in ("eigh_randomized", "nystrom"):
        B = matrix_with_spectrum(N, N, np.logspace(0, -8, N), rng=1)
        return B @ B.T
    return matrix_with_spectrum(M, N, np.logspace(0, -8, N), rng=1)


def same(a, b):
    a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("name", list(LOWRANK))
def test_lowrank_name_factory_and_instance_agree(name):
    A = matrix(name)
    run = LOWRANK[name]
    # A class is a factory: same draws from the same seed as the family name.
    assert same(run(A, sketch=sl.SparseSign, rng=3), run(A, sketch="sparse_sign", rng=3))
    # Factory options reach the operator: nnz=2 is the instance SparseSign(l, n, nnz=2) of
    # that seed, and differs from the default nnz=8.
    two = functools.partial(sl.SparseSign, nnz=2)
    instance = sl.SparseSign(L, N, nnz=2, rng=3)
    assert same(run(A, sketch=two, rng=3), run(A, sketch=instance))
    assert not same(run(A, sketch=two, rng=3), run(A, sketch="sparse_sign", rng=3))


def test_range_finder_spans_the_given_operators_sample():
    # Oracle: with no power iteration Q spans A S^T for the operator passed in.
    A = matrix("range_finder")
    S = sl.CountSketch(L, N, rng=4)
    Q = sl.range_finder(A, RANK, oversample=OVER, power_iters=0, sketch=S)
    Y = A @ S.to_dense().T
    assert_close(Q @ (Q.T @ Y), Y, factor=1e3)


@pytest.mark.parametrize("name", list(LOWRANK))
def test_lowrank_instance_of_the_wrong_shape(name):
    A = matrix(name)
    run = LOWRANK[name]
    run(A, sketch=sl.GaussianSketch(L, N))  # the boundary: exactly (l, n) is accepted
    for shape in ((L + 1, N), (L, N + 1)):
        with pytest.raises(ValueError, match=r"sketch has shape .* needs a sketch of shape "
                                             rf"\({L}, {N}\)"):
            run(A, sketch=sl.GaussianSketch(*shape))


@pytest.mark.parametrize("bad, exc, match", [
    (3, TypeError, "sketch must be a family name"),
    (sl.GaussianSketch(L, N).T, TypeError, "sketch must be a family name"),
    (lambda d, m, rng: np.ones((d, m)), TypeError, "must return a SketchingOperator"),
    ("hadamard", ValueError, "unknown sketch kind 'hadamard'"),
])
def test_bad_sketch_argument(bad, exc, match):
    A = matrix("rsvd")
    for call in (lambda: sl.rsvd(A, RANK, oversample=OVER, sketch=bad),
                 lambda: sl.ridge(A, A[:, 0], 1.0, method="sketch_solve", sketch=bad),
                 lambda: sl.woodbury_solve(A, A[:, 0], 1.0, sketch=bad, sketch_size=L)):
        with pytest.raises(exc, match=match):
            call()


def sketch_solve_oracle(S, A, b, lam):
    """argmin |S A x - S b|^2 + lam |x|^2 from the dense S, by SciPy's lstsq."""
    D = S.to_dense()
    n = A.shape[1]
    top, rhs = np.vstack([D @ A, np.sqrt(lam) * np.eye(n)]), np.concatenate([D @ b, np.zeros(n)])
    return np.linalg.lstsq(top, rhs, rcond=None)[0]


def test_ridge_sets_nnz_through_a_factory():
    A = matrix_with_spectrum(M, N, np.logspace(0, -2, N), rng=5)
    b = np.random.default_rng(6).standard_normal(M)
    d = 2 * N
    x, info = sl.ridge(A, b, 0.1, method="sketch_solve", sketch=functools.partial(
        sl.SparseSign, nnz=2), sketch_size=d, rng=7, return_info=True)
    S = sl.SparseSign(d, M, nnz=2, rng=7)  # the operator the factory built from that seed
    assert info["sketch"] == repr(S) == f"SparseSign(d={d}, m={M}, nnz=2)"
    assert_close(x, sketch_solve_oracle(S, A, b, 0.1), factor=1e3)
    # An instance brings its size; a sketch_size that contradicts it is an error.
    y, info = sl.ridge(A, b, 0.1, method="sketch_solve", sketch=S, return_info=True)
    assert np.array_equal(x, y) and info["sketch"] == repr(S)
    with pytest.raises(ValueError, match=rf"needs a sketch of shape \({d + 1}, {M}\)"):
        sl.ridge(A, b, 0.1, method="sketch_solve", sketch=S, sketch_size=d + 1)
    # The exact methods never touch it; sketch_precondition converges with it to the exact x.
    x_pre = sl.ridge(A, b, 0.1, method="sketch_precondition", sketch=S)
    A_bar = np.vstack([A, np.sqrt(0.1) * np.eye(N)])
    exact = np.linalg.lstsq(A_bar, np.concatenate([b, np.zeros(N)]), rcond=None)[0]
    assert_close(x_pre, exact, factor=1e3)


def test_woodbury_with_an_operator_instance():
    U = np.random.default_rng(8).standard_normal((M, 6))
    g = np.random.default_rng(9).standard_normal(M)
    S = sl.SparseSign(30, M, nnz=3, rng=10)
    x, info = sl.woodbury_solve(U, g, 0.5, sketch=S, return_info=True)
    SU = S.to_dense() @ U
    alpha = np.linalg.solve(SU.T @ SU + 0.5 * np.eye(6), U.T @ g)
    assert info["gram"] == repr(S)
    assert_close(x, (g - U @ alpha) / 0.5, factor=1e3)
    assert np.array_equal(x, sl.woodbury_solve(U, g, 0.5, sketch=functools.partial(
        sl.SparseSign, nnz=3), sketch_size=30, rng=10))
    with pytest.raises(ValueError, match=r"needs a sketch of shape \(30, 121\)"):
        sl.woodbury_solve(np.vstack([U, U[:1]]), np.append(g, 0.0), 0.5, sketch=S)
