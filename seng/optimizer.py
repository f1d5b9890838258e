"""``SENG``: the SENG preconditioner and SGD with momentum as one ``torch.optim.Optimizer``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
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
    kl_clip : float or None
        Trust region on each step (as K-FAC's KL clipping): the direction is scaled by
        ``min(1, sqrt(kl_clip / (lr^2 d^T g)))``, so that ``lr^2 d^T g``, K-FAC's estimate
        of the step's second-order change ``lr^2 d^T F d`` of the model's output
        distribution (an upper bound when ``d = (F + lambda I)^{-1} g``), is at most
        ``kl_clip``. None (default): no clipping.
    adaptive_damping : bool
        Levenberg-Marquardt adaptation of the damping (Martens and Grosse 2015, Section
        6.5): every ``adapt_interval`` steps, the step's reduction ratio
        ``rho = (h(w + delta) - h(w)) / (g^T delta + delta^T F delta / 2)`` (``h`` the
        closure's loss, ``F = U U^T`` per layer) multiplies the damping by
        ``omega = (19/20)^adapt_interval`` when ``rho > 3/4`` and divides it by ``omega``
        when ``rho < 1/4``. Needs ``step(closure)``, which it calls once more after the
        update (with the curvature capture off), and the absolute damping rule (under the
        relative one a smaller damping shortens the step). Default False.
    adapt_interval : int
        Steps between damping adaptations. Default 5.
    adaptive_step : bool
        Step length from the quadratic model, as K-FAC's adaptive learning rate and momentum
        (Martens and Grosse 2015, Section 7): the update is ``lr (alpha Delta + mu delta_0)``
        with ``Delta = -d`` the preconditioned direction, ``delta_0`` the previous update
        (none when ``momentum = 0`` or on the first step), and ``(alpha, mu)`` minimizing
        ``M(delta) = g^T delta + delta^T (F + (lambda + weight_decay) I) delta / 2`` over
        their span (a 2 x 2 solve; ``F = U U^T`` per layer, the identity for parameters
        without curvature, as the absolute rule assumes). ``lr`` then scales the model's
        minimizer (1 takes it) and ``momentum`` only says whether ``delta_0`` is used. Costs
        two more ``U^T v`` products per layer and step. Needs the absolute damping rule;
        not with ``kl_clip``. Default False.
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
        kl_clip: float | None = None,
        adaptive_damping: bool = False,
        adapt_interval: int = 5,
        adaptive_step: bool = False,
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
        self.kl_clip = _hyper.check_positive_float(kl_clip, "kl_clip", allow_none=True)
        if not isinstance(adaptive_damping, bool):
            raise TypeError(f"adaptive_damping must be a bool, got "
                            f"{type(adaptive_damping).__name__}")
        if adaptive_damping and callable(damping):
            raise ValueError("adaptive_damping=True adapts a number: give damping as a float, "
                             "not a schedule")
        if adaptive_damping and preconditioner_options.get("damping_rule", "absolute") != \
                "absolute":
            # There a smaller damping shrinks the step along the curvature (the direction
            # is the identity off span(U)): the opposite of the trust region the rule needs.
            raise ValueError("adaptive_damping=True needs damping_rule='absolute': under the "
                             "relative rule a smaller damping does not lengthen the step")
        if adaptive_damping and self._preconditioner_type is not SENGPreconditioner:
            raise ValueError("adaptive_damping is not available with seng.distributed yet")
        if not isinstance(adaptive_step, bool):
            raise TypeError(f"adaptive_step must be a bool, got {type(adaptive_step).__name__}")
        if adaptive_step:
            if preconditioner_options.get("damping_rule", "absolute") != "absolute":
                raise ValueError("adaptive_step=True needs damping_rule='absolute' (its "
                                 "quadratic model damps F by the absolute damping)")
            if self.kl_clip is not None:
                raise ValueError("adaptive_step=True sets the step length itself: give "
                                 "kl_clip=None")
            if self._preconditioner_type is not SENGPreconditioner:
                raise ValueError("adaptive_step is not available with seng.distributed yet")
        self.adaptive_step = adaptive_step
        self.adaptive_damping = adaptive_damping
        self.adapt_interval = _hyper.check_positive_int(adapt_interval, "adapt_interval")
        #: The last reduction ratio ``rho`` of the damping adaptation (None before one).
        self.last_reduction_ratio: float | None = None
        self.preconditioner = self._preconditioner_type(
            model, damping=damping, update_freq=update_freq, **preconditioner_options)
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        super().__init__(model.parameters(), defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One SENG step; ``closure`` (optional; needed by ``adaptive_damping``) re-evaluates
        the model, backpropagates and returns the loss."""
        pre = self.preconditioner
        adapt = self.adaptive_damping and pre.step_count % self.adapt_interval == 0
        if adapt and closure is None:
            raise ValueError("adaptive_damping=True needs step(closure): the closure "
                             "re-evaluates the loss after the update")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads, raw = {}, {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    g = raw[p] = p.grad
                    grads[p] = g.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else g
        directions = pre.precondition(grads)
        if directions is None:  # skipped on every rank (seng.distributed)
            return loss
        if self.kl_clip is not None:
            self._clip(directions, grads)
        updates: dict[torch.Tensor, torch.Tensor] = {}
        for group in self.param_groups:
            params = [p for p in group["params"] if p in directions]
            if self.adaptive_step:
                steps = self._model_steps(group, params, directions, grads)
                updates.update(zip(params, steps, strict=True))
                continue
            steps = _momentum(self.state, params, [directions[p] for p in params],
                              group["momentum"])
            if adapt:
                updates.update((p, d * -group["lr"]) for p, d in zip(params, steps, strict=True))
            else:
                _add(params, steps, -group["lr"])
        if adapt:
            predicted = (sum(float((raw[p].double() * u.double()).sum()) for p, u in updates.items()
                             if p in raw) + 0.5 * pre.curvature_quadratic(updates))
        _add(list(updates), list(updates.values()), 1.0)  # those held back for the model
        if adapt:
            self._adapt(_scalar(loss), closure, predicted)
        return loss

    def _model_steps(self, group: dict[str, Any], params: list[torch.Tensor],
                     directions: dict[torch.Tensor, torch.Tensor],
                     grads: dict[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
        """The updates of ``adaptive_step``: ``lr (alpha Delta + mu delta_0)`` with
        ``(alpha, mu)`` minimizing the damped quadratic model over their span."""
        candidates = [{p: -directions[p] for p in params}]
        previous = [self.state[p].get("previous_update") for p in params]
        if group["momentum"] and all(v is not None for v in previous):
            candidates.append(dict(zip(params, previous, strict=True)))
        shift = _hyper.damping_at(self.preconditioner.damping, self.preconditioner.step_count
                                  - 1) + group["weight_decay"]
        coefficients = quadratic_model_step(*self._model_terms(candidates, grads), shift)
        steps = []
        for p in params:
            u = sum(c * v[p] for c, v in zip(coefficients, candidates, strict=True))
            u = u * group["lr"]
            self.state[p]["previous_update"] = u
            steps.append(u)
        return steps

    def _model_terms(self, candidates: list[dict[torch.Tensor, torch.Tensor]],
                     grads: dict[torch.Tensor, torch.Tensor]) -> tuple[np.ndarray, np.ndarray,
                                                                       np.ndarray]:
        """``(A, E, b)`` over the candidates ``c_i``: ``A_ij = c_i^T F c_j`` (the stored
        curvature, the identity for parameters without one), ``E_ij = c_i^T c_j``,
        ``b_i = g^T c_i``."""
        A, covered = self.preconditioner.curvature_products(candidates)
        k = len(candidates)
        E, free, b = np.zeros((k, k)), np.zeros((k, k)), np.zeros(k)
        for p in candidates[0]:
            V = torch.stack([_flat(c[p]) for c in candidates])
            inner = (V @ V.T).cpu().numpy()
            E += inner
            if p not in covered:  # F = I, as the absolute rule assumes
                free += inner
            b += (V @ _flat(grads[p])).cpu().numpy()
        return A + free, E, b

    def _clip(self, directions: dict[torch.Tensor, torch.Tensor],
              grads: dict[torch.Tensor, torch.Tensor]) -> None:
        """Scale the directions by ``min(1, sqrt(kl_clip / (lr^2 d^T g)))``."""
        lr = {p: group["lr"] for group in self.param_groups for p in group["params"]}
        vg = sum(lr[p] ** 2 * float((d.double() * grads[p].double()).sum())
                 for p, d in directions.items())
        if vg > self.kl_clip:
            nu = math.sqrt(self.kl_clip / vg)
            for p in directions:
                directions[p] = directions[p] * nu

    def _adapt(self, before: float, closure: Callable[[], Any], predicted: float) -> None:
        """One Levenberg-Marquardt update of the damping from the step just taken."""
        capture = self.preconditioner._capture
        active, capture.active = capture.active, False  # this forward is no training step
        try:
            with torch.enable_grad():
                after = _scalar(closure())
        finally:
            capture.active = active
        rho = (after - before) / predicted if predicted < 0 else -math.inf
        self.last_reduction_ratio = rho
        self.preconditioner.damping = levenberg_marquardt(
            self.preconditioner.damping, rho, (19 / 20) ** self.adapt_interval)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients and the curvature of a backward whose step was not taken.

        ``GradScaler`` skips ``step()`` on an overflow; that batch's captured activations would
        otherwise be mixed into the next batch's curvature. Activations still waiting for
        their backward (``zero_grad`` between forward and backward) are kept.
        """
        super().zero_grad(set_to_none=set_to_none)
        self.preconditioner._capture.drop_completed()

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.Optimizer.state_dict()`` plus the preconditioner's under ``"seng"``
        (and the adapted damping, when ``adaptive_damping``)."""
        state = super().state_dict()
        state["seng"] = self.preconditioner.state_dict()
        if self.adaptive_damping:
            state["seng"]["adapted_damping"] = self.preconditioner.damping
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        if "seng" not in state_dict:
            raise ValueError("state_dict has no 'seng' entry (not saved by SENG.state_dict)")
        seng_state = dict(state_dict.pop("seng"))
        adapted = seng_state.pop("adapted_damping", None)
        super().load_state_dict(state_dict)
        self.preconditioner.load_state_dict(seng_state)
        if self.adaptive_damping and adapted is not None:
            self.preconditioner.damping = float(adapted)


def _momentum(state: Any, params: list[torch.Tensor], directions: list[torch.Tensor],
              momentum: float) -> list[torch.Tensor]:
    """The heavy-ball steps ``b <- momentum b + d`` (``b = d`` on a parameter's first step),
    updated in place in ``state``; the directions themselves without momentum."""
    if not momentum:
        return directions
    bufs, old, new = [], [], []
    for p, d in zip(params, directions, strict=True):
        buf = state[p].get("momentum_buffer")
        if buf is None:
            buf = state[p]["momentum_buffer"] = d.clone()
        else:
            old.append(buf)
            new.append(d)
        bufs.append(buf)
    if old:  # multi-tensor kernels, as torch.optim.SGD's foreach path (sparse ones loop)
        torch._foreach_mul_(old, momentum)
        torch._foreach_add_(old, new)
    return bufs


def _add(params: list[torch.Tensor], steps: list[torch.Tensor], alpha: float) -> None:
    """``p += alpha * step`` for each parameter, by one multi-tensor kernel."""
    if params:
        torch._foreach_add_(params, steps, alpha=alpha)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return (t.to_dense() if t.is_sparse else t).double().reshape(-1)


def _scalar(loss: Any) -> float:
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)


def quadratic_model_step(A: np.ndarray, E: np.ndarray, b: np.ndarray,
                         shift: float) -> np.ndarray:
    """The coefficients ``x`` minimizing ``b^T x + x^T (A + shift E) x / 2`` (the quadratic
    model restricted to the span of the candidate updates): ``x = -(A + shift E)^{-1} b``,
    on the first candidate alone when the 2 x 2 system is not positive definite (the
    candidates are parallel) and zero when even that is not."""
    C = A + shift * E
    if len(b) == 2 and C[0, 0] > 0 and C[0, 0] * C[1, 1] - C[0, 1] ** 2 > (
            1e-12 * C[0, 0] * C[1, 1]):
        return -np.linalg.solve(C, b)
    x = np.zeros(len(b))
    if C[0, 0] > 0:
        x[0] = -b[0] / C[0, 0]
    return x


#: The adapted damping stays in this range (numerical safety, far from typical values).
DAMPING_RANGE = (1e-8, 1e8)


def levenberg_marquardt(damping: float, rho: float, omega: float) -> float:
    """Martens and Grosse (2015), Section 6.5: ``damping * omega`` when the step did better
    than the quadratic model predicted in three quarters (``rho > 3/4``), ``damping /
    omega`` when it did worse than a quarter of it (``rho < 1/4``), else unchanged; kept in
    :data:`DAMPING_RANGE`."""
    if rho > 0.75:
        damping *= omega
    elif rho < 0.25:
        damping /= omega
    return min(max(damping, DAMPING_RANGE[0]), DAMPING_RANGE[1])
