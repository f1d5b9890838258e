"""``nn.Embedding``: sparse per-sample gradients (the rows of the tokens a sample uses)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..persample import EmbeddingGrads
from .base import LayerHelper


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

    @classmethod
    def block_param_names(cls, module: nn.Module) -> tuple[str, ...]:
        return () if module.sparse else cls.param_names

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
