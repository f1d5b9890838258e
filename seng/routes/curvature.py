"""The stored curvature of one layer and the SENG direction it gives."""

from __future__ import annotations

from typing import Any

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
    ``U U^T`` when ``N <= p``) and the direction is normalized to act as the identity off
    the span of ``U``:

    .. math:: d = \Bigl(I + \frac{U U^T}{\lambda s}\Bigr)^{-1} g
                = g - U (U^T U + \lambda s I)^{-1} U^T g .

    Multiplying the loss by ``c`` multiplies ``U``, ``g`` and so ``d`` by ``c``, exactly as
    for a gradient: the learning rate keeps its SGD meaning.
    """

    def __init__(self, store: PerSampleGrads, gram: torch.Tensor, info: dict[str, Any]) -> None:
        self.store = store
        self.gram = gram
        self.info = info
        self._factor: sl.DampedGramFactor | None = None
        self._scale: float | None = None

    def direction(self, g: torch.Tensor, damping: float,
                  relative: bool = False) -> tuple[torch.Tensor, bool]:
        """``(d, whether the Cholesky fallback was used)``: ``d = (U U^T + damping I)^{-1} g``,
        or the relative rule's direction when ``relative``.

        The small system is factored by :func:`sketchlinalg.damped_gram_factor` (Cholesky,
        or the clipped eigendecomposition when Cholesky fails) and reused while its damping
        is unchanged.
        """
        lam = self.system_damping(damping, relative)
        factor, fallback = self.factor(lam)
        v = self.store.rmatvec(g).to(self.gram.dtype)
        alpha = factor.solve(v).to(g.dtype)
        return woodbury_direction(g, self.store.matvec(alpha), lam, relative), fallback

    @property
    def scale(self) -> float:
        """``tr(U^T U) / N``: the layer's curvature scale (from the possibly sketched Gram)."""
        if self._scale is None:
            self._scale = float(torch.diagonal(self.gram).sum()) / max(self.gram.shape[0], 1)
        return self._scale

    def system_damping(self, damping: float, relative: bool) -> float:
        """The damping of the ``N x N`` system: ``damping``, or ``damping * scale`` under the
        relative rule (``damping`` itself when ``U = 0``, where any value gives ``d = g``)."""
        if relative and self.scale > 0:
            return damping * self.scale
        return damping

    def factor(self, damping: float) -> tuple[sl.DampedGramFactor, bool]:
        """The factorization of ``gram + damping I`` (cached while ``damping`` is unchanged)
        and whether it was computed now by the eigendecomposition fallback."""
        fallback = False
        if self._factor is None or self._factor.lam != damping:
            self._factor = sl.damped_gram_factor(self.gram, damping)
            fallback = self._factor.fallback
        return self._factor, fallback

    @property
    def nbytes(self) -> int:
        return self.store.nbytes + self.gram.numel() * self.gram.element_size()

    def state_dict(self) -> dict[str, Any]:
        return {"store": self.store.state_dict(), "gram": self.gram, "info": dict(self.info)}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> Curvature:
        store = from_state(state["store"], device)
        return cls(store, state["gram"].to(device), dict(state["info"]))


def woodbury_direction(g: torch.Tensor, u_alpha: torch.Tensor, lam: float,
                       relative: bool) -> torch.Tensor:
    """The direction from ``U alpha`` with ``alpha = (U^T U + lam I)^{-1} U^T g``:
    ``(g - U alpha) / lam`` (``(U U^T + lam I)^{-1} g``), or ``g - U alpha`` under the
    relative rule (``lam (U U^T + lam I)^{-1} g``)."""
    r = g - u_alpha
    return r if relative else r / lam
