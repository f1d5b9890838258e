"""One view of the matrix inputs the routines and drivers accept: dense arrays of any
backend, ``scipy.sparse`` matrices and ``scipy.sparse.linalg.LinearOperator``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

from ._validation import check_dense, check_finite


@dataclass
class Matrix:
    """``A`` seen through ``A @ X`` and ``A.T @ Y`` in one namespace and working dtype.

    ``kind`` is ``"dense"`` (``data`` is the array itself, in the working dtype),
    ``"sparse"`` or ``"operator"`` (NumPy only).
    """

    data: Any
    kind: str
    xp: Any
    dtype: Any

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    def matmat(self, X: Any) -> Any:
        """``A @ X`` for ``X`` of shape ``(n,)`` or ``(n, k)``."""
        if self.kind == "operator":
            return self.data.matmat(X) if X.ndim == 2 else self.data.matvec(X)
        return self.data @ X

    def rmatmat(self, Y: Any) -> Any:
        """``A.T @ Y`` for ``Y`` of shape ``(m,)`` or ``(m, k)``."""
        if self.kind == "operator":
            return self.data.rmatmat(Y) if Y.ndim == 2 else self.data.rmatvec(Y)
        return self.data.T @ Y


def as_matrix(A: Any, name: str = "A", *, check_values: bool = True) -> Matrix:
    """Validate a 2-D matrix input and wrap it.

    Raises ``TypeError`` for unsupported objects or dtypes and ``ValueError`` for wrong
    dimensions or (``check_values``) NaN/Inf entries of a dense or sparse matrix.
    """
    if isinstance(A, scipy.sparse.linalg.LinearOperator):
        if len(A.shape) != 2:
            raise ValueError(f"{name} must be 2-D, got shape {A.shape}")
        dtype = np.dtype(A.dtype) if A.dtype is not None else np.dtype(np.float64)
        if dtype.kind != "f":
            raise TypeError(f"{name} must have a real floating dtype, got {dtype}")
        return Matrix(A, "operator", np, np.float32 if dtype == np.float32 else np.float64)
    if scipy.sparse.issparse(A):
        if A.ndim != 2:
            raise ValueError(f"{name} must be 2-D, got shape {A.shape}")
        if A.dtype.kind != "f":
            raise TypeError(f"{name} must have a real floating dtype, got {A.dtype}")
        A = scipy.sparse.csr_array(A)
        if check_values and not np.all(np.isfinite(A.data)):
            raise ValueError(f"{name} contains NaN or Inf entries")
        dtype = np.float32 if A.dtype == np.float32 else np.float64
        return Matrix(A.astype(dtype, copy=False), "sparse", np, dtype)
    xp, work = check_dense(A, name, ndim=(2,))
    if A.dtype != work:
        A = xp.astype(A, work)
    if check_values:
        check_finite(xp, A, name)
    return Matrix(A, "dense", xp, work)
