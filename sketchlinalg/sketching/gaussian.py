"""Gaussian sketch: i.i.d. N(0, 1/d) entries."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse

from .. import backend
from .._rng import RNGLike
from ._base import SketchingOperator


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
        Source of randomness (SPEC 7); the matrix is drawn once, in float64, on the host.
    """

    @staticmethod
    def apply_flops(d: int, m: int, **options: Any) -> float:
        return 2.0 * d * m  # a dense GEMV

    def __init__(self, d: int, m: int, rng: RNGLike = 0) -> None:
        super().__init__(d, m, rng)
        self.matrix = self._rng.standard_normal((d, m))
        self.matrix *= 1.0 / np.sqrt(d)

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
