"""``ridge`` for a Dask array ``A`` chunked by rows.

The sketch ``S [A b]`` is one pass over ``A`` (with its NaN/Inf test); the preconditioner
(QR of the ``d x n`` sketch) and LSQR's ``n``-vectors live in memory, its ``m``-vectors in
memory as NumPy too (one column of ``A``), and each LSQR iteration is two Dask products,
``A v`` and ``A^T u``: two passes over ``A``. ``"direct"`` is Householder QR of ``[A b]`` by
Dask's TSQR, one pass.
"""

from __future__ import annotations

import math
from typing import Any

import dask
import dask.array as da
import numpy as np

from .. import backend
from .._ridge_solve import RightFactor, augment, krylov_columns, resolve_sketch_size
from .._rng import normalize_rng
from .._validation import check_dense, check_finite, check_nonnegative
from ..sketching import BlockSRHT
from ..sketching._spec import build_operator, describe
from .sketch import check_dask_matrix


def ridge(A: Any, b: Any, lam: Any, *, method: str, rng: Any, sketch: Any,
          sketch_size: int | None, solver: str, tol: float | None, maxiter: int | None,
          return_info: bool) -> Any:
    """:func:`sketchlinalg.ridge` once its options are checked; see the module docstring."""
    P = DaskProblem(A, b, lam)
    m, n = P.shape
    if m < n:
        raise ValueError(f"a Dask A must have m >= n (its rows are what is chunked and "
                         f"sketched), got A of shape {(m, n)}")
    sketch_size = resolve_sketch_size(sketch, sketch_size, m, n)
    gen = normalize_rng(rng)
    info: dict[str, Any] = {}
    if method == "auto":
        method = "direct"
        info["auto_reason"] = ("Dask A: TSQR reads A once, sketch-and-precondition once plus "
                               "twice per LSQR iteration")
    info["method"] = method
    if n == 0 or P.nrhs == 0:
        x = P.zeros((n, P.nrhs) if P.b.ndim == 2 else (n,))
        info.update(factorization="none", cond=math.nan, note="empty problem: x is empty")
    elif method == "direct":
        pre = RightFactor(P, P.qr_r_of_tall())
        info.update(factorization="tsqr" + pre.truncation, cond=pre.cond)
        x = pre.apply(pre.y0)
    else:
        if sketch == "srht":  # the SRHT mixes all rows: its block form, on A's row chunks
            S = BlockSRHT(sketch_size, m, blocks=P.A.chunks[0], rng=gen)
            info["sketch"] = f"block_srht({sketch_size}, {len(S.blocks)} blocks)"
        else:
            S = build_operator(sketch, sketch_size, m, gen,
                               role="sketch_size x m, m the rows of A")
            info["sketch"] = describe(sketch, S)
        SA, Sb = P.sketch(S)
        pre = RightFactor(P, backend.qr_r(augment(P, SA, Sb)))
        info.update(factorization="qr_of_sketch" + pre.truncation, cond=pre.cond)
        x = pre.apply(pre.y0)
        if method == "sketch_precondition":
            x, kinfo = krylov_columns(P, pre, sketch_size, solver, tol, maxiter)
            info.update(kinfo)
    if not bool(np.all(np.isfinite(x))):
        raise FloatingPointError(f"ridge ({method}): the solution overflowed to NaN/Inf; "
                                 f"scale A and b or increase lam")
    x = P.finish(x)
    if return_info:
        info["residual"] = P.residual(x)
        info["passes"] = P.passes
        return x, info
    return x


