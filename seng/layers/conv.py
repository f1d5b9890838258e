"""``nn.Conv1d``, ``nn.Conv2d``, ``nn.Conv3d``: stride, padding (any mode), dilation, groups."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
import torch.nn.grad
from torch import nn

from ..persample import DenseGrads, KroneckerFactors, dense_is_compact
from .affine import work_float
from .base import WeightBiasHelper

_WEIGHT_GRAD = {1: torch.nn.grad.conv1d_weight, 2: torch.nn.grad.conv2d_weight,
                3: torch.nn.grad.conv3d_weight}


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

    def __init__(self, module: nn.Module, exact_params: tuple[str, ...] | None = None) -> None:
        super().__init__(module, exact_params)
        self.groups = module.groups
        self.spatial = len(module.kernel_size)

    def capture_forward(self, inputs: tuple[Any, ...], output: Any) -> torch.Tensor:
        x = inputs[0].detach()
        return x[None] if x.ndim == self.spatial + 1 else x

    def capture_grad(self, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output[None] if grad_output.ndim == self.spatial + 1 else grad_output

    def patches(self, x: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
        """im2col of ``x``: ``(N, groups, T, C_in/groups * prod(kernel))`` (a view when no
        copy is needed); ``gy`` (the call's output gradient) is not needed here."""
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

    def reduce(self, payload: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor | None:
        """On the exact route, when the dense per-sample gradients are the compact form
        (``d_a d_g <= T (d_a + d_g)``, the rule of
        :meth:`~seng.persample.KroneckerFactors.compact`): those gradients,
        ``(N, groups, C_out/groups, d_a)`` for the block's parameters ``exact_params``,
        formed in the backward hook so that the input and output gradient need not be held
        until ``step()``."""
        if self.exact_params is None:
            return None
        dg = self.module.out_channels // self.groups
        positions = math.prod(grad_output.shape[2:])
        if not dense_is_compact(positions, self.block_width(self.exact_params), dg):
            return None
        return self.weight_grads(work_float(payload), work_float(grad_output), self.exact_params)

    def block_width(self, live: tuple[str, ...]) -> int:
        """``d_a``: the block's columns per group (input patch, and one for the bias)."""
        m = self.module
        per_in = m.in_channels // self.groups * math.prod(m.kernel_size)
        return per_in * ("weight" in live) + ("bias" in live)

    def per_sample(
        self, calls: list[tuple[torch.Tensor, torch.Tensor | None]], live: tuple[str, ...],
        scale: float
    ) -> ConvFactors | DenseGrads:
        if calls[0][1] is None:  # reduced in the backward hook (all calls alike)
            W = sum(self._live_columns(w, live) for w, _ in calls)
            return DenseGrads((W * scale).reshape(W.shape[0], -1), tuple(W.shape[1:]))
        return ConvFactors(self, [(x, gy * scale) for x, gy in calls], live)

    def _live_columns(self, w: torch.Tensor, live: tuple[str, ...]) -> torch.Tensor:
        """The columns of ``live`` in per-sample gradients laid out for ``exact_params``."""
        if live == self.exact_params:
            return w
        return w[..., :-1] if live == ("weight",) else w[..., -1:]

    def weight_grads(self, x: torch.Tensor, gy: torch.Tensor, live: tuple[str, ...]
                     ) -> torch.Tensor:
        """Per-sample gradients ``(N, groups, C_out/groups, d_a)`` of one call, in block
        layout, by the convolution's weight-gradient kernel with the batch folded into the
        channels (``N * groups`` groups): no im2col copy."""
        m = self.module
        n, g, dg = x.shape[0], self.groups, m.out_channels // self.groups
        cols = []
        if "weight" in live:
            padding = m.padding
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
                x, padding = F.pad(x, m._reversed_padding_repeated_twice, mode=mode), 0
            w = _WEIGHT_GRAD[self.spatial](
                x.reshape(1, -1, *x.shape[2:]), (n * m.out_channels, *m.weight.shape[1:]),
                gy.reshape(1, -1, *gy.shape[2:]), stride=m.stride, padding=padding,
                dilation=m.dilation, groups=n * g)
            cols.append(w.reshape(n, g, dg, -1))
        if "bias" in live:
            cols.append(gy.reshape(n, g, dg, -1).sum(dim=3, keepdim=True))
        return cols[0] if len(cols) == 1 else torch.cat(cols, dim=3)


class ConvFactors(KroneckerFactors):
    """Kronecker factors of a convolution whose im2col factor ``A`` is built on first use.

    The dense per-sample gradients (:meth:`to_dense`: the dense Gram and the dense store)
    come from :meth:`ConvHelper.weight_grads` instead of ``G^T A``, which avoids the
    ``N x T x d_a`` im2col copy and runs several times faster on CPU (per-sample gradients
    by a grouped convolution: Rochette, Manoel, Tramel 2019). ``calls`` hold the inputs and
    the scaled output gradients.
    """

    def __init__(self, helper: ConvHelper, calls: list[tuple[torch.Tensor, torch.Tensor]],
                 live: tuple[str, ...]) -> None:
        self.helper, self.calls, self.live = helper, calls, live
        g = helper.groups
        self.G = _cat([gy.reshape(gy.shape[0], g, gy.shape[1] // g, -1).transpose(2, 3)
                       for _, gy in calls])
        self.n, self.groups, self.positions, self.dg = self.G.shape
        self.da = helper.block_width(live)
        self.block_shape = (self.groups, self.dg, self.da)
        self._A: torch.Tensor | None = None

    @property
    def A(self) -> torch.Tensor:  # type: ignore[override]
        if self._A is None:
            self._A = _cat([self.helper.with_ones(self.helper.patches(x, gy), self.live)
                            for x, gy in self.calls])
        return self._A

    def compact(self) -> DenseGrads | KroneckerFactors:
        # Kept as factors, it drops the captured calls and lays G out contiguously, so that
        # the products between refreshes reshape without copying (KroneckerFactors._by_group).
        if dense_is_compact(self.positions, self.da, self.dg):
            return self.to_dense()
        return KroneckerFactors(self.A, self.G.contiguous())

    def to_dense(self) -> DenseGrads:
        W = None
        for x, gy in self.calls:
            w = self.helper.weight_grads(x, gy, self.live)
            W = w if W is None else W + w
        return DenseGrads(W.reshape(self.n, -1), self.block_shape)


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    # Calls are positions of one sample; a single call needs no copy.
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
