"""Routes: how a layer's curvature is built from its per-sample gradients.

A route is a function ``build(rep, *, kind, size, rng, solve_dtype) -> Curvature``
(``rep`` a :class:`~seng.routes.persample.PerSampleGrads`). ``"exact"`` builds the exact
Gram; every sketchlinalg family name builds the sketched Gram of that family; ``"lowrank"``
truncates each per-sample gradient to rank ``rank`` (a keyword of its ``build``). A new
route adds a module here and an entry in :data:`ROUTES`.
"""

from __future__ import annotations

from collections.abc import Callable

from . import exact, lowrank, sketched
from .curvature import Curvature
from .persample import DenseGrads, KroneckerFactors, PerSampleGrads

ROUTES: dict[str, Callable[..., Curvature]] = {
    "exact": exact.build,
    "sketched": sketched.build,
    "lowrank": lowrank.build,
}

__all__ = ["ROUTES", "Curvature", "DenseGrads", "KroneckerFactors", "PerSampleGrads"]
