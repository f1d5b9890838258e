"""The cost model, as pure functions of shapes: flops (a multiply-add is 2) and the bytes of
the largest temporary of each way to build a layer's curvature, and the choices made from
them. A leaf module: the representations and routes call it, it calls nothing of ``seng``;
a sketch's own flop count lives beside its family
(:meth:`sketchlinalg.SketchingOperator.apply_flops`).
"""

from __future__ import annotations

import math

import sketchlinalg as sl

#: Temporaries larger than this are avoided when another method exists.
MEMORY_BUDGET_BYTES = 2**30

#: Largest number of elements of a temporary a pairwise Gram builds at once.
GRAM_CHUNK_ELEMENTS = 2**24

#: "auto" sketches a layer only when that costs less than this fraction of the exact route,
#: since the sketched Gram is an estimate.
SKETCH_SAVING = 0.5

#: The sketch family used where "auto" decides to sketch (one pass over the factors).
AUTO_KIND = "countsketch"

#: Oversampling and power iterations of the low-rank route's randomized SVDs.
OVERSAMPLE = 10
POWER_ITERS = 2

#: Flops charged per flop of a sparse scatter (a CountSketch of a materialized gradient)
#: where it competes with GEMMs and FFTs: memory-bound, about 10x slower per flop on a CPU
#: (CountSketch of a 128 x 65664 block to 4096 rows by a torch CSR product: 0.05-0.2 s
#: against 0.03-0.05 s for the TensorSketch's FFTs, 2 cores). Checked on the idle machine
#: by ``benchmarks/bench_seng_sketch_method.py``: the faster method in 14 and 15 of 15 cases.
SCATTER_COST = 10.0

#: Flops charged for one Python-level ``sketchlinalg.rsvd`` call (its small QRs and
#: bookkeeping cost about a millisecond whatever the size).
RSVD_CALL_FLOPS = 1e7

Costs = dict[str, tuple[float, float]]  # {method: (flops, bytes of temporaries)}


def choose_gram_method(costs: Costs) -> str:
    """The cheapest method (in flops) whose temporaries fit the memory budget."""
    fitting = {m: c for m, c in costs.items() if c[1] <= MEMORY_BUDGET_BYTES} or costs
    return min(fitting, key=lambda m: fitting[m][0])


def cheapest_flops(costs: Costs) -> float:
    """Flops of the method :func:`choose_gram_method` picks."""
    return costs[choose_gram_method(costs)][0]


def sketch_apply_flops(kind: str, d: int, m: int) -> float:
    """Flops per column of a ``d x m`` sketch of family ``kind`` (as the routes build it:
    sparse sign with ``nnz = min(8, d)``)."""
    return sl.KINDS[kind].apply_flops(d, m)


def dense_gram_costs(n: int, p: int) -> Costs:
    """The Gram of ``N`` materialized per-sample gradients of ``p`` entries."""
    return {"dense": (2.0 * n * n * p, 0.0)}


def kron_gram_costs(n: int, g: int, t: int, da: int, dg: int, item: int) -> Costs:
    """The Gram of Kronecker factors (``N`` samples, ``g`` groups, ``T`` positions, factor
    widths ``d_a`` and ``d_g``, ``item`` bytes per entry): pairwise by the Kronecker
    identity, or through the materialized per-sample gradients."""
    kron = 2.0 * g * n * n * t * t * (da + dg + 1)
    dense = 2.0 * (g * n * t * da * dg + n * n * g * da * dg)
    return {"kronecker": (kron, 2.0 * min(g * n * n * t * t, GRAM_CHUNK_ELEMENTS) * item),
            "dense": (dense, float(n * g * da * dg * item))}


def embedding_gram_costs(n: int, t: int, d: int, used: int, item: int) -> Costs:
    """The Gram of embedding gradients (``T`` lookups per sample of ``d``-wide rows, ``used``
    distinct tokens): pairwise over the lookups, or over the used rows."""
    return {"pairs": (2.0 * n * n * t * t * (d + 1),
                      2.0 * min(n * n * t * t, GRAM_CHUNK_ELEMENTS) * item),
            "rows": (2.0 * n * n * used * d + n * t * d, float(n * used * d * item))}


