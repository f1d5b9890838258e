"""Shared machinery of the sparse families (CountSketch, sparse sign): the operator is kept
as host index and value arrays and applied as a sparse product, never as a dense matrix."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse

from .. import backend
from ._base import SketchingOperator


class SparseSketchingOperator(SketchingOperator):
    """A sketch stored as COO triplets ``(rows, cols, values)`` of its ``d x m`` matrix."""

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray

    def _sparse(self, like: Any, transpose: bool = False) -> Any:
        d, m = self.shape
        if transpose:
            return self._on("S.T", like, like.dtype, lambda: backend.sparse_from_coo(
                self.cols, self.rows, self.values, (m, d), like, like.dtype))
        return self._on("S", like, like.dtype, lambda: backend.sparse_from_coo(
            self.rows, self.cols, self.values, (d, m), like, like.dtype))

    def _apply(self, A: Any, xp: Any) -> Any:
        return self._sparse(A) @ A

    def _apply_adjoint(self, Y: Any, xp: Any) -> Any:
        return self._sparse(Y, transpose=True) @ Y

    def _apply_sparse(self, A: scipy.sparse.sparray) -> np.ndarray:
        host = scipy.sparse.csr_array((self.values, (self.rows, self.cols)), shape=self.shape)
        return (host @ A).toarray()
