"""The cost model: which way to build a Gram, and exact, sketched or low-rank per layer.

Costs are counted in flops (a multiply-add is 2) from the shapes of the captured factors,
plus the bytes of the largest temporary; both are recorded in the layer's report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .persample import PerSampleGrads

#: Temporaries larger than this are avoided when another method exists.
MEMORY_BUDGET_BYTES = 2**30

#: "auto" sketches a layer only when that costs less than this fraction of the exact route,
#: since the sketched Gram is an estimate.
SKETCH_SAVING = 0.5

#: The sketch family used where "auto" decides to sketch (one pass over the factors).
AUTO_KIND = "countsketch"


def choose_gram_method(costs: dict[str, tuple[float, float]]) -> str:
    """The cheapest method (in flops) whose temporaries fit the memory budget."""
    fitting = {m: c for m, c in costs.items() if c[1] <= MEMORY_BUDGET_BYTES} or costs
    return min(fitting, key=lambda m: fitting[m][0])


def gram_flops(rep: PerSampleGrads) -> float:
    costs = rep.gram_costs()
    return costs[choose_gram_method(costs)][0]


def choose_route(
    rep: PerSampleGrads, size: int, rank: int | None = None
) -> tuple[str, dict[str, Any]]:
    """``("exact" | AUTO_KIND | "lowrank", costs)`` for ``sketch="auto"``.

    Approximate only where the exact Gram costs more than the layer's own gradient (``2 N p``
    flops per position: below that it is not worth an estimate) and the approximation saves
    at least ``1 - SKETCH_SAVING`` of it. The approximations are the sketch and, for
    Kronecker factors (convolutions, tokens) with more positions than ``rank``, the low-rank
    truncation; when both qualify, the one holding less memory wins, which is the low-rank
    one (the sketched route keeps the exact factors for ``U^T g`` and ``U alpha``; the
    low-rank route keeps ``rank`` rows per factor and reports its truncation error).
    """
    from . import lowrank  # imports this module

    exact = gram_flops(rep)
    sketched = rep.sketch_flops(AUTO_KIND, size)
    baseline = rep.apply_flops() / 2
    costs: dict[str, Any] = {"exact_flops": exact, "sketched_flops": sketched}
    low = None if rank is None else lowrank.flops(rep, rank)
    if low is not None:
        costs["lowrank_flops"] = low
    if exact <= baseline:
        return "exact", costs
    if low is not None and low < SKETCH_SAVING * exact:
        return "lowrank", costs
    return (AUTO_KIND if sketched < SKETCH_SAVING * exact else "exact"), costs
