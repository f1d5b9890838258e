"""A parameter used by several modules (tied input and output embeddings, a weight reused
by two layers): one block whose per-sample gradient is the sum over its users."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..persample import DenseGrads
from .base import LayerHelper


class SharedParamHelper(LayerHelper):
    r"""Per-sample gradients of a parameter ``w`` used by modules ``m_1, ..., m_k``.

    Sample ``i``'s gradient is :math:`\sum_j \nabla_w l_i |_{m_j}`, the sum of the
    gradients through each use (as autograd sums them into ``w.grad``). Each user's own
    helper computes its part from that module's recorded calls; the parts are added as dense
    per-sample gradients (``N x numel(w)``, held like any dense store), so the Gram includes
    the cross terms between uses. A user qualifies when its helper's block of ``w`` alone is
    laid out in ``w``'s own order (:meth:`layout_matches`: Linear, convolution and
    embedding weights are).

    Parameters
    ----------
    parameter : torch.nn.Parameter
        The shared parameter.
    users : list of (module, helper, attribute name)
        Each module using it, the helper serving its calls, and the parameter's name there.
    """

    param_names = ("shared",)
    type_name = "shared"

    def __init__(self, parameter: nn.Parameter,
                 users: list[tuple[nn.Module, LayerHelper, str]]) -> None:
        super().__init__(users[0][0])
        self.parameter = parameter
        self.users = users

    @staticmethod
    def layout_matches(helper: LayerHelper, attr: str, parameter: nn.Parameter) -> bool:
        """Whether ``helper``'s block of ``attr`` alone is ``parameter`` in its own order."""
        probe = torch.arange(parameter.numel(), dtype=torch.float64).reshape(parameter.shape)
        try:
            block = helper.grads_to_block({attr: probe})
        except (KeyError, RuntimeError, ValueError):
            return False
        return block.numel() == probe.numel() and torch.equal(block.reshape(-1),
                                                              probe.reshape(-1))

    def per_sample(self, calls: list[list[tuple[Any, torch.Tensor]]], live: tuple[str, ...],
                   scale: float) -> DenseGrads:
        """``calls``: the recorded calls of each user, in the order of ``users``."""
        rows = None
        for (_, helper, attr), work in zip(self.users, calls, strict=True):
            part = helper.per_sample(work, (attr,), scale).to_dense().rows
            rows = part if rows is None else rows + part
        return DenseGrads(rows, tuple(self.parameter.shape))

    def grads_to_block(self, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        return grads["shared"]

    def block_to_grads(self, block: torch.Tensor, live: tuple[str, ...]) -> dict[str, torch.Tensor]:
        return {"shared": block}
