"""Compact representations of one layer's per-sample gradients ``U = [u_1, ..., u_N]``.

Each representation provides the three products the SENG step needs, the Gram
``U^T U`` (N x N), ``U^T g`` and ``U alpha``, plus a sketch of the parameter dimension, so
that routes never need to know how a layer stores its factors. A new layer type or route
adds a class here and to :data:`REPRESENTATIONS` (which rebuilds them from ``state_dict``).
Layer helpers (:mod:`seng.layers`) build them; routes (:mod:`seng.routes`) consume them;
their costs come from :mod:`seng.cost`.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any, ClassVar, cast

import numpy as np
import torch

import sketchlinalg as sl

from . import cost
from .cost import choose_gram_method


class PerSampleGrads:
    """``U`` of one layer block, ``u_i`` the (scaled) gradient of sample ``i``.

    ``block_shape`` is the layout of a gradient ``g`` of the block; ``n`` the number of
    samples.
    """

    kind: ClassVar[str]
    n: int
    block_shape: tuple[int, ...]
    #: Whether this process holds only some samples' columns of ``U``
    #: (:class:`ShardedGrads`): its products are then partial, completed by a communicator.
    sharded: ClassVar[bool] = False
    #: The tensor of :meth:`tensors` that ``U`` is linear in, and whose leading dimension
    #: indexes the samples like every other tensor's (:func:`pool` scales and joins it);
    #: None where stores cannot be pooled.
    linear_in: ClassVar[str | None] = None

    def gram(self, method: str | None = None) -> tuple[torch.Tensor, str]:
        """``(U^T U, method used)`` in the factors' dtype."""
        raise NotImplementedError

    def gram_costs(self) -> dict[str, tuple[float, float]]:
        """``{method: (flops, bytes of temporaries)}`` of each way to build the Gram."""
        raise NotImplementedError

    def cross_gram(self, other: PerSampleGrads) -> torch.Tensor:
        """``U^T V`` (``n x other.n``) for ``other`` of the same layout (see :func:`pool`):
        the off-diagonal block of the Gram of both stores' columns, here from that Gram
        (the stores that have a direct form override this)."""
        joined = pool([self, other])
        if joined is None:
            raise ValueError(f"cannot pair a {self.kind!r} store with a {other.kind!r} one of "
                             "another layout")
        return 2.0 * joined.gram()[0][:self.n, self.n:]  # pool scales each side by 1/sqrt(2)

    def gram_flops(self) -> float:
        """Flops of :meth:`gram` by the method it picks."""
        return cost.cheapest_flops(self.gram_costs())

    def rmatvec(self, g: torch.Tensor) -> torch.Tensor:
        """``U^T g`` (shape ``(n,)``) for ``g`` in block layout."""
        raise NotImplementedError

    def matvec(self, alpha: torch.Tensor) -> torch.Tensor:
        """``U alpha`` in block layout."""
        raise NotImplementedError

    def residual(self, g: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """``g - U alpha`` for ``g`` in block layout (a new tensor): the Woodbury direction's
        last product, fused with the subtraction where the layout allows."""
        return g - self.matvec(alpha).reshape(g.shape)

    def apply_flops(self) -> float:
        """Flops of one ``rmatvec`` plus one ``matvec``."""
        raise NotImplementedError

    def sketch(self, kind: str, size: int, rng: np.random.Generator) -> PerSampleGrads:
        """``S U`` for a random ``S`` with ``E[S^T S] = I`` keeping about ``size`` coordinates,
        drawn from ``rng`` (advanced)."""
        raise NotImplementedError

    def sketch_flops(self, kind: str, size: int) -> float:
        """Flops of :meth:`sketch` plus the Gram of its result (from shapes alone)."""
        raise NotImplementedError

    def compact(self) -> PerSampleGrads:
        """The equivalent representation that holds the fewest bytes."""
        return self

    def to_dense(self) -> DenseGrads:
        """The materialized per-sample gradients (``N x p`` rows in block layout)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be materialized")

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
    linear_in = "rows"

    def __init__(self, rows: torch.Tensor, block_shape: tuple[int, ...]) -> None:
        self.rows = rows
        self.n = rows.shape[0]
        self.block_shape = tuple(block_shape)

    def gram(self, method: str | None = None) -> tuple[torch.Tensor, str]:
        return self.rows @ self.rows.T, "dense"

    def cross_gram(self, other: PerSampleGrads) -> torch.Tensor:
        return self.rows @ cast(DenseGrads, other).rows.T

    def gram_costs(self) -> dict[str, tuple[float, float]]:
        return cost.dense_gram_costs(*self.rows.shape)

    def rmatvec(self, g: torch.Tensor) -> torch.Tensor:
        return self.rows @ g.reshape(-1)

    def matvec(self, alpha: torch.Tensor) -> torch.Tensor:
        return (alpha @ self.rows).reshape(self.block_shape)

    def residual(self, g: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        return torch.addmv(g.reshape(-1), self.rows.T, alpha, alpha=-1).reshape(g.shape)

    def apply_flops(self) -> float:
        return 4.0 * self.rows.numel()

    def sketch(self, kind: str, size: int, rng: np.random.Generator) -> PerSampleGrads:
        p = self.rows.shape[1]
        if size >= p:
            return self
        S = _make_sketch(kind, size, p, rng)
        return DenseGrads(self.rows @ S.T, (size,))

    def sketch_flops(self, kind: str, size: int) -> float:
        n, p = self.rows.shape
        if size >= p:
            return 2.0 * n * n * p
        return n * cost.sketch_apply_flops(kind, size, p) + 2.0 * n * n * size

    def to_dense(self) -> DenseGrads:
        return self

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
    linear_in = "G"
    _grouped: tuple[torch.Tensor, torch.Tensor] | None = None  # see _by_group

    def __init__(self, A: torch.Tensor, G: torch.Tensor) -> None:
        if A.shape[:3] != G.shape[:3]:
            raise ValueError(f"factor shapes disagree: A {tuple(A.shape)}, G {tuple(G.shape)}")
        self.A, self.G = A, G
        self.n, self.groups, self.positions, self.da = A.shape
        self.dg = G.shape[3]
        self.block_shape = (self.groups, self.dg, self.da)

    # -- Gram ------------------------------------------------------------------------------
    def gram_costs(self) -> dict[str, tuple[float, float]]:
        return cost.kron_gram_costs(self.n, self.groups, self.positions, self.da, self.dg,
                                    self.G.element_size())

    def gram(self, method: str | None = None) -> tuple[torch.Tensor, str]:
        if method is None:
            method = choose_gram_method(self.gram_costs())
        if method == "dense":
            return self.to_dense().gram()[0], "dense"
        if method != "kronecker":
            raise ValueError(f"unknown Gram method {method!r}; valid: 'kronecker', 'dense'")
        return self._kron_cross(self), "kronecker"

    def cross_gram(self, other: PerSampleGrads) -> torch.Tensor:
        other = cast(KroneckerFactors, other)
        if choose_gram_method(self.gram_costs()) == "dense":
            return self.to_dense().rows @ other.to_dense().rows.T
        return self._kron_cross(other)

    def _kron_cross(self, other: KroneckerFactors) -> torch.Tensor:
        """``U^T V`` by the Kronecker identity, in row chunks that bound the temporaries."""
        n, m, g, t = self.n, other.n, self.groups, self.positions
        Ag, Gg = self._by_group()
        Bg, Hg = other._by_group()
        out = self.A.new_empty((n, m))
        rows = max(1, cost.GRAM_CHUNK_ELEMENTS // max(1, g * t * m * t))
        for i0 in range(0, n, rows):
            i1 = min(n, i0 + rows)
            KA = Ag[:, i0 * t:i1 * t] @ Bg.transpose(1, 2)
            KG = Gg[:, i0 * t:i1 * t] @ Hg.transpose(1, 2)
            out[i0:i1] = (KA * KG).reshape(g, i1 - i0, t, m, t).sum(dim=(0, 2, 4))
        return out

    # -- products --------------------------------------------------------------------------
    def _by_group(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``A`` and ``G`` as ``(groups, N T, d)``: views for one group (kept, so a step
        between refreshes reshapes nothing), copies otherwise (made per call, so that the
        store does not hold the factors twice)."""
        if self._grouped is not None:
            return self._grouped
        n, g, t = self.n, self.groups, self.positions
        pair = (self.A.transpose(0, 1).reshape(g, n * t, self.da),
                self.G.transpose(0, 1).reshape(g, n * t, self.dg))
        if g == 1 and self.A.is_contiguous() and self.G.is_contiguous():
            self._grouped = pair
        return pair

    def rmatvec(self, g: torch.Tensor) -> torch.Tensor:
        # (U^T g)_i = sum_{j,t} G_ijt . (g_j A_ijt): multiply g into the narrower factor,
        # one batched GEMM over the groups for all samples and positions.
        A, G = self._by_group()
        if self.da <= self.dg:
            Y = (A @ g.transpose(1, 2)).mul_(G)  # (groups, N T, dg)
        else:
            Y = (G @ g).mul_(A)  # (groups, N T, da)
        return Y.reshape(self.groups, self.n, -1).sum(dim=(0, 2))

    def _scaled_factors(self, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(G^T, A)`` by group with ``alpha`` applied to the narrower factor's rows."""
        A, G = self._by_group()
        w = (alpha if self.positions == 1 else alpha.repeat_interleave(self.positions))[:, None]
        if self.da <= self.dg:
            A = A * w
        else:
            G = G * w
        return G.transpose(1, 2), A

    def matvec(self, alpha: torch.Tensor) -> torch.Tensor:
        # sum_i alpha_i G_i^T A_i: one matmul per group over all samples and positions.
        Gt, A = self._scaled_factors(alpha)
        return Gt @ A

    def residual(self, g: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        Gt, A = self._scaled_factors(alpha)
        return torch.baddbmm(g, Gt, A, alpha=-1)

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
    def sketch_size(self, size: int) -> int:
        """Coordinates kept per group: ``size // groups`` (at least 1)."""
        return max(1, size // self.groups)

    def sketch(self, kind: str, size: int, rng: np.random.Generator) -> PerSampleGrads:
        # Each group's d_g x d_a block is sketched as one vector of d_g d_a coordinates (a
        # Kronecker-structured S_out (x) S_in would have the variance of a sqrt(size)-row
        # sketch), from the factors where the family allows (BlockSketch). Groups get
        # independent sketches: S = diag(S_1, ..., S_groups), E[S^T S] = I.
        d = self.sketch_size(size)
        if d >= self.da * self.dg:
            return self
        parts = [BlockSketch(kind, d, self.dg, self.da, rng, positions=self.positions).apply(
            self.G[:, j], self.A[:, j]) for j in range(self.groups)]
        return DenseGrads(parts[0] if self.groups == 1 else torch.cat(parts, dim=1),
                          (self.groups, d))

    def sketch_flops(self, kind: str, size: int) -> float:
        d = self.sketch_size(size)
        if d >= self.da * self.dg:
            return self.gram_flops()
        return cost.block_sketch_flops(kind, self.n, self.groups, self.positions, self.da,
                                       self.dg, d)

    def lowrank_flops(self, rank: int) -> float | None:
        """Flops of the low-rank route at ``rank`` (None where it truncates nothing)."""
        return cost.lowrank_flops(self.n, self.groups, self.positions, self.da, self.dg,
                                  rank, self.G.element_size())

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"A": self.A, "G": self.G}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> KroneckerFactors:
        return cls(state["A"].to(device), state["G"].to(device))


def dense_is_compact(positions: int, da: int, dg: int) -> bool:
    """Whether a ``d_g x d_a`` per-sample gradient holds no more numbers than its Kronecker
    factors over ``positions`` rows (``d_a d_g <= T (d_a + d_g)``)."""
    return da * dg <= positions * (da + dg)


def _make_sketch(kind: str, d: int, m: int, rng: np.random.Generator) -> sl.SketchingOperator:
    # Sparse sign needs nnz <= d; its default of 8 is capped for small sketches.
    options = {"nnz": min(8, d)} if kind == "sparse_sign" else {}
    return sl.sketch(kind, d, m, rng=rng, **options)


class BlockSketch:
    r"""A sketch ``S`` (``d x d_g d_a``, :math:`E[S^T S] = I`) of the family ``kind`` for
    per-sample gradients :math:`u_i = \mathrm{vec}(\sum_t g_{it} a_{it}^T)` (row-major
    ``vec``: :math:`g \otimes a`), applied from the factors where the family has a factor
    form (:func:`seng.cost.block_sketch_method`, from the shapes and ``positions`` ``T``):

    - ``"countsketch"``: :class:`sketchlinalg.TensorSketch` (a CountSketch of the block with
      hash :math:`h_1(r) + h_2(c) \bmod d`), by FFTs, :math:`O(d_g + d_a + d \log d)` per
      position; where forming the gradients costs fewer flops (many positions), a plain
      CountSketch of the materialized gradients;
    - ``"sampling"``: ``d`` coordinates of the block uniformly without replacement, scaled
      :math:`\sqrt{d_g d_a / d}` (:class:`sketchlinalg.RowSampling`), each computed from the
      factors as :math:`\sum_t g_{t r} a_{t c}`, :math:`O(d)` per position;
    - ``"gaussian"``: the face-splitting product of two Gaussians (Rakhshan and Rabusseau
      2020; Ahle et al. 2020, TensorRandomProjection): row ``k`` of ``S`` is
      :math:`(\omega_k \otimes \nu_k)/\sqrt d` with :math:`\omega_k, \nu_k` standard normal,
      so :math:`(S u)_k = \sum_t (\omega_k^T g_t)(\nu_k^T a_t)/\sqrt d`,
      :math:`O(d (d_g + d_a))` per position. Unbiased; for rank-one inputs whose factors are
      both orthogonal its variance is the Gaussian sketch's, for :math:`\|Su\|^2` of a
      rank-one block 4x larger;
    - the other families (``"srht"``, ``"sparse_sign"``): the family's operator on the
      materialized per-sample gradients, formed a few samples at a time.

    ``rng`` (advanced) draws the sketch; :meth:`matrix` is the explicit ``S`` (for tests).
    ``method`` overrides the cost model's choice with ``"dense"`` or the family's factor
    form (for benchmarks that time both, ``benchmarks/bench_seng_sketch_method.py``).
    """

    def __init__(self, kind: str, d: int, dg: int, da: int, rng: np.random.Generator, *,
                 positions: int = 1, method: str | None = None) -> None:
        self.kind, self.d, self.dg, self.da = kind, d, dg, da
        if method is None:
            method = cost.block_sketch_method(kind, positions, da, dg, d)
        elif method not in ("dense", cost.BLOCK_SKETCH_METHODS.get(kind, "dense")):
            raise ValueError(f"Invalid method for kind {kind!r}: {method!r} (valid: 'dense', "
                             f"{cost.BLOCK_SKETCH_METHODS.get(kind, 'dense')!r}, None)")
        self.method = method
        self.op: sl.SketchingOperator
        if self.method == "tensorsketch":
            self.op = sl.TensorSketch(d, (dg, da), rng=rng)
        elif self.method == "face_split":
            self.omega, self.nu = rng.standard_normal((d, dg)), rng.standard_normal((d, da))
        else:
            self.op = _make_sketch(kind, d, dg * da, rng)

    def matrix(self) -> np.ndarray:
        """The ``d x d_g d_a`` matrix ``S`` (float64, NumPy)."""
        if self.method == "face_split":
            return (self.omega[:, :, None] * self.nu[:, None, :]).reshape(self.d, -1) / (
                math.sqrt(self.d))
        return self.op.to_dense()

    def apply(self, G: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        """``S u_i`` for each sample: ``G`` of shape ``(N, T, d_g)``, ``A`` ``(N, T, d_a)``;
        result ``(N, d)``."""
        n, t = G.shape[:2]
        # Temporaries per sample: T rows of d (sketched factors, their spectra, gathered
        # coordinates), or the d_g x d_a gradient; a few samples at a time keeps them bounded.
        width = self.dg * self.da if self.method == "dense" else 2 * t * self.d
        step = max(1, cost.GRAM_CHUNK_ELEMENTS // width)
        return torch.cat([self._apply_rows(G[i:i + step], A[i:i + step])
                          for i in range(0, n, step)])

    def _apply_rows(self, G: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        if self.method == "tensorsketch":
            return cast(sl.TensorSketch, self.op).sketch_factors(G, A)
        if self.method == "coordinates":
            sampling = cast(sl.RowSampling, self.op)
            rows, cols = (torch.as_tensor(k, device=G.device)
                          for k in np.divmod(sampling.rows, self.da))
            return (G[:, :, rows] * A[:, :, cols]).sum(dim=1) * sampling.scale
        if self.method == "face_split":
            omega = torch.as_tensor(self.omega, dtype=G.dtype, device=G.device)
            nu = torch.as_tensor(self.nu, dtype=A.dtype, device=A.device)
            return ((G @ omega.T) * (A @ nu.T)).sum(dim=1) / math.sqrt(self.d)
        W = G.transpose(1, 2) @ A  # (n, dg, da): the per-sample gradients of these samples
        return W.reshape(W.shape[0], -1) @ self.op.T


class EmbeddingGrads(PerSampleGrads):
    r"""Per-sample gradients of an embedding table ``W`` (``V x D``) from token indices.

    Sample ``i`` looks up the rows ``idx_{i1}, ..., idx_{iT}`` and receives the output
    gradients ``g_{i1}, ..., g_{iT}`` (already scaled), so its gradient is the sparse
    ``V x D`` matrix :math:`u_i = \sum_t e_{idx_{it}} g_{it}^T` (a token used twice gets
    the sum). Its Gram entries never need the ``V``-sized matrix:

    .. math:: \langle u_i, u_j \rangle
              = \sum_{t,s} [idx_{it} = idx_{js}]\, g_{it}^T g_{js}

    (method ``"pairs"``, ``O(N^2 T^2 D)``), or, with the ``u <= min(V, NT)`` distinct tokens
    of the batch, the dense Gram of the per-sample gradients restricted to those rows
    (method ``"rows"``, ``O(N^2 u D)``). ``U^T g`` gathers rows of ``g`` and ``U alpha``
    scatter-adds into a ``V x D`` block.
    """

    kind = "embedding"
    linear_in = "G"

    def __init__(self, idx: torch.Tensor, G: torch.Tensor, num_embeddings: int) -> None:
        if idx.shape != G.shape[:2]:
            raise ValueError(f"index and gradient shapes disagree: {tuple(idx.shape)}, "
                             f"{tuple(G.shape)}")
        self.idx, self.G = idx, G
        self.n, self.positions, self.dim = G.shape
        self.block_shape = (int(num_embeddings), self.dim)

    @cached_property
    def _used(self) -> tuple[int, torch.Tensor]:
        """Number ``u`` of distinct tokens and each token's position among them."""
        uniq, inverse = torch.unique(self.idx, return_inverse=True)
        return uniq.numel(), inverse

    # -- Gram ------------------------------------------------------------------------------
    def gram_costs(self) -> dict[str, tuple[float, float]]:
        return cost.embedding_gram_costs(self.n, self.positions, self.dim, self._used[0],
                                         self.G.element_size())

    def gram(self, method: str | None = None) -> tuple[torch.Tensor, str]:
        if method is None:
            method = choose_gram_method(self.gram_costs())
        if method == "rows":
            Y = self._rows()
            return Y @ Y.T, "rows"
        if method != "pairs":
            raise ValueError(f"unknown Gram method {method!r}; valid: 'pairs', 'rows'")
        n, t = self.n, self.positions
        G = self.G.reshape(n * t, self.dim)
        idx = self.idx.reshape(n * t)
        out = G.new_empty((n, n))
        rows = max(1, cost.GRAM_CHUNK_ELEMENTS // max(1, t * n * t))
        for i0 in range(0, n, rows):
            i1 = min(n, i0 + rows)
            K = G[i0 * t:i1 * t] @ G.T
            K = K * (idx[i0 * t:i1 * t, None] == idx[None, :])
            out[i0:i1] = K.reshape(i1 - i0, t, n, t).sum(dim=(1, 3))
        return out, "pairs"

    def _rows(self) -> torch.Tensor:
        """``(N, u * D)``: each sample's gradient on the ``u`` rows used by the batch."""
        u, inverse = self._used
        n = self.n
        slot = (torch.arange(n, device=self.idx.device)[:, None] * u + inverse).reshape(-1)
        Y = self.G.new_zeros((n * u, self.dim))
        Y.index_add_(0, slot, self.G.reshape(-1, self.dim))
        return Y.reshape(n, u * self.dim)

    # -- products --------------------------------------------------------------------------
    def rmatvec(self, g: torch.Tensor) -> torch.Tensor:
        return (self.G * g[self.idx]).sum(dim=(1, 2))

    def matvec(self, alpha: torch.Tensor) -> torch.Tensor:
        out = self.G.new_zeros(self.block_shape)
        out.index_add_(0, self.idx.reshape(-1),
                       (self.G * alpha.reshape(-1, 1, 1)).reshape(-1, self.dim))
        return out

    def apply_flops(self) -> float:
        return 4.0 * self.n * self.positions * self.dim

    def to_dense(self) -> DenseGrads:
        n, (v, d) = self.n, self.block_shape
        slot = (torch.arange(n, device=self.idx.device)[:, None] * v + self.idx).reshape(-1)
        Y = self.G.new_zeros((n * v, d))
        Y.index_add_(0, slot, self.G.reshape(-1, d))
        return DenseGrads(Y.reshape(n, v * d), self.block_shape)

    def compact(self) -> PerSampleGrads:
        v, d = self.block_shape
        return self.to_dense() if v * d <= self.positions * (d + 1) else self

    # -- sketch ----------------------------------------------------------------------------
    def sketch_dims(self, size: int) -> tuple[int, int]:
        """Rows ``(s_out, s_in)`` of ``S_out (x) S_in`` on the ``(D, V)`` sides."""
        v, d = self.block_shape
        return cost.kron_sketch_dims(size, 1, v, d)

    def sketch(self, kind: str, size: int, rng: np.random.Generator) -> PerSampleGrads:
        # S vec(u_i) with S = S_out (x) S_in: the one-hot rows e_idx become columns
        # S_in[:, idx] and g_it becomes S_out g_it, so the result is Kronecker factors with
        # the tokens as positions. E[S^T S] = I as for the Kronecker sketch of a Linear.
        v, d = self.block_shape
        s_out, s_in = self.sketch_dims(size)
        G = self.G
        if s_out < d:
            S_out = _make_sketch(kind, s_out, d, rng)
            G = (G.reshape(-1, d) @ S_out.T).reshape(self.n, self.positions, s_out)
        if s_in >= v:
            return EmbeddingGrads(self.idx, G, v)
        S_in = _make_sketch(kind, s_in, v, rng)
        A = S_in.to_dense(like=G).T[self.idx]  # (N, T, s_in)
        return KroneckerFactors(A[:, None], G[:, None])

    def sketch_flops(self, kind: str, size: int) -> float:
        v, d = self.block_shape
        s_out, s_in = self.sketch_dims(size)
        rows = self.n * self.positions
        flops = rows * cost.sketch_apply_flops(kind, s_out, d) if s_out < d else 0.0
        if s_in >= v:
            return flops + EmbeddingGrads(self.idx, self.G[..., :s_out], v).gram_flops()
        return flops + s_in * v + rows * s_in + cost.cheapest_flops(cost.kron_gram_costs(
            self.n, 1, self.positions, s_in, s_out, self.G.element_size()))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"idx": self.idx, "G": self.G}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> EmbeddingGrads:
        return cls(state["idx"].to(device), state["G"].to(device), state["block_shape"][0])


class ShardedGrads(PerSampleGrads):
    r"""``U = [U_0, \dots, U_{W-1}]`` split by samples over ``W`` processes, with only this
    process's block ``U_r`` (``local``, samples ``offset .. offset + n_r``) held here.

    :meth:`rmatvec` gives the partial ``U_r^T g`` and :meth:`matvec` the partial
    ``U_r \alpha_r``; a communicator (:mod:`seng.comm`) completes them, for all sharded
    layers in one collective each. Not saved by ``state_dict`` (it holds one rank's part).
    """

    sharded = True

    def __init__(self, local: PerSampleGrads, sizes: list[int], rank: int) -> None:
        self.local, self.sizes = local, list(sizes)
        self.kind = "sharded-" + local.kind  # type: ignore[misc]
        self.n = sum(sizes)
        self.block_shape = local.block_shape
        self.offset = sum(sizes[:rank])

    def rmatvec(self, g: torch.Tensor) -> torch.Tensor:
        return self.local.rmatvec(g)

    def matvec(self, alpha: torch.Tensor) -> torch.Tensor:
        return self.local.matvec(alpha[self.offset:self.offset + self.local.n])

    def tensors(self) -> dict[str, torch.Tensor]:
        return self.local.tensors()


REPRESENTATIONS: dict[str, type[PerSampleGrads]] = {
    DenseGrads.kind: DenseGrads,
    KroneckerFactors.kind: KroneckerFactors,
    EmbeddingGrads.kind: EmbeddingGrads,
}


def pool(stores: list[PerSampleGrads]) -> PerSampleGrads | None:
    r"""The store of :math:`U = [U_1, \dots, U_k] / \sqrt{k}` for the stores of ``k``
    batches, so that :math:`U U^T` is the mean of their :math:`U_j U_j^T`; None when their
    layouts differ (another kind, block or number of positions per sample)."""
    first = stores[0]
    key = first.linear_in
    if key is None:
        return None
    parts = [s.tensors() for s in stores]
    for s, t in zip(stores, parts, strict=True):
        if type(s) is not type(first) or s.block_shape != first.block_shape or any(
                v.shape[1:] != parts[0][n].shape[1:] or v.dtype != parts[0][n].dtype
                for n, v in t.items()):
            return None
    joined = {n: torch.cat([t[n] for t in parts]) for n in parts[0]}
    joined[key] = joined[key] * (1.0 / math.sqrt(len(stores)))
    return REPRESENTATIONS[first.kind].from_state(
        {"block_shape": list(first.block_shape), **joined}, joined[key].device)


def from_state(state: dict[str, Any], device: torch.device) -> PerSampleGrads:
    """Rebuild a representation saved by :meth:`PerSampleGrads.state_dict`."""
    return REPRESENTATIONS[state["kind"]].from_state(state, device)
