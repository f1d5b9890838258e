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
    """

    def __init__(self, store: PerSampleGrads, gram: torch.Tensor, info: dict[str, Any]) -> None:
        self.store = store
        self.gram = gram
        self.info = info
        self._factor: sl.DampedGramFactor | None = None

    def direction(self, g: torch.Tensor, damping: float) -> tuple[torch.Tensor, bool]:
        """``((U U^T + damping I)^{-1} g, whether the Cholesky fallback was used)``.

        The small system is factored by :func:`sketchlinalg.damped_gram_factor` (Cholesky,
        or the clipped eigendecomposition when Cholesky fails) and reused while ``damping``
        is unchanged.
        """
        factor, fallback = self.factor(damping)
        v = self.store.rmatvec(g).to(self.gram.dtype)
        alpha = factor.solve(v).to(g.dtype)
        return (g - self.store.matvec(alpha)) / damping, fallback

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
