"""``SENG``: the SENG preconditioner and SGD with momentum as one ``torch.optim.Optimizer``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from . import _hyper
from .preconditioner import Damping, SENGPreconditioner, UpdateFreq


class SENG(torch.optim.Optimizer):
    r"""Sketchy empirical natural gradient descent with momentum (Yang et al. 2022).

    Each step, for every parameter with a gradient ``g``:

    .. math::
        \tilde g &= g + \text{weight\_decay}\, w, \\
        d &= \text{SENG-precondition}(\tilde g)
           = (U U^T + \lambda I)^{-1} \tilde g \text{ per supported layer}, \\
        b &\leftarrow \text{momentum}\, b + d \quad (b = d \text{ on the first step}), \\
        w &\leftarrow w - \text{lr}\, b,

    where :class:`SENGPreconditioner` defines ``U`` and the treatment of other parameters.
    Weight decay is added before preconditioning (the preconditioned gradient is that of
    the regularized loss), as in the paper. ``p.grad`` is not modified. ``lr``,
    ``momentum`` and ``weight_decay`` live in ``param_groups`` (LR schedulers work on it);
    the preconditioner's options are fixed at construction.

    Parameters
    ----------
    model : torch.nn.Module
        The model; all its parameters form one parameter group.
    lr : float
        Learning rate, >= 0.
    momentum : float
        Heavy-ball momentum in [0, 1). Default 0.9.
    weight_decay : float
        L2 coefficient, >= 0. Default 0.
    damping : float or callable
        As in :class:`SENGPreconditioner`. Default 1.0.
    update_freq : int or callable
        As in :class:`SENGPreconditioner`. Default 10.
    **preconditioner_options
        Further keyword arguments of :class:`SENGPreconditioner` (``damping_rule``,
        ``sketch``,
        ``sketch_size``, ``rng``, ``loss_reduction``, ``curvature_batch``,
        ``max_update_norm``, ``routes``, ``solve_dtype``, ``lowrank_rank``, ``fallback``,
        ``grad_scaler``, ``accumulation_steps``).
    """

    _preconditioner_type: type[SENGPreconditioner] = SENGPreconditioner

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        damping: Damping = 1.0,
        update_freq: UpdateFreq = 10,
        **preconditioner_options: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not _hyper._is_real(lr) or not lr >= 0:
            raise ValueError(f"Invalid learning rate: {lr} (must be >= 0)")
        if not _hyper._is_real(momentum) or not 0 <= momentum < 1:
            raise ValueError(f"Invalid momentum value: {momentum} (must be in [0, 1))")
        if not _hyper._is_real(weight_decay) or not weight_decay >= 0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay} (must be >= 0)")
        self.preconditioner = self._preconditioner_type(
            model, damping=damping, update_freq=update_freq, **preconditioner_options)
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        super().__init__(model.parameters(), defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One SENG step; ``closure`` (optional) re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    g = p.grad
                    grads[p] = g.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else g
        directions = self.preconditioner.precondition(grads)
        if directions is None:  # skipped on every rank (seng.distributed)
            return loss
        for group in self.param_groups:
            for p in group["params"]:
                d = directions.get(p)
                if d is None:
                    continue
                if group["momentum"]:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d.clone()
                    else:
                        buf.mul_(group["momentum"]).add_(d)
                    d = buf
                p.add_(d, alpha=-group["lr"])
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients and the curvature of a backward whose step was not taken.

        ``GradScaler`` skips ``step()`` on an overflow; that batch's captured activations would
        otherwise be mixed into the next batch's curvature. Activations still waiting for
        their backward (``zero_grad`` between forward and backward) are kept.
        """
        super().zero_grad(set_to_none=set_to_none)
        self.preconditioner._capture.drop_completed()

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.Optimizer.state_dict()`` plus the preconditioner's under ``"seng"``."""
        state = super().state_dict()
        state["seng"] = self.preconditioner.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        if "seng" not in state_dict:
            raise ValueError("state_dict has no 'seng' entry (not saved by SENG.state_dict)")
        seng_state = state_dict.pop("seng")
        super().load_state_dict(state_dict)
        self.preconditioner.load_state_dict(seng_state)
