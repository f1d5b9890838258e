"""The exact route: the Gram ``U^T U`` of the true per-sample gradients."""

from __future__ import annotations

from typing import Any

import torch

from .curvature import Curvature
from .persample import PerSampleGrads


def build(rep: PerSampleGrads, *, solve_dtype: torch.dtype, **_: Any) -> Curvature:
    """Curvature with the exact Gram, by the cheaper of the Kronecker identity and
    materialized per-sample gradients (see :mod:`seng.routes.cost`)."""
    gram, method = rep.gram()
    store = rep.compact()
    flops, temp = rep.gram_costs()[method]
    return Curvature(store, gram.to(solve_dtype), {
        "route": "exact", "gram_method": method, "gram_flops": flops, "gram_temp_bytes": temp,
        "store": store.kind})
