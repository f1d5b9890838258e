"""Subsampled randomized Hadamard transform."""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import numpy as np

from .. import backend
from .._rng import RNGLike
from ._base import SketchingOperator

# Pass 2 keeps the kept rows of the inner Hadamard factor, d * (m'/b) numbers; b is raised
# past sqrt(d) when that would exceed this many entries.
_MAX_CACHED_ENTRIES = 1 << 22
# Chunks of pass 1 sized to stay in a CPU's cache.
_CHUNK_BYTES = 1 << 23
# Up to this many groups (outer order b), pass 2 runs one GEMM per group on its own kept rows;
# beyond, one batched GEMM over groups padded to the largest (a Python loop over b groups
# per chunk would cost more than the padding saves).
_LOOP_MAX_GROUPS = 64


def hadamard_signs(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Entries ``(-1)^popcount(i & j)`` of the Sylvester Hadamard matrix, as float64."""
    v = np.bitwise_and.outer(rows.astype(np.uint32), cols.astype(np.uint32))
    if hasattr(np, "bitwise_count"):  # NumPy >= 2.0
        parity = np.bitwise_count(v) & 1
    else:
        for shift in (16, 8, 4, 2, 1):
            v ^= v >> np.uint32(shift)
        parity = v & 1
    return 1.0 - 2.0 * parity.astype(np.float64)


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

    Only the ``d`` kept rows of :math:`HDA` are formed. With :math:`H_{m'} = H_b \otimes H_a`
    (:math:`m' = ba`, :math:`b \approx \sqrt d`), row :math:`(i_b, i_a)` of :math:`HDA` is
    :math:`\sum_{j_a} (H_a)_{i_a j_a} \sum_{j_b} (H_b)_{i_b j_b} (DA)_{(j_b, j_a)}`. Pass 1
    applies :math:`H_b` (a GEMM), pass 2 contracts with the kept rows of :math:`H_a` (one
    GEMM per group of kept rows sharing :math:`i_b`; a batched GEMM over groups padded to the
    largest when :math:`b > 64`, and on GPUs and JAX). Both run over chunks of :math:`j_a`
    small enough to stay in cache, so the matrix is read once: about
    :math:`2 (b + d/b) m' n` flops in one pass over memory, where a radix-2 fast
    Walsh-Hadamard transform makes :math:`\log_2 m'` passes. Those GEMMs, and the sign flips
    :math:`DA` (the one elementwise pass, at memory speed), bound the time: on a 2-core CPU
    with :math:`m' = 2^{17}`, ``n = 256`` and
    ``d = 1024``, about 3x one read of ``A`` for each pass and 2x for the signs.

    Parameters
    ----------
    d, m : int
        Output and input dimensions, ``1 <= d <= m``.
    rng : int, numpy.random.Generator, numpy.random.SeedSequence or None
        Source of randomness (SPEC 7).
    """

    @staticmethod
    def apply_flops(d: int, m: int, **options: Any) -> float:
        return 2.0 * m * max(1.0, math.log2(m)) + d  # the fast transform, then d picks
    _columns_alone = False  # H mixes all rows: see BlockSRHT for Dask arrays

    def __init__(self, d: int, m: int, rng: RNGLike = 0) -> None:
        super().__init__(d, m, rng)
        self.m_pad = 1 << int(np.ceil(np.log2(m))) if m > 1 else 1
        self.signs = self._rng.choice(np.array([-1.0, 1.0]), size=m)
        self.rows = np.sort(self._rng.choice(self.m_pad, size=d, replace=False))
        self.b = _split(d, self.m_pad)
        self.a = self.m_pad // self.b
        # The kept rows are sorted, so group i_b (rows r = (i_b, i_a)) is rows[lo:hi].
        outer, inner = np.divmod(self.rows, self.a)
        bounds = np.searchsorted(outer, np.arange(self.b + 1))
        self._groups = [(g, int(bounds[g]), int(bounds[g + 1]))
                        for g in range(self.b) if bounds[g + 1] > bounds[g]]
        self._inner = inner
        self._looped = self.b <= _LOOP_MAX_GROUPS
        # Padded layout: kept row r in slot k of group i_b sits at flat position i_b * kmax + k.
        self.kmax = int(np.max(np.diff(bounds)))
        self._flat = outer * self.kmax + (np.arange(d) - bounds[outer])

    def _loops_on(self, like: Any) -> bool:
        """Whether pass 2 loops over the groups for arrays like ``like``: for few groups, on
        an eager CPU library (NumPy, torch on the CPU). Elsewhere one batched GEMM over the
        padded groups: one kernel on a GPU, and on JAX one shape to compile where each group
        of another size would compile its own."""
        return self._looped and backend.on_cpu(like)

    def _factors(self, like: Any, xp: Any) -> tuple[Any, Any, Any, Any]:
        """Signs ``(b, a, 1)``, ``H_b``, the kept rows of ``H_a`` (``d x a``, or padded to
        ``(b, kmax, a)``) and the flat positions of the padded layout."""
        def build() -> tuple[Any, Any, Any, Any]:
            ha = hadamard_signs(self._inner, np.arange(self.a)) / np.sqrt(self.shape[0])
            if not self._loops_on(like):
                padded = np.zeros((self.b * self.kmax, self.a))
                padded[self._flat] = ha
                ha = padded.reshape(self.b, self.kmax, self.a)
            signs = np.zeros(self.m_pad)
            signs[: self.shape[1]] = self.signs
            return (
                backend.from_host(signs.reshape(self.b, self.a, 1), like, like.dtype),
                backend.from_host(hadamard_signs(np.arange(self.b), np.arange(self.b)), like,
                                   like.dtype),
                backend.from_host(ha, like, like.dtype),
                backend.from_host(self._flat, like, xp.int64),
            )

        return self._on("factors", like, like.dtype, build)

    def _chunks(self, like: Any, n: int) -> range:
        """Start offsets of the j_a chunks: whole on a GPU, cache-sized on a CPU."""
        width = self.a
        if backend.on_cpu(like):
            width = max(1, min(self.a, _CHUNK_BYTES // (self.b * n * like.dtype.itemsize)))
        return range(0, self.a, width)

    def _padded(self, A: Any, xp: Any) -> Any:
        if A.shape[0] == self.m_pad:
            return xp.reshape(A, (self.b, self.a, A.shape[1]))
        pad = xp.zeros((self.m_pad - A.shape[0], A.shape[1]), dtype=A.dtype,
                       device=array_api_compat.device(A))
        return xp.reshape(xp.concat([A, pad], axis=0), (self.b, self.a, A.shape[1]))

    def _apply(self, A: Any, xp: Any) -> Any:
        n = A.shape[1]
        signs, hb, ha, flat = self._factors(A, xp)
        X = self._padded(A, xp)
        looped = self._loops_on(A)
        parts: list[Any] = [None] * len(self._groups)  # looped: each group's kept rows
        Yg = None  # padded: all groups at once
        starts = self._chunks(A, n)
        for s in starts:
            e = min(s + starts.step, self.a)
            T = X[:, s:e, :] * signs[:, s:e, :]
            Bc = xp.reshape(hb @ xp.reshape(T, (self.b, -1)), (self.b, e - s, n))
            if looped:
                for t, (g, lo, hi) in enumerate(self._groups):
                    part = ha[lo:hi, s:e] @ Bc[g, ...]
                    parts[t] = part if parts[t] is None else parts[t] + part
            else:
                part = ha[:, :, s:e] @ Bc
                Yg = part if Yg is None else Yg + part
        if looped:
            return xp.concat(parts, axis=0)  # group by group: the order of self.rows
        return xp.take(xp.reshape(Yg, (self.b * self.kmax, n)), flat, axis=0)

    def _apply_adjoint(self, Y: Any, xp: Any) -> Any:
        # Built from pieces (stack, concat) rather than written into a preallocated array:
        # the array API standard does not promise in-place updates (JAX arrays are immutable).
        n = Y.shape[1]
        signs, hb, ha, _ = self._factors(Y, xp)
        dev = array_api_compat.device(Y)
        looped = self._loops_on(Y)
        if not looped:
            Yg = backend.put_rows(self._flat, Y, self.b * self.kmax)
            Yg = xp.reshape(Yg, (self.b, self.kmax, n))
        pieces = []
        starts = self._chunks(Y, n)
        for s in starts:
            e = min(s + starts.step, self.a)
            if looped:
                blocks = [xp.zeros((e - s, n), dtype=Y.dtype, device=dev)] * self.b
                for g, lo, hi in self._groups:
                    blocks[g] = xp.matrix_transpose(ha[lo:hi, s:e]) @ Y[lo:hi, :]
                Cc = xp.stack(blocks, axis=0)
            else:
                Cc = xp.matrix_transpose(ha[:, :, s:e]) @ Yg
            Xc = xp.reshape(hb @ xp.reshape(Cc, (self.b, -1)), (self.b, e - s, n))
            pieces.append(Xc * signs[:, s:e, :])
        out = pieces[0] if len(pieces) == 1 else xp.concat(pieces, axis=1)
        return xp.reshape(out, (self.m_pad, n))[: self.shape[1], :]
