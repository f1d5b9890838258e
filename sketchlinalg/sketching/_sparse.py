"""Shared machinery of the sparse families (CountSketch, sparse sign): the operator is kept
as host index and value arrays and applied as a sparse product, never as a dense matrix."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import scipy.sparse

from .. import backend
from ._base import SketchingOperator
from ._stream import ColumnStream


class SparseSketchingOperator(SketchingOperator):
    """A sketch stored as COO triplets ``(rows, cols, values)`` of its ``d x m`` matrix, drawn
    by blocks of columns (:class:`~sketchlinalg.sketching._stream.ColumnStream`) the first time
    they are needed; each family provides ``_columns`` (rows and values of a range of
    columns, column-major)."""

    _regenerable = ("_triplets",)
    _stream: ColumnStream

    def _columns(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row indices, column indices and values of the nonzeros of columns
        ``[start, stop)``, column by column."""
        raise NotImplementedError

    @functools.cached_property
    def _triplets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._columns(0, self.shape[1])

    @property
    def rows(self) -> np.ndarray:
        return self._triplets[0]

    @property
    def cols(self) -> np.ndarray:
        return self._triplets[1]

    @property
    def values(self) -> np.ndarray:
        return self._triplets[2]

    def host_columns(self, start: int, stop: int) -> scipy.sparse.csr_array:
        """Columns ``[start, stop)`` as a ``d x (stop - start)`` SciPy matrix, drawn alone."""
        rows, cols, values = self._columns(start, stop)
        return scipy.sparse.csr_array((values, (rows, cols - start)),
                                      shape=(self.shape[0], stop - start))

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
