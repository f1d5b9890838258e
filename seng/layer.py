"""``Layer``: one preconditioned block, owning its curvature from refresh to state."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from sketchlinalg.backend import all_finite

from .comm import Communicator
from .curvature import Curvature
from .layers import LayerHelper
from .persample import PerSampleGrads, from_state, pool
from .routes import Route


class Part(NamedTuple):
    """One module's recorded calls for a layer: the capture name, its helper, the block's
    parameters it serves and the dimension of its input holding the samples."""

    name: str
    helper: LayerHelper
    params: dict[str, nn.Parameter]
    sample_dim: int


class Layer:
    """A registered module (or the ``torch.func`` fallback block): its helper, its block's
    parameters, its route and the curvature of its last refresh.

    ``live`` names the parameters the stored curvature covers; a step whose trainable set
    differs has no curvature for the layer until the next refresh (``needs_refresh``).

    With ``memory = k > 1`` the curvature pools the per-sample gradients of the last ``k``
    curvature batches (:func:`seng.persample.pool`); ``recent`` holds the last ``k - 1``
    batches' own stores and ``recent_gram`` the Gram of their columns (unscaled, solve
    dtype), so that a refresh computes only the new batch's blocks of the pooled Gram. A
    refresh whose layout differs from theirs (another set of live parameters, sequence
    length or store kind) starts the pool again.
    """

    def __init__(self, index: int, name: str, module: nn.Module, helper: LayerHelper,
                 params: dict[str, nn.Parameter], route: Route, sample_dim: int = 0,
                 parts: list[Part] | None = None) -> None:
        self.index = index
        self.name = name
        self.module = module
        self.helper = helper
        self.params = params
        self.route = route
        self.sample_dim = sample_dim
        #: What the hooks record, one entry per module whose calls feed the block: the
        #: layer's own module, or every user of a shared parameter.
        self.parts = parts if parts is not None else [Part(name, helper, params, sample_dim)]
        self.curvature: Curvature | None = None
        self.live: tuple[str, ...] = ()
        self.needs_refresh = True
        self.memory = 1
        self.recent: list[PerSampleGrads] = []
        self.recent_gram: torch.Tensor | None = None

    @property
    def capture_names(self) -> list[str]:
        return [part.name for part in self.parts]

    def live_in(self, grads: Any) -> tuple[str, ...]:
        """The block's parameters that are trainable and have a gradient in ``grads``."""
        return tuple(n for n, p in self.params.items() if p.requires_grad and p in grads)

    def covers(self, live: tuple[str, ...]) -> bool:
        """Whether the stored curvature preconditions the block of ``live``."""
        return self.curvature is not None and self.live == live

    def refresh(self, works: list[list[Any]], live: tuple[str, ...], scale: float,
                rng: np.random.Generator | None, comm: Communicator, step: int) -> bool:
        """Build the curvature of step ``step`` from ``works`` (per part, ``(payload, grad)``
        per call holding the samples of every micro-batch) with the signal ``scale``, by the
        layer's route; False (the last good curvature kept) when it is not finite."""
        rep = self.helper.per_sample(works[0] if len(self.parts) == 1 else works, live, scale)
        curvature = self.route.build(rep, rng, comm)
        batches, full = [curvature.store], curvature.gram
        pooled = pool(self.recent + batches) if self.memory > 1 and self.recent else None
        if pooled is not None:
            batches = self.recent + batches
            full = _bordered(self.recent_gram, self.recent, curvature.store, curvature.gram)
            curvature = Curvature(pooled, full / len(batches), curvature.info)
        if not all_finite(curvature.gram):
            return False
        if self.memory > 1:
            self.recent = batches[-(self.memory - 1):]
            kept = sum(b.n for b in self.recent)
            # A copy: a view would hold all of ``full`` (or share the stored Gram) while
            # memory_bytes counts the block alone.
            self.recent_gram = full[-kept:, -kept:].clone()
        curvature.info.update(step=step, samples=curvature.gram.shape[0],
                              pooled_batches=len(batches))
        self.curvature, self.live = curvature, live
        return True

    def drop(self) -> None:
        """Forget the curvature (a non-finite direction): refresh at the next step."""
        self.curvature = None
        self.recent, self.recent_gram = [], None
        self.needs_refresh = True

    def info(self) -> dict[str, Any]:
        """The row of :meth:`seng.SENGPreconditioner.layer_info`."""
        c = self.curvature
        return {
            "name": self.name, "type": getattr(self.helper, "type_name",
                                               type(self.module).__name__),
            "params": list(self.params),
            "numel": sum(p.numel() for p in self.params.values()),
            "route": self.route.name, "last": None if c is None else dict(c.info),
            "memory_bytes": (0 if c is None else c.nbytes) + self._recent_nbytes(),
        }

    def _recent_nbytes(self) -> int:
        gram = self.recent_gram
        return sum(s.nbytes for s in self.recent) + (
            0 if gram is None else gram.numel() * gram.element_size())

    def state_dict(self) -> dict[str, Any]:
        """The curvature (None for a sharded one, which then refreshes after loading)."""
        state = None if self.curvature is None else self.curvature.state_dict()
        return {"curvature": state, "live": list(self.live),
                "needs_refresh": self.needs_refresh or (
                    self.curvature is not None and state is None),
                "recent": [s.state_dict() for s in self.recent],
                "recent_gram": self.recent_gram}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = next(iter(self.params.values())).device
        c = state["curvature"]
        self.curvature = None if c is None else Curvature.from_state(c, device)
        self.live = tuple(state["live"])
        self.needs_refresh = bool(state["needs_refresh"])
        self.recent = [from_state(r, device) for r in state.get("recent", [])]
        gram = state.get("recent_gram")
        self.recent_gram = None if gram is None else gram.to(device)


def _bordered(old_gram: torch.Tensor | None, old: list[PerSampleGrads], new: PerSampleGrads,
              new_gram: torch.Tensor) -> torch.Tensor:
    """The Gram of the columns of ``old`` and then ``new``, from the Gram of ``old``'s
    (``old_gram``) and of ``new``'s (``new_gram``): only the cross block ``U_old^T U_new``
    is computed."""
    cross = torch.cat([o.cross_gram(new) for o in old]).to(new_gram.dtype)
    return torch.cat([torch.cat([old_gram, cross], dim=1),
                      torch.cat([cross.T, new_gram], dim=1)])
