"""``nn.Linear``: inputs of any leading shape ``(N, *, d_in)``, positions summed."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..persample import KroneckerFactors
from .base import WeightBiasHelper


class LinearHelper(WeightBiasHelper):
    r"""Per-sample gradient of ``y = x W^T + b`` with ``x`` of shape ``(N, *, d_in)``.

    With the ``T`` positions of sample ``i`` (tokens; 1 for a plain batch) stacked in
    ``A_i`` (``T x (d_in + 1)``, a ones column for the bias) and the output gradients in
    ``G_i`` (``T x d_out``), ``grad_[W, b] l_i = G_i^T A_i``. A 1-D input is one sample.
    """

    module_types = (nn.Linear,)
    any_sample_dim = True

    def capture_forward(self, inputs: tuple[Any, ...], output: Any) -> torch.Tensor:
        x = inputs[0].detach()
        return x.reshape(1, -1) if x.ndim == 1 else x

    def capture_grad(self, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output.reshape(1, -1) if grad_output.ndim == 1 else grad_output

    def per_sample(
        self, calls: list[tuple[torch.Tensor, torch.Tensor]], live: tuple[str, ...], scale: float
    ) -> KroneckerFactors:
        # Calls are more positions of the same samples: concatenate along positions.
        A = _cat([x.reshape(x.shape[0], -1, x.shape[-1]) for x, _ in calls])
        G = _cat([gy.reshape(gy.shape[0], -1, gy.shape[-1]) for _, gy in calls])
        A = self.with_ones(A, live)
        return KroneckerFactors(A[:, None], (G * scale)[:, None])


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
