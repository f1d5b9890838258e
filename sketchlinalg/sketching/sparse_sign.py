"""Sparse sign embedding (OSNAP-style, nnz nonzeros per column)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .._rng import RNGLike
from .._validation import check_int
from ._sparse import SparseSketchingOperator
from ._stream import ColumnStream


def distinct_rows(rng: np.random.Generator, d: int, m: int, nnz: int) -> np.ndarray:
    """For each of ``m`` columns, ``nnz`` distinct rows of ``range(d)``, uniformly (Floyd's
    algorithm, vectorized over columns): shape ``(m, nnz)``."""
    chosen = np.empty((m, nnz), dtype=np.int64)
    for k, top in enumerate(range(d - nnz, d)):
        t = rng.integers(0, top + 1, size=m)
        taken = (chosen[:, :k] == t[:, None]).any(axis=1)
        chosen[:, k] = np.where(taken, top, t)
    return chosen


def _sparse_sign_columns(d: int, nnz: int, gen: np.random.Generator,
                         width: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and signs of ``width`` columns, each of shape ``(width, nnz)``."""
    rows = distinct_rows(gen, d, width, nnz)
    return rows, gen.choice(np.array([-1.0, 1.0]), size=(width, nnz))


class SparseSign(SparseSketchingOperator):
    r"""Sparse sign embedding: column :math:`j` of :math:`S \in \mathbb{R}^{d \times m}` has
    ``nnz`` nonzeros :math:`\pm 1/\sqrt{\mathrm{nnz}}` in distinct rows chosen uniformly, signs
    Rademacher, all columns independent.

    Every column has unit norm and distinct columns are uncorrelated, so
    :math:`E[S^T S] = I_m`; :math:`E\|U^T S^T S U - I\|_F^2 \le (n^2 + n)/d` for orthonormal
    :math:`U` (Nelson and Nguyen 2013, OSNAP; Tropp et al. 2019 recommend ``nnz = 8``).
    Applying it costs :math:`O(\mathrm{nnz}\, m n)` as a sparse product.

    Parameters
    ----------
    d, m : int
        Output and input dimensions, ``1 <= d <= m``.
    nnz : int
        Nonzeros per column, ``1 <= nnz <= d``.
    rng : int, numpy.random.Generator, numpy.random.SeedSequence or None
        Source of randomness (SPEC 7).
    """

    @staticmethod
    def apply_flops(d: int, m: int, nnz: int = 8, **options: Any) -> float:
        return 2.0 * min(nnz, d) * m  # nnz signed adds per input entry

    def __init__(self, d: int, m: int, nnz: int = 8, rng: RNGLike = 0) -> None:
        super().__init__(d, m, rng)
        nnz = check_int(nnz, "nnz", minimum=1)
        if nnz > d:
            raise ValueError(f"nnz must be <= d (distinct rows per column), got nnz={nnz}, d={d}")
        self.nnz = nnz
        self._stream = ColumnStream.from_rng(self._rng, m)

    def _columns(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows, signs = self._stream.draw(
            start, stop, functools.partial(_sparse_sign_columns, self.shape[0], self.nnz))
        cols = np.repeat(np.arange(start, stop), self.nnz)
        return rows.ravel(), cols, signs.ravel() / np.sqrt(self.nnz)

    def __repr__(self) -> str:
        d, m = self.shape
        return f"SparseSign(d={d}, m={m}, nnz={self.nnz})"
