"""Routes: how a layer's curvature is built from its per-sample gradients.

A route is an object built once per layer from the user's setting (:func:`make_route`);
``route.build(rep, rng, comm)`` turns the layer's per-sample gradients ``rep`` (a
:class:`~seng.persample.PerSampleGrads` of this process's samples) into a
:class:`~seng.curvature.Curvature`, asking the communicator for the parts of the other
processes it needs. A new route is one class here and its case in :func:`make_route`
(and its name in
:data:`seng._hyper.ROUTE_NAMES`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

import sketchlinalg as sl
from sketchlinalg.backend import all_finite

from . import cost
from .comm import SINGLE_PROCESS, Communicator
from .curvature import Curvature
from .persample import EmbeddingGrads, KroneckerFactors, PerSampleGrads


class Route:
    """How one layer's curvature is built; ``name`` is the setting shown in reports.

    ``build(rep, rng, comm)``: the curvature of the per-sample gradients ``rep`` of this
    process (``rng`` draws the route's randomness, if any; ``comm`` gathers the other
    processes' parts, none by default).
    """

    name: ClassVar[str]
    #: Whether the Gram is exact for the captured samples: helpers may then reduce each
    #: call to the exact compact per-sample gradients as soon as its gradient arrives.
    exact: ClassVar[bool] = False
    #: Whether ``build`` draws from its ``rng`` (the preconditioner makes one only then).
    random: ClassVar[bool] = True

    def __init__(self, solve_dtype: torch.dtype) -> None:
        self.solve_dtype = solve_dtype

    def build(self, rep: PerSampleGrads, rng: np.random.Generator | None = None,
              comm: Communicator = SINGLE_PROCESS) -> Curvature:
        raise NotImplementedError

    def _curvature(self, store: PerSampleGrads, gram: torch.Tensor,
                   info: dict[str, Any]) -> Curvature:
        return Curvature(store, gram.to(self.solve_dtype), info)


class ExactRoute(Route):
    """The exact Gram ``U^T U``, by the cheaper of the Kronecker identity and materialized
    per-sample gradients (:func:`seng.cost.choose_gram_method`)."""

    name = "exact"
    exact = True
    random = False

    def build(self, rep: PerSampleGrads, rng: np.random.Generator | None = None,
              comm: Communicator = SINGLE_PROCESS) -> Curvature:
        rep = comm.gather_compact(rep)
        gram, method = rep.gram()
        store = rep.compact()
        flops, temp = rep.gram_costs()[method]
        return self._curvature(store, gram, {
            "route": "exact", "gram_method": method, "gram_flops": flops,
            "gram_temp_bytes": temp, "store": store.kind})


class SketchedRoute(Route):
    r"""The Gram of a sketch ``S U`` of the parameter dimension, an unbiased estimate of
    ``U^T U``.

    ``S`` of family ``kind`` keeps about ``size`` coordinates of the layer block and has
    ``E[S^T S] = I``, so ``E[(S u_i)^T (S u_j)] = u_i^T u_j``. For Kronecker factors each
    group's block is sketched as a whole (``size // groups`` coordinates), from the factors
    where the family has a factor form (TensorSketch for ``"countsketch"``, coordinate
    sampling for ``"sampling"``, a face-splitting Gaussian for ``"gaussian"``) and from the
    materialized per-sample gradients otherwise (:class:`seng.persample.BlockSketch`;
    ``info["sketch_method"]``). Embedding tables keep a Kronecker sketch
    ``S_out (x) S_in``. Only the Gram is sketched;
    ``U^T g`` and ``U alpha`` stay exact (computed from the unsketched factors), so the
    direction is exact wherever ``S`` preserves the Gram. Across processes the sketches are
    gathered (the same ``S`` everywhere: the seed is shared) and the exact factors are
    gathered or stay sharded, as the communicator decides.
    """

    def __init__(self, solve_dtype: torch.dtype, kind: str, size: int) -> None:
        super().__init__(solve_dtype)
        self.name, self.kind, self.size = kind, kind, size  # type: ignore[misc]

    def build(self, rep: PerSampleGrads, rng: np.random.Generator | None = None,
              comm: Communicator = SINGLE_PROCESS) -> Curvature:
        sketched = comm.gather_compact(rep.sketch(self.kind, self.size, rng))
        gram, method = sketched.gram()
        store = comm.store(rep.compact())
        flops, temp = sketched.gram_costs()[method]
        return self._curvature(store, gram, {
            "route": self.kind, "gram_method": method, "gram_flops": flops,
            "gram_temp_bytes": temp, "store": store.kind,
            "sketch_shape": list(sketched.block_shape),
            "sketch_method": sketch_method(rep, self.kind, self.size)})


def sketch_method(rep: PerSampleGrads, kind: str, size: int) -> str:
    """How the sketched route sketched ``rep``: ``"none"`` when the sketch would keep the
    whole block, the Kronecker-factor method of the family
    (:func:`seng.cost.block_sketch_method`), ``"kronecker"`` for embeddings, ``"dense"``
    for materialized per-sample gradients."""
    if isinstance(rep, KroneckerFactors):
        if rep.sketch_size(size) >= rep.da * rep.dg:
            return "none"
        return cost.block_sketch_method(kind, rep.positions, rep.da, rep.dg,
                                        rep.sketch_size(size))
    if isinstance(rep, EmbeddingGrads):
        return "kronecker"
    return "none" if size >= math.prod(rep.block_shape) else "dense"


class LowRankRoute(Route):
    r"""Each per-sample gradient truncated to rank ``p``, exact for the truncation.

    For Kronecker factors the gradient of sample ``i`` (group ``j``) is the
    ``d_g x d_a`` matrix :math:`W_i = G_i^T A_i` of rank at most ``T`` (positions). It is
    replaced by :math:`\hat W_i = \hat G_i^T \hat A_i` with ``k = min(p, rank bound)`` rows
    in each factor, :math:`\hat G_i^T = U_k \operatorname{diag}(s_k)`,
    :math:`\hat A_i = V_k^T` from a randomized SVD (:func:`sketchlinalg.rsvd`; Halko,
    Martinsson, Tropp 2011, Alg. 5.1). The SVD runs on the small core of :math:`W_i`: with
    thin QRs :math:`G_i^T = Q_g R_g` (when ``T < d_g``) and :math:`A_i^T = Q_a R_a` (when
    ``T < d_a``), :math:`W_i = Q_g (R_g R_a^T) Q_a^T` and only :math:`M_i = R_g R_a^T`
    (at most ``T x T``) is factored; the factors are mapped back by ``Q_g`` and ``Q_a``.
    Small cores are cheaper to factor exactly: where one batched exact SVD of all cores
    costs fewer flops than the ``N`` calls of ``rsvd`` (``rsvd`` would also be exact where
    its sample size ``k + OVERSAMPLE`` reaches the core's smaller side), it replaces them
    (``info["svd"]`` says which ran).

    The truncated factors form ``U`` from here on: the Gram
    :math:`\langle \hat W_i, \hat W_j\rangle = \sum_{t,s} (\hat A_i \hat A_j^T)_{ts}
    (\hat G_i \hat G_j^T)_{ts}` (block sums of the ``k x k`` products), ``U^T g`` and
    ``U alpha`` are exact for them; no cross-sample shortcut is taken. By Eckart-Young, an
    exact truncation has :math:`\|W_i - \hat W_i\|_F^2 = \sum_{r > k} \sigma_r(W_i)^2`, and
    since :math:`\hat W_i` is an orthogonal projection of :math:`W_i`, the same identity
    :math:`\|W_i - \hat W_i\|_F^2 = \|W_i\|_F^2 - \|\hat W_i\|_F^2` gives the error of the
    randomized one; ``info["truncation_error"]`` is the relative Frobenius error of ``U``,
    :math:`(\sum_i \|W_i - \hat W_i\|_F^2 / \sum_i \|W_i\|_F^2)^{1/2}`. Gram entries then
    obey :math:`|\langle W_i, W_j\rangle - \langle \hat W_i, \hat W_j\rangle| \le
    \|W_i - \hat W_i\|_F \|W_j\|_F + \|\hat W_i\|_F \|W_j - \hat W_j\|_F` (Cauchy-Schwarz).
    With ``p`` at least the rank of every :math:`W_i` the route equals the exact one.
    """

    name = "lowrank"

    def __init__(self, solve_dtype: torch.dtype, rank: int) -> None:
        super().__init__(solve_dtype)
        self.rank = rank

    def build(self, rep: PerSampleGrads, rng: np.random.Generator | None = None,
              comm: Communicator = SINGLE_PROCESS) -> Curvature:
        rep = comm.gather(rep)
        if not isinstance(rep, KroneckerFactors):
            raise TypeError(f"the low-rank route needs Kronecker factors (Linear or "
                            f"convolution layers), got {type(rep).__name__}")
        truncated, info = truncate(rep, self.rank, rng)
        if truncated is None:  # non-finite captured factors: report a non-finite Gram
            gram = torch.full((rep.n, rep.n), float("nan"), device=rep.A.device)
            return self._curvature(rep, gram, {"route": "lowrank", **info})
        gram, method = truncated.gram()
        store = truncated.compact()
        return self._curvature(store, gram, {
            "route": "lowrank", "gram_method": method, "store": store.kind, **info})


class AutoRoute(Route):
    """Exact, CountSketch or low-rank per layer and curvature update, by the cost model
    (:func:`seng.cost.choose_route`) on the captured shapes of the whole batch; the choice
    and its flops are in the curvature's ``info``."""

    name = "auto"

    def __init__(self, solve_dtype: torch.dtype, size: int, rank: int | None) -> None:
        super().__init__(solve_dtype)
        self.size, self.rank = size, rank

    def choose(self, rep: PerSampleGrads) -> tuple[Route, dict[str, float]]:
        costs = {"exact_flops": rep.gram_flops(),
                 "sketched_flops": rep.sketch_flops(cost.AUTO_KIND, self.size)}
        low = None
        if self.rank is not None and isinstance(rep, KroneckerFactors):
            low = rep.lowrank_flops(self.rank)
        if low is not None:
            costs["lowrank_flops"] = low
        name = cost.choose_route(costs["exact_flops"], costs["sketched_flops"],
                                 rep.apply_flops() / 2, low)
        if name == "exact":
            return ExactRoute(self.solve_dtype), costs
        if name == "lowrank":
            return LowRankRoute(self.solve_dtype, self.rank), costs  # type: ignore[arg-type]
        return SketchedRoute(self.solve_dtype, name, self.size), costs

    def build(self, rep: PerSampleGrads, rng: np.random.Generator | None = None,
              comm: Communicator = SINGLE_PROCESS) -> Curvature:
        rep = comm.gather(rep)  # the whole batch decides, and is then built in place
        route, costs = self.choose(rep)
        curvature = route.build(rep, rng, SINGLE_PROCESS)
        curvature.info.update(costs)
        return curvature


#: Every valid route setting: the routes above by name, and each sketchlinalg family.
ROUTE_NAMES = ("exact", "auto", *sl.KINDS, "lowrank")


def check_route(route: Any, where: str) -> str:
    """``route`` if it is one of :data:`ROUTE_NAMES`, else a ``ValueError`` naming ``where``."""
    if not isinstance(route, str) or route not in ROUTE_NAMES:
        raise ValueError(f"Invalid route value for {where}: {route!r} (valid: "
                         f"{', '.join(repr(r) for r in ROUTE_NAMES)})")
    return route


def make_route(name: str, *, solve_dtype: torch.dtype, sketch_size: int,
               lowrank_rank: int) -> Route:
    """The route object for the setting ``name`` (``"exact"``, ``"auto"``, ``"lowrank"`` or
    a sketch family; :data:`ROUTE_NAMES`)."""
    check_route(name, "route")
    if name == "exact":
        return ExactRoute(solve_dtype)
    if name == "auto":
        return AutoRoute(solve_dtype, sketch_size, lowrank_rank)
    if name == "lowrank":
        return LowRankRoute(solve_dtype, lowrank_rank)
    return SketchedRoute(solve_dtype, name, sketch_size)


def truncate(
    rep: KroneckerFactors, rank: int, rng: np.random.Generator
) -> tuple[KroneckerFactors | None, dict[str, Any]]:
    """The low-rank route's truncation: ``(truncated factors, info)``; ``None`` factors
    when the captured ones are not finite."""
    n, g, t, da, dg = rep.n, rep.groups, rep.positions, rep.da, rep.dg
    Gt = rep.G.reshape(n * g, t, dg).transpose(1, 2)  # (ng, dg, T)
    At = rep.A.reshape(n * g, t, da).transpose(1, 2)  # (ng, da, T)
    Qg, Rg = torch.linalg.qr(Gt) if t < dg else (None, Gt)
    Qa, Ra = torch.linalg.qr(At) if t < da else (None, At)
    M = Rg @ Ra.transpose(1, 2)  # (ng, rg, ra): W_i = Qg M_i Qa^T
    if not all_finite(M):
        return None, {"rank": 0, "svd": "none"}
    rg, ra = M.shape[1:]
    k = min(rank, rg, ra)
    svd_costs = cost.svd_costs(rg, ra, k)
    if svd_costs["exact"] <= svd_costs["rsvd"]:
        U, s, Vh = torch.linalg.svd(M, full_matrices=False)
        U, s, Vh = U[..., :k], s[:, :k], Vh[:, :k]
        method = "exact"
    else:
        parts = [sl.rsvd(Mi, k, oversample=cost.OVERSAMPLE, power_iters=cost.POWER_ITERS,
                         rng=rng) for Mi in M]
        U, s, Vh = (torch.stack(z) for z in zip(*parts, strict=True))
        method = "rsvd"
    Ghat = (U * s[:, None, :]).transpose(1, 2)  # (ng, k, rg)
    if Qg is not None:
        Ghat = Ghat @ Qg.transpose(1, 2)
    Ahat = Vh if Qa is None else Vh @ Qa.transpose(1, 2)  # (ng, k, da)
    total = float(M.double().square().sum())
    kept = float(s.double().square().sum())
    error = (max(total - kept, 0.0) / total) ** 0.5 if total > 0 else 0.0
    truncated = KroneckerFactors(Ahat.reshape(n, g, k, da), Ghat.reshape(n, g, k, dg))
    return truncated, {"rank": k, "svd": method, "truncation_error": error}
