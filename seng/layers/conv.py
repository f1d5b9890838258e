"""``nn.Conv1d``, ``nn.Conv2d``, ``nn.Conv3d``: stride, padding (any mode), dilation, groups."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..routes.persample import KroneckerFactors
from .base import WeightBiasHelper


class ConvHelper(WeightBiasHelper):
    r"""Per-sample gradient of a convolution as Kronecker factors over output positions.

    For group ``j`` and output position ``t``, let ``a_{ijt}`` be the input patch of sample
    ``i`` that position ``t`` reads (``C_in/groups * prod(kernel)`` values, im2col order,
    plus a one for the bias) and ``g_{ijt}`` the output gradient of the group's
    ``C_out/groups`` channels there. Then ``grad_[W_j, b_j] l_i = G_{ij}^T A_{ij}`` with the
    ``a_{ijt}`` and ``g_{ijt}`` as rows. An unbatched input (no sample dimension) is one
    sample.
    """

    module_types = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        self.groups = module.groups
        self.spatial = len(module.kernel_size)

    def capture_forward(self, inputs: tuple[Any, ...], output: Any) -> torch.Tensor:
        x = inputs[0].detach()
        return x[None] if x.ndim == self.spatial + 1 else x

    def capture_grad(self, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output[None] if grad_output.ndim == self.spatial + 1 else grad_output

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """im2col of ``x``: ``(N, groups, T, C_in/groups * prod(kernel))`` (a view when no
        copy is needed)."""
        m = self.module
        n = x.shape[0]
        if self.spatial <= 2 and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            # F.unfold is the optimized im2col; Conv1d runs as a 1 x L image.
            one = (1,) if self.spatial == 1 else ()
            cols = F.unfold(x if self.spatial == 2 else x[:, :, None], one + m.kernel_size,
                            dilation=one + m.dilation, padding=(0,) * len(one) + m.padding,
                            stride=one + m.stride)  # (N, C * prod(kernel), T)
            return cols.reshape(n, self.groups, -1, cols.shape[2]).transpose(2, 3)
        # Any padding mode, and 3-D: pad, then Tensor.unfold per spatial dim (views).
        mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
        x = F.pad(x, m._reversed_padding_repeated_twice, mode=mode)
        for d, (k, s, dil) in enumerate(zip(m.kernel_size, m.stride, m.dilation, strict=True)):
            x = x.unfold(2 + d, dil * (k - 1) + 1, s)[..., ::dil]
        sp = self.spatial
        # (N, C, *out, *kernel) -> (N, *out, C, *kernel) -> (N, T, C * prod(kernel)): one copy.
        x = x.permute(0, *range(2, 2 + sp), 1, *range(2 + sp, 2 + 2 * sp))
        t = 1
        for o in x.shape[1:1 + sp]:
            t *= o
        x = x.reshape(n, t, -1)
        return x.reshape(n, x.shape[1], self.groups, -1).transpose(1, 2)

    def per_sample(
        self, calls: list[tuple[torch.Tensor, torch.Tensor]], live: tuple[str, ...], scale: float
    ) -> KroneckerFactors:
        A, G = [], []
        for x, gy in calls:
            n = gy.shape[0]
            A.append(self.with_ones(self.patches(x), live))
            G.append((gy.reshape(n, self.groups, gy.shape[1] // self.groups, -1) * scale)
                     .transpose(2, 3))
        return KroneckerFactors(_cat(A), _cat(G))


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    # Calls are positions of one sample; a single call needs no copy.
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
