"""``range_finder``, ``rsvd``, ``eigh_randomized`` and ``nystrom`` for a Dask array ``A``.

The tall products (``A @ Z``, ``A.T @ Q``, anything with ``m`` rows) run in Dask; every
``n x l`` or ``l x l`` factor (test matrix, Gram, small QR/SVD/eigh) is computed in memory by
the NumPy code of the in-memory drivers. Each pass over ``A`` is one ``dask.compute`` or
``dask.persist`` in which every chunk of ``A`` is read once; the ``m x l`` samples are kept
(persisted) between passes and orthonormalized by Dask's tall-skinny QR
(``dask.array.linalg.tsqr``, Householder on each chunk), which reads them, not ``A``.
Passes over ``A``: 1 (nystrom, single-pass rsvd), 2q + 1 (range_finder), 2q + 2 (rsvd,
eigh_randomized).
"""

from __future__ import annotations

import math
from typing import Any

import dask
import dask.array as da
import numpy as np

from .. import backend
from .._lowrank import (
    check_products_finite,
    check_rank_shape,
    check_symmetric_sketch,
    corange_size,
    corange_solve,
    orthonormalize,
    svd_from_basis,
)
from .._rng import normalize_rng
from .._validation import check_int
from ..sketching import BlockSRHT, SketchingOperator
from ..sketching._spec import build_operator, check_spec
from .sketch import check_dask_matrix, sketch_rows


def range_finder(A: Any, rank: Any, oversample: Any, power_iters: Any, sketch: Any,
                 rng: Any) -> Any:
    X, _, q, S = _prepare(A, rank, oversample, power_iters, sketch, rng)
    return _basis(X, q, S).astype(A.dtype)


def rsvd(A: Any, rank: Any, oversample: Any, power_iters: Any, sketch: Any,
         rng: Any) -> tuple[Any, Any, Any]:
    X, _, q, S = _prepare(A, rank, oversample, power_iters, sketch, rng)
    Q = _basis(X, q, S)
    W = (X.T @ Q).compute()
    check_products_finite(np, W)
    return _factors(A, *svd_from_basis(np, Q, W, int(rank)))


def rsvd_single_pass(A: Any, rank: Any, oversample: Any, sketch: Any,
                     rng: Any) -> tuple[Any, Any, Any]:
    """The single-pass rsvd (Tropp et al. 2017): ``Y = A Omega`` (row blocks of ``Y``) and
    ``W = Psi A`` (a sum over row blocks, each block drawing its columns of ``Psi``) in one
    ``dask.persist`` with the NaN/Inf test, then ``Q = tsqr(Y)`` and ``Psi Q`` (reads ``Y``,
    not ``A``), and the small solve and SVD in memory."""
    gen = normalize_rng(rng)
    X, l, _, S = _prepare(A, rank, oversample, 0, sketch, gen)
    m = X.shape[0]
    l_co = corange_size(l, m)
    Psi: SketchingOperator
    if sketch == "srht":  # the SRHT mixes all rows: its block form, on A's row chunks
        Psi = BlockSRHT(l_co, m, blocks=X.chunks[0], rng=gen)
    else:
        Psi = build_operator(sketch, l_co, m, gen,
                             role="l' x m, l' = min(2 l + 1, m), m the rows of A")
    Y, W, finite = dask.persist(X @ _test_matrix(S, X.dtype), sketch_rows(Psi, X),
                                da.isfinite(X).all())
    _check_finite(finite)
    W = W.compute()
    check_products_finite(np, W)
    (Q,) = dask.persist(_orth(Y))
    core = corange_solve(sketch_rows(Psi, Q).compute(), W)
    return _factors(A, *svd_from_basis(np, Q, core.T, int(rank)))


def _factors(A: Any, U: Any, s: Any, Vh: Any) -> tuple[Any, Any, Any]:
    """The factors in ``A``'s dtype (computed in float32 for float16)."""
    return U.astype(A.dtype), s.astype(A.dtype), Vh.astype(A.dtype)


def eigh_randomized(A: Any, rank: Any, oversample: Any, power_iters: Any, sketch: Any,
                    rng: Any) -> tuple[Any, Any]:
    X, l, q, S = _prepare(A, rank, oversample, power_iters, sketch, rng, square=True)
    n, k = X.shape[0], int(rank)
    Q = _basis(X, q, S)
    AQ = X @ Q.compute()  # Q is n x l, like the test matrix: it fits in memory
    B, scale = dask.compute(Q.T @ AQ, da.linalg.norm(AQ))
    check_products_finite(np, B)
    check_symmetric_sketch(np, B, float(scale), n, X.dtype)
    theta, Z = np.linalg.eigh(0.5 * (B + B.T))
    keep = np.argsort(np.abs(theta))[l - k:]
    keep = keep[np.argsort(theta[keep])]
    return theta[keep].astype(A.dtype), (Q @ Z[:, keep]).astype(A.dtype)


