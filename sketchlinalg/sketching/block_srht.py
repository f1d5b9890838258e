"""Block subsampled randomized Hadamard transform (Balabanov, Beaupère and Grigori 2023)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from .._rng import RNGLike
from .._validation import check_int
from ._base import SketchingOperator
from .srht import SRHT


class BlockSRHT(SketchingOperator):
    r"""Block SRHT: one SRHT shared by the row blocks of the input, with independent signs on
    either side of it per block,

    .. math::

        S = [S_1, \dots, S_p], \qquad S_i = \tilde D_i\, \Phi\, \begin{bmatrix} D_i \\ 0
        \end{bmatrix} \in \mathbb{R}^{d \times m_i}, \qquad
        S A = \sum_i S_i A_i ,

    where the ``m`` rows are split into ``p`` consecutive blocks of ``m_i`` rows (``A_i``),
    :math:`\Phi = \sqrt{b/d}\, R H D_0` is the :class:`SRHT` of order ``b`` (the largest
    block padded to a power of two; :math:`R` keeps ``d`` of its rows) common to every
    block, :math:`D_i` (``m_i x m_i``) and :math:`\tilde D_i` (``d x d``) are diagonals of
    independent Rademacher signs, and :math:`[D_i; 0]` pads block ``i`` with zero rows to
    ``b``. Then :math:`E[S_i^T S_i] = E[[D_i; 0]^T \Phi^T \Phi [D_i; 0]] = I_{m_i}` and, for
    :math:`i \ne j`, :math:`E[S_i^T S_j] = 0` (the independent left signs have mean zero), so
    :math:`E[S^T S] = I_m`; it is an oblivious subspace embedding with a sketch size
    comparable to the SRHT's (Balabanov, Beaupère and Grigori 2023, Theorem 2.3).

    Each block needs only its own rows: ``S @ A`` for a Dask array ``A`` chunked by rows into
    these blocks is one task per chunk and a sum, where the plain :class:`SRHT` mixes all
    ``m`` rows. The operator depends on the block sizes: the same seed with other blocks is
    another operator.

    Parameters
    ----------
    d, m : int
        Output and input dimensions, ``1 <= d <= m``; ``d`` must not exceed ``b``, the
        largest block size rounded up to a power of two.
    blocks : int or sequence of int, optional
        Row counts of the blocks (positive, summing to ``m``; e.g. a Dask array's
        ``A.chunks[0]``), or one block size (the last block takes the remainder). Default:
        one block, i.e. an SRHT with an extra sign layer.
    rng : int, numpy.random.Generator, numpy.random.SeedSequence or None
        Source of randomness (SPEC 7): the shared SRHT and each block's signs are drawn from
        their own streams seeded from it, so a task can draw its block's signs alone.

    References
    ----------
    O. Balabanov, M. Beaupère, L. Grigori, "Block subsampled randomized Hadamard transform
    for Nyström approximation on distributed architectures", ICML 2023, Sec. 2.
    """

    @staticmethod
    def apply_flops(d: int, m: int, **options: Any) -> float:
        sizes = _block_sizes(options.get("blocks"), m)
        b = max(sizes)
        b_pad = 1 << int(np.ceil(np.log2(b))) if b > 1 else 1
        # per block: its signs, the shared SRHT of order b_pad, the d output signs
        return len(sizes) * (SRHT.apply_flops(d, b_pad) + d) + m

    def __init__(self, d: int, m: int, blocks: Any = None, rng: RNGLike = 0) -> None:
        super().__init__(d, m, rng)
        self.blocks = _block_sizes(blocks, self.shape[1])
        self.starts = np.concatenate([[0], np.cumsum(self.blocks)]).astype(int)
        b = max(self.blocks)
        self.b_pad = 1 << int(np.ceil(np.log2(b))) if b > 1 else 1
        if self.shape[0] > self.b_pad:
            raise ValueError(
                f"d must be <= {self.b_pad} (the largest block, {b} rows, padded to a power of "
                f"two): the shared SRHT keeps d of its rows; got d={self.shape[0]}")
        self._entropy = int(self._rng.integers(0, 2**63))
        self.inner = SRHT(self.shape[0], self.b_pad, rng=np.random.SeedSequence(self._entropy))

    def block_signs(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(right, left)``: the diagonals of :math:`D_i` (``m_i``) and :math:`\\tilde D_i`
        (``d``) of block ``i``, drawn from the block's own stream."""
        gen = np.random.default_rng(np.random.SeedSequence(self._entropy, spawn_key=(i,)))
        signs = gen.choice(np.array([-1.0, 1.0]), size=self.blocks[i] + self.shape[0])
        return signs[: self.blocks[i]], signs[self.blocks[i]:]

    def _signs(self, like: Any, xp: Any, i: int) -> tuple[Any, Any]:
        return self._on(f"signs{i}", like, like.dtype, lambda: tuple(
            backend.from_host(s[:, None], like, like.dtype) for s in self.block_signs(i)))

    def _apply_block(self, i: int, X: Any, xp: Any, signs: tuple[Any, Any]) -> Any:
        """:math:`S_i X` for the ``m_i`` rows ``X`` of block ``i``."""
        right, left = signs
        return left * self.inner._apply(X * right, xp)  # it pads the m_i rows to b_pad

    def _apply(self, A: Any, xp: Any) -> Any:
        out = None
        for i, (a, b) in enumerate(zip(self.starts[:-1], self.starts[1:], strict=True)):
            part = self._apply_block(i, A[int(a):int(b), :], xp, self._signs(A, xp, i))
            out = part if out is None else out + part
        return out

    def _apply_adjoint(self, Y: Any, xp: Any) -> Any:
        parts = []
        for i, rows in enumerate(self.blocks):
            right, left = self._signs(Y, xp, i)
            parts.append(right * self.inner._apply_adjoint(left * Y, xp)[:rows, :])
        return xp.concat(parts, axis=0)

    def _apply_columns(self, start: int, stop: int, X: np.ndarray) -> np.ndarray:
        i = int(np.searchsorted(self.starts, start))
        if self.starts[i] != start or self.starts[i + 1] != stop:
            raise ValueError(f"rows [{start}, {stop}) are not one block of {self!r}")
        signs = tuple(s[:, None].astype(X.dtype) for s in self.block_signs(i))
        return self._apply_block(i, X, np, signs)

    def __repr__(self) -> str:
        d, m = self.shape
        return f"BlockSRHT(d={d}, m={m}, blocks={len(self.blocks)})"


def _block_sizes(blocks: Any, m: int) -> tuple[int, ...]:
    """The row counts of the blocks, validated (see :class:`BlockSRHT`)."""
    if blocks is None:
        return (m,)
    if isinstance(blocks, (int, np.integer)) and not isinstance(blocks, (bool, np.bool_)):
        size = check_int(blocks, "blocks", minimum=1)
        return (size,) * (m // size) + ((m % size,) if m % size else ())
    try:
        sizes = tuple(check_int(s, "blocks", minimum=1) for s in blocks)
    except TypeError:
        raise TypeError(f"blocks must be an int or a sequence of ints, got "
                        f"{type(blocks).__name__}") from None
    if sum(sizes) != m:
        raise ValueError(f"blocks must sum to m = {m}, got {len(sizes)} blocks summing to "
                         f"{sum(sizes)}")
    return sizes
