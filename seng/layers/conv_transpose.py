"""``nn.ConvTranspose1d/2d/3d``: stride, padding, output padding (also through ``output_size``),
dilation, groups."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .conv import ConvHelper


class ConvTransposeHelper(ConvHelper):
    r"""Per-sample gradient of a transposed convolution as Kronecker factors over output
    positions.

    Output position ``t`` of a transposed convolution receives ``x[c, i] W[c, o, k]`` for
    every input position ``i`` and kernel tap ``k`` with ``t = i s - p + k d`` (stride ``s``,
    padding ``p``, dilation ``d``, per spatial dimension). So it is a plain convolution of the
    input with its samples spread ``s`` apart (zeros between them) and padded by
    ``d (K - 1) - p`` before and ``d (K - 1) - p + output_padding`` after, reading the kernel
    taps in reverse order. Group ``j``'s block is then ``[W_j^T, b_j]`` with rows the group's
    ``C_out/groups`` output channels and columns its ``C_in/groups`` input channels times the
    kernel taps (last tap first) plus the bias, and ``grad l_i = G_{ij}^T A_{ij}`` with the
    spread input's patches as rows of ``A`` (:meth:`patches`).

    The dense per-sample gradients (exact route, small blocks) come from the transposed
    convolution's own weight-gradient kernel for all samples at once, the batch folded into
    the groups (:meth:`weight_grads`), without the patches.
    """

    module_types = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

    def output_padding(self, x: torch.Tensor, gy: torch.Tensor) -> tuple[int, ...]:
        """The output padding of a call, from its shapes (``forward(x, output_size)`` may
        choose another than the module's ``output_padding``)."""
        m = self.module
        return tuple(
            out - ((n_in - 1) * s - 2 * p + d * (k - 1) + 1)
            for out, n_in, s, p, d, k in zip(gy.shape[2:], x.shape[2:], m.stride, m.padding,
                                             m.dilation, m.kernel_size, strict=True))

    def patches(self, x: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
        """Patches of the spread, padded input, one row per output position:
        ``(N, groups, T, C_in/groups * prod(kernel))``, kernel taps in reverse order."""
        m, sp, n = self.module, self.spatial, x.shape[0]
        spread = x.new_zeros((*x.shape[:2], *((L - 1) * s + 1 for L, s in
                                              zip(x.shape[2:], m.stride, strict=True))))
        spread[(slice(None), slice(None), *(slice(None, None, s) for s in m.stride))] = x
        pad: list[int] = []  # F.pad order: last dimension first; negative values crop
        for d, k, p, op in reversed(list(zip(m.dilation, m.kernel_size, m.padding,
                                             self.output_padding(x, gy), strict=True))):
            pad += [d * (k - 1) - p, d * (k - 1) - p + op]
        z = F.pad(spread, pad)
        for dim, (k, d) in enumerate(zip(m.kernel_size, m.dilation, strict=True)):
            z = z.unfold(2 + dim, d * (k - 1) + 1, 1)[..., ::d]
        # (N, C, *out, *kernel) -> (N, T, C * prod(kernel)), then split the groups.
        z = z.permute(0, *range(2, 2 + sp), 1, *range(2 + sp, 2 + 2 * sp))
        z = z.reshape(n, math.prod(z.shape[1:1 + sp]), -1)
        return z.reshape(n, z.shape[1], self.groups, -1).transpose(1, 2)

    def weight_grads(self, x: torch.Tensor, gy: torch.Tensor, live: tuple[str, ...]
                     ) -> torch.Tensor:
        """Per-sample gradients ``(N, groups, C_out/groups, d_a)`` of one call, in block
        layout: the transposed convolution's own weight-gradient kernel with the batch
        folded into the channels (``N * groups`` groups)."""
        m = self.module
        n, g, dg = x.shape[0], self.groups, m.out_channels // self.groups
        cols = []
        if "weight" in live:
            shape = (n * m.in_channels, *m.weight.shape[1:])
            weight = x.new_empty((1,) * len(shape)).expand(shape)  # only its shape is read
            w = torch.ops.aten.convolution_backward(
                gy.reshape(1, -1, *gy.shape[2:]), x.reshape(1, -1, *x.shape[2:]), weight, None,
                m.stride, m.padding, m.dilation, True, self.output_padding(x, gy), n * g,
                [False, True, False])[1]
            cols.append(self._weight_to_block(w.reshape(n, *m.weight.shape)))
        if "bias" in live:
            cols.append(gy.reshape(n, g, dg, -1).sum(dim=3, keepdim=True))
        return cols[0] if len(cols) == 1 else torch.cat(cols, dim=3)

    def _weight_to_block(self, w: torch.Tensor) -> torch.Tensor:
        """``(*lead, C_in, C_out/groups, *kernel)`` -> ``(*lead, groups, C_out/groups,
        C_in/groups * prod(kernel))``, kernel taps reversed (the order of :meth:`patches`)."""
        sp, g = self.spatial, self.groups
        lead = w.shape[:w.ndim - sp - 2]
        c_in, dg, kernel = w.shape[len(lead)], w.shape[len(lead) + 1], w.shape[len(lead) + 2:]
        w = w.reshape(*lead, g, c_in // g, dg, *kernel).transpose(-2 - sp, -1 - sp)
        w = w.flip(tuple(range(w.ndim - sp, w.ndim)))
        return w.reshape(*lead, g, dg, -1)

    def _block_to_weight(self, block: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_weight_to_block` for one block ``(groups, C_out/groups, ...)``."""
        c_in, dg, *kernel = self.module.weight.shape
        sp, g = self.spatial, self.groups
        w = block.reshape(g, dg, c_in // g, *kernel).flip(tuple(range(3, 3 + sp)))
        return w.transpose(1, 2).reshape(c_in, dg, *kernel)

    def grads_to_block(self, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        cols = []
        if "weight" in grads:
            cols.append(self._weight_to_block(grads["weight"]))
        if "bias" in grads:
            cols.append(grads["bias"].reshape(self.groups, -1, 1))
        return cols[0] if len(cols) == 1 else torch.cat(cols, dim=2)

    def block_to_grads(self, block: torch.Tensor, live: tuple[str, ...]) -> dict[str, torch.Tensor]:
        out = {}
        if "weight" in live:
            width = block.shape[2] - (1 if "bias" in live else 0)
            out["weight"] = self._block_to_weight(block[:, :, :width])
        if "bias" in live:
            out["bias"] = block[:, :, -1].reshape(self.module.bias.shape)
        return out
