"""The sketching-operator interface shared by every family."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import array_api_compat
import numpy as np
import scipy.sparse

from .. import backend
from .._rng import RNGLike, normalize_rng
from .._validation import check_dense, check_int


class SketchingOperator:
    """A random linear map ``S: R^m -> R^d`` (shape ``(d, m)``, ``d <= m``) with ``E[S^T S] = I``.

    ``S @ A`` sketches the rows of ``A`` (shape ``(m,)`` or ``(m, n)``), ``B @ S.T``
    sketches the columns of ``B`` (shape ``(n, m)``), ``S.T @ Y`` applies the adjoint.
    Results keep the backend, device and floating dtype of the input; float16 and bfloat16
    are computed in float32. A ``scipy.sparse`` matrix is accepted on either side (``S @ A``,
    ``B @ S.T``, ``Y @ S``) and gives a dense NumPy result; an input with no columns (or, on
    the left, no rows) gives an empty result of the matching shape. The random data lives on
    the host (drawn once from ``rng``) and is copied to a backend and device the first time
    it is needed there. A Dask array chunked by rows gives a lazy Dask result, computed in
    one pass with each task drawing its own columns of ``S`` (equal to the in-memory result
    for the seed, to rounding); the SRHT mixes all rows and refuses one (``BlockSRHT`` is its
    blocked form).
    """

    # Make NumPy defer ``ndarray @ S`` to our ``__rmatmul__`` instead of building an object array.
    __array_ufunc__ = None
    # Host data that the family redraws from its stream when needed: left out of a pickle
    # (a Dask task carries the operator to its worker, which draws only its own columns).
    _regenerable: tuple[str, ...] = ()

    def __init__(self, d: int, m: int, rng: RNGLike = 0) -> None:
        d = check_int(d, "d", minimum=1)
        m = check_int(m, "m", minimum=1)
        if d > m:
            raise ValueError(f"d must be <= m (a sketch reduces the dimension), got d={d}, m={m}")
        self.shape = (d, m)
        self._rng = normalize_rng(rng)
        self._cache: dict[tuple[str, str, str, str], Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in self._regenerable}
        state["_cache"] = {}  # backend copies stay where they were made
        return state

    # -- what each family provides -------------------------------------------------------
    @staticmethod
    def apply_flops(d: int, m: int, **options: Any) -> float:
        """Flops (a multiply-add is 2) of applying a ``d x m`` operator of this family to one
        column, from the shape alone: what cost models compare families by."""
        raise NotImplementedError

    def _apply(self, A: Any, xp: Any) -> Any:
        """``S @ A`` for a dense 2-D ``A`` of shape ``(m, n)`` in a computation dtype."""
        raise NotImplementedError

    def _apply_adjoint(self, Y: Any, xp: Any) -> Any:
        """``S.T @ Y`` for a dense 2-D ``Y`` of shape ``(d, n)`` in a computation dtype."""
        raise NotImplementedError

    def _apply_sparse(self, A: scipy.sparse.sparray) -> np.ndarray:
        """``S @ A`` for a scipy.sparse ``A``; the default densifies it first."""
        return self._apply(np.asarray(A.toarray(), dtype=np.float64), np)

    # Whether the columns of a row block can be applied alone (False for operators that mix
    # all rows, such as the SRHT): what ``S @ A`` on a Dask array needs.
    _columns_alone = True

    def _apply_columns(self, start: int, stop: int, X: np.ndarray) -> np.ndarray:
        """``S[:, start:stop] @ X`` for the rows ``[start, stop)`` of ``A`` (host ``X`` in a
        computation dtype), from the columns the family draws alone (``host_columns``)."""
        return self.host_columns(start, stop).astype(X.dtype) @ X  # type: ignore[attr-defined]

    # -- shared machinery ----------------------------------------------------------------
    def _on(self, key: str, like: Any, dtype: Any, build: Callable[[], Any]) -> Any:
        """Cache ``build()`` (a backend copy of host random data) per backend, device, dtype."""
        ident = (key, backend.backend_name(like), str(array_api_compat.device(like)), str(dtype))
        if ident not in self._cache:
            self._cache[ident] = build()
        return self._cache[ident]

    def _dense_call(self, A: Any, rows: int, name: str, fn: Callable[[Any, Any], Any]) -> Any:
        """``fn`` (``S @ X`` or ``S.T @ X``) on the dense ``A`` with ``rows`` rows, computed in
        the working dtype and returned in ``A``'s; no columns give an empty result."""
        xp, _ = check_dense(A, name)
        prec = backend.precision(xp, A.dtype, name=name)
        if A.shape[0] != rows:
            raise ValueError(
                f"shape mismatch: {name} has {A.shape[0]} rows but the operator needs {rows} "
                f"(operator shape {self.shape}, {name} shape {tuple(A.shape)})"
            )
        vector = A.ndim == 1
        X = A[:, None] if vector else A
        if X.shape[1] == 0:
            out_rows = self.shape[0] + self.shape[1] - rows  # the other side of the operator
            return xp.zeros((out_rows, 0), dtype=A.dtype, device=array_api_compat.device(A))
        Y = prec.result(fn(prec.compute(X), xp))
        return Y[:, 0] if vector else Y

    def _sparse_call(self, A: Any, name: str) -> np.ndarray:
        """``S @ A`` for a scipy.sparse ``A`` of shape ``(m, n)``: dense NumPy, in ``A``'s
        dtype (scipy.sparse has no half precision)."""
        if A.ndim != 2 or A.shape[0] != self.shape[1]:
            raise ValueError(
                f"shape mismatch: {name} has shape {A.shape} but the operator needs "
                f"{self.shape[1]} rows (operator shape {self.shape})"
            )
        if not np.issubdtype(A.dtype, np.floating):
            raise TypeError(f"{name} must have a real floating dtype, got {A.dtype}")
        if A.shape[1] == 0:
            return np.zeros((self.shape[0], 0), dtype=A.dtype)
        return self._apply_sparse(A).astype(A.dtype, copy=False)

    def __matmul__(self, A: Any) -> Any:
        if array_api_compat.is_dask_array(A):
            from .._dask.sketch import sketch_rows

            return sketch_rows(self, A)
        if scipy.sparse.issparse(A):
            return self._sparse_call(A, "A")
        return self._dense_call(A, self.shape[1], "A", self._apply)

    def __rmatmul__(self, Y: Any) -> Any:
        # Y @ S = (S.T @ Y.T).T with Y of shape (n, d).
        if not scipy.sparse.issparse(Y):
            _backend_check_2d(Y, "Y")
        return _transpose(self.T @ _transpose(Y))

    @property
    def T(self) -> Adjoint:
        """The adjoint ``S^T: R^d -> R^m``; ``B @ S.T`` sketches the columns of ``B``."""
        return Adjoint(self)

    def to_dense(self, like: Any = None) -> Any:
        """The ``d x m`` matrix, on the backend, device and dtype of ``like`` (NumPy float64
        when ``like`` is None). ``like`` must be an array with a real floating dtype
        (``TypeError`` otherwise); half precision is computed in float32."""
        xp, prec = self._like(like)
        like = np.zeros(1) if like is None else like
        # The adjoint of the d x d identity: O(d m) memory, where S @ I_m would need m^2.
        eye = xp.eye(self.shape[0], dtype=prec.work, device=array_api_compat.device(like))
        return prec.result(self._apply_adjoint(eye, xp).T)

    @staticmethod
    def _like(like: Any) -> tuple[Any, backend.Precision]:
        """Validate the ``like`` of ``to_dense`` (the dtype rule every family shares)."""
        if like is None:
            like = np.zeros(1)
        xp, _ = check_dense(like, "like", ndim=tuple(range(8)))
        return xp, backend.precision(xp, like.dtype, name="like")

    def __repr__(self) -> str:
        d, m = self.shape
        return f"{type(self).__name__}(d={d}, m={m})"


