"""``SENGPreconditioner``: the SENG preconditioner beside any torch optimizer."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from sketchlinalg._backend import all_finite
from sketchlinalg._rng import RNGLike, normalize_rng

from . import _hyper
from ._capture import Call, Capture, leading
from .layers import HELPERS, LayerHelper, WeightBiasHelper, helper_for, match
from .layers.func import FuncFallbackHelper
from .routes import ROUTES, Curvature, PerSampleGrads
from .routes.cost import choose_route

Damping = float | Callable[[int], float]
UpdateFreq = int | Callable[[int], int]


class _Layer:
    """A registered module: its helper, its block's parameters and its stored curvature."""

    def __init__(self, index: int, name: str, module: nn.Module, helper: LayerHelper,
                 params: dict[str, nn.Parameter], route: str, sample_dim: int = 0) -> None:
        self.index = index
        self.sample_dim = sample_dim
        self.name = name
        self.module = module
        self.helper = helper
        self.params = params
        self.route = route
        self.curvature: Curvature | None = None
        self.live: tuple[str, ...] = ()
        self.needs_refresh = True


class SENGPreconditioner:
    r"""Sketchy empirical natural gradient preconditioner (Yang et al. 2022).

    For every supported layer (``nn.Linear``, ``nn.Conv1d/2d/3d``, ``nn.BatchNorm1d/2d/3d``,
    ``nn.LayerNorm``, ``nn.GroupNorm``, ``nn.Embedding``; weight and bias together as one
    block; block-diagonal over layers) ``step()`` replaces the gradient ``g`` in
    ``p.grad`` by

    .. math:: d = (U U^T + \lambda I)^{-1} g
                = \frac{1}{\lambda}\bigl(g - U (U^T U + \lambda I)^{-1} U^T g\bigr),
              \qquad U = \frac{1}{\sqrt{N}} [\nabla l_1, \dots, \nabla l_N],

    with ``l_1..l_N`` the per-sample losses of the last curvature batch and ``lambda`` the
    damping (SENG, Section 3: the empirical Fisher ``U U^T`` inverted through
    the ``N x N`` Woodbury system). Other trainable parameters get ``g / (1 + lambda)``,
    or form one more block with ``fallback="torch.func"``. Use it with any optimizer::

        opt.zero_grad(); loss.backward(); pre.step(); opt.step()

    Per-sample gradients are captured by hooks on curvature steps only: a forward hook
    records each supported module's input, a tensor hook on its output records the
    backpropagated gradient. The samples are in dimension 0 of the module's input unless
    ``sample_dim`` says otherwise. Only training-mode forwards with autograd enabled are
    captured; a module called several times contributes the sum over calls; a parameter
    without ``requires_grad`` or without a gradient is left alone. Between curvature steps
    (``update_freq > 1``) the stored ``U`` of the last curvature batch preconditions the new
    gradients.

    Parameters
    ----------
    model : torch.nn.Module
        The model; it is not modified (hooks only). Supported layers are found by module
        type (see :data:`seng.layers.HELPERS`; a subclass matches when it keeps the type's
        forward); a parameter shared by two modules is treated as unsupported.
    damping : float or callable
        ``lambda > 0``, or a function of the step counter returning it. Default 1.0.
    damping_rule : {"absolute", "relative"}
        ``"absolute"`` (the paper's): ``lambda`` in the units of ``U U^T``, so it depends on
        the loss's scale, and parameters without curvature get ``g / (1 + lambda)``.
        ``"relative"``: per layer, ``lambda`` times the layer's curvature scale
        ``s = tr(U^T U) / N`` damps the system and the direction is
        ``(I + U U^T / (lambda s))^{-1} g`` (the identity off the span of ``U``); parameters
        without curvature get ``g lambda / (1 + lambda)``, the same rule for a curvature that
        is isotropic at its own scale. Multiplying the loss by ``c`` then scales every
        direction by ``c``, as for a gradient, so SENG with learning rate ``lr / c`` takes
        exactly the same steps. Default ``"absolute"``.
    update_freq : int or callable
        Refresh the curvature every ``update_freq`` steps (or a function of the step).
        Default 10.
    sketch : None, "auto" or str
        ``None``: exact Gram. A sketchlinalg family (``"gaussian"``, ``"srht"``,
        ``"countsketch"``, ``"sparse_sign"``, ``"sampling"``): the Gram of a sketch
        ``S U`` of the parameter dimension with ``E[S^T S] = I`` (a Kronecker sketch
        ``S_out (x) S_in`` for linear and convolution weights); ``U^T g`` and ``U alpha`` stay
        exact. ``"auto"``: a cost model (flops from the captured shapes) picks exact,
        CountSketch or low-rank per layer and curvature update (see
        :func:`seng.routes.cost.choose_route`); the choice is in :meth:`layer_info`.
    sketch_size : int
        Coordinates of a layer block kept by the sketch (``s*s`` for the paper's sample
        size ``s``). Default 16384 (``s = 128``).
    rng : int, numpy.random.Generator, numpy.random.SeedSequence or None
        Source of randomness (SPEC 7) for sketches and curvature subsampling; a seed is
        drawn from it once, and each step's randomness derives from that seed and the step
        counter, so ``state_dict`` reproduces a run.
    loss_reduction : {"mean", "sum"}
        Whether the loss is the mean or the sum of the per-sample losses (the backward
        signal of a mean is ``(1/N) dl_i/dy``, which is rescaled by ``N``).
    curvature_batch : int or None
        Use a uniformly random subset of this many samples of the batch (without
        replacement) for the curvature; None uses the whole batch.
    max_update_norm : float or None
        Scale the preconditioned gradient of all parameters down to this Euclidean norm
        when it is larger.
    routes : dict or None
        Per-layer route override, keyed by module or module name: ``"exact"``, ``"auto"``,
        a sketch family, or ``"lowrank"`` (Linear and convolution layers: each per-sample
        gradient ``G_i^T A_i`` truncated to rank ``lowrank_rank`` by a randomized SVD, see
        :func:`seng.routes.lowrank.build`).
    solve_dtype : torch.dtype
        dtype of the ``N x N`` Cholesky solve (float64 or float32); factors and products
        use the parameters' dtype (float32 for half precision).
    lowrank_rank : int
        Rank ``p`` kept per sample (and group) by the low-rank route. Default 4.
    fallback : None or "torch.func"
        ``None``: trainable parameters outside the supported layers get
        ``g / (1 + damping)``. ``"torch.func"``: they form one more block, named
        ``"(torch.func)"``, whose per-sample gradients come from ``torch.func`` (``vmap`` of
        a ``vjp`` of the model on one sample, with the gradient at the model's output
        recorded by a hook: no loss function is needed). Requirements and cost:
        :class:`seng.layers.func.FuncFallbackHelper`.
    grad_scaler : torch.amp.GradScaler or None
        The scaler of a mixed-precision (fp16) run. The hooks record gradients of the
        *scaled* loss; they are divided by ``grad_scaler.get_scale()`` on curvature steps.
    accumulation_steps : int
        Gradient accumulation: each step's gradient is accumulated over this many
        forward/backward passes of micro-batches of equal size ``n`` (for a ``"mean"``
        loss, each pass backpropagates its mean divided by ``accumulation_steps``, so the
        gradient is the mean over all ``k n`` samples). The curvature batch is then the
        ``k n`` samples of the ``k`` micro-batches; a layer called ``c`` times per forward
        must have ``k c`` calls (else its curvature is not updated that step, with a
        warning). ``curvature_batch`` applies to each micro-batch. Default 1.
    sample_dim : None, int or dict
        Where each layer's input holds the samples. ``None`` (default): dimension 0, except
        inside ``nn.TransformerEncoderLayer``/``DecoderLayer`` built with
        ``batch_first=False`` (dimension 1). An int: that dimension for every Linear,
        LayerNorm and Embedding layer (``sample_dim=1`` for sequence-first models;
        convolution and batch/group norm layers take their samples in dimension 0 by
        definition). A dict ``{module or name: int}``: per module, the rest as for None.
        On every curvature step all layers must see the same number of samples ``N``
        (else a ``ValueError`` names the layers and their ``N``).
    strict : bool
        Whether a trainable parameter without curvature (a module type without a helper, a
        subclass with its own forward, a parameter shared by several modules; see
        :meth:`uncovered_parameters`) is an error (``ValueError``). When False (default),
        they are listed with the reason in one warning at construction; ``fallback=
        "torch.func"`` gives them curvature.

    Notes
    -----
    NaN or Inf in a layer's gradient leaves that ``p.grad`` untouched; in its curvature
    (Gram or direction) it keeps the last good curvature. Both are counted
    (:attr:`counters`) and warned about once. Hyperparameters are not part of
    :meth:`state_dict`.

    Mixed precision: under ``torch.autocast`` (bfloat16 or float16) the captured
    activations and gradients are upcast to float32 and the ``N x N`` systems are solved in
    ``solve_dtype``. With fp16 and a ``GradScaler``, pass it as ``grad_scaler`` and
    precondition unscaled gradients, in this order::

        scaler.scale(loss).backward()
        scaler.unscale_(opt)      # p.grad now unscaled; Inf/NaN when the step overflowed
        pre.step()                # an overflowed layer keeps its gradient and curvature
        scaler.step(opt)          # skipped by the scaler on overflow
        scaler.update()

    On an overflowed step the non-finite gradients leave the curvature update out (counted
    in ``counters["nonfinite_grads"]``) and the last good curvature is kept.
    """

    def __init__(
        self,
        model: nn.Module,
        damping: Damping = 1.0,
        update_freq: UpdateFreq = 10,
        *,
        damping_rule: str = "absolute",
        sketch: str | None = None,
        sketch_size: int = 16384,
        rng: RNGLike = 0,
        loss_reduction: str = "mean",
        curvature_batch: int | None = None,
        max_update_norm: float | None = None,
        routes: Mapping[nn.Module | str, str] | None = None,
        solve_dtype: torch.dtype = torch.float64,
        lowrank_rank: int = 4,
        fallback: str | None = None,
        grad_scaler: Any = None,
        accumulation_steps: int = 1,
        strict: bool = False,
        sample_dim: int | Mapping[nn.Module | str, int] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.damping = _hyper.check_damping(damping)
        self.update_freq = _hyper.check_update_freq(update_freq)
        self.damping_rule = _hyper.check_damping_rule(damping_rule)
        self.sketch = _hyper.check_sketch(sketch)
        self.sketch_size = _hyper.check_positive_int(sketch_size, "sketch_size")
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"Invalid loss_reduction value: {loss_reduction!r} "
                             "(valid: 'mean', 'sum')")
        self.loss_reduction = loss_reduction
        self.curvature_batch = _hyper.check_positive_int(
            curvature_batch, "curvature_batch", allow_none=True)
        self.max_update_norm = _hyper.check_positive_float(
            max_update_norm, "max_update_norm", allow_none=True)
        if solve_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"Invalid solve_dtype value: {solve_dtype} "
                             "(valid: torch.float32, torch.float64)")
        self.solve_dtype = solve_dtype
        self.lowrank_rank = _hyper.check_positive_int(lowrank_rank, "lowrank_rank")
        if fallback not in (None, "torch.func"):
            raise ValueError(f"Invalid fallback value: {fallback!r} (valid: None, 'torch.func')")
        self.fallback = fallback
        if grad_scaler is not None and not (hasattr(grad_scaler, "get_scale")
                                            and hasattr(grad_scaler, "is_enabled")):
            raise TypeError(f"grad_scaler must be a torch.amp.GradScaler or None, got "
                            f"{type(grad_scaler).__name__}")
        self.grad_scaler = grad_scaler
        self.accumulation_steps = _hyper.check_positive_int(accumulation_steps,
                                                            "accumulation_steps")
        self._seed = int(normalize_rng(rng).integers(0, 2**63))

        if not isinstance(strict, bool):
            raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
        self.model = model
        self._layers = self._register(model, routes, sample_dim)
        if not self._layers:
            names = ", ".join(sorted(t.__name__ for t in HELPERS))
            raise ValueError(f"model has no supported layer with parameters (supported: {names})")
        uncovered = self.uncovered_parameters()
        if uncovered:
            listing = "; ".join(f"{n} ({why})" for n, why in uncovered.items())
            if strict:
                raise ValueError(f"strict=True: trainable parameters without curvature: "
                                 f"{listing}")
            warnings.warn(f"SENG preconditions {len(uncovered)} trainable parameter(s) by the "
                          f"damped gradient only (no curvature): {listing}. "
                          "fallback='torch.func' covers them; strict=True makes this an "
                          "error", UserWarning, stacklevel=3)
        self._step = 0
        self._last_update: int | None = None
        self.counters = {"curvature_updates": 0, "skipped_updates": 0, "nonfinite_grads": 0,
                         "solve_fallbacks": 0, "missing_curvature": 0}
        self._warned: set[str] = set()
        self._subset: tuple[int, int, torch.Tensor | None] | None = None
        self.last_curvature_indices: torch.Tensor | None = None
        self._capture = Capture(self._subset_for)
        for layer in self._layers:
            self._capture.register(layer.name, layer.helper, layer.params, layer.sample_dim)
        self._capture.active = True

    # -- registration ----------------------------------------------------------------------
    def _register(self, model: nn.Module, routes: Mapping[Any, str] | None,
                  sample_dim: Any) -> list[_Layer]:
        owners: dict[int, int] = {}
        for m in model.modules():
            for p in m._parameters.values():
                if p is not None:
                    owners[id(p)] = owners.get(id(p), 0) + 1
        overrides = self._check_routes(model, routes)
        dims = _sample_dims(model, sample_dim)
        default = "exact" if self.sketch is None else self.sketch
        layers = []
        functional = _functional_children(model)
        for name, module in model.named_modules():
            helper = None if id(module) in functional else helper_for(module)
            if helper is None:
                continue
            params = {n: getattr(module, n) for n in helper.param_names}
            params = {n: p for n, p in params.items()
                      if isinstance(p, nn.Parameter) and owners[id(p)] == 1}
            if params:
                route = overrides.get(name, overrides.get(id(module), default))
                if route == "lowrank" and not isinstance(helper, WeightBiasHelper):
                    raise ValueError(f"Invalid route value for {name}: 'lowrank' applies to "
                                     f"Linear and convolution layers, not {type(module).__name__}")
                if route == "exact":  # helpers may then reduce calls in the backward hook
                    helper.exact_params = tuple(params)
                dim = dims.get(id(module), 0)
                if dim and not helper.any_sample_dim:
                    if isinstance(sample_dim, int):
                        dim = 0  # the module itself fixes its samples first (convolutions)
                    else:
                        raise ValueError(f"Invalid sample_dim for {name!r}: {dim} "
                                         f"({type(module).__name__} takes its samples in "
                                         "dimension 0)")
                layers.append(_Layer(len(layers), name, module, helper, params, route, dim))
        if self.fallback is not None:
            handled = {id(p) for layer in layers for p in layer.params.values()}
            rest = {n: p for n, p in model.named_parameters() if id(p) not in handled}
            if rest:
                helper = FuncFallbackHelper(model, tuple(rest))
                layers.append(_Layer(len(layers), "(torch.func)", model, helper, rest, default))
        return layers

    @staticmethod
    def _check_routes(model: nn.Module, routes: Mapping[Any, str] | None) -> dict[Any, str]:
        if routes is None:
            return {}
        if not isinstance(routes, Mapping):
            raise TypeError(f"routes must be a dict {{module or name: route}}, "
                            f"got {type(routes).__name__}")
        modules = dict(model.named_modules())
        ids = {id(m) for m in modules.values()}
        out: dict[Any, str] = {}
        for key, route in routes.items():
            if isinstance(key, str):
                if key not in modules:
                    raise ValueError(f"Invalid routes key: no module named {key!r} in model")
                out[key] = _hyper.check_route(route, key)
            elif isinstance(key, nn.Module) and id(key) in ids:
                out[id(key)] = _hyper.check_route(route, type(key).__name__)
            else:
                raise ValueError(f"Invalid routes key: {key!r} is not a module of model "
                                 "nor a module name")
        return out

    # -- public API ------------------------------------------------------------------------
    @property
    def step_count(self) -> int:
        """Number of ``step``/``precondition`` calls so far."""
        return self._step

    @torch.no_grad()
    def step(self) -> None:
        """Replace ``p.grad`` of every parameter with a gradient by its preconditioned value
        (in place) and advance the step counter."""
        grads = {p: p.grad for p in self.model.parameters() if p.grad is not None}
        for p, d in self.precondition(grads).items():
            p.grad.copy_(d)

    @torch.no_grad()
    def precondition(
        self, grads: Mapping[torch.Tensor, torch.Tensor]
    ) -> dict[torch.Tensor, torch.Tensor]:
        """The preconditioned directions of ``grads`` (``{parameter: gradient}``), without
        touching ``p.grad``; advances the step counter like :meth:`step`.

        Parameters missing from the result are left as they were (non-finite gradients).
        """
        k = self._step
        # Evaluate the schedules first: a bad value raises before any state changes.
        damping = _hyper.damping_at(self.damping, k)
        refresh = self._refresh_due(k, self._last_update)
        next_freq = _hyper.update_freq_at(self.update_freq, k + 1)
        self._check_sample_counts()
        out: dict[torch.Tensor, torch.Tensor] = {}
        deferred: list[tuple[_Layer, torch.Tensor, tuple[str, ...], dict[str, Any]]] = []
        handled: set[int] = set()
        for layer in self._layers:
            self._capture.release()  # the previous layer's calls: free them as we go
            handled.update(id(p) for p in layer.params.values())
            calls, inconsistent = self._capture.pop(layer.name)
            live = tuple(n for n, p in layer.params.items() if p.requires_grad and p in grads)
            if not live:
                continue
            named = {n: grads[layer.params[n]] for n in live}
            block = layer.helper.grads_to_block(named)
            if not all_finite(block):
                self._count("nonfinite_grads", f"NaN/Inf in the gradient of layer {layer.name!r}: "
                            "its gradient is left untouched and its curvature not updated")
                continue
            if refresh or layer.needs_refresh:
                self._refresh(layer, calls, inconsistent, live, k)
            work = block.to(_work_dtype(block.dtype))
            if self._defer(layer, live):
                deferred.append((layer, work, live, named))
                continue
            d = self._direction(layer, work, live, damping)
            for n, t in layer.helper.block_to_grads(d, live).items():
                out[layer.params[n]] = t.to(named[n].dtype)
        if deferred:
            layers, blocks, _, _ = zip(*deferred, strict=True)
            directions = self._deferred_directions(list(layers), list(blocks), damping)
            for (layer, _, live, named), d in zip(deferred, directions, strict=True):
                for n, t in layer.helper.block_to_grads(d, live).items():
                    out[layer.params[n]] = t.to(named[n].dtype)
        for p, g in grads.items():
            values = g.coalesce().values() if g.is_sparse else g
            if id(p) not in handled and all_finite(values):
                out[p] = self._without_curvature(g, damping)
        self._cap_norm(out)
        if refresh:
            self._last_update = k
        self._step = k + 1
        self._capture.reset()
        self._capture.active = self._capture_due(k + 1, next_freq)
        return out

    @torch.no_grad()
    def curvature_quadratic(self, vectors: Mapping[torch.Tensor, torch.Tensor]) -> float:
        """``v^T U U^T v = ||U^T v||^2`` summed over the layers with a stored curvature
        (block-diagonal empirical Fisher) for ``vectors`` (``{parameter: v}``); parameters
        without curvature add nothing."""
        total = 0.0
        for layer in self._layers:
            if layer.curvature is None or not layer.live:
                continue
            if any(layer.params[n] not in vectors for n in layer.live):
                continue
            block = layer.helper.grads_to_block({n: vectors[layer.params[n]] for n in layer.live})
            v = layer.curvature.store.rmatvec(block.to(_work_dtype(block.dtype)))
            total += float(v.double().square().sum())
        return total

    def _check_sample_counts(self) -> None:
        """Every layer captured this step must see the same number of samples N; layers
        that disagree read their samples from another dimension than the batch's (say so
        with ``sample_dim``), and would build a wrong curvature without a word."""
        groups: dict[int, list[str]] = {}
        for layer in self._layers:
            counts = {c.n for c in self._capture.calls.get(layer.name, ()) if c.received}
            if len(counts) == 1:
                groups.setdefault(counts.pop(), []).append(repr(layer.name or "(model)"))
        if len(groups) > 1:
            self._capture.reset()
            listing = "; ".join(f"N = {n}: {', '.join(names)}" for n, names in groups.items())
            raise ValueError(f"The layers disagree on the number of samples N of this "
                             f"curvature step ({listing}): the samples are not in dimension "
                             "0 of some layers' input; give sample_dim (per model or per "
                             "module, e.g. sample_dim=1 for sequence-first inputs)")

    def remove_hooks(self) -> None:
        """Remove the hooks from the model (the preconditioner then cannot refresh)."""
        self._capture.remove()

    # -- curvature -------------------------------------------------------------------------
    def _refresh(self, layer: _Layer, calls: list[Call], inconsistent: bool,
                 live: tuple[str, ...], k: int) -> None:
        if inconsistent:
            self._warn(f"inconsistent:{layer.name}", f"layer {layer.name!r}: its captured "
                       "calls cannot be combined (inputs with different leading (sample) "
                       "dimensions in one step, or a second backward through a forward whose "
                       "capture was already reduced); its curvature is not updated this step")
            return
        if not calls:
            return
        work = self._micro_batches_merged(layer, calls)
        if work is None:
            return
        n = calls[0].n * self.accumulation_steps
        nc = self._curvature_samples(layer, leading(work[0][0]))
        scale = (n if self.loss_reduction == "mean" else 1.0) / math.sqrt(nc)
        if self.grad_scaler is not None and self.grad_scaler.is_enabled():
            scale /= float(self.grad_scaler.get_scale())  # hooks saw the scaled loss
        rep = self._gather_samples(layer, layer.helper.per_sample(work, live, scale))
        route, costs = layer.route, {}
        if route == "auto":
            route, costs = choose_route(rep, self.sketch_size, self.lowrank_rank)
        build = ROUTES.get(route, ROUTES["sketched"])  # sketch families share one route
        curvature = build(rep, kind=route, size=self.sketch_size, rng=self._rng(k, layer.index + 1),
                          solve_dtype=self.solve_dtype, rank=self.lowrank_rank)
        if not all_finite(curvature.gram):
            self._count("skipped_updates", f"NaN/Inf in the curvature of layer {layer.name!r}: "
                        "update skipped, the last good curvature is kept")
            return
        curvature.info.update(costs, step=k, samples=rep.n)
        layer.curvature, layer.live = curvature, live
        self.counters["curvature_updates"] += 1

    def _micro_batches_merged(self, layer: _Layer, calls: list[Call]) -> list[Any] | None:
        """``(payload, grad)`` per call of one forward, each holding the samples of all
        ``accumulation_steps`` micro-batches (concatenated along the sample dimension);
        None, with a warning, when the calls do not split into that many forwards."""
        k = self.accumulation_steps
        if len(calls) % k:
            self._warn(f"accumulation:{layer.name}", f"layer {layer.name!r} was called "
                       f"{len(calls)} times in a step of accumulation_steps={k} micro-batches "
                       "(not a multiple); its curvature is not updated this step")
            return None
        c = len(calls) // k
        return [(_cat_samples([_cast(calls[m * c + j].payload) for m in range(k)]),
                 _cat_samples([_cast(calls[m * c + j].grad) for m in range(k)]))
                for j in range(c)]

    def _curvature_samples(self, layer: _Layer, local: int) -> int:
        """``N`` of ``U = [...] / sqrt(N)`` for ``local`` captured samples: ``local`` here;
        the data-parallel subclass counts every rank's."""
        return local

    def _gather_samples(self, layer: _Layer, rep: PerSampleGrads) -> PerSampleGrads:
        """The per-sample gradients of the whole curvature batch: ``rep`` itself here; the
        data-parallel subclass (:mod:`seng.distributed`) gathers them from every rank."""
        return rep

    def _direction(self, layer: _Layer, block: torch.Tensor, live: tuple[str, ...],
                   damping: float) -> torch.Tensor:
        if layer.curvature is not None and layer.live == live:
            d, fallback = layer.curvature.direction(block, damping, self._relative)
            return self._accept(layer, d, fallback, block, damping)
        self._count("missing_curvature", f"layer {layer.name!r} has a gradient but no "
                    "curvature (nothing captured: eval mode, no_grad, or a new set of "
                    "trainable parameters); it gets the damped gradient until the next "
                    "capture")
        layer.needs_refresh = True
        return self._without_curvature(block, damping)

    def _accept(self, layer: _Layer, d: torch.Tensor, fallback: bool, block: torch.Tensor,
                damping: float) -> torch.Tensor:
        """``d``, the direction from ``layer``'s curvature, if finite; otherwise drop the
        curvature and return the damped gradient."""
        if fallback:
            self._count("solve_fallbacks", f"Cholesky of the damped Gram of layer "
                        f"{layer.name!r} failed; solved with its spectrum clipped at the "
                        "damping")
        if all_finite(d):
            layer.needs_refresh = False
            return d
        self._count("skipped_updates", f"NaN/Inf in the direction of layer {layer.name!r}: "
                    "its curvature is dropped and refreshed on the next step")
        layer.curvature = None
        layer.needs_refresh = True
        return self._without_curvature(block, damping)

    @property
    def _relative(self) -> bool:
        return self.damping_rule == "relative"

    def _without_curvature(self, g: torch.Tensor, damping: float) -> torch.Tensor:
        """The direction of a parameter without curvature: ``g / (1 + damping)`` (absolute
        rule: ``U U^T`` taken as ``I``), or ``g damping / (1 + damping)`` (relative rule:
        ``U U^T`` taken as ``s I``)."""
        return g * (damping / (1.0 + damping)) if self._relative else g / (1.0 + damping)

    def _defer(self, layer: _Layer, live: tuple[str, ...]) -> bool:
        """Whether ``layer``'s direction is left to :meth:`_deferred_directions`, computed
        for all such layers together after the others (the data-parallel subclass batches
        their collectives)."""
        return False

    def _deferred_directions(self, layers: list[_Layer], blocks: list[torch.Tensor],
                             damping: float) -> list[torch.Tensor]:
        raise NotImplementedError

    def _refresh_due(self, k: int, last: int | None, freq: int | None = None) -> bool:
        if last is None:
            return True
        if freq is None:
            freq = _hyper.update_freq_at(self.update_freq, k)
        return k - last >= freq

    def _capture_due(self, k: int, freq: int | None = None) -> bool:
        """Whether step ``k``'s forward must be captured (known before that forward)."""
        return (self._refresh_due(k, self._last_update, freq)
                or any(layer.needs_refresh for layer in self._layers))

    def _rng(self, k: int, stream: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(self._seed, spawn_key=(k, stream)))

    def _subset_for(self, n: int) -> torch.Tensor | None:
        if self.curvature_batch is None or self.curvature_batch >= n:
            self.last_curvature_indices = None
            return None
        if self._subset is None or self._subset[:2] != (self._step, n):
            idx = np.sort(self._rng(self._step, 0).choice(n, self.curvature_batch, replace=False))
            self._subset = (self._step, n, torch.as_tensor(idx, dtype=torch.int64))
        self.last_curvature_indices = self._subset[2]
        return self._subset[2]

    def _cap_norm(self, out: dict[torch.Tensor, torch.Tensor]) -> None:
        if self.max_update_norm is None or not out:
            return
        norm = math.sqrt(sum(float(d.double().square().sum()) for d in out.values()))
        if norm > self.max_update_norm:
            for p in out:
                out[p] = out[p] * (self.max_update_norm / norm)

    def _count(self, counter: str, message: str) -> None:
        self.counters[counter] += 1
        self._warn(counter, message)

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message + " (warned once)", RuntimeWarning, stacklevel=4)

    # -- report ----------------------------------------------------------------------------
    def layer_info(self) -> list[dict[str, Any]]:
        """One dict per registered layer: ``name``, ``type``, ``params`` (block members),
        ``numel``, ``route`` (setting), ``last`` (info of the stored curvature: route used,
        Gram method, storage, cost-model flops, step, samples) and ``memory_bytes`` held."""
        rows = []
        for layer in self._layers:
            c = layer.curvature
            rows.append({
                "name": layer.name, "type": type(layer.module).__name__,
                "params": list(layer.params),
                "numel": sum(p.numel() for p in layer.params.values()),
                "route": layer.route, "last": None if c is None else dict(c.info),
                "memory_bytes": 0 if c is None else c.nbytes,
            })
        return rows

    def unsupported_parameters(self) -> list[str]:
        """Names of the trainable parameters without curvature (damped gradient only)."""
        return list(self.uncovered_parameters())

    def uncovered_parameters(self) -> dict[str, str]:
        """``{name: why}`` for each trainable parameter without curvature (it gets the
        damped gradient only): shared by several modules, or owned by a module that has no
        helper (its type, or a subclass with its own forward)."""
        handled = {id(p) for layer in self._layers for p in layer.params.values()}
        functional = _functional_children(self.model)
        owners: dict[int, list[nn.Module]] = {}
        for m in self.model.modules():
            for p in m._parameters.values():
                if p is not None:
                    owners.setdefault(id(p), []).append(m)
        out = {}
        for n, p in self.model.named_parameters():  # each parameter once, by its first name
            if not p.requires_grad or id(p) in handled:
                continue
            users = owners[id(p)]
            if len(users) > 1:
                out[n] = f"shared by {len(users)} modules"
            else:
                out[n] = (functional.get(id(users[0])) or match(type(users[0]))[1]
                          or "not in its helper's block")
        return out

    def report(self) -> str:
        """A table of the registered layers, their routes and the memory they hold."""
        lines = [f"{'layer':<24} {'type':<8} {'params':>9} {'route':<12} {'used':<12} "
                 f"{'gram':<10} {'store':<10} {'memory':>10}"]
        total = 0
        for r in self.layer_info():
            last = r["last"] or {}
            total += r["memory_bytes"]
            lines.append(f"{r['name'] or '(model)':<24} {r['type']:<8} {r['numel']:>9} "
                         f"{r['route']:<12} {last.get('route', '-'):<12} "
                         f"{last.get('gram_method', '-'):<10} {last.get('store', '-'):<10} "
                         f"{_mib(r['memory_bytes']):>10}")
        lines.append(f"total curvature memory {_mib(total)}; counters {self.counters}")
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        covered = {id(p) for layer in self._layers for p in layer.params.values()}
        n_all = sum(p.numel() for p in trainable)
        n_cov = sum(p.numel() for p in trainable if id(p) in covered)
        lines.append(f"preconditioned: {n_cov} of {n_all} trainable parameters "
                     f"({100 * n_cov / max(n_all, 1):.1f}%)")
        others = self.unsupported_parameters()
        if others:
            rule = "g damping / (1 + damping)" if self._relative else "g / (1 + damping)"
            lines.append(f"{rule} for: {', '.join(others)}")
        return "\n".join(lines)

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Step counter, seed, counters and every layer's stored curvature (tensors by
        reference, as ``torch.optim`` does)."""
        return {
            "step": self._step, "last_update": self._last_update, "seed": self._seed,
            "counters": dict(self.counters),
            "layers": {layer.name: {
                "curvature": None if layer.curvature is None else layer.curvature.state_dict(),
                "live": list(layer.live), "needs_refresh": layer.needs_refresh,
            } for layer in self._layers},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; layers are matched by module name."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        missing = {"step", "last_update", "seed", "counters", "layers"} - set(state)
        if missing:
            raise ValueError(f"state is missing keys {sorted(missing)}")
        names = {layer.name for layer in self._layers}
        if set(state["layers"]) != names:
            raise ValueError(f"state has layers {sorted(state['layers'])}, the model has "
                             f"{sorted(names)}")
        for layer in self._layers:
            s = state["layers"][layer.name]
            device = next(iter(layer.params.values())).device
            c = s["curvature"]
            layer.curvature = None if c is None else Curvature.from_state(c, device)
            layer.live = tuple(s["live"])
            layer.needs_refresh = bool(s["needs_refresh"])
        self._step = int(state["step"])
        self._last_update = None if state["last_update"] is None else int(state["last_update"])
        self._seed = int(state["seed"])
        self.counters = dict(state["counters"])
        self._capture.reset()
        self._capture.active = self._capture_due(self._step)


def _sample_dims(model: nn.Module, sample_dim: Any) -> dict[int, int]:
    """``{id(module): dimension of its input holding the samples}`` (absent: 0): given for
    every module (an int), per module or module name (a mapping; the rest inferred), or
    inferred (None): 1 inside ``nn.TransformerEncoderLayer``/``DecoderLayer`` built with
    ``batch_first=False``, the only layout whose sample dimension is certain from the
    module alone."""
    if isinstance(sample_dim, int) and not isinstance(sample_dim, bool):
        if sample_dim < 0:
            raise ValueError(f"Invalid sample_dim value: {sample_dim} (must be an int >= 0, "
                             "a dict {module or name: int >= 0}, or None)")
        return {id(m): sample_dim for m in model.modules()}
    inferred = {}
    for m in model.modules():
        if (isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer))
                and not m.self_attn.batch_first):
            inferred.update((id(sub), 1) for sub in m.modules())
    if sample_dim is None:
        return inferred
    if not isinstance(sample_dim, Mapping):
        raise TypeError(f"sample_dim must be an int, a dict {{module or name: int}} or None, "
                        f"got {type(sample_dim).__name__}")
    modules = dict(model.named_modules())
    for key, dim in sample_dim.items():
        module = modules.get(key) if isinstance(key, str) else key
        if not any(module is m for m in modules.values()):
            raise ValueError(f"Invalid sample_dim key: {key!r} is not a module of model nor a "
                             "module name")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise ValueError(f"Invalid sample_dim value for {key!r}: {dim!r} (must be an "
                             "int >= 0)")
        inferred[id(module)] = dim
    return inferred


def _functional_children(model: nn.Module) -> dict[int, str]:
    """``{id(module): why}`` for supported modules whose parent uses their parameters
    without calling them (hooks would never see a call): ``nn.MultiheadAttention``'s
    ``out_proj``."""
    return {id(m.out_proj): "used functionally by nn.MultiheadAttention (its forward is "
            "not called)" for m in model.modules() if isinstance(m, nn.MultiheadAttention)}


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _cast(x: Any) -> Any:
    if x is None:
        return None
    if isinstance(x, tuple):
        return tuple(_cast(t) for t in x)
    return x.to(_work_dtype(x.dtype)) if x.is_floating_point() else x


def _cat_samples(parts: list[Any]) -> Any:
    """Concatenate payloads (tensors or tuples of tensors; None for the gradients of
    reduced calls) along the sample dimension."""
    if len(parts) == 1 or parts[0] is None:
        return parts[0]
    if isinstance(parts[0], tuple):
        return tuple(_cat_samples(list(p)) for p in zip(*parts, strict=True))
    return torch.cat(parts)


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.2f} MiB"
