"""``S @ A`` for a Dask array ``A`` chunked by rows, lazily and in one pass over ``A``.

A row block ``A[a:b]`` contributes ``S[:, a:b] @ A[a:b]`` (a ``d x n`` partial sketch): the
task that reads the block draws the operator's columns ``[a, b)`` itself from the
operator's seed (``host_columns``), so nothing of size ``m`` travels with the graph, and the
partial sketches are summed by Dask's tree reduction.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend


def check_dask_matrix(A: Any, name: str, ndim: tuple[int, ...] = (2,)) -> Any:
    """Validate a Dask array of NumPy chunks with a real floating dtype; return the dtype
    computations run in (float16 in float32)."""
    if A.ndim not in ndim:
        want = " or ".join(f"{n}-D" for n in ndim)
        raise ValueError(f"{name} must be {want}, got shape {tuple(A.shape)}")
    if any(np.isnan(c) for dim in A.chunks for c in dim):
        raise ValueError(f"{name} has unknown chunk sizes; call {name}.compute_chunk_sizes()")
    if not isinstance(getattr(A, "_meta", None), np.ndarray):
        raise TypeError(f"{name} must be a Dask array of NumPy chunks, got chunks of type "
                        f"{type(A._meta).__name__}")
    return backend.compute_dtype(np, A.dtype, name)


def sketch_rows(S: Any, A: Any) -> Any:
    """``S @ A`` for a Dask ``A`` of shape ``(m,)`` or ``(m, n)``: a lazy Dask array of shape
    ``(d,)`` or ``(d, n)`` in ``A``'s dtype (float16 computed in float32)."""
    work = check_dask_matrix(A, "A", ndim=(1, 2))
    d, m = S.shape
    if A.shape[0] != m:
        raise ValueError(f"shape mismatch: A has {A.shape[0]} rows but the operator needs {m} "
                         f"(operator shape {S.shape}, A shape {tuple(A.shape)})")
    if not S._columns_alone:
        raise TypeError(
            f"{type(S).__name__} mixes all m rows of A, so it has no per-block form for a "
            f"Dask array; use sketchlinalg.BlockSRHT(d, m, blocks=A.chunks[0]) (its own "
            f"operator) or another family")
    blocks = getattr(S, "blocks", None)
    if blocks is not None and tuple(A.chunks[0]) != tuple(blocks):
        raise ValueError(f"A's row chunks {A.chunks[0]} differ from the blocks of {S!r}: "
                         f"rechunk A with A.rechunk({{0: S.blocks}}) or build the operator "
                         f"with blocks=A.chunks[0]")
    X = A[:, None] if A.ndim == 1 else A
    parts = X.map_blocks(_partial_sketch, S, work, new_axis=1, token="sketchlinalg-sketch",
                         chunks=((1,) * X.numblocks[0], (d,), X.chunks[1]), dtype=work,
                         meta=np.empty((0, 0, 0), dtype=work))
    Y = parts.sum(axis=0, dtype=work).astype(A.dtype)
    return Y[:, 0] if A.ndim == 1 else Y


def _partial_sketch(block: np.ndarray, S: Any, work: Any, block_info: Any = None) -> np.ndarray:
    """``S[:, a:b] @ block`` for the row block ``[a, b)`` of ``A``, shape ``(1, d, n_j)``."""
    a, b = block_info[0]["array-location"][0]
    out = np.zeros((1, S.shape[0], block.shape[1]), dtype=work)
    if b > a:
        out[0] = S._apply_columns(a, b, block.astype(work, copy=False))
    return out
