"""``SENGPreconditioner``: the SENG preconditioner beside any torch optimizer."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from sketchlinalg.backend import RNGLike, all_finite, normalize_rng

from . import _hyper
from ._capture import Call, Capture, merge_micro_batches, usable_samples, work_dtype
from ._registration import build_layers, uncompiled, uncovered_parameters
from .comm import SINGLE_PROCESS, Communicator
from .curvature import woodbury_directions
from .fisher import sample_targets, sampled_loss
from .layer import Layer
from .layers import HELPERS
from .routes import Route, make_route

Damping = float | Callable[[int], float]
UpdateFreq = int | Callable[[int], int]


class SENGPreconditioner:
    r"""Sketchy empirical natural gradient preconditioner (Yang et al. 2022).

    For every supported layer (``nn.Linear``, ``nn.Conv1d/2d/3d``,
    ``nn.ConvTranspose1d/2d/3d``, ``nn.BatchNorm1d/2d/3d``, ``nn.LayerNorm``,
    ``nn.GroupNorm``, ``nn.Embedding``, ``nn.MultiheadAttention`` with its ``out_proj``,
    ``nn.RNN``/``nn.LSTM``/``nn.GRU``; a module's parameters together as one block;
    block-diagonal over layers) ``step()`` replaces the gradient ``g`` in
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
        forward); a parameter used by several modules (tied weights) gets one block whose
        per-sample gradient is the sum of its users' parts. For a
        ``torch.compile``'d model, the module it wraps (``self.model``): layer names and
        state are those of the plain model, and the compile caches are cleared so that
        compiled code calls the hooks (see the guide's ``torch.compile`` section).
    damping : float or callable
        ``lambda > 0``, or a function of the step counter returning it. Default 1.0.
    damping_rule : {"absolute", "relative", "spectral"}
        ``"absolute"`` (the paper's): ``lambda`` in the units of ``U U^T``, so it depends on
        the loss's scale, and parameters without curvature get ``g / (1 + lambda)``.
        ``"relative"``: per layer, ``lambda`` times the layer's curvature scale
        ``s = tr(U^T U) / N`` damps the system and the direction is
        ``(I + U U^T / (lambda s))^{-1} g`` (the identity off the span of ``U``); parameters
        without curvature get ``g lambda / (1 + lambda)``, the same rule for a curvature that
        is isotropic at its own scale. Multiplying the loss by ``c`` then scales every
        direction by ``c``, as for a gradient, so SENG with learning rate ``lr / c`` takes
        exactly the same steps. ``"spectral"``: as ``"relative"`` with ``s`` the largest
        eigenvalue of ``U^T U`` (one ``N x N`` symmetric eigenvalue solve per layer and
        refresh), so that no component of ``g`` along the curvature is shrunk below
        ``lambda / (1 + lambda)`` of its length: with ``lambda = 1``, at most halved.
        Default ``"absolute"``.
    update_freq : int or callable
        Refresh the curvature every ``update_freq`` steps (or a function of the step).
        Default 10.
    sketch : None, "auto" or str
        ``None``: exact Gram. A sketchlinalg family (``"gaussian"``, ``"srht"``,
        ``"countsketch"``, ``"sparse_sign"``, ``"sampling"``): the Gram of a sketch
        ``S U`` of the parameter dimension with ``E[S^T S] = I``, each linear or convolution
        block sketched as a whole from its Kronecker factors (a TensorSketch for
        ``"countsketch"``; :class:`seng.persample.BlockSketch`); ``U^T g`` and ``U alpha``
        stay exact. ``"auto"``: a cost model (flops from the captured shapes) picks exact,
        CountSketch or low-rank per layer and curvature update (see
        :func:`seng.cost.choose_route`); the choice is in :meth:`layer_info`.
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
    curvature_memory : int
        Pool the per-sample gradients of the last ``k`` curvature batches (this one
        included): ``U = [U_1, ..., U_k] / sqrt(k)``, so that ``U U^T`` is the mean of the
        ``k`` batches' empirical Fishers, with the exact Gram of all ``k N`` columns. With
        ``update_freq=1`` the gradient still lies in the span of ``U`` (its batch is in the
        pool), and the step no longer fits one batch's curvature alone. Costs ``k`` times
        the stored columns and the ``U^T g``, ``U alpha`` products, the new batch's ``k``
        blocks of the Gram (the others are kept from earlier refreshes), and the
        ``kN x kN`` solve. Needs the exact route on every layer and one process. Default 1
        (the paper's curvature of one batch).
    max_update_norm : float or None
        Scale the preconditioned gradient of all parameters down to this Euclidean norm
        when it is larger.
    routes : dict or None
        Per-layer route override, keyed by module or module name: ``"exact"``, ``"auto"``,
        a sketch family, or ``"lowrank"`` (Linear and convolution layers: each per-sample
        gradient ``G_i^T A_i`` truncated to rank ``lowrank_rank`` by a randomized SVD, see
        :class:`seng.routes.LowRankRoute`).
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
        definition; attention and recurrent layers read theirs from ``batch_first``, and
        ``sample_dim`` does not apply to them). A dict ``{module or name: int}``: per
        module, the rest as for None. On every curvature step all layers must see the same
        number of samples ``N`` (else a ``ValueError`` names the layers and their ``N``).
    strict : bool
        Whether a trainable parameter without curvature (a module type without a helper, a
        subclass with its own forward, a parameter shared by several modules; see
        :meth:`uncovered_parameters`) is an error (``ValueError``). When False (default),
        they are listed with the reason in one warning at construction; ``fallback=
        "torch.func"`` gives them curvature.
    fisher : {"empirical", "true"}
        ``"empirical"`` (the paper's): ``U`` holds the gradients of the training loss's own
        per-sample losses. ``"true"``: the Monte Carlo Fisher of the model's likelihood, from
        targets sampled from the model's predictive distribution (:mod:`seng.fisher`); on
        curvature steps call :meth:`sample_fisher` with the model's outputs between the
        forward and the backward (one extra backward pass, as K-FAC does). Default
        ``"empirical"``.
    comm : seng.comm.Communicator or None
        How the step runs across processes: None (one process), or a
        :class:`seng.comm.LocalComm` / :class:`seng.comm.GlobalComm` on
        ``torch.distributed`` (what :class:`seng.distributed.DistributedSENGPreconditioner`
        passes).

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
        curvature_memory: int = 1,
        max_update_norm: float | None = None,
        routes: Mapping[nn.Module | str, str] | None = None,
        solve_dtype: torch.dtype = torch.float64,
        lowrank_rank: int = 4,
        fallback: str | None = None,
        grad_scaler: Any = None,
        accumulation_steps: int = 1,
        strict: bool = False,
        fisher: str = "empirical",
        sample_dim: int | Mapping[nn.Module | str, int] | None = None,
        comm: Communicator | None = None,
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
        self.curvature_memory = _hyper.check_positive_int(curvature_memory, "curvature_memory")
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
        if fisher not in ("empirical", "true"):
            raise ValueError(f"Invalid fisher value: {fisher!r} (valid: 'empirical', 'true')")
        self.fisher = fisher
        self.last_sampled_targets: torch.Tensor | None = None
        self.accumulation_steps = _hyper.check_positive_int(accumulation_steps,
                                                            "accumulation_steps")
        self._seed = int(normalize_rng(rng).integers(0, 2**63))

        if not isinstance(strict, bool):
            raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
        self.model = uncompiled(model)  # names without torch.compile's '_orig_mod.'
        default = "exact" if self.sketch is None else self.sketch
        self._layers = build_layers(self.model, routes, sample_dim, default, self._route,
                                    self.fallback)
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
            for part in layer.parts:
                self._capture.register(*part)
        self._capture.active = True
        self._capture.recording = fisher == "empirical"
        if comm is not None and not isinstance(comm, Communicator):
            raise TypeError(f"comm must be a seng.comm.Communicator or None, got "
                            f"{type(comm).__name__}")
        self.comm = SINGLE_PROCESS if comm is None else comm
        if self.curvature_memory > 1:
            self._check_memory()
            for layer in self._layers:
                layer.memory = self.curvature_memory
        self.comm.attach(self)
        self._seed = self.comm.shared_seed(self._seed)

    def _check_memory(self) -> None:
        """Refuse ``curvature_memory > 1`` where pooling is not defined: a sketched Gram
        (each batch's sketch differs) or ``U`` spread over processes."""
        inexact = [layer.name for layer in self._layers if layer.route.name != "exact"]
        if inexact:
            raise ValueError(f"Invalid curvature_memory: {self.curvature_memory} needs the "
                             f"exact route on every layer; not exact: {', '.join(inexact)}")
        if self.comm is not SINGLE_PROCESS:
            raise ValueError(f"Invalid curvature_memory: {self.curvature_memory} is not "
                             "available with seng.distributed yet (give 1)")

    def _route(self, name: str) -> Route:
        return make_route(name, solve_dtype=self.solve_dtype, sketch_size=self.sketch_size,
                          lowrank_rank=self.lowrank_rank)

    # -- public API ------------------------------------------------------------------------
    @property
    def step_count(self) -> int:
        """Number of ``step``/``precondition`` calls so far."""
        return self._step

    @property
    def curvature_step(self) -> bool:
        """Whether the coming forward and backward are recorded for a curvature refresh."""
        return self._capture.active

    def sample_fisher(self, outputs: torch.Tensor, likelihood: str) -> bool:
        """Record the per-sample gradients of the true Fisher (``fisher="true"``) from the
        model's ``outputs`` of this step's forward; call it before the loss's backward.

        On a curvature step, draws targets from the model's predictive distribution
        (``likelihood``: ``"categorical"`` for logits under cross-entropy, ``"gaussian"``
        for the per-sample mean squared error; :mod:`seng.fisher`) and backpropagates their
        loss, reduced as ``loss_reduction`` says, without touching ``p.grad`` (the graph is
        kept for the training loss's backward). Returns whether it did (False between
        curvature steps, where it costs nothing). The targets are in
        :attr:`last_sampled_targets`; they are drawn from this preconditioner's seed and
        step, so ``state_dict`` reproduces them.
        """
        if self.fisher != "true":
            raise ValueError("sample_fisher needs fisher='true' (the empirical Fisher uses the "
                             "training loss's own backward)")
        if not isinstance(outputs, torch.Tensor) or not outputs.requires_grad:
            raise TypeError("outputs must be the model's output tensor of this step's forward "
                            "(requiring grad)")
        if not self._capture.active:
            return False
        stream = len(self._layers) + 1  # after the subset's (0) and the layers' (1..L)
        generator = torch.Generator().manual_seed(
            int(self._rng(self._step, stream).integers(2**62)))
        targets = sample_targets(outputs, likelihood, generator)
        loss = sampled_loss(outputs, targets, likelihood, self.loss_reduction)
        inputs = [p for layer in self._layers for p in layer.params.values() if p.requires_grad]
        self._capture.recording = True
        try:
            torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
        finally:
            self._capture.recording = False
        self.last_sampled_targets = targets
        return True

    @torch.no_grad()
    def step(self) -> bool:
        """Replace ``p.grad`` of every parameter with a gradient by its preconditioned value
        (in place) and advance the step counter.

        Returns True when the step is applied; False when it is skipped (across processes:
        a NaN/Inf on some rank, see :mod:`seng.distributed`), in which case every ``p.grad``
        is set to None so that ``opt.step()`` changes nothing.
        """
        grads = {p: p.grad for p in self.model.parameters() if p.grad is not None}
        out = self.precondition(grads)
        if out is None:
            for p in self.model.parameters():
                p.grad = None
            return False
        for p, d in out.items():
            if p.grad is None:
                p.grad = d.clone()
            else:
                p.grad.copy_(d)
        return True

    @torch.no_grad()
    def precondition(
        self, grads: Mapping[torch.Tensor, torch.Tensor]
    ) -> dict[torch.Tensor, torch.Tensor] | None:
        """The preconditioned directions of ``grads`` (``{parameter: gradient}``), without
        touching ``p.grad``; advances the step counter like :meth:`step`.

        Parameters missing from the result are left as they were (non-finite gradients).
        With a communicator the call is a collective and the directions are the reduced
        ones, identical on every rank; None when the step is skipped on every rank.
        """
        if self.comm is not SINGLE_PROCESS:
            known = {id(p) for p in self._trainable()}
            for p in grads:
                if id(p) not in known:
                    raise ValueError("grads has a key that is not a trainable parameter of "
                                     "model")
        return self.comm.precondition(self, grads, self._local_step)

    # -- what the communicator uses (seng.comm.Host) ---------------------------------------
    def _trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _capture_counts(self) -> list[tuple[str, int]] | None:
        if not self._capture.active:
            return None
        return [(layer.name, self._samples_of(
            [self._capture.calls[c] for c in layer.capture_names])[0]) for layer in self._layers]

    def _forget_capture(self, names: Any = None) -> None:
        if names is None:
            self._capture.reset()
        else:
            chosen = set(names)
            self._capture.forget([c for layer in self._layers if layer.name in chosen
                                  for c in layer.capture_names])

    def _refresh_interval(self) -> int:
        return _hyper.update_freq_at(self.update_freq, self._step)

    def _local_step(
        self, grads: Mapping[torch.Tensor, torch.Tensor]
    ) -> dict[torch.Tensor, torch.Tensor]:
        """The step on this process's gradients and curvature (the communicator reduces
        before or after it)."""
        k = self._step
        # Evaluate the schedules first: a bad value raises before any state changes.
        damping = _hyper.damping_at(self.damping, k)
        refresh = self._refresh_due(k, self._last_update)
        next_freq = _hyper.update_freq_at(self.update_freq, k + 1)
        self._check_sample_counts()
        self._check_fisher_sampled()
        out: dict[torch.Tensor, torch.Tensor] = {}
        pending: list[tuple[Layer, torch.Tensor, tuple[str, ...], dict[str, Any]]] = []
        handled: set[int] = set()
        for layer in self._layers:
            self._capture.release()  # the previous layer's calls: free them as we go
            handled.update(id(p) for p in layer.params.values())
            calls = [self._capture.pop(c) for c in layer.capture_names]
            live = layer.live_in(grads)
            if not live:
                continue
            named = {n: grads[layer.params[n]] for n in live}
            block = layer.helper.grads_to_block(named)
            if refresh or layer.needs_refresh:
                # Between refreshes a non-finite gradient shows in its direction (below).
                if not self._finite_gradient(layer, block):
                    continue
                self._refresh(layer, calls, live, k)
            pending.append((layer, block.to(work_dtype(block.dtype)), live, named))
        if pending:  # every layer's direction at once: the communicator's one collective
            layers, blocks, lives, nameds = (list(z) for z in zip(*pending, strict=True))
            # Whether the curvature in use serves more than one step: decided by the step it
            # was made at, so that a resumed run solves as the uninterrupted one did.
            made = k if refresh else self._last_update
            reuse = made is None or not self._refresh_due(made + 1, made)
            directions = self._directions(layers, blocks, lives, damping, reuse)
            for layer, live, named, d in zip(layers, lives, nameds, directions, strict=True):
                if d is not None:
                    self._set(out, layer, live, named, d)
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

    @staticmethod
    def _set(out: dict[torch.Tensor, torch.Tensor], layer: Layer, live: tuple[str, ...],
             named: dict[str, torch.Tensor], d: torch.Tensor) -> None:
        for n, t in layer.helper.block_to_grads(d, live).items():
            out[layer.params[n]] = t.to(named[n].dtype)

    def _directions(self, layers: list[Layer], blocks: list[torch.Tensor],
                    lives: list[tuple[str, ...]], damping: float,
                    reuse: bool) -> list[torch.Tensor | None]:
        """Each layer's direction: the Woodbury step where its curvature covers the block
        of ``live`` (a non-finite result drops the curvature), the damped gradient
        otherwise; None for a layer whose gradient is not finite (left untouched).
        ``reuse``: whether the curvature serves more steps than this one."""
        covered = [i for i, (layer, live) in enumerate(zip(layers, lives, strict=True))
                   if layer.covers(live)]
        out: list[torch.Tensor | None] = [None] * len(layers)
        solved = woodbury_directions([layers[i].curvature for i in covered],
                                     [blocks[i] for i in covered], damping, self.damping_rule,
                                     self.comm, reuse) if covered else []
        finite = finite_flags([d for d, _ in solved])
        for i, (d, fallback), ok in zip(covered, solved, finite, strict=True):
            out[i] = self._accept(layers[i], d if ok else None, fallback, blocks[i], damping)
        for i, layer in enumerate(layers):
            if i not in covered and self._finite_gradient(layer, blocks[i]):
                out[i] = self._missing(layer, blocks[i], damping)
        return out

    @torch.no_grad()
    def curvature_quadratic(self, vectors: Mapping[torch.Tensor, torch.Tensor]) -> float:
        """``v^T U U^T v = ||U^T v||^2`` summed over the layers with a stored curvature
        (block-diagonal empirical Fisher) for ``vectors`` (``{parameter: v}``); parameters
        without curvature add nothing."""
        return float(self.curvature_products([vectors])[0][0, 0])

    @torch.no_grad()
    def curvature_products(
        self, vector_sets: list[Mapping[torch.Tensor, torch.Tensor]]
    ) -> tuple[np.ndarray, set[torch.Tensor]]:
        """``(P, covered)``: ``P[i, j] = sum_l (U_l^T a_i)^T (U_l^T a_j)`` over the layers
        with a stored curvature that every set gives vectors for (``vector_sets[i]`` =
        ``{parameter: a_i}``), and the parameters of those layers."""
        k = len(vector_sets)
        out, covered = np.zeros((k, k)), set()
        for layer in self._layers:
            if layer.curvature is None or not layer.live:
                continue
            params = [layer.params[n] for n in layer.live]
            if any(p not in vectors for vectors in vector_sets for p in params):
                continue
            covered.update(params)
            rows = []
            for vectors in vector_sets:
                block = layer.helper.grads_to_block({n: vectors[layer.params[n]]
                                                     for n in layer.live})
                rows.append(layer.curvature.store.rmatvec(block.to(work_dtype(block.dtype))))
            V = torch.stack(rows).double()
            out += (V @ V.T).cpu().numpy()
        return out, covered

    def _check_sample_counts(self) -> None:
        """Every layer captured this step must see the same number of samples N; layers
        that disagree read their samples from another dimension than the batch's (say so
        with ``sample_dim``), and would build a wrong curvature without a word."""
        groups: dict[int, list[str]] = {}
        for layer in self._layers:
            counts = {c.n for name in layer.capture_names
                      for c in self._capture.calls.get(name, ()) if c.received}
            if len(counts) == 1:
                groups.setdefault(counts.pop(), []).append(repr(layer.name or "(model)"))
        if len(groups) > 1:
            self._capture.reset()
            listing = "; ".join(f"N = {n}: {', '.join(names)}" for n, names in groups.items())
            raise ValueError(f"The layers disagree on the number of samples N of this "
                             f"curvature step ({listing}): the samples are not in dimension "
                             "0 of some layers' input; give sample_dim (per model or per "
                             "module, e.g. sample_dim=1 for sequence-first inputs)")

    def _check_fisher_sampled(self) -> None:
        """Under the true Fisher, a curvature step whose forward was recorded needs the
        sampled backward of :meth:`sample_fisher`; without it the layers would silently keep
        stale curvature."""
        if self.fisher != "true" or not self._capture.active:
            return
        calls = [c for cs in self._capture.calls.values() for c in cs]
        if calls and not any(c.received for c in calls):
            self._capture.reset()
            raise ValueError("fisher='true': this curvature step recorded the forward but no "
                             "sampled backward; call pre.sample_fisher(outputs, likelihood) "
                             "between the forward and the loss's backward whenever "
                             "pre.curvature_step is True")

    def remove_hooks(self) -> None:
        """Remove the hooks from the model (the preconditioner then cannot refresh)."""
        self._capture.remove()

    # -- curvature -------------------------------------------------------------------------
    def _samples_of(self, calls: list[list[Call]]) -> tuple[int, str]:
        """:func:`~seng._capture.usable_samples` of a layer's parts, which must agree."""
        found = [usable_samples(c, self.accumulation_steps) for c in calls]
        if len({n for n, _ in found}) > 1 and all(n for n, _ in found):
            return 0, "inconsistent"
        return min(found)

    def _refresh(self, layer: Layer, calls: list[list[Call]], live: tuple[str, ...],
                 k: int) -> None:
        samples, why = self._samples_of(calls)
        if why == "inconsistent":
            self._warn(f"inconsistent:{layer.name}", f"layer {layer.name!r}: its captured "
                       "calls cannot be combined (inputs with different leading (sample) "
                       "dimensions in one step, or a second backward through a forward whose "
                       "capture was already reduced); its curvature is not updated this step")
        if why == "accumulation":
            self._warn(f"accumulation:{layer.name}", f"layer {layer.name!r} was called "
                       f"{sum(map(len, calls))} times in a step of accumulation_steps="
                       f"{self.accumulation_steps} micro-batches (not a multiple); its "
                       "curvature is not updated this step")
        if not samples:
            return
        comm = self.comm.bind(layer.name)
        n = calls[0][0].n * self.accumulation_steps
        scale = (n if self.loss_reduction == "mean" else 1.0) / math.sqrt(
            comm.total_samples(samples))
        if self.grad_scaler is not None and self.grad_scaler.is_enabled():
            scale /= float(self.grad_scaler.get_scale())  # hooks saw the scaled loss
        works = [merge_micro_batches(c, self.accumulation_steps) for c in calls]
        rng = self._rng(k, layer.index + 1) if layer.route.random else None
        if not layer.refresh(works, live, scale, rng, comm, k):
            self._count("skipped_updates", f"NaN/Inf in the curvature of layer {layer.name!r}: "
                        "update skipped, the last good curvature is kept")
            return
        self.counters["curvature_updates"] += 1

    def _missing(self, layer: Layer, block: torch.Tensor, damping: float) -> torch.Tensor:
        self._count("missing_curvature", f"layer {layer.name!r} has a gradient but no "
                    "curvature (nothing captured: eval mode, no_grad, a new set of "
                    "trainable parameters, or an input its helper does not record, such as a "
                    "PackedSequence); it gets the damped gradient until the next capture")
        layer.needs_refresh = True
        return self._without_curvature(block, damping)

    def _accept(self, layer: Layer, d: torch.Tensor | None, fallback: bool,
                block: torch.Tensor, damping: float) -> torch.Tensor | None:
        """``d``, the direction from ``layer``'s curvature, unless it was not finite (None):
        then None for a non-finite gradient (left untouched), else the curvature is dropped
        and the damped gradient returned."""
        if fallback:
            self._count("solve_fallbacks", f"Cholesky of the damped Gram of layer "
                        f"{layer.name!r} failed; solved with its spectrum clipped at the "
                        "damping")
        if d is not None:
            layer.needs_refresh = False
            return d
        if not self._finite_gradient(layer, block):
            return None
        self._count("skipped_updates", f"NaN/Inf in the direction of layer {layer.name!r}: "
                    "its curvature is dropped and refreshed on the next step")
        layer.drop()
        return self._without_curvature(block, damping)

    def _finite_gradient(self, layer: Layer, block: torch.Tensor) -> bool:
        """Whether ``layer``'s gradient is finite; counted and warned about when not."""
        if all_finite(block):
            return True
        self._count("nonfinite_grads", f"NaN/Inf in the gradient of layer {layer.name!r}: "
                    "its gradient is left untouched and its curvature not updated")
        return False

    @property
    def _relative(self) -> bool:
        """Whether the rule normalizes the direction (every rule but the absolute one)."""
        return self.damping_rule != "absolute"

    def _without_curvature(self, g: torch.Tensor, damping: float) -> torch.Tensor:
        """The direction of a parameter without curvature: ``g / (1 + damping)`` (absolute
        rule: ``U U^T`` taken as ``I``), or ``g damping / (1 + damping)`` (relative rule:
        ``U U^T`` taken as ``s I``)."""
        return g * (damping / (1.0 + damping)) if self._relative else g / (1.0 + damping)

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
        return [layer.info() for layer in self._layers]

    def gram_eigenvalues(self) -> dict[str, torch.Tensor]:
        """The eigenvalues (ascending) of each layer's stored Gram ``U^T U``, by layer name
        (``""`` for the model itself): the nonzero spectrum of ``U U^T``, which the absolute
        rule's damping is added to. A damping far above the largest leaves that layer's step
        the damped gradient. Layers without a stored curvature are left out."""
        return {layer.name: torch.linalg.eigvalsh(layer.curvature.gram)
                for layer in self._layers if layer.curvature is not None}

    def unsupported_parameters(self) -> list[str]:
        """Names of the trainable parameters without curvature (damped gradient only)."""
        return list(self.uncovered_parameters())

    def uncovered_parameters(self) -> dict[str, str]:
        """``{name: why}`` for each trainable parameter without curvature (it gets the
        damped gradient only): shared by several modules, or owned by a module that has no
        helper (its type, or a subclass with its own forward)."""
        return uncovered_parameters(self.model, self._layers)

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
            "layers": {layer.name: layer.state_dict() for layer in self._layers},
            **self.comm.state_dict(),
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
            layer.load_state_dict(state["layers"][layer.name])
        self._step = int(state["step"])
        self._last_update = None if state["last_update"] is None else int(state["last_update"])
        self._seed = int(state["seed"])
        self.counters = {**{k: 0 for k in self.counters}, **state["counters"]}
        self._capture.reset()
        self._capture.active = self._capture_due(self._step)


def finite_flags(tensors: list[torch.Tensor]) -> list[bool]:
    """Whether each tensor's entries are all finite, with one host synchronization per
    device: a NaN or Inf entry makes a tensor's sum non-finite, so the sums decide (as in
    :func:`sketchlinalg.backend.all_finite`), and only a non-finite sum (possibly an
    overflow of finite entries) pays for the elementwise test."""
    flags = [True] * len(tensors)
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    for idx in by_device.values():
        sums = torch.stack([tensors[i].sum().double() for i in idx])
        for i, ok in zip(idx, torch.isfinite(sums).tolist(), strict=True):
            flags[i] = ok or all_finite(tensors[i])
    return flags


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.2f} MiB"
