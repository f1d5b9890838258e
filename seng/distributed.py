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

from collections.abc import Mapping
from typing import Any

from torch import nn

from .comm import GlobalComm, LocalComm
from .optimizer import SENG
from .preconditioner import Damping, SENGPreconditioner, UpdateFreq

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
        if "comm" in options:
            raise TypeError("DistributedSENGPreconditioner builds its communicator from mode; "
                            "pass comm= to SENGPreconditioner instead")
        shared = dict(process_group=process_group, bucket_cap_mb=bucket_cap_mb,
                      broadcast_parameters=broadcast_parameters)
        comm = GlobalComm(factors, **shared) if mode == "global" else LocalComm(**shared)
        super().__init__(model, damping, update_freq, comm=comm, **options)

    @property
    def mode(self) -> str:
        return self.comm.mode

    @property
    def factors(self) -> str:
        return self.comm.factors if isinstance(self.comm, GlobalComm) else "replicated"

    @property
    def world(self) -> int:
        return self.comm.world

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def comm_log(self) -> list[tuple[str, int]]:
        """``(operation, payload bytes)`` of every collective issued in the last step."""
        return self.comm.comm_log

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` saved with any number of ranks (or by
        :class:`~seng.SENGPreconditioner`)."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        base = {k: v for k, v in state.items() if k not in ("mode", "factors", "world_size")}
        super().load_state_dict(base)


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
