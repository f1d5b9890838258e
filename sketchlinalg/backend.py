"""The backend layer: the array-API namespace of the caller's arrays, and the few
operations the array API standard lacks, one small function per backend.

Public (``import sketchlinalg.backend``): ``seng``, ``theory_checks`` and user code written
against the array API use it to stay backend-agnostic the way ``sketchlinalg`` does.

- dispatch: :func:`namespace`, :func:`backend_name`, :func:`on_cpu`;
- dtypes: :func:`compute_dtype` and :func:`precision` (the half-precision rule: float16 and
  bfloat16 are computed in float32 and returned in the input's dtype);
- host transfers: :func:`from_host`, :func:`to_host` (random data is drawn on the host, so one
  seed gives the same numbers on every backend);
- what the standard lacks: :func:`sparse_from_coo` (sparse products), :func:`scatter_add_rows`,
  :func:`solve_triangular`, :func:`cholesky` (with failure reported as ``None``), :func:`qr`
  and :func:`qr_r` (fast LAPACK paths), :func:`all_finite`;
- randomness: :func:`normalize_rng` and ``RNGLike``, the SPEC 7 ``rng`` argument.

Nothing here imports torch or cupy: a backend is only touched through arrays the caller
passed, so ``import sketchlinalg`` needs NumPy and SciPy alone.
"""

from __future__ import annotations

import functools
import itertools
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np
import scipy.linalg
import scipy.sparse

from ._rng import RNGLike, normalize_rng

__all__ = [
    "Precision",
    "RNGLike",
    "all_finite",
    "backend_name",
    "cholesky",
    "compute_dtype",
    "from_host",
    "namespace",
    "normalize_rng",
    "on_cpu",
    "precision",
    "qr",
    "qr_r",
    "scatter_add_rows",
    "solve_triangular",
    "sparse_from_coo",
    "to_host",
]


def namespace(*arrays: Any) -> Any:
    """The array-API namespace shared by ``arrays`` (NumPy, PyTorch or CuPy)."""
    try:
        return array_api_compat.array_namespace(*arrays)
    except TypeError as exc:
        kinds = ", ".join(sorted({type(a).__name__ for a in arrays}))
        raise TypeError(
            f"expected NumPy, PyTorch or CuPy arrays of one backend, got {kinds}"
        ) from exc


def backend_name(x: Any) -> str:
    """``"numpy"``, ``"torch"`` or ``"cupy"`` for an array of that backend."""
    if array_api_compat.is_torch_array(x):
        return "torch"
    if array_api_compat.is_cupy_array(x):
        return "cupy"
    if array_api_compat.is_numpy_array(x):
        return "numpy"
    raise TypeError(f"expected a NumPy, PyTorch or CuPy array, got {type(x).__name__}")


def compute_dtype(xp: Any, dtype: Any, name: str) -> Any:
    """The floating dtype computations on an array of ``dtype`` run in.

    float32 and float64 are kept; float16 and bfloat16 are computed in float32. Integer,
    boolean and complex arrays are rejected with a ``TypeError`` naming the argument.
    """
    if dtype in (xp.float32, xp.float64):
        return dtype
    half = [xp.float16, getattr(xp, "bfloat16", None)]
    if any(dtype == h for h in half if h is not None):
        return xp.float32
    raise TypeError(
        f"{name} must have a real floating dtype (float16, bfloat16, float32 or float64), "
        f"got {dtype}"
    )


@dataclass(frozen=True)
class Precision:
    """The dtypes of one computation: ``out``, the promoted dtype of its floating inputs (the
    dtype of the result), and ``work``, the dtype it runs in (``compute_dtype(out)``), with
    ``eps`` the unit roundoff of ``work``.

    The one place of the half-precision rule: ``compute(x)`` casts an input to ``work`` and
    ``result(x)`` casts a result back to ``out`` (neither copies when the dtype already fits).
    """

    xp: Any
    out: Any
    work: Any
    eps: float

    def compute(self, x: Any) -> Any:
        """``x`` in the working dtype."""
        return _astype(self.xp, x, self.work)

    def result(self, x: Any) -> Any:
        """``x`` in the result dtype."""
        return _astype(self.xp, x, self.out)


