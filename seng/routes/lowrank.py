"""The low-rank route: each per-sample gradient truncated to rank ``p`` (large convolutions)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

import sketchlinalg as sl
from sketchlinalg._backend import all_finite

from .cost import choose_gram_method
from .curvature import Curvature
from .persample import KroneckerFactors, PerSampleGrads, _kron_gram_costs

#: Oversampling and power iterations of the randomized SVD of each per-sample gradient.
OVERSAMPLE = 10
POWER_ITERS = 2

#: Flops charged for one Python-level ``sketchlinalg.rsvd`` call (its small QRs and
#: bookkeeping cost about a millisecond whatever the size).
RSVD_CALL_FLOPS = 1e7


def build(
    rep: PerSampleGrads, *, rank: int, rng: np.random.Generator, solve_dtype: torch.dtype,
    **_: Any,
) -> Curvature:
    r"""Curvature of the per-sample gradients truncated to rank ``p``, exact for them.

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
    if not isinstance(rep, KroneckerFactors):
        raise TypeError(f"the low-rank route needs Kronecker factors (Linear or convolution "
                        f"layers), got {type(rep).__name__}")
    truncated, info = truncate(rep, rank, rng)
    if truncated is None:  # non-finite captured factors: report a non-finite Gram
        gram = torch.full((rep.n, rep.n), float("nan"), dtype=solve_dtype, device=rep.A.device)
        return Curvature(rep, gram, {"route": "lowrank", **info})
    gram, method = truncated.gram()
    store = truncated.compact()
    return Curvature(store, gram.to(solve_dtype), {
        "route": "lowrank", "gram_method": method, "store": store.kind, **info})


def truncate(
    rep: KroneckerFactors, rank: int, rng: np.random.Generator
) -> tuple[KroneckerFactors | None, dict[str, Any]]:
    """``(truncated factors, info)``; ``None`` factors when the captured ones are not
    finite."""
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
    svd_costs = _svd_costs(rg, ra, k)
    if svd_costs["exact"] <= svd_costs["rsvd"]:
        U, s, Vh = torch.linalg.svd(M, full_matrices=False)
        U, s, Vh = U[..., :k], s[:, :k], Vh[:, :k]
        method = "exact"
    else:
        parts = [sl.rsvd(Mi, k, oversample=OVERSAMPLE, power_iters=POWER_ITERS, rng=rng)
                 for Mi in M]
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


def flops(rep: PerSampleGrads, rank: int) -> float | None:
    """Flops of :func:`build` from the shapes alone; None where the route does not apply
    (not Kronecker factors) or truncates nothing (``rank`` >= the rank bound)."""
    if not isinstance(rep, KroneckerFactors):
        return None
    n, g, t, da, dg = rep.n, rep.groups, rep.positions, rep.da, rep.dg
    rg, ra = min(t, dg), min(t, da)
    k = min(rank, rg, ra)
    if k == min(rg, ra):
        return None
    per = 2.0 * rg * t * ra  # the core M
    if t < dg:
        per += 4.0 * dg * t * t + 2.0 * dg * rg * k  # Householder QR with Q, map back
    if t < da:
        per += 4.0 * da * t * t + 2.0 * ra * da * k
    per += min(_svd_costs(rg, ra, k).values())
    costs = _kron_gram_costs(n, g, k, da, dg, rep.G.element_size())
    return n * g * per + costs[choose_gram_method(costs)][0]


def _svd_costs(m: int, n: int, k: int) -> dict[str, float]:
    """Flops of the rank-``k`` truncated SVD of one ``m x n`` core: exact (R-SVD,
    ``6 M N^2 + 20 N^3`` with ``M >= N``; Golub and Van Loan, Matrix Computations, Fig.
    8.6.1) or randomized (``2q + 2`` products with ``l`` columns, as many QRs, plus the
    per-call overhead)."""
    big, small = max(m, n), min(m, n)
    l = min(k + OVERSAMPLE, small)
    passes = 2 * POWER_ITERS + 2
    return {"exact": 6.0 * big * small * small + 20.0 * small**3,
            "rsvd": passes * (2.0 * m * n * l + 4.0 * big * l * l) + RSVD_CALL_FLOPS}

