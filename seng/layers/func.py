"""Per-sample gradients of the parameters no layer helper serves, through ``torch.func``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vjp, vmap

from ..persample import DenseGrads
from .base import LayerHelper


class FuncFallbackHelper(LayerHelper):
    r"""One block of the remaining parameters, with per-sample gradients from ``torch.func``.

    Used by ``SENGPreconditioner(..., fallback="torch.func")`` for the trainable parameters
    outside every supported layer (a free scale, a tied weight, a custom module's
    parameters), which otherwise get ``g / (1 + damping)``. It hooks the *model* itself: on
    curvature steps it records the model's positional inputs and the gradient ``g_i`` of the
    loss with respect to the model's output row ``i``. Since the loss of sample ``i``
    depends on output row ``i`` only, the per-sample gradient is the vector-Jacobian product

    .. math:: \nabla_\theta l_i = J_i(\theta)^T g_i, \qquad
              J_i = \partial f(x_i; \theta) / \partial \theta,

    evaluated for every sample at once by ``vmap`` over ``vjp`` of the model called on one
    sample (``functional_call``); no loss function or target is needed. The parameters form
    one block (``U`` stored densely, ``N x p``). This costs about one more forward and
    backward of the whole model per curvature step.

    Requirements (otherwise the per-sample gradients are not those of the batch): the
    model's positional inputs are tensors with the sample dimension first (keyword
    arguments are not seen), its output is one tensor with the sample dimension first, and
    samples do not interact in the forward (no ``BatchNorm`` in training mode; random layers
    such as dropout in training mode are refused, because a per-sample recomputation would
    draw new masks and change the global random state).
    """

    def __init__(self, module: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__(module)
        self.param_names = names
        self.shapes = {n: p.shape for n, p in module.named_parameters() if n in names}

    def capture_forward(self, inputs: tuple[Any, ...], output: Any) -> tuple[torch.Tensor, ...]:
        n = {x.shape[0] if isinstance(x, torch.Tensor) and x.ndim else None for x in inputs}
        if not inputs or None in n or len(n) != 1:
            kinds = [tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                     for x in inputs]
            raise TypeError(f"fallback='torch.func' needs the model's positional inputs to be "
                            f"tensors with a common sample dimension first, got {kinds}")
        return tuple(x.detach() for x in inputs)

    def per_sample(
        self, calls: list[tuple[tuple[torch.Tensor, ...], torch.Tensor]],
        live: tuple[str, ...], scale: float,
    ) -> DenseGrads:
        model = self.module
        params = {n: p.detach() for n, p in model.named_parameters()}
        block = {n: params[n] for n in live}
        rest = {n: p for n, p in params.items() if n not in block}
        buffers = dict(model.named_buffers())

        def one(bp: dict[str, torch.Tensor], xs: tuple[torch.Tensor, ...],
                gy: torch.Tensor) -> dict[str, torch.Tensor]:
            def f(bp: dict[str, torch.Tensor]) -> torch.Tensor:
                return functional_call(model, ({**rest, **bp}, buffers),
                                       tuple(x[None] for x in xs))

            out, pull = vjp(f, bp)
            return pull(gy[None].to(out.dtype))[0]

        rows = None
        for xs, gy in calls:
            try:
                out = vmap(one, in_dims=(None, 0, 0), randomness="error")(block, xs, gy)
            except RuntimeError as e:
                raise RuntimeError(
                    "fallback='torch.func' could not compute per-sample gradients by calling "
                    "the model on one sample at a time (samples must not interact: no "
                    f"train-mode BatchNorm, no dropout in training mode): {e}") from e
            r = torch.cat([out[n].reshape(gy.shape[0], -1).to(gy.dtype) for n in live], dim=1)
            rows = r if rows is None else rows + r
        return DenseGrads(rows * scale, (rows.shape[1],))

    def grads_to_block(self, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([g.reshape(-1) for g in grads.values()])

    def block_to_grads(self, block: torch.Tensor, live: tuple[str, ...]) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        for n in live:
            size = self.shapes[n].numel()
            out[n] = block[start:start + size].reshape(self.shapes[n])
            start += size
        return out
