"""``nn.BatchNorm1d``, ``nn.BatchNorm2d``, ``nn.BatchNorm3d``: affine weight and bias."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .affine import AffineNormHelper, channels_last, work_float


class BatchNormHelper(AffineNormHelper):
    r"""Per-sample gradients of the affine part of batch normalization.

    ``y = \hat x \odot w + b`` per channel with
    ``\hat x = (x - \mu) / \sqrt{\sigma^2 + \epsilon}``; ``u_i^{(w)} = \sum_p g_{ip} \hat
    x_{ip}`` and ``u_i^{(b)} = \sum_p g_{ip}`` per channel, summed over the spatial positions
    ``p``. ``\mu, \sigma^2`` are the statistics the forward used: the batch's (biased
    variance) in training mode or without running statistics, the running ones otherwise;
    they are computed in the forward hook, before any curvature-batch subsampling.

    Train-mode semantics: with batch statistics every output depends on every sample, so
    "the gradient of sample ``i``" is not defined by the layer alone. The hook decomposition
    gives each sample's *contribution* to the batch gradient: ``g_i`` is the
    backpropagated gradient at sample ``i``'s output, which already contains the coupling
    through the batch statistics of later layers, and ``\sum_i u_i`` is exactly the batch
    gradient of ``w`` and ``b``. With running statistics (eval mode) and no batch coupling
    elsewhere, ``u_i`` is the true per-sample gradient ``\nabla l_i``.
    """

    module_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

    def capture_forward(self, inputs: tuple[Any, ...], output: Any) -> tuple[torch.Tensor, ...]:
        m = self.module
        x = inputs[0].detach()
        if m.training or m.running_mean is None:
            # The batch statistics by the kernel the forward used (same values; several
            # times faster than a strided var_mean over (N, *spatial)).
            _, mean, invstd = torch.native_batch_norm(
                work_float(x), None, None, None, None, True, 0.0, m.eps)
        else:
            mean, invstd = m.running_mean, torch.rsqrt(m.running_var + m.eps)
        # Per-channel statistics, expanded (a view) to the sample dimension so that the
        # curvature-batch subsampling of the payload keeps them aligned.
        n = x.shape[0]
        return x, mean.expand(n, -1), invstd.expand(n, -1)

    def normalized(self, payload: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, mean, invstd = payload
        shape = (*mean.shape, *([1] * (x.ndim - 2)))
        return channels_last((x - mean.reshape(shape)) * invstd.reshape(shape))

    def positions(self, t: torch.Tensor) -> torch.Tensor:
        return channels_last(t)
