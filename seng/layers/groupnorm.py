"""``nn.GroupNorm`` with an affine map (per-channel weight and bias)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .affine import AffineNormHelper, channels_last


class GroupNormHelper(AffineNormHelper):
    r"""Per-sample gradients of the affine part of group normalization.

    For an input ``(N, C, *)`` the channels form ``G`` groups normalized per sample over
    (channels of the group, positions): ``\hat x = (x - \mu_{ig}) / \sqrt{\sigma^2_{ig} +
    \epsilon}``; per channel ``c``, ``u_i^{(w)} = \sum_p g_{icp} \hat x_{icp}`` and
    ``u_i^{(b)} = \sum_p g_{icp}``. The statistics involve one sample only, so ``u_i`` is
    the true per-sample gradient in every mode; ``\hat x`` is recomputed from the captured
    input in ``step()``.
    """

    module_types = (nn.GroupNorm,)

    def capture_forward(self, inputs: tuple[Any, ...], output: Any) -> torch.Tensor:
        return inputs[0].detach()

    def normalized(self, payload: torch.Tensor) -> torch.Tensor:
        x = payload.reshape(payload.shape[0], self.module.num_groups, -1)
        var, mean = torch.var_mean(x, dim=2, unbiased=False, keepdim=True)
        return channels_last(((x - mean) * torch.rsqrt(var + self.module.eps)).reshape(
            payload.shape))

    def positions(self, t: torch.Tensor) -> torch.Tensor:
        return channels_last(t)
