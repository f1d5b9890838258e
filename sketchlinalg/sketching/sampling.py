"""Uniform row sampling without replacement."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse

from .. import backend
from .._rng import RNGLike
from ._base import SketchingOperator


class RowSampling(SketchingOperator):
    r"""Uniform row sampling: :math:`S = \sqrt{m/d}\, R` with :math:`R` selecting ``d``
    distinct rows of the identity, chosen uniformly without replacement.

    :math:`E[S^T S] = (m/d) E[R^T R] = I_m`. Applying it is a gather, :math:`O(d n)`.
    It embeds incoherent subspaces only: a coherent input (columns of the identity) is
    annihilated unless its rows happen to be drawn.

    Parameters
    ----------
    d, m : int
        Output and input dimensions, ``1 <= d <= m``.
    rng : int, numpy.random.Generator, numpy.random.SeedSequence or None
        Source of randomness (SPEC 7).
    """

    @staticmethod
    def apply_flops(d: int, m: int, **options: Any) -> float:
        return 2.0 * d  # d scaled picks

    def __init__(self, d: int, m: int, rng: RNGLike = 0) -> None:
        super().__init__(d, m, rng)
        self.rows = np.sort(self._rng.choice(m, size=d, replace=False))
        self.scale = float(np.sqrt(m / d))

    def host_columns(self, start: int, stop: int) -> scipy.sparse.csr_array:
        """Columns ``[start, stop)`` as a ``d x (stop - start)`` SciPy matrix."""
        lo, hi = np.searchsorted(self.rows, [start, stop])
        kept = np.arange(lo, hi)
        return scipy.sparse.csr_array(
            (np.full(kept.size, self.scale), (kept, self.rows[lo:hi] - start)),
            shape=(self.shape[0], stop - start))

    def _index(self, like: Any, xp: Any) -> Any:
        return self._on("rows", like, "int64",
                        lambda: backend.from_host(self.rows, like, xp.int64))

    def _apply(self, A: Any, xp: Any) -> Any:
        return xp.take(A, self._index(A, xp), axis=0) * self.scale

    def _apply_adjoint(self, Y: Any, xp: Any) -> Any:
        return backend.put_rows(self.rows, Y * self.scale, self.shape[1])

    def _apply_sparse(self, A: scipy.sparse.sparray) -> np.ndarray:
        return scipy.sparse.csr_array(A)[self.rows].toarray() * self.scale
