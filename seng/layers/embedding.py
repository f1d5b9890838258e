"""``nn.Embedding``: sparse per-sample gradients (the rows of the tokens a sample uses)."""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any

import torch
from torch import nn

from ..routes.cost import choose_gram_method
from ..routes.persample import (
    GRAM_CHUNK_ELEMENTS,
    REPRESENTATIONS,
    DenseGrads,
    KroneckerFactors,
    PerSampleGrads,
    _apply_flops,
    _kron_gram_costs,
    _make_sketch,
)
from .base import LayerHelper


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
        n, t, d, item = self.n, self.positions, self.dim, self.G.element_size()
        u = self._used[0]
        return {"pairs": (2.0 * n * n * t * t * (d + 1),
                          2.0 * min(n * n * t * t, GRAM_CHUNK_ELEMENTS) * item),
                "rows": (2.0 * n * n * u * d + n * t * d, float(n * u * d * item))}

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
        rows = max(1, GRAM_CHUNK_ELEMENTS // max(1, t * n * t))
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
        s = max(1, math.isqrt(size))
        if d <= s:
            return d, min(v, max(1, size // d))
        if v <= s:
            return min(d, max(1, size // v)), v
        return s, s

    def sketch(self, kind: str, size: int, rng: Any) -> PerSampleGrads:
        # S vec(u_i) with S = S_out (x) S_in: the one-hot rows e_idx become columns
        # S_in[:, idx] and g_it becomes S_out g_it, so the result is Kronecker factors with
        # the tokens as positions. E[S^T S] = I as for the Kronecker sketch of a Linear.
        v, d = self.block_shape
        s_out, s_in = self.sketch_dims(size)
        seeds = rng.integers(0, 2**63, size=2)
        G = self.G
        if s_out < d:
            S_out = _make_sketch(kind, s_out, d, int(seeds[1]))
            G = (G.reshape(-1, d) @ S_out.T).reshape(self.n, self.positions, s_out)
        if s_in >= v:
            return EmbeddingGrads(self.idx, G, v)
        S_in = _make_sketch(kind, s_in, v, int(seeds[0]))
        A = S_in.to_dense(like=G).T[self.idx]  # (N, T, s_in)
        return KroneckerFactors(A[:, None], G[:, None])

    def sketch_flops(self, kind: str, size: int) -> float:
        v, d = self.block_shape
        s_out, s_in = self.sketch_dims(size)
        rows = self.n * self.positions
        flops = rows * _apply_flops(kind, s_out, d) if s_out < d else 0.0
        if s_in >= v:
            return flops + EmbeddingGrads(self.idx, self.G[..., :s_out], v).gram_flops()
        costs = _kron_gram_costs(self.n, 1, self.positions, s_in, s_out, self.G.element_size())
        return flops + s_in * v + rows * s_in + costs[choose_gram_method(costs)][0]

    def gram_flops(self) -> float:
        costs = self.gram_costs()
        return costs[choose_gram_method(costs)][0]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"idx": self.idx, "G": self.G}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> EmbeddingGrads:
        return cls(state["idx"].to(device), state["G"].to(device), state["block_shape"][0])


REPRESENTATIONS[EmbeddingGrads.kind] = EmbeddingGrads


class EmbeddingHelper(LayerHelper):
    r"""Per-sample gradients of ``y = W[idx]`` for indices of shape ``(N, *)``.

    The ``T = prod(*)`` tokens of sample ``i`` (1 for an input of shape ``(N,)``) and their
    output gradients give :class:`EmbeddingGrads`. Tokens equal to ``padding_idx`` get no
    gradient (as in ``nn.Embedding``). With ``scale_grad_by_freq`` each token's gradient is
    divided by its count in the whole mini-batch of the call, which couples samples: as for
    ``BatchNorm`` in training mode, ``u_i`` is then sample ``i``'s contribution to the batch
    gradient. ``max_norm`` renormalizes rows outside autograd and needs nothing special.
    Embeddings with ``sparse=True`` are not preconditioned (their sparse gradients are left
    to the preconditioner's treatment of other parameters).
    """

    module_types = (nn.Embedding,)
    any_sample_dim = True
    param_names = ("weight",)

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        if module.sparse:
            self.param_names = ()

    def capture_forward(self, inputs: tuple[Any, ...], output: Any) -> Any:
        idx = inputs[0].detach()
        idx = idx.reshape(idx.shape[0], -1)
        if not self.module.scale_grad_by_freq:
            return idx
        # The counts are over the full mini-batch, before any curvature subsampling.
        counts = torch.bincount(idx.reshape(-1), minlength=self.module.num_embeddings)
        return idx, counts[idx]

    def capture_grad(self, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output.reshape(grad_output.shape[0], -1, grad_output.shape[-1])

    def per_sample(
        self, calls: list[tuple[Any, torch.Tensor]], live: tuple[str, ...], scale: float
    ) -> EmbeddingGrads:
        idx, G = [], []
        for payload, gy in calls:
            i, g = (payload, gy) if isinstance(payload, torch.Tensor) else (
                payload[0], gy / payload[1][..., None].to(gy.dtype))
            if self.module.padding_idx is not None:
                g = g * (i != self.module.padding_idx)[..., None]
            idx.append(i)
            G.append(g)
        return EmbeddingGrads(torch.cat(idx, dim=1), torch.cat(G, dim=1) * scale,
                              self.module.num_embeddings)

    def grads_to_block(self, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        return grads["weight"]

    def block_to_grads(self, block: torch.Tensor, live: tuple[str, ...]) -> dict[str, torch.Tensor]:
        return {"weight": block}