def precision(xp: Any, *dtypes: Any, name: str) -> Precision:
    """The :class:`Precision` of a computation on inputs of ``dtypes`` (promoted by
    ``xp.result_type``); ``name`` is the argument an unsupported dtype is blamed on."""
    out = dtypes[0] if len(dtypes) == 1 else xp.result_type(*dtypes)
    work = compute_dtype(xp, out, name)
    return Precision(xp, out, work, float(xp.finfo(work).eps))


def _astype(xp: Any, x: Any, dtype: Any) -> Any:
    if x.dtype == dtype:
        return x
    if scipy.sparse.issparse(x):
        return x.astype(dtype)
    return xp.astype(x, dtype)


def from_host(x: np.ndarray, like: Any, dtype: Any) -> Any:
    """Copy the host array ``x`` to the backend and device of ``like``, as ``dtype``."""
    xp = namespace(like)
    if backend_name(like) == "numpy":
        return np.asarray(x, dtype=dtype)
    return xp.asarray(x, dtype=dtype, device=array_api_compat.device(like))


def to_host(x: Any) -> np.ndarray:
    """A NumPy copy of an array of any backend."""
    name = backend_name(x)
    if name == "torch":
        x = x.detach().cpu()
        return (x.float() if str(x.dtype) == "torch.bfloat16" else x).numpy()
    if name == "cupy":
        return x.get()
    return np.asarray(x)


def sparse_from_coo(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int], like: Any,
    dtype: Any,
) -> Any:
    """A sparse matrix in the backend of ``like`` from host COO triplets (duplicates summed).

    The result supports ``S @ X`` with a dense 2-D ``X`` of the same backend (on NumPy a
    multi-threaded wrapper of SciPy's product).
    """
    name = backend_name(like)
    host = scipy.sparse.csr_array((vals, (rows, cols)), shape=shape)
    host.sum_duplicates()
    if name == "numpy":
        return _BlockedSparse(host.astype(dtype))
    if name == "torch":
        import torch  # the caller handed us a tensor, so torch is already imported

        dev = like.device
        with warnings.catch_warnings():  # torch flags every CSR tensor as "beta"
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(
                torch.as_tensor(host.indptr, dtype=torch.int64, device=dev),
                torch.as_tensor(host.indices, dtype=torch.int64, device=dev),
                torch.as_tensor(host.data, dtype=dtype, device=dev),
                size=shape,
                check_invariants=False,
            )
    import cupy
    import cupyx.scipy.sparse

    with cupy.cuda.Device(like.device):
        return cupyx.scipy.sparse.csr_matrix(
            (cupy.asarray(host.data, dtype=dtype), cupy.asarray(host.indices),
             cupy.asarray(host.indptr)),
            shape=shape,
        )


class _BlockedSparse:
    """A sparse matrix whose product with a large dense ``X`` runs on every core.

    SciPy's sparse-dense product is single-threaded and releases the GIL. A wide matrix
    (a sketch) is split into column blocks, CSC, whose partial products over their own rows
    of ``X`` are summed; a tall one (an adjoint) into row blocks, CSR, whose products are
    stacked. CSC streams the rows of ``X`` in order (SciPy's CSR product for a wide matrix
    visits them in the order of the column indices, about 2.5x slower for a CountSketch).
    """

    _pool: ThreadPoolExecutor | None = None
    MIN_WORK = 1 << 20  # below this many entries of X, threads cost more than they save

    def __init__(self, S: scipy.sparse.csr_array) -> None:
        self.wide = S.shape[1] >= S.shape[0]
        self.S = S.tocsc() if self.wide else S.tocsr()
        self.shape = S.shape
        cores = os.cpu_count() or 1
        edges = np.linspace(0, S.shape[1] if self.wide else S.shape[0], cores + 1).astype(int)
        self.blocks = [
            (self.S[:, a:b] if self.wide else self.S[a:b], a, b)
            for a, b in itertools.pairwise(edges) if b > a
        ]

    def __matmul__(self, X: np.ndarray) -> np.ndarray:
        if len(self.blocks) == 1 or X.size < self.MIN_WORK:
            return self.S @ X
        if _BlockedSparse._pool is None:
            _BlockedSparse._pool = ThreadPoolExecutor(len(self.blocks))
        if self.wide:
            parts = _BlockedSparse._pool.map(lambda b: b[0] @ X[b[1]:b[2]], self.blocks)
            return functools.reduce(np.add, parts)
        return np.concatenate(list(_BlockedSparse._pool.map(lambda b: b[0] @ X, self.blocks)))


