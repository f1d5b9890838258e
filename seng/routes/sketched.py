"""The sketched route: the Gram of a sketch ``S U`` of the parameter dimension."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .curvature import Curvature
from .persample import PerSampleGrads


def build(
    rep: PerSampleGrads, *, kind: str, size: int, rng: np.random.Generator,
    solve_dtype: torch.dtype, **_: Any,
) -> Curvature:
    r"""Curvature whose Gram is ``(S U)^T (S U)``, an unbiased estimate of ``U^T U``.

    ``S`` keeps about ``size`` coordinates of the layer block and has
    ``E[S^T S] = I``, so ``E[(S u_i)^T (S u_j)] = u_i^T u_j``. For Kronecker factors ``S`` is
    ``S_out (x) S_in``, applied to the two factors separately. Only the Gram is sketched;
    ``U^T g`` and ``U alpha`` stay exact (computed from the unsketched factors), so the
    direction is exact wherever ``S`` preserves the Gram.
    """
    sketched = rep.sketch(kind, size, rng)
    gram, method = sketched.gram()
    store = rep.compact()
    flops, temp = sketched.gram_costs()[method]
    return Curvature(store, gram.to(solve_dtype), {
        "route": kind, "gram_method": method, "gram_flops": flops, "gram_temp_bytes": temp,
        "store": store.kind, "sketch_shape": list(sketched.block_shape)})
