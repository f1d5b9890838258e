"""Forward and tensor hooks that record layer inputs and output gradients on curvature steps.

The hooks are registered once and return at once unless the preconditioner armed them for
the coming step (``Capture.active``) and the forward is a training forward with autograd on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .layers.base import LayerHelper, Payload


class Call:
    """One forward call of a module: its payload and (after backward) its output gradient.

    Where ``reduce`` (the helper's :meth:`~seng.layers.base.LayerHelper.reduce`) returns a
    compact stand-in when the gradient arrives, it replaces the payload and ``grad`` stays
    None: the hooks then hold the stand-in instead of the input and output gradient.
    """

    __slots__ = ("failed", "grad", "index", "n", "payload", "received", "reduce", "reduced")

    def __init__(self, payload: Payload, n: int, reduce: Any = None,
                 index: torch.Tensor | None = None) -> None:
        self.payload = payload
        self.n = n
        self.index = index
        self.grad: torch.Tensor | None = None
        self.reduce = reduce
        self.received = self.reduced = self.failed = False

    def add_grad(self, grad: torch.Tensor) -> None:
        """Record the output gradient (rows ``index`` of it: the curvature subset)."""
        grad = take(grad, self.index)
        if self.received:
            if self.reduced:  # the input is gone: a second backward cannot be reduced
                self.failed = True
            elif isinstance(grad, tuple):  # a second backward adds to the first (as p.grad)
                self.grad = tuple(a + b for a, b in zip(self.grad, grad, strict=True))
            else:
                self.grad = self.grad + grad
            return
        # The payload's subset is taken only now: until the backward, the whole input is
        # held by autograd anyway, whereas a subset taken in the forward would be a copy.
        self.payload = take(self.payload, self.index)
        stand_in = None if self.reduce is None else self.reduce(self.payload, grad)
        if stand_in is None:
            self.grad = grad
        else:
            self.payload, self.reduced = stand_in, True
        self.received = True


def take(payload: Payload, index: torch.Tensor | None) -> Payload:
    """Rows ``index`` of every tensor in ``payload`` (all of it when ``index`` is None)."""
    if index is None:
        return payload
    if isinstance(payload, tuple):
        return tuple(take(p, index) for p in payload)
    return payload.index_select(0, index.to(payload.device))


def hooked_tensor(target: torch.Tensor) -> torch.Tensor:
    """The tensor to hook for the gradient of ``target``.

    A hook on a view is lost when the view is later modified in place (a module output
    followed by ``ReLU(inplace=True)``: ``nn.Linear`` on a 3-D input returns a view of its
    2-D result). When ``target`` is a contiguous reshape of its base, hook the base instead;
    its gradient, reshaped, is that of ``target``.
    """
    base = target._base
    if (base is not None and base.numel() == target.numel() and target.is_contiguous()
            and base.is_contiguous()):
        return base
    return target


def _hook_outputs(targets: tuple[torch.Tensor, ...],
                  record: Callable[[tuple[torch.Tensor, ...]], None]) -> None:
    """Call ``record`` with the gradients of all ``targets`` once the last has arrived
    (zeros for those the loss does not depend on), detached and shaped like the targets."""
    meta = [(t.shape, t.dtype, t.device) for t in targets]

    def on_grads(grads: tuple[torch.Tensor | None, ...]) -> None:
        record(tuple(torch.zeros(shape, dtype=dtype, device=device) if g is None
                     else g.detach().reshape(shape)
                     for g, (shape, dtype, device) in zip(grads, meta, strict=True)))

    # The targets themselves, not hooked_tensor's base: a view's base may receive gradients
    # through other uses (MultiheadAttention's per-head weights are a view of the
    # probabilities its output is computed from).
    torch.autograd.graph.register_multi_grad_hook(targets, on_grads)


def _functorch_wrapped(t: torch.Tensor) -> bool:
    # A vmap/grad forward (e.g. a torch.func per-sample computation) is not a training step.
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(t))


def leading(payload: Payload) -> int:
    return leading(payload[0]) if isinstance(payload, tuple) else int(payload.shape[0])


def usable_samples(calls: list[Call], micro_batches: int) -> tuple[int, str]:
    """``(N, "")``: the curvature samples of one layer's recorded calls (those that received
    a gradient), each call holding one micro-batch of ``micro_batches``; or ``(0, why
    not)``: ``"none"`` (nothing recorded), ``"inconsistent"`` (sample counts that differ, or
    a second backward through a reduced call) or ``"accumulation"`` (not a multiple of
    ``micro_batches`` calls)."""
    calls = [c for c in calls if c.received]
    if not calls:
        return 0, "none"
    if len({c.n for c in calls}) > 1 or any(c.failed for c in calls):
        return 0, "inconsistent"
    if len(calls) % micro_batches:
        return 0, "accumulation"
    return leading(calls[0].payload) * micro_batches, ""


class Capture:
    """Records :class:`Call` s of the registered layers while ``active``.

    ``subset(n)`` returns the sample indices kept for a batch of ``n`` samples (None for
    all). Forwards inside ``torch.func`` transforms are not recorded.
    """

    def __init__(self, subset: Callable[[int], torch.Tensor | None]) -> None:
        self.active = False
        #: Whether backward passes deliver their output gradients to the calls (False
        #: outside ``SENGPreconditioner.sample_fisher`` under the true Fisher).
        self.recording = True
        self.subset = subset
        self.calls: dict[str, list[Call]] = {}
        self.handed_out: list[Call] = []
        self.handles: list[Any] = []

    def register(self, name: str, helper: LayerHelper, params: dict[str, nn.Parameter],
                 sample_dim: int = 0) -> None:
        """Record the calls of ``helper.module`` under ``name``; its input's and output's
        dimension ``sample_dim`` holds the samples (moved first for the helper)."""
        self.calls[name] = []

        def first(t: torch.Tensor) -> torch.Tensor:
            return t.movedim(sample_dim, 0) if sample_dim else t

        # torch.compile cannot trace the recording (its tensor hook has side effects, which
        # need compiled autograd): the hook runs eagerly, and a compiled forward breaks into
        # one graph per registered module (benchmarks/bench_seng_compile.py measures it).
        @torch.compiler.disable
        def forward_hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if not (self.active and module.training and torch.is_grad_enabled()):
                return
            if not any(p.requires_grad for p in params.values()):
                return
            target = helper.hooked_output(output)
            targets = target if isinstance(target, tuple) else (target,)
            if not all(isinstance(t, torch.Tensor) and t.requires_grad for t in targets):
                return
            if _functorch_wrapped(targets[0]):
                return
            if sample_dim:
                if inputs[0].ndim <= sample_dim:
                    raise ValueError(f"Invalid sample_dim for layer {name!r}: {sample_dim}, "
                                     f"but its input has shape {tuple(inputs[0].shape)}")
                inputs = (first(inputs[0]), *inputs[1:])
                output = first(output)
            payload = helper.capture_forward(inputs, output)
            n = leading(payload)
            index = self.subset(n)
            call = Call(payload, n, helper.reduce, index)
            self.calls[name].append(call)
            if isinstance(target, tuple):
                _hook_outputs(targets, lambda grads: self._deliver(
                    call, lambda: helper.capture_grad(grads)))
                return
            shape = target.shape
            hooked_tensor(target).register_hook(lambda grad: self._deliver(
                call, lambda: helper.capture_grad(first(grad.detach().reshape(shape)))))

        def pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self.active and module.training and torch.is_grad_enabled():
                helper.before_forward(args, kwargs)

        if type(helper).before_forward is not LayerHelper.before_forward:
            self.handles.append(helper.module.register_forward_pre_hook(pre_hook,
                                                                        with_kwargs=True))
        self.handles.append(helper.module.register_forward_hook(forward_hook))

    def _deliver(self, call: Call, grad: Callable[[], torch.Tensor]) -> None:
        if self.recording:
            call.add_grad(grad())

    def pop(self, name: str) -> list[Call]:
        """The calls of ``name`` that received a gradient; forgets them."""
        calls = [c for c in self.calls[name] if c.received]
        self.handed_out.extend(self.calls[name])
        self.calls[name] = []
        return calls

    def forget(self, names: list[str]) -> None:
        """Forget the calls of the layers ``names`` and free what they hold."""
        for name in names:
            self.handed_out.extend(self.calls[name])
            self.calls[name] = []
        self.release()

    def drop_completed(self) -> None:
        """Forget the calls whose backward has run (a step that was not taken), keeping those
        still waiting for it (``zero_grad`` between forward and backward is common)."""
        for name, calls in self.calls.items():
            self.handed_out.extend(c for c in calls if c.received)
            self.calls[name] = [c for c in calls if not c.received]
        self.release()

    def release(self) -> None:
        """Free what forgotten calls hold."""
        for call in self.handed_out:
            call.payload = call.grad = None
        self.handed_out = []

    def reset(self) -> None:
        """Forget every call and free what it holds: the autograd graph, which the user may
        keep alive (e.g. through ``loss``), still references the calls through its hooks."""
        self.forget(list(self.calls))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def merge_micro_batches(calls: list[Call], k: int) -> list[Any]:
    """``(payload, grad)`` per call of one forward, each holding the samples of all ``k``
    micro-batches (concatenated along the sample dimension)."""
    c = len(calls) // k
    return [(_cat_samples([_cast(calls[m * c + j].payload) for m in range(k)]),
             _cat_samples([_cast(calls[m * c + j].grad) for m in range(k)]))
            for j in range(c)]


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _cast(x: Any) -> Any:
    if x is None:
        return None
    if isinstance(x, tuple):
        return tuple(_cast(t) for t in x)
    return x.to(work_dtype(x.dtype)) if x.is_floating_point() else x


def _cat_samples(parts: list[Any]) -> Any:
    """Concatenate payloads (tensors or tuples of tensors; None for the gradients of
    reduced calls) along the sample dimension."""
    if len(parts) == 1 or parts[0] is None:
        return parts[0]
    if isinstance(parts[0], tuple):
        return tuple(_cat_samples(list(p)) for p in zip(*parts, strict=True))
    return torch.cat(parts)
