"""Compact representations of one layer's per-sample gradients ``U = [u_1, ..., u_N]``.

Each representation provides the three products the SENG step needs, the Gram
``U^T U`` (N x N), ``U^T g`` and ``U alpha``, plus a sketch of the parameter dimension, so
that routes never need to know how a layer stores its factors. A new layer type or route
adds a representation here (and to :data:`REPRESENTATIONS`, for ``state_dict``).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

import sketchlinalg as sl

from .cost import choose_gram_method

#: Largest number of elements of a temporary the Kronecker Gram builds at once.
GRAM_CHUNK_ELEMENTS = 2**24


class PerSampleGrads:
    """``U`` of one layer block, ``u_i`` the (scaled) gradient of sample ``i``.

    ``block_shape`` is the layout of a gradient ``g`` of the block; ``n`` the number of
    samples.
    """

    kind: ClassVar[str]
    n: int
    block_shape: tuple[int, ...]

    def gram(self, method: str | None = None) -> tuple[torch.Tensor, str]:
        """``(U^T U, method used)`` in the factors' dtype."""
        raise NotImplementedError

    def gram_costs(self) -> dict[str, tuple[float, float]]:
        """``{method: (flops, bytes of temporaries)}`` of each way to build the Gram."""
        raise NotImplementedError

    def rmatvec(self, g: torch.Tensor) -> torch.Tensor:
        """``U^T g`` (shape ``(n,)``) for ``g`` in block layout."""
        raise NotImplementedError

    def matvec(self, alpha: torch.Tensor) -> torch.Tensor:
        """``U alpha`` in block layout."""
        raise NotImplementedError

    def apply_flops(self) -> float:
        """Flops of one ``rmatvec`` plus one ``matvec``."""
        raise NotImplementedError

    def sketch(self, kind: str, size: int, rng: Any) -> PerSampleGrads:
        """``S U`` for a random ``S`` with ``E[S^T S] = I`` keeping about ``size`` coordinates."""
        raise NotImplementedError

    def sketch_flops(self, kind: str, size: int) -> float:
        """Flops of :meth:`sketch` plus the Gram of its result (from shapes alone)."""
        raise NotImplementedError

    def compact(self) -> PerSampleGrads:
        """The equivalent representation that holds the fewest bytes."""
        return self

    def compact_entries(self) -> int:
        """Entries per sample of :meth:`compact` (from the shapes alone)."""
        return math.prod(self.block_shape)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "block_shape": list(self.block_shape), **self.tensors()}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> PerSampleGrads:
        raise NotImplementedError


class DenseGrads(PerSampleGrads):
    """``U`` stored as the matrix of its rows, ``rows`` of shape ``(N, p)`` (``u_i`` = row i)."""

    kind = "dense"

    def __init__(self, rows: torch.Tensor, block_shape: tuple[int, ...]) -> None:
        self.rows = rows
        self.n = rows.shape[0]
        self.block_shape = tuple(block_shape)

    def gram(self, method: str | None = None) -> tuple[torch.Tensor, str]:
        return self.rows @ self.rows.T, "dense"

    def gram_costs(self) -> dict[str, tuple[float, float]]:
        n, p = self.rows.shape
        return {"dense": (2.0 * n * n * p, 0.0)}

    def rmatvec(self, g: torch.Tensor) -> torch.Tensor:
        return self.rows @ g.reshape(-1)

    def matvec(self, alpha: torch.Tensor) -> torch.Tensor:
        return (alpha @ self.rows).reshape(self.block_shape)

    def apply_flops(self) -> float:
        return 4.0 * self.rows.numel()

    def sketch(self, kind: str, size: int, rng: Any) -> PerSampleGrads:
        p = self.rows.shape[1]
        if size >= p:
            return self
        S = _make_sketch(kind, size, p, rng)
        return DenseGrads(self.rows @ S.T, (size,))

    def sketch_flops(self, kind: str, size: int) -> float:
        n, p = self.rows.shape
        if size >= p:
            return 2.0 * n * n * p
        return n * _apply_flops(kind, size, p) + 2.0 * n * n * size

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"rows": self.rows}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> DenseGrads:
        return cls(state["rows"].to(device), tuple(state["block_shape"]))


