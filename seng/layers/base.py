"""The per-layer interface: what a helper for one module type provides.

How a layer helper plugs in
---------------------------
A helper is a subclass of :class:`LayerHelper` registered for one or more module types
(subclasses that keep the type's forward match too) with :func:`seng.layers.register`
(see ``linear.py`` and ``conv.py``). The preconditioner then, for every module of that
type in the user's model:

1. on curvature steps only, calls :meth:`LayerHelper.capture_forward` from a forward hook
   (the returned payload is a tensor, or a tuple of tensors, with the sample dimension
   first; it is subsampled along that dimension when ``curvature_batch`` is set) and
   registers a tensor hook on :meth:`LayerHelper.hooked_output`, whose gradient goes
   through :meth:`LayerHelper.capture_grad` (also sample-first);
2. in ``step()``, hands every recorded call ``(payload, grad_output)`` of the module (or
   ``(stand-in, None)`` where :meth:`LayerHelper.reduce` replaced the pair in the backward
   hook) to :meth:`LayerHelper.per_sample`, which returns the per-sample gradients of the layer's
   block as a :class:`~seng.persample.PerSampleGrads` (a compact representation of
   ``U = [grad l_1, ..., grad l_N] / sqrt(N)``: Kronecker factors, a dense matrix, or a
   new representation class of your own);
3. maps the parameters' gradients to the block layout of that representation with
   :meth:`LayerHelper.grads_to_block`, lets a route (:mod:`seng.routes`) precondition the
   block, and maps the result back with :meth:`LayerHelper.block_to_grads`.

A module called several times in one forward gives one recorded call per use; the
per-sample gradient is the sum over calls, which ``per_sample`` must implement (for
Kronecker factors: concatenate the calls along the positions axis). Calls whose output
never receives a gradient are dropped before ``per_sample``. Only the parameters named in
``live`` (trainable and with a gradient this step) belong to the block.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..persample import PerSampleGrads

Payload = Any  # a tensor or a tuple of tensors, sample dimension first


class LayerHelper:
    """Capture and per-sample gradients for one supported module type.

    Parameters
    ----------
    module : torch.nn.Module
        The module (of one of ``module_types``) this helper serves.
    exact_params : tuple of str or None
        The block's parameters when the layer's route is exact: :meth:`reduce` may then
        form the exact compact per-sample gradients in the backward hook.
    """

    #: The module types served (and their subclasses that keep the forward).
    module_types: ClassVar[tuple[type[nn.Module], ...]] = ()
    #: Attribute names of the parameters forming the block, in block order.
    param_names: ClassVar[tuple[str, ...]] = ("weight", "bias")
    #: Whether the samples may sit in any dimension of the input (a layer that treats the
    #: other leading dimensions as positions); False where the module fixes them first.
    any_sample_dim: ClassVar[bool] = False
    #: Whether the module itself says where its samples are (``batch_first``): the helper
    #: moves them first in :meth:`capture_forward` and :meth:`capture_grad`, and
    #: ``sample_dim`` does not apply to it.
    layout_from_module: ClassVar[bool] = False

    def __init__(self, module: nn.Module, exact_params: tuple[str, ...] | None = None) -> None:
        self.module = module
        #: The block's parameters when the layer's route is exact (None otherwise).
        self.exact_params = exact_params

    @classmethod
    def block_param_names(cls, module: nn.Module) -> tuple[str, ...]:
        """The attribute names of ``module``'s parameters this helper can precondition."""
        return cls.param_names

    @classmethod
    def refuses(cls, module: nn.Module) -> str:
        """Why this instance of a served type cannot be served (its parameters are then
        named as uncovered with this reason); "" when it can."""
        return ""

    def before_forward(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Optional: called by a forward pre-hook, with the keyword arguments, before each
        forward that may be recorded (the hooks see no keyword arguments otherwise); a
        helper keeps what :meth:`capture_forward` of the same call needs."""

    def capture_forward(self, inputs: tuple[Any, ...], output: Any) -> Payload:
        """What to keep from one forward call (detached, sample dimension first)."""
        raise NotImplementedError

    def hooked_output(self, output: Any) -> torch.Tensor | tuple[torch.Tensor, ...] | None:
        """The tensor whose gradient is recorded (the module output by default); a tuple of
        tensors for a module whose gradient flows in through several outputs (then one hook
        receives all their gradients once the last has arrived, zeros for those that received
        none, and ``sample_dim`` must be 0: use :attr:`layout_from_module`); None records
        nothing for this call."""
        return output

    def capture_grad(self, grad_output: Any) -> Any:
        """The recorded gradient of :meth:`hooked_output` (a tuple for a tuple), sample
        dimension first."""
        return grad_output

    def reduce(self, payload: Payload, grad_output: torch.Tensor) -> Payload | None:
        """Optional: a compact stand-in for one call's ``(payload, grad_output)``, computed in
        the backward hook as soon as the gradient arrives, so that the hooks hold it instead
        of the input and output gradient until ``step()``. :meth:`per_sample` then receives
        ``(stand-in, None)`` for that call. None (the default) keeps the pair. On an exact
        route (:attr:`exact_params` set) the stand-in may be the exact compact per-sample
        gradients."""
        return None

    def per_sample(
        self, calls: list[tuple[Payload, torch.Tensor]], live: tuple[str, ...], scale: float
    ) -> PerSampleGrads:
        """Per-sample gradients of the block of ``live`` parameters, each times ``scale``.

        ``scale`` turns the recorded backprop signal into ``grad l_i / sqrt(N)`` (it holds the
        loss-reduction factor and the ``1/sqrt(N)`` of ``U``).
        """
        raise NotImplementedError

    def grads_to_block(self, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        """The gradients of the ``live`` parameters (keys of ``grads``) in block layout."""
        raise NotImplementedError

    def block_to_grads(self, block: torch.Tensor, live: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Inverse of :meth:`grads_to_block`."""
        raise NotImplementedError


class WeightBiasHelper(LayerHelper):
    """Shared block logic of layers whose per-sample gradient is ``G_i^T A_i`` per group.

    The block of group ``j`` is the ``(d_out/groups) x (d_in/groups + 1)`` matrix
    ``[W_j, b_j]`` (weight rows of the group, bias as the last column); the block layout is
    ``(groups, d_out/groups, da)`` with ``da`` the number of live input columns. A frozen
    weight leaves the bias column alone; a frozen bias drops the ones column.
    """

    groups: int = 1

    def grads_to_block(self, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        cols = []
        g = self.groups
        if "weight" in grads:
            w = grads["weight"]
            cols.append(w.reshape(g, w.shape[0] // g, -1))
        if "bias" in grads:
            b = grads["bias"]
            cols.append(b.reshape(g, -1, 1))
        return cols[0] if len(cols) == 1 else torch.cat(cols, dim=2)

    def block_to_grads(self, block: torch.Tensor, live: tuple[str, ...]) -> dict[str, torch.Tensor]:
        out = {}
        if "weight" in live:
            w = self.module.weight
            width = block.shape[2] - (1 if "bias" in live else 0)
            out["weight"] = block[:, :, :width].reshape(w.shape)
        if "bias" in live:
            out["bias"] = block[:, :, -1].reshape(self.module.bias.shape)
        return out

    @staticmethod
    def with_ones(A: torch.Tensor, live: tuple[str, ...]) -> torch.Tensor:
        """``A`` (..., d) with a ones column appended for the bias; ones alone if the weight
        is frozen."""
        ones = A.new_ones((*A.shape[:-1], 1))
        if "weight" not in live:
            return ones
        return torch.cat([A, ones], dim=-1) if "bias" in live else A
