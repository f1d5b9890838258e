"""The cost model: which way to build a Gram, and exact versus sketched per layer.

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


def choose_route(rep: PerSampleGrads, size: int) -> tuple[str, dict[str, Any]]:
    """``("exact" | AUTO_KIND, costs)`` for ``sketch="auto"``.

    Sketch only where the exact Gram costs more than the layer's own gradient (``2 N p``
    flops per position: below that it is not worth an estimate) and the sketch saves at
    least ``1 - SKETCH_SAVING`` of it.
    """
    exact = gram_flops(rep)
    sketched = rep.sketch_flops(AUTO_KIND, size)
    baseline = rep.apply_flops() / 2
    route = AUTO_KIND if exact > baseline and sketched < SKETCH_SAVING * exact else "exact"
    return route, {"exact_flops": exact, "sketched_flops": sketched}
