"""The backend layer: the array-API namespace of the caller's arrays, and the few
operations the array API standard lacks, one small function per backend.

Public (``import sketchlinalg.backend``): ``seng``, ``theory_checks`` and user code written
against the array API use it to stay backend-agnostic the way ``sketchlinalg`` does.

- dispatch: :func:`namespace`, :func:`backend_name`, :func:`on_cpu`;
- dtypes: :func:`compute_dtype` and :func:`precision` (the half-precision rule: float16 and
  bfloat16 are computed in float32 and returned in the input's dtype);
- host transfers: :func:`from_host`, :func:`to_host` (random data is drawn on the host, so one
  seed gives the same numbers on every backend);
- what the standard lacks: :func:`sparse_from_coo` (sparse products), :func:`scatter_add_rows`
  and :func:`put_rows` (scatters; JAX arrays are immutable), :func:`solve_triangular`,
  :func:`cholesky` (with failure reported as ``None``), :func:`qr` and :func:`qr_r` (fast
  LAPACK paths), :func:`all_finite`, :func:`check_concrete` (JAX tracers rejected);
- randomness: :func:`normalize_rng` and ``RNGLike``, the SPEC 7 ``rng`` argument.

Nothing here imports torch or cupy: a backend is only touched through arrays the caller
passed, so ``import sketchlinalg`` needs NumPy and SciPy alone.
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
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
    "check_concrete",
    "cholesky",
    "compute_dtype",
    "from_host",
    "namespace",
    "normalize_rng",
    "on_cpu",
    "precision",
    "put_rows",
    "qr",
    "qr_r",
    "scatter_add_rows",
    "solve_triangular",
    "sparse_from_coo",
    "to_host",
]


def namespace(*arrays: Any) -> Any:
    """The array-API namespace shared by ``arrays``.

    Parameters
    ----------
    *arrays : array
        Arrays of one backend: NumPy, PyTorch, CuPy, JAX or any library that conforms to the
        array API standard (array-api-compat's ``array_namespace`` decides).

    Returns
    -------
    namespace
        The standard's functions for those arrays (``xp.linalg``, ``xp.take``, ...).

    Raises
    ------
    TypeError
        For objects that are not arrays, or arrays of different backends.
    """
    try:
        return array_api_compat.array_namespace(*arrays)
    except TypeError as exc:
        kinds = ", ".join(sorted({type(a).__name__ for a in arrays}))
        raise TypeError(
            f"expected arrays of one array-API backend (NumPy, PyTorch, CuPy, JAX, ...), got "
            f"{kinds}"
        ) from exc


def backend_name(x: Any) -> str:
    """The backend of the array ``x``: ``"numpy"``, ``"torch"``, ``"cupy"``, ``"jax"``, or
    for any other array-API library the name of its namespace module (e.g.
    ``"array_api_strict"``), which selects the generic code of this module.

    Raises ``TypeError`` for an object that is not an array.
    """
    if array_api_compat.is_torch_array(x):
        return "torch"
    if array_api_compat.is_cupy_array(x):
        return "cupy"
    if array_api_compat.is_numpy_array(x):
        return "numpy"
    if array_api_compat.is_jax_array(x):
        return "jax"
    if not array_api_compat.is_array_api_obj(x):
        raise TypeError(f"expected an array of an array-API backend, got {type(x).__name__}")
    return str(namespace(x).__name__)


def check_concrete(x: Any, name: str) -> None:
    """Reject a JAX tracer (an array inside ``jax.jit``, ``vmap`` or ``grad``) with a
    ``TypeError`` naming the argument: the routines here run eagerly, with stopping rules,
    rank decisions and factorization fallbacks that read values on the host, which a traced
    computation cannot do."""
    jax = sys.modules.get("jax")  # a tracer exists only if the caller imported jax
    if jax is not None and isinstance(x, jax.core.Tracer):
        raise TypeError(
            f"{name} is a JAX tracer (inside jax.jit, vmap or grad): sketchlinalg runs eagerly "
            f"(its stopping rules and rank decisions read values on the host); call it on "
            f"concrete JAX arrays, outside the transformation"
        )


def compute_dtype(xp: Any, dtype: Any, name: str) -> Any:
    """The floating dtype computations on an array of ``dtype`` run in.

    float32 and float64 are kept; float16 and bfloat16 are computed in float32. Integer,
    boolean and complex arrays are rejected with a ``TypeError`` naming the argument.
    """
    if dtype in (xp.float32, xp.float64):
        return dtype
    half = [getattr(xp, "float16", None), getattr(xp, "bfloat16", None)]  # not in the standard
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
    """Copy the host array ``x`` to the backend and device of ``like``, as ``dtype``.

    Random data is drawn on the host and copied by this function, which is why one seed
    gives the same numbers on every backend and device.

    Parameters
    ----------
    x : numpy.ndarray
        The host data.
    like : array
        An array of the target backend and device.
    dtype : dtype
        A dtype of that backend (e.g. ``like.dtype`` or ``xp.int64``). On JAX, float64 and
        int64 need ``jax_enable_x64`` (JAX's own rule; without it JAX makes them 32-bit).

    Returns
    -------
    array
        A new array on ``like``'s backend and device.
    """
    xp = namespace(like)
    if backend_name(like) == "numpy":
        return np.asarray(x, dtype=dtype)
    return xp.asarray(x, dtype=dtype, device=array_api_compat.device(like))


def to_host(x: Any) -> np.ndarray:
    """A NumPy copy of an array of any backend (torch bfloat16 comes back as float32, which
    holds it exactly; other libraries without ``__array__`` go through DLPack)."""
    name = backend_name(x)
    if name == "torch":
        x = x.detach().cpu()
        return (x.float() if str(x.dtype) == "torch.bfloat16" else x).numpy()
    if name == "cupy":
        return x.get()
    if name in ("numpy", "jax"):
        return np.asarray(x)
    return np.from_dlpack(x)


def sparse_from_coo(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int], like: Any,
    dtype: Any,
) -> Any:
    """A sparse matrix in the backend of ``like`` from host COO triplets (duplicates summed).

    The array API standard has no sparse arrays. The result supports ``S @ X`` with a dense
    2-D ``X`` of the same backend: on NumPy a multi-threaded wrapper of SciPy's product, on
    PyTorch a CSR tensor, on CuPy a ``cupyx.scipy.sparse`` matrix; on JAX and every other
    backend a padded-rows (ELLPACK) layout applied with the standard's ``take`` and a sum,
    which needs no scatter and so no in-place update.

    Parameters
    ----------
    rows, cols, vals : numpy.ndarray
        The COO triplets on the host.
    shape : tuple of int
        ``(rows, columns)`` of the matrix.
    like : array
        An array of the target backend and device.
    dtype : dtype
        The dtype of the values, a dtype of that backend.
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
    if name != "cupy":
        return _PaddedRows(host, like, dtype)
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


class _PaddedRows:
    """A sparse matrix as padded rows (ELLPACK): row ``i`` holds ``k`` column indices and
    values, ``k`` the largest row count, short rows padded with a column that points to an
    appended zero row of ``X``. ``S @ X`` is one ``take`` of the rows of ``X``, a product and a
    sum over the ``k`` slots: only the array API standard, no scatter (JAX arrays are
    immutable; the standard has no scatter-add). Memory ``rows * k * n`` per product, which
    is bounded by chunking the columns of ``X``."""

    MAX_ENTRIES = 1 << 24  # of the gathered (rows, k, chunk) block

    def __init__(self, S: scipy.sparse.csr_array, like: Any, dtype: Any) -> None:
        self.shape = S.shape
        rows, cols = S.shape
        counts = np.diff(S.indptr)
        self.width = max(int(counts.max()) if rows else 0, 1)
        index = np.full((rows, self.width), cols, dtype=np.int64)  # cols: the zero row
        values = np.zeros((rows, self.width))
        slot = np.arange(S.nnz) - np.repeat(S.indptr[:-1], counts)
        owner = np.repeat(np.arange(rows), counts)
        index[owner, slot] = S.indices
        values[owner, slot] = S.data
        self.xp = namespace(like)
        self.index = from_host(index.ravel(), like, self.xp.int64)
        self.values = from_host(values[:, :, None], like, dtype)

    def __matmul__(self, X: Any) -> Any:
        xp, (rows, _), n = self.xp, self.shape, X.shape[1]
        dev = array_api_compat.device(X)
        padded = xp.concat([X, xp.zeros((1, n), dtype=X.dtype, device=dev)], axis=0)
        step = max(1, self.MAX_ENTRIES // max(rows * self.width, 1))
        parts = []
        for s in range(0, n, step):
            block = xp.take(padded[:, s:min(s + step, n)], self.index, axis=0)
            block = xp.reshape(block, (rows, self.width, block.shape[1]))
            parts.append(xp.sum(block * self.values, axis=1))
        if not parts:
            return xp.zeros((rows, 0), dtype=X.dtype, device=dev)
        return parts[0] if len(parts) == 1 else xp.concat(parts, axis=1)


def scatter_add_rows(out: Any, index: Any, values: Any) -> Any:
    """``out[index[k]] += values[k]`` for every ``k``, summing duplicate indices.

    Always use the return value: ``out`` is updated in place and returned on NumPy, PyTorch
    and CuPy, while on JAX (immutable arrays: ``out.at[index].add(values)``) and on other
    backends (a padded-rows sparse product, :func:`sparse_from_coo`) a new array is returned.

    Parameters
    ----------
    out : array of shape (p, n) or (p,)
    index : integer array of shape (k,), same backend
    values : array of shape (k, n) or (k,), same backend and dtype as ``out``
    """
    name = backend_name(out)
    if name == "numpy":
        np.add.at(out, index, values)
    elif name == "torch":
        out.index_add_(0, index, values)
    elif name == "cupy":
        import cupyx

        cupyx.scatter_add(out, index, values)
    elif name == "jax":
        return out.at[index].add(values)
    else:
        rows = to_host(index).astype(np.int64)
        vector = values.ndim == 1
        V = values[:, None] if vector else values
        P = sparse_from_coo(rows, np.arange(rows.size), np.ones(rows.size),
                            (out.shape[0], rows.size), like=values, dtype=values.dtype)
        added = P @ V
        return out + (added[:, 0] if vector else added)
    return out


def put_rows(index: np.ndarray, values: Any, rows: int) -> Any:
    """The ``rows x n`` array whose row ``index[k]`` is ``values[k]`` (distinct indices) and
    whose other rows are zero: a scatter where the backend has one (NumPy, PyTorch, CuPy;
    ``.at[].set`` on JAX), otherwise a gather with the inverse index, as the standard has
    no assignment through an integer array.

    Parameters
    ----------
    index : numpy.ndarray of shape (k,)
        Distinct row numbers, on the host.
    values : array of shape (k, n)
    rows : int
    """
    xp, name = namespace(values), backend_name(values)
    dev = array_api_compat.device(values)
    if name in ("numpy", "torch", "cupy", "jax"):
        out = xp.zeros((rows, values.shape[1]), dtype=values.dtype, device=dev)
        where = from_host(index, like=values, dtype=xp.int64)
        if name == "jax":
            return out.at[where].set(values)
        out[where] = values
        return out
    inverse = np.full(rows, index.size, dtype=np.int64)  # index.size: an appended zero row
    inverse[index] = np.arange(index.size)
    padded = xp.concat([values, xp.zeros((1, values.shape[1]), dtype=values.dtype,
                                         device=dev)], axis=0)
    return xp.take(padded, from_host(inverse, like=values, dtype=xp.int64), axis=0)


def solve_triangular(T: Any, B: Any, *, lower: bool, trans: bool = False) -> Any:
    """Solve ``op(T) X = B`` for a square triangular ``T`` (``op`` is the transpose when
    ``trans``), ``B`` of shape ``(n,)`` or ``(n, k)``.

    The standard's ``linalg`` has no triangular solve: SciPy's on NumPy, ``torch.linalg`` on
    PyTorch, ``cupyx.scipy.linalg`` on CuPy, ``jax.scipy.linalg`` on JAX. Any other backend
    gets the standard's general ``linalg.solve`` (an LU factorization, :math:`O(n^3)`, that
    ignores the structure but is backward stable; the solves here are of small factors).
    """
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
    if name == "cupy":
        import cupy
        import cupyx.scipy.linalg

        if 0 in B.shape:  # cuBLAS's trsm rejects an empty right-hand side
            return cupy.empty(B.shape, dtype=cupy.result_type(T, B))
        return cupyx.scipy.linalg.solve_triangular(T, B, lower=lower, trans=1 if trans else 0)
    if name == "jax":
        import jax.scipy.linalg

        return jax.scipy.linalg.solve_triangular(T, B, lower=lower, trans=1 if trans else 0)
    xp = namespace(T, B)
    vec = B.ndim == 1
    X = xp.linalg.solve(T.T if trans else T, B[:, None] if vec else B)
    return X[:, 0] if vec else X


def cholesky(A: Any) -> Any:
    """Lower Cholesky factor of a symmetric ``A``, or None when it is not numerically positive
    definite.

    The standard's ``linalg.cholesky`` leaves failure to the library: NumPy (and libraries
    built on it) raise, torch reports through ``cholesky_ex``, CuPy and JAX return NaNs. This
    function turns each into None.
    """
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
    return L if name == "numpy" or all_finite(L) else None


def on_cpu(x: Any) -> bool:
    """Whether ``x`` lives in host memory and is computed eagerly, one library call at a time
    (NumPy, or a torch tensor on the CPU): where blocking a computation for the CPU's caches
    pays. JAX (which compiles and fuses), CuPy and unknown backends give False."""
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
        Q, R = namespace(A).linalg.qr(A)  # the standard's default mode is "reduced"
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
    if name == "cupy":
        import cupy

        return cupy.linalg.qr(A, mode="r")
    if name == "jax":
        return namespace(A).linalg.qr(A, mode="r")
    return namespace(A).linalg.qr(A)[1]  # the standard has no mode="r": reduced QR


def all_finite(x: Any) -> bool:
    """Whether every entry of the floating array ``x`` is finite.

    One sum decides the common case: a NaN or Inf entry makes the sum NaN or Inf, so a finite
    sum proves every entry finite. Only a non-finite sum (a non-finite entry, or finite
    entries whose sum overflows) pays for the elementwise test, which on torch is about 15x
    slower than the sum.
    """
    xp = namespace(x)
    return bool(xp.isfinite(xp.sum(x))) or bool(xp.all(xp.isfinite(x)))
