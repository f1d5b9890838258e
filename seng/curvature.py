"""The stored curvature of one layer and the SENG direction it gives."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Protocol

import torch

import sketchlinalg as sl

from .persample import PerSampleGrads, from_state


class Curvature:
    r"""Curvature of one layer block from its last curvature batch.

    Holds ``U`` in compact form (``store``) and the ``N x N`` matrix ``gram`` (``U^T U``, or
    its sketched estimate) in the solve dtype. The direction is the Woodbury form

    .. math:: (U U^T + \lambda I)^{-1} g = \frac{1}{\lambda}
              \bigl(g - U (U^T U + \lambda I)^{-1} U^T g\bigr)

    (Yang et al. 2022, SENG, Section 3), with ``U^T g`` and ``U alpha`` computed exactly from
    ``store``; only ``gram`` may be sketched.

    Under the ``"relative"`` damping rule the system is damped by ``damping`` times the
    layer's curvature scale ``s = tr(U^T U) / N`` (the mean nonzero eigenvalue of
    ``U U^T`` when ``N <= p``), under ``"spectral"`` by ``damping`` times the largest
    eigenvalue ``s = ||U^T U||_2``, and under both the direction is normalized to act as the
    identity off the span of ``U``:

    .. math:: d = \Bigl(I + \frac{U U^T}{\lambda s}\Bigr)^{-1} g
                = g - U (U^T U + \lambda s I)^{-1} U^T g .

    Multiplying the loss by ``c`` multiplies ``U``, ``g`` and so ``d`` by ``c``, exactly as
    for a gradient: the learning rate keeps its SGD meaning.
    """

    def __init__(self, store: PerSampleGrads, gram: torch.Tensor, info: dict[str, Any]) -> None:
        self.store = store
        self.gram = gram
        self.info = info
        # (damping, Cholesky factor in the Gram's dtype, or damped_gram_factor's result)
        self._factor: tuple[float, torch.Tensor | sl.DampedGramFactor] | None = None
        self._inverse: tuple[float, torch.Tensor] | None = None
        self._scale: float | None = None
        self._top: float | None = None

    def direction(self, g: torch.Tensor, damping: float,
                  rule: str = "absolute") -> tuple[torch.Tensor, bool]:
        """``(d, whether the Cholesky fallback was used)``: ``d = (U U^T + damping I)^{-1} g``,
        or the direction of another damping ``rule`` (see :func:`woodbury_directions`)."""
        return woodbury_directions([self], [g], damping, rule)[0]

    @property
    def scale(self) -> float:
        """``tr(U^T U) / N``: the layer's curvature scale (from the possibly sketched Gram)."""
        if self._scale is None:
            self._scale = float(torch.diagonal(self.gram).sum()) / max(self.gram.shape[0], 1)
        return self._scale

    @property
    def top(self) -> float:
        """The largest eigenvalue of the (possibly sketched) Gram, ``||U^T U||_2``."""
        if self._top is None:
            n = self.gram.shape[0]
            self._top = float(torch.linalg.eigvalsh(self.gram)[-1]) if n else 0.0
        return self._top

    def system_damping(self, damping: float, rule: str) -> float:
        """The damping of the ``N x N`` system: ``damping`` (``"absolute"``), or ``damping``
        times :attr:`scale` (``"relative"``) or :attr:`top` (``"spectral"``); ``damping``
        itself when that is 0 (``U = 0``, where any value gives ``d = g``)."""
        if rule == "absolute":
            return damping
        s = self.scale if rule == "relative" else self.top  # only the rule's own: top solves
        return damping * s if s > 0 else damping

    @property
    def sharded(self) -> bool:
        """Whether ``store`` holds this process's samples only (see
        :class:`~seng.persample.ShardedGrads`)."""
        return self.store.sharded

    def solve(self, damping: float, v: torch.Tensor,
              reuse: bool = True) -> tuple[torch.Tensor, bool]:
        """``(gram + damping I)^{-1} v`` in the solve dtype, and whether the eigendecomposition
        fallback factored the system in this call.

        Factored by :func:`sketchlinalg.damped_gram_factor` (Cholesky, or the clipped
        eigendecomposition when Cholesky fails) once per damping. When the system will be
        solved again (``reuse``: steps between refreshes), the factor is inverted once, so
        that each later step solves by one ``N x N`` matrix-vector product instead of two
        triangular solves; a curvature used once (``update_freq`` 1) solves by the factor
        and never pays for the inversion. The system is symmetric positive definite with
        condition number at most ``(||gram|| + damping) / damping``, where an explicit inverse
        is as accurate as the solves (Higham, Accuracy and Stability of Numerical Algorithms,
        2nd ed., sec. 14.3).
        """
        v = v.to(self.gram.dtype)
        if self._inverse is not None and self._inverse[0] == damping:
            return self._inverse[1] @ v, False
        fallback = False
        if self._factor is None or self._factor[0] != damping:
            f = sl.damped_gram_factor(self.gram, damping)
            cholesky = f.method == "cholesky" and f.L.dtype == self.gram.dtype
            self._factor, fallback = (damping, f.L if cholesky else f), f.fallback
        F = self._factor[1]
        if not reuse:
            if isinstance(F, torch.Tensor):
                return torch.cholesky_solve(v[:, None], F)[:, 0], fallback
            return F.solve(v), fallback
        if isinstance(F, torch.Tensor):
            inv = torch.cholesky_inverse(F)  # LAPACK potri: a third of two solves' flops
        else:
            inv = F.solve(torch.eye(v.shape[0], dtype=v.dtype, device=v.device))
        self._inverse = (damping, inv)
        return inv @ v, fallback

    def needs_factor(self, damping: float) -> bool:
        """Whether :meth:`solve` at ``damping`` would factor the system."""
        return ((self._inverse is None or self._inverse[0] != damping)
                and (self._factor is None or self._factor[0] != damping))

    def set_cholesky(self, damping: float, L: torch.Tensor) -> None:
        """Take ``L``, the Cholesky factor of ``gram + damping I`` in the Gram's dtype, as the
        factor :meth:`solve` uses at ``damping`` (see :func:`factor_together`)."""
        self._factor = (damping, L)

    @property
    def nbytes(self) -> int:
        return self.store.nbytes + self.gram.numel() * self.gram.element_size()

    def state_dict(self) -> dict[str, Any] | None:
        """The stored curvature, or None for a sharded one (one process's part of ``U``)."""
        if self.sharded:
            return None
        return {"store": self.store.state_dict(), "gram": self.gram, "info": dict(self.info)}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> Curvature:
        store = from_state(state["store"], device)
        return cls(store, state["gram"].to(device), dict(state["info"]))