class KroneckerFactors(PerSampleGrads):
    r"""Per-sample gradients ``u_i = vec_j(G_{ij}^T A_{ij})`` of a layer with ``groups``
    independent ``d_g x d_a`` weight blocks.

    ``A`` has shape ``(N, groups, T, d_a)`` (layer inputs, one row per position ``t``: a
    token, an output pixel of a convolution, or a call of the module) and ``G`` shape
    ``(N, groups, T, d_g)`` (backpropagated output gradients, already scaled). The Gram
    follows from the Kronecker identity

    .. math:: \langle G_i^T A_i, G_j^T A_j \rangle
              = \sum_{t,s} (A_i A_j^T)_{ts} (G_i G_j^T)_{ts},

    which for ``T = 1`` is ``(a_i^T a_j)(g_i^T g_j)``.
    """

    kind = "kronecker"

    def __init__(self, A: torch.Tensor, G: torch.Tensor) -> None:
        if A.shape[:3] != G.shape[:3]:
            raise ValueError(f"factor shapes disagree: A {tuple(A.shape)}, G {tuple(G.shape)}")
        self.A, self.G = A, G
        self.n, self.groups, self.positions, self.da = A.shape
        self.dg = G.shape[3]
        self.block_shape = (self.groups, self.dg, self.da)

    # -- Gram ------------------------------------------------------------------------------
    def gram_costs(self) -> dict[str, tuple[float, float]]:
        return _kron_gram_costs(self.n, self.groups, self.positions, self.da, self.dg,
                                self.G.element_size())

    def gram(self, method: str | None = None) -> tuple[torch.Tensor, str]:
        if method is None:
            method = choose_gram_method(self.gram_costs())
        if method == "dense":
            return self.to_dense().gram()[0], "dense"
        if method != "kronecker":
            raise ValueError(f"unknown Gram method {method!r}; valid: 'kronecker', 'dense'")
        n, g, t = self.n, self.groups, self.positions
        Ag = self.A.transpose(0, 1).reshape(g, n * t, self.da)
        Gg = self.G.transpose(0, 1).reshape(g, n * t, self.dg)
        out = self.A.new_empty((n, n))
        rows = max(1, GRAM_CHUNK_ELEMENTS // max(1, g * t * n * t))
        for i0 in range(0, n, rows):
            i1 = min(n, i0 + rows)
            KA = Ag[:, i0 * t:i1 * t] @ Ag.transpose(1, 2)
            KG = Gg[:, i0 * t:i1 * t] @ Gg.transpose(1, 2)
            out[i0:i1] = (KA * KG).reshape(g, i1 - i0, t, n, t).sum(dim=(0, 2, 4))
        return out, "kronecker"

    # -- products --------------------------------------------------------------------------
    def rmatvec(self, g: torch.Tensor) -> torch.Tensor:
        # (U^T g)_i = sum_{j,t} G_ijt . (g_j A_ijt): multiply g into the narrower factor.
        if self.positions == 1:  # one GEMM per group over the samples, not N GEMVs
            n, gr = self.n, self.groups
            Y = self.G.reshape(n, gr, self.dg).transpose(0, 1) @ g  # (groups, N, da)
            return (Y * self.A.reshape(n, gr, self.da).transpose(0, 1)).sum(dim=(0, 2))
        if self.da <= self.dg:
            Y = self.A @ g.transpose(1, 2)  # (N, groups, T, dg)
            return (Y * self.G).sum(dim=(1, 2, 3))
        Y = self.G @ g  # (N, groups, T, da)
        return (Y * self.A).sum(dim=(1, 2, 3))

    def matvec(self, alpha: torch.Tensor) -> torch.Tensor:
        # sum_i alpha_i G_i^T A_i: one matmul per group over all samples and positions.
        n, g, t = self.n, self.groups, self.positions
        Ga = (self.G * alpha.reshape(n, 1, 1, 1)).permute(1, 3, 0, 2).reshape(g, self.dg, n * t)
        return Ga @ self.A.transpose(0, 1).reshape(g, n * t, self.da)

    def apply_flops(self) -> float:
        return 4.0 * self.n * self.groups * self.positions * self.da * self.dg

    def to_dense(self) -> DenseGrads:
        W = self.G.transpose(2, 3) @ self.A  # (N, groups, dg, da)
        return DenseGrads(W.reshape(self.n, -1), self.block_shape)

    def compact(self) -> PerSampleGrads:
        return self.to_dense() if dense_is_compact(self.positions, self.da, self.dg) else self

    def compact_entries(self) -> int:
        return min(self.groups * self.da * self.dg,
                   self.groups * self.positions * (self.da + self.dg))

    # -- sketch ----------------------------------------------------------------------------
    def sketch_dims(self, size: int) -> tuple[int, int]:
        """Rows ``(s_out, s_in)`` of the Kronecker sketch ``S_out (x) S_in`` keeping about
        ``size`` coordinates of the whole block (``size // groups`` per group)."""
        per_group = max(1, size // self.groups)
        s = max(1, math.isqrt(per_group))
        if self.dg <= s:
            return self.dg, min(self.da, max(1, per_group // self.dg))
        if self.da <= s:
            return min(self.dg, max(1, per_group // self.da)), self.da
        return s, s

    def sketch(self, kind: str, size: int, rng: Any) -> PerSampleGrads:
        # S vec(G^T A) = vec((S_out G^T)(S_in A^T)^T): sketch each factor along its features.
        # S_out and S_in are independent and E[S^T S] = E[S_out^T S_out] (x) E[S_in^T S_in] = I.
        s_out, s_in = self.sketch_dims(size)
        seeds = rng.integers(0, 2**63, size=2)
        A, G = self.A, self.G
        if s_in < self.da:
            S_in = _make_sketch(kind, s_in, self.da, int(seeds[0]))
            A = (A.reshape(-1, self.da) @ S_in.T).reshape(*A.shape[:3], s_in)
        if s_out < self.dg:
            S_out = _make_sketch(kind, s_out, self.dg, int(seeds[1]))
            G = (G.reshape(-1, self.dg) @ S_out.T).reshape(*G.shape[:3], s_out)
        return KroneckerFactors(A, G)

    def sketch_flops(self, kind: str, size: int) -> float:
        s_out, s_in = self.sketch_dims(size)
        rows = self.n * self.groups * self.positions
        flops = 0.0
        if s_in < self.da:
            flops += rows * _apply_flops(kind, s_in, self.da)
        if s_out < self.dg:
            flops += rows * _apply_flops(kind, s_out, self.dg)
        costs = _kron_gram_costs(self.n, self.groups, self.positions, s_in, s_out,
                                 self.G.element_size())
        return flops + costs[choose_gram_method(costs)][0]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"A": self.A, "G": self.G}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> KroneckerFactors:
        return cls(state["A"].to(device), state["G"].to(device))


def dense_is_compact(positions: int, da: int, dg: int) -> bool:
    """Whether a ``d_g x d_a`` per-sample gradient holds no more numbers than its Kronecker
    factors over ``positions`` rows (``d_a d_g <= T (d_a + d_g)``)."""
    return da * dg <= positions * (da + dg)


def _make_sketch(kind: str, d: int, m: int, rng: Any) -> sl.SketchingOperator:
    # Sparse sign needs nnz <= d; its default of 8 is capped for small sketches.
    options = {"nnz": min(8, d)} if kind == "sparse_sign" else {}
    return sl.sketch(kind, d, m, rng=rng, **options)


def _kron_gram_costs(
    n: int, g: int, t: int, da: int, dg: int, item: int
) -> dict[str, tuple[float, float]]:
    """``{method: (flops, temporary bytes)}`` of the Gram of Kronecker factors."""
    kron = 2.0 * g * n * n * t * t * (da + dg + 1)
    dense = 2.0 * (g * n * t * da * dg + n * n * g * da * dg)
    return {"kronecker": (kron, 2.0 * min(g * n * n * t * t, GRAM_CHUNK_ELEMENTS) * item),
            "dense": (dense, float(n * g * da * dg * item))}


def _apply_flops(kind: str, d: int, m: int) -> float:
    """Flops per column of applying a ``d x m`` sketch of family ``kind``."""
    if kind == "gaussian":
        return 2.0 * d * m
    if kind == "srht":
        return 2.0 * m * max(1.0, math.log2(m)) + d
    if kind == "sparse_sign":
        return 2.0 * 8 * m
    return 2.0 * m  # countsketch, sampling: one pass


REPRESENTATIONS: dict[str, type[PerSampleGrads]] = {
    DenseGrads.kind: DenseGrads,
    KroneckerFactors.kind: KroneckerFactors,
}


def from_state(state: dict[str, Any], device: torch.device) -> PerSampleGrads:
    """Rebuild a representation saved by :meth:`PerSampleGrads.state_dict`."""
    return REPRESENTATIONS[state["kind"]].from_state(state, device)