class Adjoint:
    """``S.T`` for a sketching operator ``S``: shape ``(m, d)``."""

    __array_ufunc__ = None

    def __init__(self, op: SketchingOperator) -> None:
        self.op = op
        self.shape = (op.shape[1], op.shape[0])

    @property
    def T(self) -> SketchingOperator:
        return self.op

    def __matmul__(self, Y: Any) -> Any:
        if scipy.sparse.issparse(Y):
            Y = Y.toarray()
        return self.op._dense_call(Y, self.op.shape[0], "Y", self.op._apply_adjoint)

    def __rmatmul__(self, B: Any) -> Any:
        # B @ S.T = (S @ B.T).T with B of shape (n, m) or (m,).
        if scipy.sparse.issparse(B):  # dense NumPy, as S @ B
            if B.ndim != 2 or B.shape[1] != self.shape[0]:
                raise ValueError(
                    f"shape mismatch: B has shape {B.shape} but B @ S.T needs {self.shape[0]} "
                    f"columns (S.T shape {self.shape})"
                )
            return self.op._sparse_call(B.T, "B").T
        if getattr(B, "ndim", None) == 1 or array_api_compat.is_dask_array(B):
            return _transpose(self.op @ _transpose(B))  # a Dask B: chunked by columns
        _backend_check_2d(B, "B")
        return _transpose(self.op @ _transpose(B))

    def to_dense(self, like: Any = None) -> Any:
        return _transpose(self.op.to_dense(like))

    def __repr__(self) -> str:
        return f"{self.op!r}.T"


def _backend_check_2d(X: Any, name: str) -> None:
    check_dense(X, name, ndim=(2,))


def _transpose(X: Any) -> Any:
    return X.T if X.ndim == 2 else X