class Completion(Protocol):
    """Completes the partial products of sharded stores (a communicator, :mod:`seng.comm`)."""

    def gather_rmatvecs(self, stores: Sequence[Any],
                        parts: Sequence[torch.Tensor]) -> list[torch.Tensor]: ...

    def reduce_matvecs(self, parts: Sequence[torch.Tensor]) -> list[torch.Tensor]: ...


def woodbury_directions(
    curvatures: Sequence[Curvature], blocks: Sequence[torch.Tensor], damping: float,
    rule: str, completion: Completion | None = None, reuse: bool = True,
) -> list[tuple[torch.Tensor, bool]]:
    r"""The SENG direction of each layer, ``(d, whether the Cholesky fallback ran)``:

    .. math:: \alpha = (U^T U + \lambda I)^{-1} U^T g, \qquad
              d = (g - U \alpha) / \lambda \;\; (\text{relative, spectral rules: } g - U \alpha),

    with ``lambda`` each layer's :meth:`Curvature.system_damping`. The one place the
    Woodbury step is written: for a sharded ``U`` (some curvatures' stores hold this
    process's samples only) ``completion`` turns the partial ``U_r^T g`` and ``U_r alpha_r``
    of all of them into the full products with one collective each. ``reuse``: whether the
    curvatures will precondition another step (see :meth:`Curvature.solve`).
    """
    lams = [c.system_damping(damping, rule) for c in curvatures]
    relative = rule != "absolute"
    factor_together(curvatures, lams)
    sharded = [i for i, c in enumerate(curvatures) if c.sharded]
    if sharded and completion is None:
        raise ValueError("a sharded curvature needs a completion (its communicator)")
    # Sharded products travel in one buffer, in the blocks' common dtype.
    common = functools.reduce(torch.promote_types, [blocks[i].dtype for i in sharded],
                              blocks[0].dtype)
    v = [c.store.rmatvec(b) for c, b in zip(curvatures, blocks, strict=True)]
    if sharded:
        full = completion.gather_rmatvecs([curvatures[i].store for i in sharded],
                                          [v[i].to(common) for i in sharded])
        for i, vi in zip(sharded, full, strict=True):
            v[i] = vi
    solved = [c.solve(lam, vi, reuse) for c, lam, vi in zip(curvatures, lams, v, strict=True)]
    alphas = [a.to(b.dtype) for (a, _), b in zip(solved, blocks, strict=True)]
    if not sharded:  # g - U alpha in one fused product each
        return [(_scaled(c.store.residual(b, a), lam, relative), fb)
                for c, b, a, lam, (_, fb) in zip(curvatures, blocks, alphas, lams, solved,
                                                 strict=True)]
    u_alpha = [c.store.matvec(a) for c, a in zip(curvatures, alphas, strict=True)]
    full = completion.reduce_matvecs([u_alpha[i].to(common) for i in sharded])
    for i, ua in zip(sharded, full, strict=True):
        u_alpha[i] = ua
    return [(_scaled(b - ua.reshape(b.shape).to(b.dtype), lam, relative), fb)
            for b, ua, lam, (_, fb) in zip(blocks, u_alpha, lams, solved, strict=True)]