class DaskProblem:
    """The ``_Problem`` of :func:`sketchlinalg.ridge` for a Dask ``A``: ``b``, ``x`` and the
    Krylov vectors are NumPy arrays in memory, the products with ``A`` are Dask computations
    (``passes`` counts them: each reads every chunk of ``A`` once)."""

    sparse = False
    xp = np

    def __init__(self, A: Any, b: Any, lam: Any) -> None:
        import array_api_compat

        if not array_api_compat.is_dask_array(A):
            raise TypeError(f"A must be a Dask array when b is one, got {type(A).__name__}")
        check_dask_matrix(A, "A")
        m, n = A.shape
        if array_api_compat.is_dask_array(b):
            check_dask_matrix(b, "b", ndim=(1, 2))
        else:
            check_dense(b, "b", ndim=(1, 2))
            if backend.backend_name(b) != "numpy":
                raise TypeError(f"b must be a NumPy or Dask array when A is a Dask array, got "
                                f"{type(b).__name__}")
        if b.shape[0] != m:
            raise ValueError(f"shape mismatch: A has shape {(m, n)} but b has shape "
                             f"{tuple(b.shape)}; b needs {m} rows")
        self.lam = check_nonnegative(lam, "lam")
        self.prec = backend.precision(np, A.dtype, b.dtype, name="b")
        self.work, self.eps = self.prec.work, self.prec.eps
        self.shape = (m, n)
        self.nrhs = b.shape[1] if b.ndim == 2 else 1
        self.A = A.astype(self.work)
        # b is one column of A per right-hand side: read once, kept in memory.
        self.b = np.asarray(b.compute() if array_api_compat.is_dask_array(b) else b,
                            dtype=self.work)
        check_finite(np, self.b, "b")
        self.passes = 0

    def _rows(self, v: np.ndarray) -> Any:
        """``v`` (``m`` rows) as a Dask array chunked like ``A``'s rows."""
        return da.from_array(v, chunks=(self.A.chunks[0], *((s,) for s in v.shape[1:])))

    def sketch(self, S: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(S A, S b)`` in one pass over ``A``, with its NaN/Inf test."""
        b2 = self.b[:, None] if self.b.ndim == 1 else self.b
        SAb, finite = dask.compute(S @ da.concatenate([self.A, self._rows(b2)], axis=1),
                                   da.isfinite(self.A).all())
        self.passes += 1
        if not finite:
            raise ValueError("A contains NaN or Inf entries")
        n = self.shape[1]
        return SAb[:, :n], SAb[:, n] if self.b.ndim == 1 else SAb[:, n:]

    def qr_r_of_tall(self) -> np.ndarray:
        """The R factor of ``[A b; sqrt(lam) I 0]``: Dask's TSQR of ``[A b]`` (one pass, with
        the NaN/Inf test), then the small QR with ``sqrt(lam) I`` appended."""
        b2 = self.b[:, None] if self.b.ndim == 1 else self.b
        Ab = da.concatenate([self.A, self._rows(b2)], axis=1).rechunk({1: -1})
        R, finite = dask.compute(da.linalg.tsqr(Ab)[1], da.isfinite(self.A).all())
        self.passes += 1
        if not finite:
            raise ValueError("A contains NaN or Inf entries")
        n = self.shape[1]
        rhs = R[:, n] if self.b.ndim == 1 else R[:, n:]
        return backend.qr_r(augment(self, R[:, :n], rhs))

    def matvec(self, v: np.ndarray) -> np.ndarray:
        self.passes += 1
        return (self.A @ v).compute()

    def rmatvec(self, u: np.ndarray) -> np.ndarray:
        self.passes += 1
        return (self.A.T @ self._rows(u)).compute()

    def eye(self, n: int) -> np.ndarray:
        return np.eye(n, dtype=self.work)

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape, dtype=self.work)

    def finish(self, x: np.ndarray) -> np.ndarray:
        return self.prec.result(x)

    def residual(self, x: np.ndarray) -> Any:
        """``|A_bar x - b_bar|`` (one more pass): a float, or one per column."""
        x = self.prec.compute(x)
        r = np.linalg.norm(self.matvec(x) - self.b, axis=0).astype(np.float64)
        res = np.hypot(r, math.sqrt(self.lam) * np.linalg.norm(x, axis=0))
        return float(res) if self.b.ndim == 1 else res
