"""Optimizer factory and learning-rate schedules with warm-up for the training studies."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from seng import SENG
from seng.distributed import DistributedSENG

#: Names accepted by :func:`make_optimizer`.
OPTIMIZERS = ("seng", "sgd", "adam", "adamw")
#: SENG's data-parallel modes in ``seng.train`` (``--dist-mode``).
DIST_MODES = ("global", "global-sharded", "global-auto", "local")
#: Names accepted by :class:`Schedule`.
SCHEDULES = ("constant", "poly", "cosine", "step")


def make_optimizer(name: str, model: nn.Module, lr: float, *, momentum: float = 0.9,
                   weight_decay: float = 0.0, seng_options: dict[str, Any] | None = None,
                   seed: int = 0, dist_mode: str | None = None) -> torch.optim.Optimizer:
    """An optimizer by name over all of ``model``'s parameters.

    ``"seng"``: :class:`seng.SENG` (momentum, L2 weight decay added to the gradient before
    preconditioning, ``seng_options`` such as ``damping``, ``update_freq``, ``sketch``,
    ``sketch_size``, ``curvature_batch``; its ``rng`` is ``seed``). ``"sgd"``: SGD with
    heavy-ball momentum and L2 weight decay. ``"adam"``: Adam with L2 weight decay.
    ``"adamw"``: AdamW with decoupled weight decay (Loshchilov and Hutter 2019). Adam and
    AdamW use PyTorch's default betas (0.9, 0.999) and ignore ``momentum``.

    ``dist_mode`` (one of :data:`DIST_MODES`; ``"global-sharded"`` and ``"global-auto"``
    are global mode with ``factors="sharded"`` or ``"auto"``) makes ``"seng"`` a
    :class:`seng.distributed.DistributedSENG` in that mode, which reduces the gradients over
    the default process group itself (do not wrap the model in ``DistributedDataParallel``
    for it); the other optimizers ignore it (wrap their model in DDP).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"Invalid optimizer: {name!r} (valid: {', '.join(OPTIMIZERS)})")
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"Invalid learning rate: {lr!r} (must be a finite number > 0)")
    if name == "seng" and dist_mode is not None:
        mode, _, factors = dist_mode.partition("-")
        return DistributedSENG(model, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               mode=mode, factors=factors or "replicated", rng=seed,
                               **(seng_options or {}))
    if name == "seng":
        return SENG(model, lr=lr, momentum=momentum, weight_decay=weight_decay,
                    rng=seed, **(seng_options or {}))
    params = model.parameters()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


@dataclass(frozen=True)
class Schedule:
    r"""A learning-rate multiplier as a function of the epoch, with linear warm-up.

    With ``e`` the (0-based) epoch index, ``E`` = ``decay_epochs`` and ``t`` the training
    progress in epochs (``e`` plus the fraction of the epoch done), the multiplier is

    .. math:: f(e, t) = \min(1, t / w) \cdot s(e, t)

    (the warm-up factor applies only when ``w`` = ``warmup`` > 0; ``t`` counts the current
    step, so the first step gets a multiplier ``1 / (w * steps_per_epoch) > 0``), with
    ``s`` one of

    - ``"constant"``: ``s = 1``;
    - ``"poly"``: ``s(t) = (1 - t/E)^p`` clipped at 0, ``p`` = ``power``, evaluated at
      every step (the SENG paper's decay, Yang et al. 2022, Section 5: ``E = 70, p = 6`` on
      CIFAR-10; its authors' code evaluates it at ``t`` = epoch + (step + 1) / steps);
    - ``"cosine"``: ``s(e) = (1 + \cos(\pi \min(e, E)/E)) / 2`` (Loshchilov and Hutter 2017,
      without restarts);
    - ``"step"``: ``s(e) = \gamma^{\lfloor e / \text{step\_size} \rfloor}``.

    The cosine and step decays are constant within an epoch; the poly decay and the
    warm-up change at every step.
    """

    kind: str = "constant"
    decay_epochs: float = 1.0
    power: float = 1.0
    step_size: int = 30
    gamma: float = 0.1
    warmup: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"Invalid schedule: {self.kind!r} (valid: {', '.join(SCHEDULES)})")
        for name in ("decay_epochs", "power", "step_size", "gamma"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"Invalid schedule {name}: {value!r} (must be > 0)")
        if not math.isfinite(self.warmup) or self.warmup < 0:
            raise ValueError(f"Invalid warmup: {self.warmup!r} epochs (must be >= 0)")

    def factor(self, epoch: int, progress: float) -> float:
        """The multiplier at epoch ``epoch`` with ``progress`` epochs of training done
        (counting the current step)."""
        if self.kind == "poly":
            s = max(0.0, 1.0 - progress / self.decay_epochs) ** self.power
        elif self.kind == "cosine":
            s = 0.5 * (1.0 + math.cos(math.pi * min(epoch, self.decay_epochs)
                                      / self.decay_epochs))
        elif self.kind == "step":
            s = self.gamma ** (epoch // self.step_size)
        else:
            s = 1.0
        if self.warmup > 0:
            s *= min(1.0, progress / self.warmup)
        return s


@dataclass(frozen=True)
class DampingDecay:
    """SENG's damping as a function of its step counter ``k`` (0-based):
    ``damping * rate ** t`` with ``t = (k + 1) / steps_per_epoch`` the training progress in
    epochs counting the current step, as the learning-rate schedule counts it. The SENG
    authors' ImageNet code decays the damping this way (factor 0.9 per 10 epochs)."""

    damping: float
    rate: float
    steps_per_epoch: int

    def __call__(self, step: int) -> float:
        return self.damping * self.rate ** ((step + 1) / self.steps_per_epoch)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


__all__ = ["OPTIMIZERS", "SCHEDULES", "DampingDecay", "Schedule", "make_optimizer", "set_lr"]