def factor_together(curvatures: Sequence[Curvature], lams: Sequence[float]) -> None:
    """Cholesky-factor the damped systems ``gram + lam I`` that :meth:`Curvature.solve` would
    factor, in one batched call per Gram shape, dtype and device: at ``N = 128`` a layer's
    factorization costs more in per-call work (checks, host synchronizations) than in
    arithmetic. The batched LAPACK call factors each matrix as a single call would. A system
    Cholesky fails on is left to :meth:`Curvature.solve`, whose
    :func:`sketchlinalg.damped_gram_factor` falls back to the eigendecomposition (or raises
    for a non-finite Gram)."""
    groups: dict[tuple[Any, ...], list[tuple[Curvature, float]]] = {}
    for c, lam in zip(curvatures, lams, strict=True):
        if c.needs_factor(lam) and c.gram.dtype in (torch.float32, torch.float64):
            key = (tuple(c.gram.shape), c.gram.dtype, c.gram.device)
            groups.setdefault(key, []).append((c, lam))
    for members in groups.values():
        if len(members) < 2:
            continue
        M = torch.stack([c.gram for c, _ in members])
        shifts = torch.tensor([lam for _, lam in members], dtype=M.dtype, device=M.device)
        M.diagonal(dim1=-2, dim2=-1).add_(shifts[:, None])
        L, info = torch.linalg.cholesky_ex(M)
        for (c, lam), Li, ok in zip(members, L, (info == 0).tolist(), strict=True):
            if ok:
                c.set_cholesky(lam, Li)


def _scaled(r: torch.Tensor, lam: float, relative: bool) -> torch.Tensor:
    """The direction from the residual ``r = g - U alpha``, ``alpha = (U^T U + lam I)^{-1}
    U^T g``: ``r / lam`` (``(U U^T + lam I)^{-1} g``), or ``r`` under the relative rules
    (``lam (U U^T + lam I)^{-1} g``); ``r`` is the caller's own tensor."""
    return r if relative else r.div_(lam)
