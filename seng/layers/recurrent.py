"""``nn.RNN``, ``nn.LSTM``, ``nn.GRU``: per-sample gradients through the module's own forward
under ``torch.func``; gradients flowing in through the output sequence and the final states."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vjp, vmap
from torch.nn.utils.rnn import PackedSequence

from ..persample import DenseGrads
from .base import LayerHelper


class RecurrentHelper(LayerHelper):
    r"""Per-sample gradients of a recurrent layer by a vector-Jacobian product per sample.

    The forward hook records the input sequence and the initial state (zeros when none is
    given), the tensor hooks the gradients of the output sequence and of the final hidden
    state (and cell state for an LSTM), zeros for those the loss does not use. In ``step()``
    the per-sample gradient of sample ``i`` is

    .. math:: \nabla_\theta l_i = J_i(\theta)^T (g^{out}_i, g^{h}_i, g^{c}_i),

    the vector-Jacobian product of the module's own forward on that one sample
    (``functional_call`` under ``torch.func.vjp``), for all samples at once by ``vmap`` (the
    initial state is passed explicitly, which lets ``vmap`` run the LSTM too), or one sample
    at a time where ``vmap`` cannot run the module (a kernel without a batching rule: then
    with a warning, once, and ``vectorize`` set to False). The block holds the layer's
    parameters, flat in registration order; ``U`` is stored densely (``N x p``).

    A ``PackedSequence`` input is not recorded (the layer then has no curvature and gets the
    damped gradient, with a warning). Dropout between layers is refused: a per-sample
    recomputation cannot draw the masks the batch drew.
    """

    module_types = (nn.RNN, nn.LSTM, nn.GRU)
    layout_from_module = True
    #: Whether the per-sample products run under ``vmap`` (else one sample at a time).
    vectorize = True

    @classmethod
    def refuses(cls, module: nn.Module) -> str:
        if module.dropout > 0 and module.num_layers > 1:
            return (f"{type(module).__name__} with dropout between layers (a per-sample "
                    "recomputation cannot draw the masks of the batch)")
        return ""

    @classmethod
    def block_param_names(cls, module: nn.Module) -> tuple[str, ...]:
        return tuple(module._flat_weights_names)

    def __init__(self, module: nn.Module, exact_params: tuple[str, ...] | None = None) -> None:
        super().__init__(module, exact_params)
        self.param_names = self.block_param_names(module)
        self.lstm = isinstance(module, nn.LSTM)
        self._hx: Any = None

    def before_forward(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._hx = args[1] if len(args) > 1 else kwargs.get("hx")

    def hooked_output(self, output: Any) -> tuple[torch.Tensor, ...] | None:
        out, h = output
        if isinstance(out, PackedSequence):
            return None
        return (out, *h) if self.lstm else (out, h)

    def capture_forward(self, inputs: tuple[Any, ...], output: Any) -> tuple[torch.Tensor, ...]:
        hx, self._hx = self._hx, None
        x = inputs[0].detach()
        batched = x.dim() == 3
        x = self._sequence_first_to_samples(x, batched)
        if hx is None:
            h = output[1]  # zeros shaped like the final state
            hx = tuple(torch.zeros_like(t) for t in h) if self.lstm else torch.zeros_like(h)
        states = hx if self.lstm else (hx,)
        return (x, *(self._state_to_samples(s.detach(), batched) for s in states))

    def capture_grad(self, grad_output: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        gy, *states = grad_output
        batched = gy.dim() == 3
        return (self._sequence_first_to_samples(gy, batched),
                *(self._state_to_samples(s, batched) for s in states))

    def _sequence_first_to_samples(self, x: torch.Tensor, batched: bool) -> torch.Tensor:
        if not batched:  # an unbatched sequence is one sample
            return x[None]
        return x if self.module.batch_first else x.transpose(0, 1)

    @staticmethod
    def _state_to_samples(h: torch.Tensor, batched: bool) -> torch.Tensor:
        # (layers * directions, N, H) whatever batch_first says.
        return h.transpose(0, 1) if batched else h[None]

    def per_sample(
        self, calls: list[tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]],
        live: tuple[str, ...], scale: float,
    ) -> DenseGrads:
        m = self.module
        dtype = calls[0][0][0].dtype  # the work dtype of the recorded inputs
        params = {n: p.detach().to(dtype) for n, p in m.named_parameters()}
        block = {n: params[n] for n in live}
        rest = {n: p for n, p in params.items() if n not in block}

        def one(bp: dict[str, torch.Tensor], x: torch.Tensor, states: tuple[torch.Tensor, ...],
                cotangents: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
            def f(bp: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
                hx = states if self.lstm else states[0]
                out, h = functional_call(m, {**rest, **bp}, (x, hx))  # one unbatched sample
                return (out, *h) if self.lstm else (out, h)

            _, pull = vjp(f, bp)
            return pull(cotangents)[0]

        rows = None
        for (x, *states), cotangents in calls:
            states = tuple(states)
            grads = None
            if self.vectorize:
                try:
                    grads = vmap(one, in_dims=(None, 0, 0, 0), randomness="error")(
                        block, x, states, tuple(cotangents))
                except RuntimeError as e:  # no batching rule for a kernel: same result, slower
                    warnings.warn(f"{type(m).__name__}: vmap cannot run the module ({e}); its "
                                  "per-sample gradients are computed one sample at a time",
                                  RuntimeWarning, stacklevel=2)
                    self.vectorize = False
            if grads is None:
                each = [one(block, x[i], tuple(s[i] for s in states),
                            tuple(c[i] for c in cotangents)) for i in range(x.shape[0])]
                grads = {n: torch.stack([g[n] for g in each]) for n in live}
            r = torch.cat([grads[n].reshape(x.shape[0], -1) for n in live], dim=1)
            rows = r if rows is None else rows + r
        return DenseGrads(rows * scale, (rows.shape[1],))

    def grads_to_block(self, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([g.reshape(-1) for g in grads.values()])

    def block_to_grads(self, block: torch.Tensor, live: tuple[str, ...]) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        for n in live:
            shape = getattr(self.module, n).shape
            size = shape.numel()
            out[n] = block[start:start + size].reshape(shape)
            start += size
        return out