def kron_sketch_dims(size: int, groups: int, da: int, dg: int) -> tuple[int, int]:
    """Rows ``(s_out, s_in)`` of the Kronecker sketch ``S_out (x) S_in`` keeping about
    ``size`` coordinates of a ``groups x d_g x d_a`` block (``size // groups`` per group):
    what embedding tables use (their one-hot input side is sketched by columns)."""
    per_group = max(1, size // groups)
    s = max(1, math.isqrt(per_group))
    if dg <= s:
        return dg, min(da, max(1, per_group // dg))
    if da <= s:
        return min(dg, max(1, per_group // da)), da
    return s, s


#: How each family sketches a block of Kronecker factors from the factors
#: (:class:`seng.persample.BlockSketch`); the others (``"dense"``) apply the family's operator
#: to the materialized per-sample gradients.
BLOCK_SKETCH_METHODS = {"countsketch": "tensorsketch", "sampling": "coordinates",
                        "gaussian": "face_split"}


def _block_sketch_flops_per_sample(method: str, kind: str, t: int, da: int, dg: int,
                                   d: int) -> float:
    if method == "tensorsketch":
        return sl.TensorSketch.factor_flops(d, dg, da, pairs=t)
    if method == "coordinates":
        return 2.0 * t * d
    if method == "face_split":
        return 2.0 * t * d * (da + dg + 1)
    return 2.0 * t * da * dg + sketch_apply_flops(kind, d, da * dg)  # form, then apply


def block_sketch_method(kind: str, t: int, da: int, dg: int, d: int) -> str:
    """How a ``d_g x d_a`` block over ``T`` positions is sketched to ``d`` coordinates: the
    family's factor form (:data:`BLOCK_SKETCH_METHODS`), except that CountSketch applies a
    plain CountSketch to the materialized gradients (``"dense"``) where forming them (a
    GEMM) and scattering them (flops charged :data:`SCATTER_COST` each) costs less than the
    TensorSketch's FFTs: with many positions (convolutions)."""
    method = BLOCK_SKETCH_METHODS.get(kind, "dense")
    if kind == "countsketch":
        dense = 2.0 * t * da * dg + SCATTER_COST * sketch_apply_flops(kind, d, da * dg)
        if dense < _block_sketch_flops_per_sample(method, kind, t, da, dg, d):
            return "dense"
    return method


def block_sketch_flops(kind: str, n: int, g: int, t: int, da: int, dg: int, d: int) -> float:
    """Flops of sketching each of the ``g`` groups' ``d_g x d_a`` blocks of ``N`` samples
    (``T`` positions) to ``d`` coordinates (:func:`block_sketch_method`), plus the Gram of
    the ``N x g d`` result."""
    method = block_sketch_method(kind, t, da, dg, d)
    per = _block_sketch_flops_per_sample(method, kind, t, da, dg, d)
    return n * g * per + dense_gram_costs(n, g * d)["dense"][0]


def svd_costs(m: int, n: int, k: int) -> dict[str, float]:
    """Flops of the rank-``k`` truncated SVD of one ``m x n`` core: exact (R-SVD,
    ``6 M N^2 + 20 N^3`` with ``M >= N``; Golub and Van Loan, Matrix Computations, Fig.
    8.6.1) or randomized (``2q + 2`` products with ``l`` columns, as many QRs, plus the
    per-call overhead)."""
    big, small = max(m, n), min(m, n)
    l = min(k + OVERSAMPLE, small)
    passes = 2 * POWER_ITERS + 2
    return {"exact": 6.0 * big * small * small + 20.0 * small**3,
            "rsvd": passes * (2.0 * m * n * l + 4.0 * big * l * l) + RSVD_CALL_FLOPS}


def lowrank_flops(n: int, g: int, t: int, da: int, dg: int, rank: int,
                  item: int) -> float | None:
    """Flops of the low-rank route on Kronecker factors (thin QRs, the cores, their
    truncated SVDs, the Gram of the truncated factors); None where it truncates nothing
    (``rank`` >= the rank bound ``min(T, d_a, d_g)``)."""
    rg, ra = min(t, dg), min(t, da)
    k = min(rank, rg, ra)
    if k == min(rg, ra):
        return None
    per = 2.0 * rg * t * ra  # the core M
    if t < dg:
        per += 4.0 * dg * t * t + 2.0 * dg * rg * k  # Householder QR with Q, map back
    if t < da:
        per += 4.0 * da * t * t + 2.0 * ra * da * k
    per += min(svd_costs(rg, ra, k).values())
    return n * g * per + cheapest_flops(kron_gram_costs(n, g, k, da, dg, item))


def choose_route(exact: float, sketched: float, baseline: float,
                 lowrank: float | None = None) -> str:
    """``"exact"``, ``AUTO_KIND`` or ``"lowrank"`` from the flops of each route.

    Approximate only where the exact Gram costs more than ``baseline`` (the layer's own
    gradient, ``2 N p`` flops: below that it is not worth an estimate) and the approximation
    saves at least ``1 - SKETCH_SAVING`` of it. When both the sketch and the low-rank
    truncation (``lowrank`` not None) qualify, the one holding less memory wins, which is
    the low-rank one (the sketched route keeps the exact factors for ``U^T g`` and
    ``U alpha``; the low-rank route keeps ``rank`` rows per factor and reports its
    truncation error).
    """
    if exact <= baseline:
        return "exact"
    if lowrank is not None and lowrank < SKETCH_SAVING * exact:
        return "lowrank"
    return AUTO_KIND if sketched < SKETCH_SAVING * exact else "exact"

