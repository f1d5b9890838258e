"""Data-parallel SENG on ``torch.distributed``: ``DistributedSENGPreconditioner``.

Two modes, both replacing DDP's gradient all-reduce (do not wrap the model in
``DistributedDataParallel``, or run its backward under ``no_sync()``):

- ``"local"``: every rank preconditions its own gradient with the curvature of its own
  samples; the preconditioned gradients are averaged by one bucketed all-reduce, the same
  bytes as DDP.
- ``"global"``: the gradients are averaged first; on curvature steps the per-sample factors
  of every rank are all-gathered, so each rank holds the curvature of the global batch and
  computes the direction of one process on the whole batch.

Every rank issues the same collectives in the same order on every step, whatever happens
locally: faults and per-layer capture status travel in the gradient buffer itself.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import sketchlinalg as sl
from sketchlinalg._backend import all_finite

from . import _hyper
from ._capture import leading
from .optimizer import SENG
from .preconditioner import Damping, SENGPreconditioner, UpdateFreq, _Layer
from .routes.curvature import woodbury_direction
from .routes.persample import REPRESENTATIONS, PerSampleGrads

MODES = ("global", "local")
FACTORS = ("replicated", "sharded", "auto")


class DistributedSENGPreconditioner(SENGPreconditioner):
    r"""SENG preconditioner for data-parallel training on ``torch.distributed``.

    With ``W`` ranks, rank ``r`` holding ``n_r`` samples of the global batch
    (``N = \sum_r n_r``), its gradient ``g_r`` and per-sample gradients
    ``U_r = [\nabla l_i]_{i \in r} / \sqrt{n_r}``, :meth:`step` sets on every rank

    .. math::
        \text{local:}\quad d &= \frac{c}{W} \sum_{r} (U_r U_r^T + \lambda I)^{-1} g_r,
        \\
        \text{global:}\quad d &= (U U^T + \lambda I)^{-1} \frac{c}{W} \sum_r g_r, \qquad
        U = [\nabla l_1, \dots, \nabla l_N] / \sqrt{N},

    with ``c = 1`` for ``loss_reduction="mean"`` (each rank's loss the mean over its samples:
    with equal ``n_r`` the average is the global mean) and ``c = W`` for ``"sum"`` (the
    gradients are summed). ``local`` is a block-Jacobi (per-worker) approximation of the
    global Fisher and communicates exactly one all-reduce of the gradient size per step;
    ``global`` is the SENG direction of the global batch (Yang et al. 2022, Section 3) and
    adds, on curvature steps only, one all-gather of each layer's per-sample factors (the
    compact form the layer's route starts from). With ``factors="sharded"``, layers on a
    sketch route gather only their sketches ``S U_r`` (at most ``N s`` numbers per layer)
    and keep ``U_r`` on its rank; ``U^T g`` and ``U \alpha`` then cost, on every step, an
    all-gather of ``N`` numbers and an all-reduce of the layer's gradient size.

    Recipe (``torchrun --nproc-per-node W script.py``)::

        dist.init_process_group("nccl", timeout=datetime.timedelta(minutes=5))
        model = Net().cuda()                    # not wrapped in DDP
        # rank 0's initial weights are broadcast at construction
        pre = DistributedSENGPreconditioner(model, damping=1.0, mode="global")
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for x, y in loader:                     # a DistributedSampler shard per rank
            opt.zero_grad(); criterion(model(x), y).backward()
            if pre.step():                      # False on every rank when one rank faulted
                opt.step()

    Parameters
    ----------
    model : torch.nn.Module
        The local replica (identical on every rank, not wrapped in DDP).
    damping, update_freq :
        As in :class:`~seng.SENGPreconditioner`.
    mode : {"global", "local"}
        Global-batch curvature, or per-rank curvature (see above). Default ``"global"``.
    process_group : torch.distributed.ProcessGroup or None
        The group to reduce over; None is the default group. Without an initialized process
        group (or with one rank) no collective is issued and the class equals its base.
    bucket_cap_mb : float
        Gradients are flattened into buffers of at most this many MiB per all-reduce (as
        DDP's ``bucket_cap_mb``). Default 25.
    broadcast_parameters : bool
        Overwrite every rank's parameters and buffers with rank 0's at construction (as
        ``DistributedDataParallel`` does), so the replicas start identical. Default True.
    factors : {"replicated", "sharded", "auto"}
        Global mode, layers on a sketch route (``sketch=`` a family, or a per-layer route):
        gather every rank's exact compact factors on curvature steps, so that each rank
        holds the whole ``U`` and a step needs no communication beyond the gradient
        all-reduce (``"replicated"``, the default); or gather only the sketches and keep
        each rank's factors local (``"sharded"``: fewer bytes on curvature steps, less
        memory per rank, one more all-gather and all-reduce, shared by all sharded layers,
        on every step); or decide per layer at each refresh by the bytes either moves until
        the next refresh (``"auto"``, the rule is in the distributed guide; the choice shows
        in :meth:`layer_info` as a ``"sharded-..."`` store). All give the direction of one
        process on the global batch. Exact, low-rank and ``"auto"``-route layers are always
        replicated.
    **options
        Further keyword arguments of :class:`~seng.SENGPreconditioner`. ``rng`` is taken
        from rank 0 (its seed is broadcast), so sketches agree on every rank.
        ``curvature_batch`` is per rank.

    Notes
    -----
    **Faults.** Each step's first all-reduce carries, after the gradients, one fault flag
    (rank ``r`` had a NaN/Inf gradient, or in local mode a NaN/Inf direction), the number
    of ranks holding a gradient for each parameter and, in global mode on capture steps,
    each rank's curvature sample count per layer. When any rank faulted (or the reduced
    buffer is not finite) every rank skips: :meth:`step` sets ``p.grad = None`` for all
    parameters (``opt.step()`` then changes nothing) and returns False, and
    ``counters["skipped_steps"]`` grows. A layer that captured no samples on some rank
    keeps its last curvature on every rank. No rank can thus wait for a collective the
    others skipped. A rank that dies or stalls makes the others fail after the process
    group's timeout (``init_process_group(timeout=...)``) with a :class:`RuntimeError`
    naming the collective.

    **Requirements (global mode).** Every rank captures per-sample inputs of the same
    trailing shape (same sequence length / image size); sketch-route Grams are sketched with
    the same operator on every rank (the seed is broadcast at construction).

    **Checkpoints.** In global mode the state is replicated; in local mode each rank's
    curvature differs. Either way save rank 0's :meth:`state_dict` (on rank 0 only); it
    loads on any number of ranks (the curvature of rank 0 seeds every rank until the next
    refresh in local mode) and in a single process. A sharded curvature is not saved (rank
    0 holds a part of ``U``): its layers refresh on the first step after loading.

    **Communication.** :attr:`comm_log` lists ``(operation, payload bytes)`` of every
    collective this object issued in the last step.
    """

    def __init__(
        self,
        model: nn.Module,
        damping: Damping = 1.0,
        update_freq: UpdateFreq = 10,
        *,
        mode: str = "global",
        process_group: Any = None,
        bucket_cap_mb: float = 25.0,
        broadcast_parameters: bool = True,
        factors: str = "replicated",
        **options: Any,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"Invalid mode value: {mode!r} (valid: 'global', 'local')")
        if factors not in FACTORS:
            raise ValueError(f"Invalid factors value: {factors!r} (valid: 'replicated', "
                             "'sharded', 'auto')")
        if factors != "replicated" and mode != "global":
            raise ValueError(f"factors={factors!r} applies to mode='global' only (local mode "
                             "never gathers factors)")
        if (isinstance(bucket_cap_mb, bool) or not isinstance(bucket_cap_mb, (int, float))
                or not math.isfinite(bucket_cap_mb) or bucket_cap_mb <= 0):
            raise ValueError(f"Invalid bucket_cap_mb value: {bucket_cap_mb} "
                             "(must be a finite number > 0)")
        super().__init__(model, damping, update_freq, **options)
        self.mode = mode
        self.factors = factors
        self.group = process_group
        self.bucket_bytes = int(bucket_cap_mb * 2**20)
        if dist.is_available() and dist.is_initialized():
            self.world = dist.get_world_size(process_group)
            self.rank = dist.get_rank(process_group)
        else:
            if process_group is not None:
                raise ValueError("process_group was given but torch.distributed is not "
                                 "initialized (call init_process_group first)")
            self.world, self.rank = 1, 0
        self._device = next(model.parameters()).device
        self._sizes: dict[str, list[int]] = {}
        self.comm_log: list[tuple[str, int]] = []
        self.counters["skipped_steps"] = 0
        if not isinstance(broadcast_parameters, bool):
            raise TypeError("broadcast_parameters must be a bool, got "
                            f"{type(broadcast_parameters).__name__}")
        if self.world > 1:
            seed = torch.tensor([self._seed], dtype=torch.int64, device=self._device)
            self._broadcast(seed)
            self._seed = int(seed.item())
            if broadcast_parameters:
                with torch.no_grad():
                    for t in [*model.parameters(), *model.buffers()]:
                        self._broadcast(t.data)

    # -- public API ------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> bool:  # type: ignore[override]
        """Replace ``p.grad`` by the data-parallel SENG direction on every rank.

        Returns True when the step is applied, False when it is skipped on every rank
        (a NaN/Inf on some rank): then every ``p.grad`` is set to None.
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
    def precondition(  # type: ignore[override]
        self, grads: Mapping[torch.Tensor, torch.Tensor]
    ) -> dict[torch.Tensor, torch.Tensor] | None:
        """The reduced directions of ``grads`` (``{parameter of model: local gradient}``),
        identical on every rank, or None when the step is skipped on every rank. A call is
        a collective: every rank must make it. Advances the step counter (not on skips in
        global mode)."""
        self.comm_log = []
        params = [p for p in self.model.parameters() if p.requires_grad]
        known = {id(p) for p in params}
        for p in grads:
            if id(p) not in known:
                raise ValueError("grads has a key that is not a trainable parameter of model")
        if self.mode == "local":
            return self._precondition_local(params, grads)
        return self._precondition_global(params, grads)

    # -- modes -----------------------------------------------------------------------------
    def _precondition_local(self, params: list[nn.Parameter],
                            grads: Mapping[torch.Tensor, torch.Tensor]) -> Any:
        out = super().precondition(grads)
        fault = any(p not in out for p in grads) or not all(
            all_finite(d) for d in out.values())
        values = [out.get(p) for p in params]
        flags = [float(fault)] + [float(v is not None) for v in values]
        reduced, flags = self._reduce(params, values, flags)
        return self._finish(params, reduced, flags)

    def _precondition_global(self, params: list[nn.Parameter],
                             grads: Mapping[torch.Tensor, torch.Tensor]) -> Any:
        values = [grads.get(p) for p in params]
        fault = not all(v is None or all_finite(v) for v in values)
        flags = [float(fault)] + [float(v is not None) for v in values]
        capture = self._capture.active  # the same on every rank: replicated state
        if capture:
            counts = [0.0] * (self.world * len(self._layers))
            for layer in self._layers:
                counts[self.rank * len(self._layers) + layer.index] = float(self._count_of(layer))
            flags += counts
        reduced, flags = self._reduce(params, values, flags)
        if capture:
            table = flags[1 + len(params):].reshape(self.world, len(self._layers))
            for layer in self._layers:
                sizes = [int(c) for c in table[:, layer.index].tolist()]
                self._sizes[layer.name] = sizes
                if min(sizes) == 0:  # some rank has nothing: no rank refreshes this layer
                    self._capture.calls[layer.name] = []
        done = self._finish(params, reduced, flags)
        if done is None:
            self._capture.reset()  # the step is not taken: its counter stays
            return None
        return super().precondition(done)

    def _finish(self, params: list[nn.Parameter], reduced: list[torch.Tensor],
                flags: torch.Tensor) -> dict[torch.Tensor, torch.Tensor] | None:
        present = flags[1:1 + len(params)]
        if float(flags[0]) > 0 or not all_finite(flags) or not all(
                all_finite(t) for t in reduced):
            self._count("skipped_steps", "NaN/Inf on some rank: every rank skips this step")
            return None
        return {p: t for p, t, c in zip(params, reduced, present.tolist(), strict=True) if c > 0}

    def _count_of(self, layer: _Layer) -> int:
        """Samples ``layer`` will contribute to this step's curvature (0: none usable), by
        the rules of the base ``_refresh``: calls that received a gradient, with one
        sample count, ``accumulation_steps`` micro-batches of them."""
        calls = [c for c in self._capture.calls[layer.name] if c.received]
        if (not calls or len({c.n for c in calls}) > 1 or any(c.failed for c in calls)
                or len(calls) % self.accumulation_steps):
            return 0
        return leading(calls[0].payload) * self.accumulation_steps

    # -- curvature gather ------------------------------------------------------------------
    def _curvature_samples(self, layer: _Layer, local: int) -> int:
        """Global mode: the samples of every rank (so the local factors carry the global
        ``1/sqrt(N)`` from the start)."""
        if self.mode == "local" or self.world == 1:
            return local
        sizes = self._sizes[layer.name]
        if local != sizes[self.rank]:
            raise RuntimeError(f"layer {layer.name!r}: {local} per-sample gradients, "
                               f"{sizes[self.rank]} announced (capture changed mid-step)")
        return sum(sizes)

    def _gather_samples(self, layer: _Layer, rep: PerSampleGrads) -> PerSampleGrads:
        """All-gather the per-sample gradients of ``layer`` (global mode).

        What is gathered is what the route keeps: the exact route, the compact form (the
        fewer bytes of factors and dense per-sample gradients); a sketch route, the compact
        form of each rank's sketch ``S U_r`` (``S`` is the same on every rank: the seed is
        shared) for the Gram, and unless the factors stay sharded, the compact exact form for
        ``U^T g`` and ``U alpha``; ``"auto"`` and ``"lowrank"``, the factors themselves
        (their decisions and truncations need them).
        """
        if self.mode == "local" or self.world == 1:
            return rep
        sizes = self._sizes[layer.name]
        if layer.route in sl.KINDS:
            return _GatheredSketch(self, rep, sizes, sharded=self._shard(rep, sizes))
        return self._gather_rep(rep.compact() if layer.route == "exact" else rep, sizes)

    def _shard(self, rep: PerSampleGrads, sizes: list[int]) -> bool:
        """Whether a sketched layer keeps its exact factors on their rank: always or never
        by ``factors``; with ``"auto"``, when that moves fewer bytes per rank until the next
        refresh (``F`` = the current update frequency steps) by the ring model: sharded
        ``F (2 (W-1)/W p + (W-1) 4 n)`` (the ``U alpha`` all-reduce and ``U^T g``
        all-gather of every step) against replicated ``(W-1) n b`` (the all-gather of the
        compact factors, ``b`` bytes per sample), ``n`` the largest rank's samples. Both
        sides are shapes and counts known to every rank, so every rank decides alike."""
        if self.factors != "auto":
            return self.factors == "sharded"
        w, n = self.world, max(sizes)
        freq = _hyper.update_freq_at(self.update_freq, self._step)
        p_bytes = math.prod(rep.block_shape) * 4
        sharded = freq * (2 * (w - 1) / w * p_bytes + (w - 1) * 4 * n)
        return sharded < (w - 1) * n * 4 * rep.compact_entries()

    def _gather_rep(self, rep: PerSampleGrads, sizes: list[int]) -> PerSampleGrads:
        state = rep.state_dict()
        for name, t in rep.tensors().items():
            state[name] = self._all_gather_rows(t, sizes)
        return REPRESENTATIONS[rep.kind].from_state(state, self._device)

    # -- sharded factors ----------------------------------------------------------------
    def _defer(self, layer: _Layer, live: tuple[str, ...]) -> bool:
        c = layer.curvature
        return c is not None and layer.live == live and isinstance(c.store, _ShardedStore)

    def _deferred_directions(self, layers: list[_Layer], blocks: list[torch.Tensor],
                             damping: float) -> list[torch.Tensor]:
        r"""The directions of the layers whose ``U`` is sharded, with two collectives for
        all of them: ``U^T g`` stacks each rank's ``U_r^T g`` (one all-gather), and
        ``U \alpha = \sum_r U_r \alpha_r`` (one all-reduce). The layers, their order and
        their curvature are the same on every rank (replicated state)."""
        stores = [layer.curvature.store for layer in layers]
        dtype = functools.reduce(torch.promote_types, [b.dtype for b in blocks])
        local = torch.cat([st.local.rmatvec(b).to(dtype) for st, b in zip(stores, blocks,
                                                                         strict=True)])
        per_rank = [sum(st.sizes[r] for st in stores) for r in range(self.world)]
        parts = torch.split(self._all_gather_rows(local, per_rank), per_rank)
        pieces = [torch.split(part, [st.sizes[r] for st in stores])
                  for r, part in enumerate(parts)]
        out, fallbacks, lams = [], [], []
        for i, (layer, st, b) in enumerate(zip(layers, stores, blocks, strict=True)):
            lams.append(layer.curvature.system_damping(damping, self._relative))
            factor, fallback = layer.curvature.factor(lams[-1])
            v = torch.cat([pieces[r][i] for r in range(self.world)])
            alpha = factor.solve(v.to(layer.curvature.gram.dtype)).to(b.dtype)
            mine = alpha[st.offset:st.offset + st.local.n]
            out.append(st.local.matvec(mine).reshape(-1))
            fallbacks.append(fallback)
        flat = torch.cat([o.to(dtype) for o in out])
        self._all_reduce(flat)
        u_alpha = torch.split(flat, [o.numel() for o in out])
        return [self._accept(layer, woodbury_direction(b, ua.reshape(b.shape).to(b.dtype), lam,
                                                       self._relative), fallback, b, damping)
                for layer, b, ua, fallback, lam in zip(layers, blocks, u_alpha, fallbacks,
                                                       lams, strict=True)]

    # -- collectives -----------------------------------------------------------------------
    def _reduce(self, params: list[nn.Parameter], values: list[torch.Tensor | None],
                flags: list[float]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Sum ``values`` (zeros where None) and ``flags`` over ranks in bucketed
        all-reduces (flags ride in the last bucket); gradients are divided by ``W`` for a
        mean loss."""
        buckets: list[list[int]] = []
        for dtype in dict.fromkeys(p.dtype for p in params):
            current: list[int] = []
            size = 0
            for i, p in enumerate(params):
                if p.dtype != dtype:
                    continue
                nbytes = p.numel() * p.element_size()
                if current and size + nbytes > self.bucket_bytes:
                    buckets.append(current)
                    current, size = [], 0
                current.append(i)
                size += nbytes
            if current:
                buckets.append(current)
        divisor = self.world if self.loss_reduction == "mean" else 1
        reduced: list[torch.Tensor | None] = [None] * len(params)
        flag_dtype = params[buckets[-1][0]].dtype
        out_flags = torch.tensor(flags, dtype=flag_dtype, device=self._device)
        for b, bucket in enumerate(buckets):
            parts = [(values[i] if values[i] is not None else torch.zeros_like(params[i]))
                     .reshape(-1).to(params[i].dtype) for i in bucket]
            last = b == len(buckets) - 1
            if last:
                parts.append(out_flags)
            buf = torch.cat(parts)
            self._all_reduce(buf)
            offset = 0
            for i in bucket:
                n = params[i].numel()
                reduced[i] = (buf[offset:offset + n] / divisor).reshape(params[i].shape)
                offset += n
            if last:
                out_flags = buf[offset:]
        return reduced, out_flags  # type: ignore[return-value]

    def _broadcast(self, buf: torch.Tensor) -> None:
        """Overwrite ``buf`` with rank 0's (of the group)."""
        src = 0 if self.group is None else dist.get_global_rank(self.group, 0)
        self._collective("broadcast", buf, lambda: dist.broadcast(buf, src, group=self.group))

    def _all_reduce(self, buf: torch.Tensor) -> None:
        if self.world > 1:
            self._collective("all_reduce", buf, lambda: dist.all_reduce(buf, group=self.group))

    def _all_gather_rows(self, t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Concatenate every rank's ``t`` (``sizes[r]`` rows) along dimension 0; ranks pad
        to the largest size since all-gather moves equal-sized buffers."""
        rows = max(sizes)
        padded = t.new_zeros((rows, *t.shape[1:]))
        padded[:t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        self._collective("all_gather", padded,
                         lambda: dist.all_gather(parts, padded.contiguous(), group=self.group))
        return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])

    def _collective(self, name: str, buf: torch.Tensor, call: Any) -> None:
        self.comm_log.append((name, buf.numel() * buf.element_size()))
        try:
            call()
        except RuntimeError as e:
            raise RuntimeError(
                f"seng.distributed: {name} of {buf.numel()} elements failed on rank "
                f"{self.rank} of {self.world} (a rank died, or did not reach this collective "
                "within the process group's timeout, set by init_process_group(timeout=...)): "
                f"{e}") from e

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The base state plus ``mode``, ``factors`` and ``world_size`` (informational: it
        loads on any number of ranks). Save it from rank 0. A sharded curvature (only this
        rank's factors) is not saved: its layer is marked to refresh at the first step after
        loading."""
        state = super().state_dict()
        for layer in self._layers:
            if layer.curvature is not None and isinstance(layer.curvature.store, _ShardedStore):
                state["layers"][layer.name].update(curvature=None, needs_refresh=True)
        return {**state, "mode": self.mode, "factors": self.factors, "world_size": self.world}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` saved with any number of ranks (or by the base
        class)."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        base = {k: v for k, v in state.items() if k not in ("mode", "factors", "world_size")}
        counters = dict(base.get("counters", {}))
        counters.setdefault("skipped_steps", 0)
        super().load_state_dict({**base, "counters": counters})


class DistributedSENG(SENG):
    r"""The :class:`~seng.SENG` optimizer (momentum, weight decay) on ``torch.distributed``.

    ``SENG`` whose preconditioner is a :class:`DistributedSENGPreconditioner`: its
    :meth:`step` reduces the gradients itself (do not wrap the model in
    ``DistributedDataParallel``), so it is a collective every rank must call. When some rank
    saw a NaN/Inf gradient the step changes nothing on any rank (parameters and momentum)
    and ``optimizer.preconditioner.counters["skipped_steps"]`` grows. Weight decay is added
    to each rank's gradient before the reduction (every rank holds the same weights, so the
    average is unchanged).

    Parameters
    ----------
    model, lr, momentum, weight_decay, damping, update_freq :
        As in :class:`~seng.SENG`.
    **preconditioner_options
        Keyword arguments of :class:`DistributedSENGPreconditioner` (``mode``,
        ``process_group``, ``bucket_cap_mb``, ``broadcast_parameters``, ``factors``) and of
        :class:`~seng.SENGPreconditioner`.

    Notes
    -----
    Save ``optimizer.state_dict()`` from rank 0; it loads on any number of ranks.
    """

    _preconditioner_type = DistributedSENGPreconditioner


class _GatheredSketch(PerSampleGrads):
    """The global batch as the sketched route sees it: :meth:`sketch` gathers every rank's
    sketch; :meth:`compact` gathers every rank's exact compact form, or with ``sharded``
    keeps it on its rank (:class:`_ShardedStore`)."""

    def __init__(self, owner: DistributedSENGPreconditioner, local: PerSampleGrads,
                 sizes: list[int], sharded: bool) -> None:
        self.owner, self.local, self.sizes, self.sharded = owner, local, sizes, sharded
        self.kind = local.kind
        self.n = sum(sizes)
        self.block_shape = local.block_shape

    def sketch(self, kind: str, size: int, rng: Any) -> PerSampleGrads:
        return self.owner._gather_rep(self.local.sketch(kind, size, rng).compact(), self.sizes)

    def compact(self) -> PerSampleGrads:
        if self.sharded:
            return _ShardedStore(self.owner, self.local.compact(), self.sizes)
        return self.owner._gather_rep(self.local.compact(), self.sizes)


class _ShardedStore(PerSampleGrads):
    r"""``U = [U_0, \dots, U_{W-1}]`` with only this rank's block ``U_r`` (``local``) held
    here; :meth:`DistributedSENGPreconditioner._deferred_directions` applies it."""

    def __init__(self, owner: DistributedSENGPreconditioner, local: PerSampleGrads,
                 sizes: list[int]) -> None:
        self.local, self.sizes = local, sizes
        self.kind = "sharded-" + local.kind
        self.n = sum(sizes)
        self.block_shape = local.block_shape
        self.offset = sum(sizes[:owner.rank])

    def tensors(self) -> dict[str, torch.Tensor]:
        return self.local.tensors()
