"""Shared logic of the normalization layers with an elementwise affine map
(``BatchNorm``, ``LayerNorm``, ``GroupNorm``): ``y = x_hat * weight + bias``."""

from __future__ import annotations

from typing import Any

import torch

from ..persample import DenseGrads
from .base import LayerHelper


class AffineNormHelper(LayerHelper):
    r"""Per-sample gradients of ``y = \hat x \odot w + b`` with ``\hat x`` the normalized input.

    The output of sample ``i`` depends on ``w`` and ``b`` only through the affine map, so with
    the output gradient ``g_i`` recorded by the hook,

    .. math:: u_i^{(w)} = \sum_{p} g_{ip} \odot \hat x_{ip}, \qquad
              u_i^{(b)} = \sum_{p} g_{ip},

    summed over the positions ``p`` that share the affine parameters (pixels for
    ``BatchNorm``/``GroupNorm``, leading token dimensions for ``LayerNorm``). The block layout
    is ``(live parameters, numel(weight))``; the per-sample gradients are small and stored
    densely (:class:`~seng.persample.DenseGrads`).

    Subclasses provide :meth:`normalized` (``\hat x`` as ``(N, P, D)``) and :meth:`positions`
    (a tensor shaped like the output as ``(N, P, D)``, ``D = numel(weight)``).
    """

    def normalized(self, payload: Any) -> torch.Tensor:
        """``\\hat x`` of a recorded call as ``(N, P, D)``."""
        raise NotImplementedError

    def positions(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (shaped like the module output, sample first) as ``(N, P, D)``."""
        raise NotImplementedError

    @property
    def width(self) -> int:
        w = self.module.weight if self.module.weight is not None else self.module.bias
        return w.numel()

    def reduce(self, payload: Any, grad_output: torch.Tensor) -> torch.Tensor:
        """``(N, 2, D)``: the unscaled ``u^{(w)}`` and ``u^{(b)}`` of one call, formed in the
        backward hook (``N x 2D`` numbers instead of the input and the output gradient)."""
        g = self.positions(work_float(grad_output))
        if isinstance(payload, tuple):
            payload = tuple(work_float(t) for t in payload)
        else:
            payload = work_float(payload)
        return torch.stack([torch.einsum("npd,npd->nd", g, self.normalized(payload)),
                            g.sum(dim=1)], dim=1)

    def per_sample(
        self, calls: list[tuple[Any, torch.Tensor | None]], live: tuple[str, ...], scale: float
    ) -> DenseGrads:
        rows = None
        for payload, gy in calls:
            r = payload if gy is None else self.reduce(payload, gy)
            r = r[:, [k for k, n in enumerate(("weight", "bias")) if n in live]].flatten(1)
            rows = r if rows is None else rows + r  # several calls: the sum over calls
        return DenseGrads(rows * scale, (len(live), self.width))

    def grads_to_block(self, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([g.reshape(-1) for g in grads.values()])

    def block_to_grads(self, block: torch.Tensor, live: tuple[str, ...]) -> dict[str, torch.Tensor]:
        return {n: block[k].reshape(getattr(self.module, n).shape) for k, n in enumerate(live)}


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """``(N, C, *)`` as ``(N, P, C)`` (a view when possible)."""
    return t.reshape(t.shape[0], t.shape[1], -1).transpose(1, 2)


def work_float(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least float32: statistics of half-precision activations are computed in
    float32 (the captured tensors are upcast anyway, see the preconditioner)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
