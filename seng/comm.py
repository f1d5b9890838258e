"""Communicators: how a preconditioner's step runs across processes.

A :class:`~seng.SENGPreconditioner` holds one communicator and is never subclassed for
distribution. :data:`SINGLE_PROCESS` (the default) communicates nothing. On
``torch.distributed``, :class:`LocalComm` preconditions each rank's gradient with its own
curvature and averages the directions; :class:`GlobalComm` averages the gradients and
builds the curvature of the global batch from every rank's per-sample gradients, gathered
or left sharded. A new communication mode is one class here.

Every rank issues the same collectives in the same order on every step, whatever happens
locally: faults and per-layer capture status travel in the gradient buffer itself.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from sketchlinalg.backend import all_finite

from .persample import REPRESENTATIONS, PerSampleGrads, ShardedGrads

Grads = Mapping[torch.Tensor, torch.Tensor]
Directions = dict[torch.Tensor, torch.Tensor]


class Host(Protocol):
    """What a communicator uses of its preconditioner (:class:`seng.SENGPreconditioner`;
    private members: this is the preconditioner's interface to its communicator only)."""

    model: nn.Module
    loss_reduction: str
    counters: dict[str, int]

    def _trainable(self) -> list[nn.Parameter]:
        """The trainable parameters, in the model's order."""

    def _capture_counts(self) -> list[tuple[str, int]] | None:
        """On a curvature step, ``(layer name, samples it can contribute)`` per layer;
        None otherwise."""

    def _forget_capture(self, names: Sequence[str] | None = None) -> None:
        """Drop the captured calls of the layers ``names`` (all: None)."""

    def _refresh_interval(self) -> int:
        """The current update frequency (steps until the next curvature refresh)."""

    def _count(self, counter: str, message: str) -> None:
        """Count an event and warn about it once."""


class Communicator:
    """One process: no collective, every product local."""

    mode = "none"
    world, rank = 1, 0

    def attach(self, pre: Host) -> None:
        """Called once by ``pre`` at the end of its construction."""

    def shared_seed(self, seed: int) -> int:
        """The seed every process uses (rank 0's), so that sketches agree."""
        return seed

    def precondition(self, pre: Host, grads: Grads,
                     local_step: Callable[[Grads], Directions]) -> Directions | None:
        """The step's directions (None: skipped on every rank) around ``local_step``, the
        preconditioner's own step on this process's gradients and curvature."""
        return local_step(grads)

    def bind(self, layer: str) -> Communicator:
        """The communicator for building the curvature of ``layer`` (whose per-rank sample
        counts the gathers below use)."""
        return self

    def total_samples(self, local: int) -> int:
        """``N`` of the bound layer's curvature batch when this process captured ``local``."""
        return local

    def gather(self, rep: PerSampleGrads) -> PerSampleGrads:
        """The per-sample gradients of the whole curvature batch (every rank's samples)."""
        return rep

    def gather_compact(self, rep: PerSampleGrads) -> PerSampleGrads:
        """As :meth:`gather`, for a route that needs the Gram only: what travels is the
        compact form."""
        return rep

    def store(self, rep: PerSampleGrads) -> PerSampleGrads:
        """The compact exact ``U`` a sketched layer keeps for ``U^T g`` and ``U alpha``."""
        return rep.compact()

    def gather_rmatvecs(self, stores: Sequence[ShardedGrads],
                        parts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        raise RuntimeError("no sharded curvature exists in one process")

    def reduce_matvecs(self, parts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        raise RuntimeError("no sharded curvature exists in one process")

    def state_dict(self) -> dict[str, Any]:
        """Informational entries added to the preconditioner's ``state_dict``."""
        return {}


SINGLE_PROCESS = Communicator()


class ProcessGroupComm(Communicator):
    """The collectives shared by the data-parallel modes.

    Parameters
    ----------
    process_group : torch.distributed.ProcessGroup or None
        The group to reduce over; None is the default group. Without an initialized process
        group (or with one rank) no collective is issued.
    bucket_cap_mb : float
        Gradients are flattened into buffers of at most this many MiB per all-reduce (as
        DDP's ``bucket_cap_mb``).
    broadcast_parameters : bool
        Overwrite every rank's parameters and buffers with rank 0's when attached.
    """

    def __init__(self, process_group: Any = None, bucket_cap_mb: float = 25.0,
                 broadcast_parameters: bool = True) -> None:
        if (isinstance(bucket_cap_mb, bool) or not isinstance(bucket_cap_mb, (int, float))
                or not math.isfinite(bucket_cap_mb) or bucket_cap_mb <= 0):
            raise ValueError(f"Invalid bucket_cap_mb value: {bucket_cap_mb} "
                             "(must be a finite number > 0)")
        if not isinstance(broadcast_parameters, bool):
            raise TypeError("broadcast_parameters must be a bool, got "
                            f"{type(broadcast_parameters).__name__}")
        self.group = process_group
        self.bucket_bytes = int(bucket_cap_mb * 2**20)
        self.broadcast_parameters = broadcast_parameters
        if dist.is_available() and dist.is_initialized():
            self.world = dist.get_world_size(process_group)
            self.rank = dist.get_rank(process_group)
        elif process_group is not None:
            raise ValueError("process_group was given but torch.distributed is not "
                             "initialized (call init_process_group first)")
        self.comm_log: list[tuple[str, int]] = []
        self.pre: Host | None = None

    def attach(self, pre: Host) -> None:
        """Unless disabled, overwrite every rank's parameters and buffers with rank 0's (as
        ``DistributedDataParallel`` does)."""
        self.pre = pre
        self._device = next(pre.model.parameters()).device
        pre.counters["skipped_steps"] = 0
        if self.world > 1 and self.broadcast_parameters:
            with torch.no_grad():
                for t in [*pre.model.parameters(), *pre.model.buffers()]:
                    self.broadcast(t.data)

    def shared_seed(self, seed: int) -> int:
        if self.world == 1:
            return seed
        buf = torch.tensor([seed], dtype=torch.int64, device=self._device)
        self.broadcast(buf)
        return int(buf.item())

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "world_size": self.world}

    # -- the step ----------------------------------------------------------------------------
    def _finish(self, params: list[nn.Parameter], reduced: list[torch.Tensor],
                flags: torch.Tensor) -> Directions | None:
        present = flags[1:1 + len(params)]
        if float(flags[0]) > 0 or not all_finite(flags) or not all(
                all_finite(t) for t in reduced):
            self.pre._count("skipped_steps", "NaN/Inf on some rank: every rank skips this step")
            return None
        return {p: t for p, t, c in zip(params, reduced, present.tolist(), strict=True) if c > 0}

    # -- collectives ---------------------------------------------------------------------------
    def reduce(self, params: list[nn.Parameter], values: list[torch.Tensor | None],
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
        divisor = self.world if self.pre.loss_reduction == "mean" else 1
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
            self.all_reduce(buf)
            offset = 0
            for i in bucket:
                n = params[i].numel()
                reduced[i] = (buf[offset:offset + n] / divisor).reshape(params[i].shape)
                offset += n
            if last:
                out_flags = buf[offset:]
        return reduced, out_flags  # type: ignore[return-value]

    def broadcast(self, buf: torch.Tensor) -> None:
        """Overwrite ``buf`` with rank 0's (of the group)."""
        src = 0 if self.group is None else dist.get_global_rank(self.group, 0)
        self._collective("broadcast", buf, lambda: dist.broadcast(buf, src, group=self.group))

    def all_reduce(self, buf: torch.Tensor) -> None:
        if self.world > 1:
            self._collective("all_reduce", buf, lambda: dist.all_reduce(buf, group=self.group))

    def all_gather_rows(self, t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
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


class LocalComm(ProcessGroupComm):
    """Per-rank curvature: each rank preconditions its own gradient with the curvature of
    its own samples, then one bucketed all-reduce averages the directions (the bytes of
    DDP's gradient all-reduce)."""

    mode = "local"

    def precondition(self, pre: Host, grads: Grads,
                     local_step: Callable[[Grads], Directions]) -> Directions | None:
        self.comm_log = []
        params = pre._trainable()
        out = local_step(grads)
        fault = any(p not in out for p in grads) or not all(
            all_finite(d) for d in out.values())
        values = [out.get(p) for p in params]
        flags = [float(fault)] + [float(v is not None) for v in values]
        reduced, flags = self.reduce(params, values, flags)
        return self._finish(params, reduced, flags)


class GlobalComm(ProcessGroupComm):
    """Global-batch curvature: the gradients are averaged first; on curvature steps each
    layer's per-sample gradients are gathered from every rank (the compact form its route
    starts from), or for sketched layers with ``factors`` "sharded" (or "auto" deciding so)
    only their sketches, each rank keeping its exact factors.

    Parameters
    ----------
    factors : {"replicated", "sharded", "auto"}
        See :class:`seng.distributed.DistributedSENGPreconditioner`.
    **options
        Those of :class:`ProcessGroupComm`.
    """

    mode = "global"

    def __init__(self, factors: str = "replicated", **options: Any) -> None:
        super().__init__(**options)
        self.factors = factors
        self.sizes: dict[str, list[int]] = {}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "factors": self.factors}

    def precondition(self, pre: Host, grads: Grads,
                     local_step: Callable[[Grads], Directions]) -> Directions | None:
        self.comm_log = []
        params = pre._trainable()
        values = [grads.get(p) for p in params]
        fault = not all(v is None or all_finite(v) for v in values)
        flags = [float(fault)] + [float(v is not None) for v in values]
        counts = pre._capture_counts()  # the same steps on every rank: replicated state
        if counts is not None:
            table = [0.0] * (self.world * len(counts))
            for i, (_, n) in enumerate(counts):
                table[self.rank * len(counts) + i] = float(n)
            flags += table
        reduced, flags = self.reduce(params, values, flags)
        if counts is not None:
            table = flags[1 + len(params):].reshape(self.world, len(counts))
            empty = []
            for i, (name, _) in enumerate(counts):
                self.sizes[name] = [int(c) for c in table[:, i].tolist()]
                if min(self.sizes[name]) == 0:  # some rank has nothing: none refreshes it
                    empty.append(name)
            pre._forget_capture(empty)
        done = self._finish(params, reduced, flags)
        if done is None:
            pre._forget_capture()  # the step is not taken: its counter stays
            return None
        return local_step(done)

    def bind(self, layer: str) -> GlobalComm:
        if self.world == 1:
            return self
        bound = copy.copy(self)
        bound.layer, bound.layer_sizes = layer, self.sizes[layer]
        return bound

    def total_samples(self, local: int) -> int:
        """The samples of every rank (so the local factors carry the global ``1/sqrt(N)``
        from the start)."""
        if self.world == 1:
            return local
        if local != self.layer_sizes[self.rank]:
            raise RuntimeError(f"layer {self.layer!r}: {local} per-sample gradients, "
                               f"{self.layer_sizes[self.rank]} announced (capture changed "
                               "mid-step)")
        return sum(self.layer_sizes)

    def gather(self, rep: PerSampleGrads) -> PerSampleGrads:
        if self.world == 1:
            return rep
        state = rep.state_dict()
        for name, t in rep.tensors().items():
            state[name] = self.all_gather_rows(t, self.layer_sizes)
        return REPRESENTATIONS[rep.kind].from_state(state, self._device)

    def gather_compact(self, rep: PerSampleGrads) -> PerSampleGrads:
        return self.gather(rep.compact())

    def store(self, rep: PerSampleGrads) -> PerSampleGrads:
        if self.world == 1:
            return rep.compact()
        if self._shard(rep, self.layer_sizes):
            return ShardedGrads(rep.compact(), self.layer_sizes, self.rank)
        return self.gather(rep.compact())

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
        freq = self.pre._refresh_interval()
        p_bytes = math.prod(rep.block_shape) * 4
        sharded = freq * (2 * (w - 1) / w * p_bytes + (w - 1) * 4 * n)
        return sharded < (w - 1) * n * 4 * rep.compact_entries()

    def gather_rmatvecs(self, stores: Sequence[ShardedGrads],
                        parts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        r"""``U^T g`` of each sharded layer from the local ``U_r^T g``: one all-gather for
        all of them (the layers, their order and their curvature are the same on every
        rank)."""
        local = torch.cat(list(parts))
        per_rank = [sum(st.sizes[r] for st in stores) for r in range(self.world)]
        chunks = torch.split(self.all_gather_rows(local, per_rank), per_rank)
        pieces = [torch.split(chunk, [st.sizes[r] for st in stores])
                  for r, chunk in enumerate(chunks)]
        return [torch.cat([pieces[r][i] for r in range(self.world)])
                for i in range(len(stores))]

    def reduce_matvecs(self, parts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        r"""``U \alpha = \sum_r U_r \alpha_r`` of each sharded layer: one all-reduce."""
        flat = torch.cat([p.reshape(-1) for p in parts])
        self.all_reduce(flat)
        return [t.reshape(p.shape) for t, p in
                zip(torch.split(flat, [p.numel() for p in parts]), parts, strict=True)]