def scatter_add_rows(out: Any, index: Any, values: Any) -> Any:
    """``out[index[k]] += values[k]`` for every k, summing duplicate indices; returns ``out``."""
    name = backend_name(out)
    if name == "numpy":
        np.add.at(out, index, values)
    elif name == "torch":
        out.index_add_(0, index, values)
    else:
        import cupyx

        cupyx.scatter_add(out, index, values)
    return out


def solve_triangular(T: Any, B: Any, *, lower: bool, trans: bool = False) -> Any:
    """Solve ``op(T) X = B`` for triangular ``T`` (``op`` is the transpose when ``trans``)."""
    name = backend_name(T)
    if name == "numpy":
        return scipy.linalg.solve_triangular(T, B, lower=lower, trans=1 if trans else 0,
                                             check_finite=False)
    if name == "torch":
        import torch

        if trans:
            T, lower = T.mT, not lower
        vec = B.ndim == 1
        X = torch.linalg.solve_triangular(T, B[:, None] if vec else B, upper=not lower)
        return X[:, 0] if vec else X
    import cupyx.scipy.linalg

    return cupyx.scipy.linalg.solve_triangular(T, B, lower=lower, trans=1 if trans else 0)


def cholesky(A: Any) -> Any:
    """Lower Cholesky factor of a symmetric ``A``, or None when it is not numerically positive
    definite (NumPy raises, torch reports through ``cholesky_ex``, CuPy may return NaNs)."""
    name = backend_name(A)
    if name == "torch":
        import torch

        L, info = torch.linalg.cholesky_ex(A)
        return None if bool(info != 0) else L
    xp = namespace(A)
    try:
        L = xp.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        return None
    return L if name == "numpy" or bool(xp.all(xp.isfinite(L))) else None


def on_cpu(x: Any) -> bool:
    """Whether ``x`` lives in host memory (NumPy, or a torch tensor on the CPU)."""
    name = backend_name(x)
    return name == "numpy" or (name == "torch" and x.device.type == "cpu")


def qr(A: Any) -> tuple[Any, Any]:
    """Reduced Householder QR ``A = Q R`` of a 2-D ``A`` with at least as many rows as columns.

    NumPy goes through SciPy's LAPACK wrapper (``geqrf``/``orgqr``), about twice as fast as
    ``numpy.linalg.qr`` on tall thin matrices.
    """
    if backend_name(A) == "numpy":
        Q, R = scipy.linalg.qr(A, mode="economic", check_finite=False)
    else:
        Q, R = namespace(A).linalg.qr(A)
    return Q, R


def qr_r(A: Any) -> Any:
    """The ``R`` factor, shape ``(min(m, n), n)``, of a Householder QR of a 2-D ``A`` (``Q`` is
    never formed). Factor ``[A | b]`` to get ``Q^T b`` as the last column of ``R`` for free.
    """
    name = backend_name(A)
    if name == "numpy":
        return np.linalg.qr(A, mode="r")
    if name == "torch":
        import torch

        return torch.linalg.qr(A, mode="r").R
    import cupy

    return cupy.linalg.qr(A, mode="r")


def all_finite(x: Any) -> bool:
    """Whether every entry of the floating array ``x`` is finite.

    One sum decides the common case: a NaN or Inf entry makes the sum NaN or Inf, so a finite
    sum proves every entry finite. Only a non-finite sum (a non-finite entry, or finite
    entries whose sum overflows) pays for the elementwise test, which on torch is about 15x
    slower than the sum.
    """
    xp = namespace(x)
    return bool(xp.isfinite(xp.sum(x))) or bool(xp.all(xp.isfinite(x)))
