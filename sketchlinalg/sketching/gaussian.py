"""Gaussian sketch: i.i.d. N(0, 1/d) entries."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import scipy.sparse

from .. import backend
from .._rng import RNGLike
from ._base import SketchingOperator
from ._stream import ColumnStream


def _gaussian_columns(d: int, gen: np.random.Generator, width: int) -> tuple[np.ndarray]:
    """``width`` columns of the sketch, as rows of a ``(width, d)`` array."""
    block = gen.standard_normal((width, d))
    block *= 1.0 / np.sqrt(d)
    return (block,)


class GaussianSketch(SketchingOperator):
    r"""Dense Gaussian sketch :math:`S \in \mathbb{R}^{d \times m}`, :math:`S_{ij} \sim N(0, 1/d)`.

    :math:`E[S^T S] = I_m`. Applying it costs one GEMM, :math:`O(d m n)`; it is the
    reference embedding of the theory (singular values of :math:`S U` for orthonormal
    :math:`U \in \mathbb{R}^{m \times n}` lie in :math:`1 \pm (\sqrt{n/d} + t/\sqrt{d})`
    with probability :math:`\ge 1 - 2 e^{-t^2/2}`; Davidson and Szarek 2001).

    Parameters
    ----------
    d, m : int
        Output and input dimensions, ``1 <= d <= m``.
    rng : int, numpy.random.Generator, numpy.random.SeedSequence or None
        Source of randomness (SPEC 7); the matrix is drawn in float64, on the host, by
        blocks of columns (so that a Dask task can draw the columns of its rows alone), the
        first time it is needed.
    """

    @staticmethod
    def apply_flops(d: int, m: int, **options: Any) -> float:
        return 2.0 * d * m  # a dense GEMV
    _regenerable = ("matrix",)

    def __init__(self, d: int, m: int, rng: RNGLike = 0) -> None:
        super().__init__(d, m, rng)
        self._stream = ColumnStream.from_rng(self._rng, m)

    @functools.cached_property
    def matrix(self) -> np.ndarray:
        """The ``d x m`` matrix on the host, float64."""
        return self.host_columns(0, self.shape[1])

    def host_columns(self, start: int, stop: int) -> np.ndarray:
        """Columns ``[start, stop)`` of the matrix, drawn alone (equal to the same columns
        of :attr:`matrix`)."""
        # Whole blocks are drawn straight into the result: the matrix is often the largest
        # array of the computation, so no second copy of it (blocks, then their join).
        d = self.shape[0]
        out = np.empty((stop - start, d))
        for gen, lo, hi in self._stream.blocks(start, stop):
            a, b = max(lo, start), min(hi, stop)
            if (a, b) == (lo, hi):
                gen.standard_normal(out=out[a - start:b - start])
            else:
                out[a - start:b - start] = gen.standard_normal((hi - lo, d))[a - lo:b - lo]
        out *= 1.0 / np.sqrt(d)  # as _gaussian_columns scales each block: the same numbers
        return out.T

    def _apply_columns(self, start: int, stop: int, X: np.ndarray) -> np.ndarray:
        # One block of the stream at a time (d x 4096 numbers), whatever the rows of X: a
        # Dask task's memory stays that of its chunk.
        d = self.shape[0]
        out = np.zeros((d, X.shape[1]), dtype=X.dtype)
        for gen, lo, hi in self._stream.blocks(start, stop):
            (cols,) = _gaussian_columns(d, gen, hi - lo)
            a, b = max(lo, start), min(hi, stop)
            out += cols[a - lo:b - lo].T.astype(X.dtype, copy=False) @ X[a - start:b - start]
        return out

    def _dense(self, like: Any) -> Any:
        return self._on("G", like, like.dtype,
                        lambda: backend.from_host(self.matrix, like, like.dtype))

    def _apply(self, A: Any, xp: Any) -> Any:
        return self._dense(A) @ A

    def _apply_adjoint(self, Y: Any, xp: Any) -> Any:
        return self._dense(Y).T @ Y

    def _apply_sparse(self, A: scipy.sparse.sparray) -> np.ndarray:
        return np.asarray((A.T @ self.matrix.T).T)

    def to_dense(self, like: Any = None) -> Any:
        # The stored matrix itself, rounded once to like's dtype (same validation as the base).
        self._like(like)
        if like is None:
            return self.matrix.copy()
        return backend.from_host(self.matrix, like, like.dtype)
