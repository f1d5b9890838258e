"""The benchmark's optimizers, each behind one ``step(x, y) -> loss`` interface.

Every optimizer trains with a constant learning rate (the grid's value) and no other tuning:

- ``sgd``: heavy-ball SGD, momentum 0.9.
- ``adam``: Adam, betas (0.9, 0.999), no weight decay.
- ``adamw``: AdamW, betas (0.9, 0.999), decoupled weight decay 0.01 (PyTorch's default).
- ``muon``: ``torch.optim.Muon`` (momentum 0.95, Nesterov, 5 Newton-Schulz steps) on every
  weight with two or more dimensions, AdamW on the rest (biases), one learning rate for both
  through ``adjust_lr_fn="match_rms_adamw"`` (Liu et al. 2025, "Muon is scalable for LLM
  training"), weight decay 0.01 on both. ``torch.optim.Muon`` accepts only 2-D parameters
  (a ``ValueError`` otherwise), so a convolution weight ``(out, in, k)`` is handed to it as a
  2-D view ``(out, in * k)`` sharing its storage: Muon orthogonalizes the flattened filter
  bank, as Jordan's reference implementation does for convolutions.
- ``kfac``: K-FAC from ASDL (``asdfghjkl`` 0.1a5, ``KfacGradientMaker``): Kronecker factors
  of the Fisher with one Monte Carlo label per sample (the true Fisher, as in Martens and
  Grosse 2015), refreshed and inverted every 10 steps, damping 1e-3, then SGD with momentum
  0.9 on the preconditioned gradient. ASDL supports ``nn.Conv2d`` but not ``nn.Conv1d``, so a
  ``Conv1d`` is run as the equivalent ``Conv2d`` with a ``(1, k)`` kernel (same weights, same
  function). For a squared-error loss averaged over ``D`` outputs the Gaussian's variance is
  ``2 / D``, which makes ASDL's Fisher the loss's Gauss-Newton matrix.
- ``seng*``: :class:`seng.SENG` with momentum 0.9, one row of :data:`SENG_VARIANTS` each.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from seng import SENG

from .problems import Problem

#: SGD's and SENG's heavy-ball momentum.
MOMENTUM = 0.9
#: Decoupled weight decay of AdamW and Muon (PyTorch's AdamW default).
DECOUPLED_WEIGHT_DECAY = 0.01
#: K-FAC's damping and refresh interval (kfac-pytorch's default damping; the interval matches
#: SENG's default update_freq).
KFAC_DAMPING = 1e-3
KFAC_INTERVAL = 10


def half_decades(lo: int, hi: int) -> tuple[float, ...]:
    """The grid ``10**(k/2)`` for ``k = lo..hi``: log-spaced, a factor sqrt(10) apart (exact
    values: rounded ones would make the spacing, and so the grid's extensions, drift)."""
    return tuple(10 ** (k / 2) for k in range(lo, hi + 1))


@dataclass(frozen=True)
class SENGVariant:
    """One SENG configuration: keyword arguments of :class:`seng.SENG` besides ``lr`` and
    ``momentum``, an optional learning-rate grid (default: SENG's) and a note for the
    report."""

    options: dict[str, Any] = field(default_factory=dict)
    lrs: tuple[float, ...] | None = None
    note: str = ""
    #: Whether the default study runs it (a variant measured once and left out keeps the
    #: study in its time budget; ``--optimizers`` still runs it).
    in_study: bool = True


#: The SENG configurations benchmarked, by name (each becomes one optimizer of the study).
#: Add a row to benchmark another option, e.g. a damping rule.
SENG_VARIANTS: dict[str, SENGVariant] = {
    "seng": SENGVariant(note="defaults (damping 1, update_freq 10, exact)"),
    "seng-uf1": SENGVariant({"update_freq": 1}, note="curvature every step"),
    "seng-sketch": SENGVariant({"sketch": "countsketch", "sketch_size": 1024},
                               note="CountSketch, 1024 coordinates per layer (s = 32)"),
    "seng-rel": SENGVariant({"damping_rule": "relative"},
                            note="relative damping 1 (per layer, times tr(U^T U)/N)"),
    "seng-lm": SENGVariant({"adaptive_damping": True},
                           note="damping from 1, Levenberg-Marquardt every 5 steps"),
    "seng-tf": SENGVariant({"fisher": "true"},
                           note="true Fisher (targets sampled from the model; one extra "
                                "backward per curvature step)"),
    # What the curvature-every-step gain rests on (measured once, out of the default study):
    # staleness of one step, a subsample of the batch, and a damping in the autoencoder's
    # units with and without fresh curvature.
    "seng-uf2": SENGVariant({"update_freq": 2}, note="curvature every other step",
                            in_study=False),
    "seng-uf1-cb32": SENGVariant({"update_freq": 1, "curvature_batch": 32},
                                 note="curvature every step from 32 of the 128 samples",
                                 in_study=False),
    "seng-d001": SENGVariant({"damping": 0.01}, note="damping 0.01", in_study=False),
    "seng-uf1-d001": SENGVariant({"update_freq": 1, "damping": 0.01},
                                 note="curvature every step, damping 0.01", in_study=False),
    # Curvature every step pooled over recent batches (curvature_memory), so that the step
    # does not fit its own batch's curvature alone; with the absolute and relative rules.
    "seng-pool2": SENGVariant({"update_freq": 1, "curvature_memory": 2},
                              note="curvature every step, pooled over the last 2 batches",
                              in_study=False),
    "seng-pool3": SENGVariant({"update_freq": 1, "curvature_memory": 3},
                              note="curvature every step, pooled over the last 3 batches",
                              in_study=False),
    "seng-pool2-d01": SENGVariant({"update_freq": 1, "curvature_memory": 2, "damping": 0.1},
                                  note="pooled over 2 batches, damping 0.1", in_study=False),
    "seng-pool2-rel": SENGVariant({"update_freq": 1, "curvature_memory": 2,
                                   "damping_rule": "relative"},
                                  note="pooled over 2 batches, relative damping 1",
                                  in_study=False),
    # The spectral rule (damping times each layer's largest Gram eigenvalue, scale-free),
    # at the default refresh, every step, and pooled (in the study: the one setting measured
    # that matched Adam's epochs on all three problems).
    "seng-spec": SENGVariant({"damping_rule": "spectral"},
                             note="spectral damping 1 (per layer, times ||U^T U||_2)",
                             in_study=False),
    "seng-uf1-spec": SENGVariant({"update_freq": 1, "damping_rule": "spectral"},
                                 note="curvature every step, spectral damping 1",
                                 in_study=False),
    "seng-pool2-spec": SENGVariant({"update_freq": 1, "curvature_memory": 2,
                                    "damping_rule": "spectral"},
                                   note="curvature every step pooled over 2 batches, "
                                        "spectral damping 1"),
    "seng-pool3-spec": SENGVariant({"update_freq": 1, "curvature_memory": 3,
                                    "damping_rule": "spectral"},
                                   note="pooled over 3 batches, spectral damping 1",
                                   in_study=False),
    # lr scales the quadratic model's minimizer: its grid centres on 1.
    "seng-q": SENGVariant({"adaptive_step": True}, lrs=half_decades(-1, 0),
                          note="step length and momentum from the damped quadratic model "
                               "(K-FAC's adaptive step), scaled by lr", in_study=False),
    "seng-lm-q": SENGVariant({"adaptive_damping": True, "adaptive_step": True},
                             lrs=half_decades(-1, 0),
                             note="Levenberg-Marquardt damping and the quadratic model's "
                                  "step", in_study=False),
}

#: SENG's learning-rate grid unless a variant gives its own.
SENG_LRS = half_decades(-2, 0)


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer of the study.

    Attributes
    ----------
    name : str
        Its name in tables and logs.
    kind : str
        The factory: ``"sgd"``, ``"adam"``, ``"adamw"``, ``"muon"``, ``"kfac"`` or ``"seng"``.
    lrs : tuple of float
        Initial learning-rate grid (increasing, log-spaced by a constant factor).
    options : dict
        Keyword arguments of the factory (SENG's options).
    note : str
        One line for the report.
    """

    name: str
    kind: str
    lrs: tuple[float, ...]
    options: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def cycle(self) -> int:
        """Steps in one curvature cycle (1 for first-order methods): step times are
        measured over whole cycles."""
        if self.kind == "kfac":
            return KFAC_INTERVAL
        if self.kind == "seng":
            freq = self.options.get(
                "update_freq", inspect.signature(SENG).parameters["update_freq"].default)
            return freq if isinstance(freq, int) else 1
        return 1


_BASE = {
    "sgd": OptimizerSpec("sgd", "sgd", half_decades(-2, 0), note="SGD, momentum 0.9"),
    "adam": OptimizerSpec("adam", "adam", half_decades(-5, -3), note="Adam"),
    "adamw": OptimizerSpec("adamw", "adamw", half_decades(-5, -3),
                           note="AdamW, weight decay 0.01"),
    "muon": OptimizerSpec("muon", "muon", half_decades(-5, -3),
                          note="torch.optim.Muon on >= 2-D weights (conv flattened), "
                               "AdamW on biases"),
    "kfac": OptimizerSpec("kfac", "kfac", half_decades(-7, -5),
                          note="ASDL K-FAC (MC Fisher, damping 1e-3, every 10 steps) + "
                               "SGD momentum 0.9"),
}


def all_optimizers() -> dict[str, OptimizerSpec]:
    """Every optimizer of the study by name: the first-order baselines, Muon, K-FAC and one
    per row of :data:`SENG_VARIANTS` (read at call time)."""
    specs = dict(_BASE)
    for name, v in SENG_VARIANTS.items():
        if name in specs:
            raise ValueError(f"SENG variant {name!r} clashes with a baseline's name")
        specs[name] = OptimizerSpec(name, "seng", tuple(v.lrs or SENG_LRS), dict(v.options),
                                    v.note)
    return specs


def missing_requirement(spec: OptimizerSpec) -> str | None:
    """Why ``spec`` cannot run here (a missing package), or None."""
    if spec.kind == "muon" and not hasattr(torch.optim, "Muon"):
        return f"torch.optim.Muon is not in torch {torch.__version__} (it needs torch >= 2.9)"
    if spec.kind == "kfac" and importlib.util.find_spec("asdl") is None:
        return ("ASDL is not installed: pip install --pre --no-deps asdfghjkl==0.1a5 "
                "(--no-deps keeps pip from replacing the installed torch)")
    return None


# -- steppers ----------------------------------------------------------------------------------
class Stepper:
    """One training step of ``model``: forward, loss, backward, update; returns the detached
    mini-batch loss."""

    def __init__(self, model: nn.Module, loss: Callable[..., torch.Tensor],
                 optimizers: list[torch.optim.Optimizer], likelihood: str | None = None) -> None:
        self.model = model
        self.loss = loss
        self.optimizers = optimizers
        self.likelihood = likelihood  # of the loss, for SENG's true Fisher

    def _forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        for opt in self.optimizers:
            pre = getattr(opt, "preconditioner", None)
            if pre is not None and pre.fisher == "true":
                pre.sample_fisher(out, self.likelihood)
        return self.loss(out, y)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if any(getattr(opt, "adaptive_damping", False) for opt in self.optimizers):
            return self._closure_step(x, y)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        loss = self._forward(x, y)
        loss.backward()
        self._before_update()
        for opt in self.optimizers:
            opt.step()
        return loss.detach()

    def _before_update(self) -> None:
        pass

    def _closure_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """SENG with adaptive damping evaluates the loss again after its update."""
        (opt,) = self.optimizers

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            loss = self._forward(x, y)
            loss.backward()
            return loss

        return opt.step(closure).detach()


class _MuonStepper(Stepper):
    """Muon on 2-D views of the weights; their gradients are copied into the views."""

    def __init__(self, model: nn.Module, loss: Callable[..., torch.Tensor], lr: float) -> None:
        matrices, rest, self._views = [], [], []
        for p in model.parameters():
            if p.ndim == 2:
                matrices.append(p)
            elif p.ndim > 2:
                view = nn.Parameter(p.detach().view(p.shape[0], -1))  # shares p's storage
                matrices.append(view)
                self._views.append((p, view))
            else:
                rest.append(p)
        opts: list[torch.optim.Optimizer] = [torch.optim.Muon(
            matrices, lr=lr, weight_decay=DECOUPLED_WEIGHT_DECAY,
            adjust_lr_fn="match_rms_adamw")]
        if rest:
            opts.append(torch.optim.AdamW(rest, lr=lr, weight_decay=DECOUPLED_WEIGHT_DECAY))
        super().__init__(model, loss, opts)

    def _before_update(self) -> None:
        for p, view in self._views:
            view.grad = None if p.grad is None else p.grad.view(view.shape)


class _Conv1dAs2d(nn.Module):
    """A ``Conv1d`` computed as the equivalent ``Conv2d`` with a ``(1, k)`` kernel."""

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        if not isinstance(conv.padding, tuple):
            raise ValueError(f"Conv1d padding {conv.padding!r} has no Conv2d equivalent here")
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, (1, conv.kernel_size[0]),
                              stride=(1, conv.stride[0]), padding=(0, conv.padding[0]),
                              dilation=(1, conv.dilation[0]), groups=conv.groups,
                              bias=conv.bias is not None, padding_mode=conv.padding_mode)
        with torch.no_grad():
            self.conv.weight.copy_(conv.weight.unsqueeze(2))
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.unsqueeze(2)).squeeze(2)


def conv1d_as_conv2d(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Conv1d`` of ``model`` (in place) by its ``Conv2d`` equivalent."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Conv1d):
            setattr(model, name, _Conv1dAs2d(child))
        else:
            conv1d_as_conv2d(child)
    return model


class _KFACStepper(Stepper):
    """ASDL's K-FAC gradient maker, then SGD with momentum on the preconditioned gradient."""

    def __init__(self, model: nn.Module, loss: Callable[..., torch.Tensor], lr: float,
                 problem: Problem, batch_size: int) -> None:
        import asdl

        conv1d_as_conv2d(model)
        config = asdl.PreconditioningConfig(
            data_size=batch_size, damping=KFAC_DAMPING,
            preconditioner_upd_interval=KFAC_INTERVAL, curvature_upd_interval=KFAC_INTERVAL)
        if problem.kind == "classification":
            kwargs: dict[str, Any] = {"loss_type": asdl.LOSS_CROSS_ENTROPY}
        else:
            out = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features
            kwargs = {"loss_type": asdl.LOSS_MSE, "var": 2.0 / out}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ASDL warns on every module it does not handle
            self.maker = asdl.KfacGradientMaker(model, config, fisher_type=asdl.FISHER_MC,
                                                **kwargs)
        super().__init__(model, loss, [torch.optim.SGD(model.parameters(), lr=lr,
                                                       momentum=MOMENTUM)])

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        (opt,) = self.optimizers
        opt.zero_grad(set_to_none=True)
        dummy = self.maker.setup_model_call(self.model, x)
        self.maker.setup_loss_call(self.loss, dummy, y)
        with warnings.catch_warnings():
            # torch deprecates the module backward hooks ASDL registers on curvature steps
            warnings.filterwarnings("ignore", message="Using a non-full backward hook")
            _, loss = self.maker.forward_and_backward()
        opt.step()
        return loss.detach()


def make_stepper(spec: OptimizerSpec, model: nn.Module, lr: float, problem: Problem,
                 batch_size: int, seed: int) -> Stepper:
    """The :class:`Stepper` of ``spec`` at learning rate ``lr`` for ``model`` (K-FAC
    converts its ``Conv1d`` layers in place; SENG draws its randomness from ``seed``)."""
    if not isinstance(spec, OptimizerSpec):
        raise TypeError(f"spec must be an OptimizerSpec, got {type(spec).__name__}")
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"Invalid learning rate: {lr!r} (must be a finite number > 0)")
    params = list(model.parameters())
    if spec.kind == "sgd":
        return Stepper(model, problem.loss, [torch.optim.SGD(params, lr=lr, momentum=MOMENTUM)])
    if spec.kind == "adam":
        return Stepper(model, problem.loss, [torch.optim.Adam(params, lr=lr)])
    if spec.kind == "adamw":
        return Stepper(model, problem.loss, [torch.optim.AdamW(
            params, lr=lr, weight_decay=DECOUPLED_WEIGHT_DECAY)])
    if spec.kind == "muon":
        return _MuonStepper(model, problem.loss, lr)
    if spec.kind == "kfac":
        return _KFACStepper(model, problem.loss, lr, problem, batch_size)
    if spec.kind == "seng":
        likelihood = "categorical" if problem.kind == "classification" else "gaussian"
        return Stepper(model, problem.loss, [SENG(model, lr=lr, momentum=MOMENTUM, rng=seed,
                                                  **spec.options)], likelihood)
    raise ValueError(f"Invalid optimizer kind: {spec.kind!r} "
                     "(valid: sgd, adam, adamw, muon, kfac, seng)")


__all__ = ["DECOUPLED_WEIGHT_DECAY", "KFAC_DAMPING", "KFAC_INTERVAL", "MOMENTUM", "SENG_LRS",
           "SENG_VARIANTS", "OptimizerSpec", "SENGVariant", "Stepper", "all_optimizers",
           "conv1d_as_conv2d", "half_decades", "make_stepper", "missing_requirement"]
