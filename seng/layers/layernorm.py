"""``nn.LayerNorm`` with an elementwise affine map (weight and optional bias)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .affine import AffineNormHelper


class LayerNormHelper(AffineNormHelper):
    r"""Per-sample gradients of the affine part of layer normalization.

    For an input ``(N, *, *S)`` normalized over the trailing shape ``S``,
    ``\hat x = (x - \mu) / \sqrt{\sigma^2 + \epsilon}`` per position (statistics over
    ``S``, biased variance), ``u_i^{(w)} = \sum_t g_{it} \odot \hat x_{it}`` and
    ``u_i^{(b)} = \sum_t g_{it}`` summed over the leading positions ``t`` (tokens). The
    statistics involve one position only, so ``u_i`` is the true per-sample gradient in
    every mode. An input of shape ``S`` alone is one sample. ``\hat x`` is recomputed from
    the captured input in ``step()`` (nothing beyond the input is kept).
    """

    module_types = (nn.LayerNorm,)
    any_sample_dim = True

    def capture_forward(self, inputs: tuple[Any, ...], output: Any) -> torch.Tensor:
        x = inputs[0].detach()
        return x[None] if x.ndim == len(self.module.normalized_shape) else x

    def capture_grad(self, grad_output: torch.Tensor) -> torch.Tensor:
        unbatched = grad_output.ndim == len(self.module.normalized_shape)
        return grad_output[None] if unbatched else grad_output

    def normalized(self, payload: torch.Tensor) -> torch.Tensor:
        x = self.positions(payload)
        var, mean = torch.var_mean(x, dim=2, unbiased=False, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.module.eps)

    def positions(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], -1, self.width)
