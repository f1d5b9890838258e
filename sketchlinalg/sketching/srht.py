"""Subsampled randomized Hadamard transform."""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from .. import _backend
from .._rng import RNGLike
from ._base import SketchingOperator

# Pass 2 keeps the kept rows of the inner Hadamard factor, d * (m'/b) numbers; b is raised
# past sqrt(d) when that would exceed this many entries.
_MAX_CACHED_ENTRIES = 1 << 22


def hadamard_signs(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Entries ``(-1)^popcount(i & j)`` of the Sylvester Hadamard matrix, as float64."""
    v = np.bitwise_and.outer(rows, cols).astype(np.uint64)
    for shift in (32, 16, 8, 4, 2, 1):
        v ^= v >> np.uint64(shift)
    return 1.0 - 2.0 * (v & np.uint64(1)).astype(np.float64)


def _split(d: int, m_pad: int) -> int:
    """The outer Hadamard order b (a power of two) of ``H_{m'} = H_b kron H_{m'/b}``.

    Pass 1 costs about ``2 b m' n`` flops, pass 2 ``2 d (m'/b) n``: b ~ sqrt(d) balances them.
    """
    b = 1 << max(0, round(np.log2(max(d, 1)) / 2))
    while d * (m_pad // b) > _MAX_CACHED_ENTRIES and b < m_pad:
        b *= 2
    return min(b, m_pad)


class SRHT(SketchingOperator):
    r"""Subsampled randomized Hadamard transform
    :math:`S = \sqrt{m'/d}\; R\, H\, D \in \mathbb{R}^{d \times m}`.

    :math:`D` is a diagonal of Rademacher signs, ``m`` is padded with zeros to the next power
    of two :math:`m'`, :math:`H` is the orthonormal Sylvester-Hadamard matrix of order
    :math:`m'` (entries :math:`\pm 1/\sqrt{m'}`), and :math:`R` keeps ``d`` of its rows chosen
    uniformly without replacement. :math:`E[S^T S] = I_m`; :math:`HD` spreads any fixed
    subspace so that its row norms are nearly uniform, which is what lets uniform sampling
    embed even coherent subspaces (Ailon and Chazelle 2009; Tropp 2011).

    Only the ``d`` kept rows of :math:`HD A` are formed. With :math:`H_{m'} = H_b \otimes
    H_a` (:math:`m' = ba`, :math:`b \approx \sqrt d`), pass 1 applies :math:`H_b` to
    :math:`A` reshaped as :math:`b \times a n` (one GEMM streaming the matrix once) and pass 2
    contracts each kept row's :math:`H_a` row with its :math:`a \times n` block: about
    :math:`2 (b + d/b) m' n` flops in three passes over memory, instead of the
    :math:`\log_2 m'` passes of a radix-2 fast Walsh-Hadamard transform.

    Parameters
    ----------
    d, m : int
        Output and input dimensions, ``1 <= d <= m``.
    rng : int, numpy.random.Generator, numpy.random.SeedSequence or None
        Source of randomness (SPEC 7).
    """

    def __init__(self, d: int, m: int, rng: RNGLike = 0) -> None:
        super().__init__(d, m, rng)
        self.m_pad = 1 << int(np.ceil(np.log2(m))) if m > 1 else 1
        self.signs = self._rng.choice(np.array([-1.0, 1.0]), size=m)
        self.rows = np.sort(self._rng.choice(self.m_pad, size=d, replace=False))
        self.b = _split(d, self.m_pad)
        self.a = self.m_pad // self.b
        # Group the kept rows by their outer index i_b: pass 2 is one GEMM per group.
        outer, inner = np.divmod(self.rows, self.a)
        self._groups = [
            (int(ib), np.flatnonzero(outer == ib)) for ib in np.unique(outer)
        ]
        self._inner = inner

    def _factors(self, like: Any, xp: Any) -> tuple[Any, Any, list[tuple[int, Any, Any]]]:
        dtype = like.dtype
        scale = 1.0 / np.sqrt(self.shape[0])  # sqrt(m'/d) * (1/sqrt(m')) of the orthonormal H

        def build() -> tuple[Any, Any, list[tuple[int, Any, Any]]]:
            hb = hadamard_signs(np.arange(self.b), np.arange(self.b))
            groups = []
            for ib, pos in self._groups:
                ha = hadamard_signs(self._inner[pos], np.arange(self.a)) * scale
                groups.append((ib, _backend.from_host(pos, like, xp.int64),
                               _backend.from_host(ha, like, dtype)))
            return (_backend.from_host(self.signs[:, None], like, dtype),
                    _backend.from_host(hb, like, dtype), groups)

        return self._on("factors", like, dtype, build)

    def _apply(self, A: Any, xp: Any) -> Any:
        m, n = A.shape
        signs, hb, groups = self._factors(A, xp)
        dev = array_api_compat.device(A)
        if self.m_pad == m:
            X = A * signs
        else:
            X = xp.zeros((self.m_pad, n), dtype=A.dtype, device=dev)
            X[:m, :] = A * signs
        B = xp.reshape(hb @ xp.reshape(X, (self.b, self.a * n)), (self.b, self.a, n))
        Y = xp.empty((self.shape[0], n), dtype=A.dtype, device=dev)
        for ib, pos, ha in groups:
            Y[pos, :] = ha @ B[ib, ...]
        return Y

    def _apply_adjoint(self, Y: Any, xp: Any) -> Any:
        n = Y.shape[1]
        signs, hb, groups = self._factors(Y, xp)
        dev = array_api_compat.device(Y)
        C = xp.zeros((self.b, self.a, n), dtype=Y.dtype, device=dev)
        for ib, pos, ha in groups:
            C[ib, ...] = ha.T @ xp.take(Y, pos, axis=0)
        X = xp.reshape(hb @ xp.reshape(C, (self.b, self.a * n)), (self.m_pad, n))
        return X[: self.shape[1], :] * signs