def nystrom(A: Any, rank: Any, oversample: Any, sketch: Any, rng: Any) -> tuple[Any, Any]:
    X, l, _, S = _prepare(A, rank, oversample, 0, sketch, rng, square=True)
    n, k, work = X.shape[0], int(rank), X.dtype
    Omega, _ = orthonormalize(np, _test_matrix(S, work), passes=2)
    Y, scale, finite = dask.persist(X @ Omega, da.linalg.norm(X @ Omega), da.isfinite(X).all())
    _check_finite(finite)
    scale = float(scale.compute())
    chunks = (X.chunks[0], (l,))
    if scale == 0.0:  # A = 0: every orthonormal U is exact, with zero eigenvalues
        return (da.from_array(Omega[:, :k], chunks=(X.chunks[0], (k,))).astype(A.dtype),
                np.zeros(k, dtype=A.dtype))
    nu = math.sqrt(n) * float(np.finfo(work).eps) * scale
    Y_nu = Y + nu * da.from_array(Omega, chunks=chunks)
    P, R = da.linalg.tsqr(Y_nu)
    P, R, B = dask.persist(P, R, Omega.T @ Y_nu)
    B = B.compute()
    check_symmetric_sketch(np, B, scale, n, work)
    C = backend.cholesky(0.5 * (B + B.T))
    if C is None:
        raise ValueError(
            "A is not positive semidefinite: the sketch Omega^T A Omega + nu I has no "
            "Cholesky factor (use eigh_randomized for symmetric indefinite matrices)")
    # E = Y_nu C^{-T} = P (R C^{-T}) and R C^{-T} = (C^{-1} R^T)^T.
    Xs, sigma, _ = np.linalg.svd(backend.solve_triangular(C, R.compute().T, lower=True).T)
    lam = np.clip(sigma[:k] ** 2 - nu, 0.0, None)
    return (P @ Xs[:, :k]).astype(A.dtype), lam.astype(A.dtype)


def _prepare(A: Any, rank: Any, oversample: Any, power_iters: Any, sketch: Any, rng: Any,
             square: bool = False) -> tuple[Any, int, int, SketchingOperator]:
    """The checks of the in-memory drivers (``_lowrank.prepare``) without touching ``A``'s
    values (its NaN/Inf test is part of the first pass); ``A`` comes back in the working
    dtype, with ``l`` and the ``l x n`` operator whose adjoint is the test matrix."""
    rank = check_int(rank, "rank", minimum=1)
    p = check_int(oversample, "oversample", minimum=0)
    q = check_int(power_iters, "power_iters", minimum=0)
    check_spec(sketch)
    gen = normalize_rng(rng)
    work = check_dask_matrix(A, "A")
    m, n = A.shape
    check_rank_shape(rank, m, n, square)
    l = min(rank + p, m, n)
    S = build_operator(sketch, l, n, gen,
                       role="l x n, l = min(rank + oversample, m, n), n the columns of A")
    return A.astype(work), l, q, S


def _test_matrix(S: SketchingOperator, work: Any) -> np.ndarray:
    """``Omega = S^T`` (``n x l``) in memory, as the in-memory drivers draw it."""
    return S.T @ np.eye(S.shape[0], dtype=work)


def _basis(X: Any, q: int, S: SketchingOperator) -> Any:
    """The orthonormal ``m x l`` basis of randomized subspace iteration (HMT 2011,
    Algorithm 4.4), persisted: ``Y = A Omega`` (with the NaN/Inf test of ``A`` in the same
    pass), then per power iteration ``Z = orth(A^T orth(Y))`` (the ``n x l`` Z in memory)
    and ``Y = A Z``."""
    Y, finite = dask.persist(X @ _test_matrix(S, X.dtype),
                             da.isfinite(X).all())
    _check_finite(finite)
    for _ in range(q):
        W = (X.T @ _orth(Y)).compute()
        check_products_finite(np, W)
        Z, _ = orthonormalize(np, W)
        (Y,) = dask.persist(X @ Z)
    (Q,) = dask.persist(_orth(Y))
    return Q


def _orth(Y: Any) -> Any:
    """Orthonormal basis of the tall ``Y`` (one column chunk) by Dask's TSQR."""
    if Y.numblocks[1] > 1:
        Y = Y.rechunk({1: -1})
    return da.linalg.tsqr(Y)[0]


def _check_finite(finite: Any) -> None:
    if not bool(finite.compute()):
        raise ValueError("A contains NaN or Inf entries")
