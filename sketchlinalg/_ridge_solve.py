"""The least-squares machinery shared by :func:`sketchlinalg.ridge` on in-memory and on Dask
arrays: the augmented ``[A b; sqrt(lam) I 0]`` system, its right factor with the
minimum-norm rank rule, and the preconditioned Krylov runs. ``P`` is either driver's problem
(shape, ``lam``, ``b``, ``xp``, ``eps`` and the products with ``A``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import backend
from ._validation import check_int
from .comps.lsqr import lsqr
from .comps.pcg import pcg
from .sketching import SketchingOperator


def resolve_sketch_size(sketch: Any, sketch_size: Any, m: int, n: int) -> int:
    """The rows of the sketch: ``sketch_size``, else an operator's own, else ``min(4n, m)``;
    ``n <= d <= m`` is required."""
    if sketch_size is None:
        return sketch.shape[0] if isinstance(sketch, SketchingOperator) else min(4 * n, m)
    sketch_size = check_int(sketch_size, "sketch_size", minimum=1)
    if not n <= sketch_size <= m:
        raise ValueError(f"sketch_size must satisfy n <= sketch_size <= m ({n} <= d <= {m}),"
                         f" got {sketch_size}")
    return sketch_size


def augment(P: Any, top: Any, rhs: Any) -> Any:
    """``[top rhs; sqrt(lam) I 0]`` (the last block only when lam > 0); ``rhs`` of shape
    ``(rows,)`` or ``(rows, k)``."""
    xp, n = P.xp, P.shape[1]
    R = rhs[:, None] if rhs.ndim == 1 else rhs
    X = xp.concat([top, R], axis=1)
    if P.lam == 0:
        return X
    return xp.concat([X, xp.concat([math.sqrt(P.lam) * P.eye(n), P.zeros((n, R.shape[1]))],
                                   axis=1)], axis=0)


class RightFactor:
    r"""From the R factor of ``[X | C]`` (``X = Q R``, ``Z = (Q^T C)_{1:n}``, ``C`` of one or
    more columns): ``N = R^{-1}`` and ``y0 = Z``, so that ``N y0`` solves ``min |X x - c|``
    per column.

    The rank rule (that of ``numpy.linalg.lstsq`` and ``matrix_rank``): singular values of
    ``R`` (those of ``X``) at most ``max(m, n) eps sigma_1`` count as zero, ``m x n`` the shape
    of ``A``. When the condition estimate of ``R`` exceeds a tenth of ``1/(max(m, n) eps)``
    (a margin for the estimate, a lower bound; an exactly zero diagonal entry, as a zero
    column of ``A`` gives, counts as infinite), the SVD ``R = U \Sigma V^T`` decides; if it
    finds rank ``r < n``, ``N = V_r \Sigma_r^{-1}`` and ``y0 = U_r^T Z`` give the
    minimum-norm solution on the numerical range."""

    def __init__(self, P: Any, Rt: Any) -> None:
        xp, (m, n) = P.xp, P.shape
        self.R, z = Rt[:n, :n], Rt[:n, n] if P.b.ndim == 1 else Rt[:n, n:]
        self.cond = cond_triangular(xp, self.R, lower=False)
        self.V = None
        self.y0 = z
        self.truncation = ""
        self.sketch = ""  # the sketch's label, set by its builder
        rtol = max(m, n) * P.eps
        if self.cond > 0.1 / rtol:
            U, s, Vh = xp.linalg.svd(self.R)
            s_host = backend.to_host(s).astype(np.float64)
            r = int(np.sum(s_host > rtol * s_host[0]))
            self.cond = float(s_host[0] / s_host[r - 1]) if r > 0 else math.inf
            if r < n:
                self.V = Vh[:r, :].T / s[None, :r]  # V_r Sigma_r^{-1}
                self.y0 = U[:, :r].T @ z
                self.truncation = f" + truncated SVD of R (rank {r} of {n})"

    def apply(self, y: Any) -> Any:
        """``N y``."""
        if self.V is not None:
            return self.V @ y
        return backend.solve_triangular(self.R, y, lower=False)

    def apply_t(self, z: Any) -> Any:
        """``N^T z``."""
        if self.V is not None:
            return self.V.T @ z
        return backend.solve_triangular(self.R, z, lower=False, trans=True)


def krylov_columns(P: Any, pre: RightFactor, d: int, solver: str, tol: float | None,
                    maxiter: int | None) -> tuple[Any, dict[str, Any]]:
    """:func:`_krylov` on each column of a 2-D ``b``; the per-run entries of ``info`` become
    lists with one entry per column (``converged``: all of them)."""
    if P.b.ndim == 1:
        return _krylov(P, pre, P.b, pre.y0, d, solver, tol, maxiter)
    runs = [_krylov(P, pre, P.b[:, j], pre.y0[:, j], d, solver, tol, maxiter)
            for j in range(P.nrhs)]
    infos = [k for _, k in runs]
    merged: dict[str, Any] = {key: [k[key] for k in infos] for key in infos[0]}
    merged.update(solver=solver, converged=all(merged["converged"]))
    return P.xp.stack([x for x, _ in runs], axis=1), merged


def _krylov(P: Any, pre: RightFactor, b: Any, y0: Any, d: int, solver: str,
            tol: float | None, maxiter: int | None) -> tuple[Any, dict[str, Any]]:
    """LSQR on [A; sqrt(lam) I] N (or CG on its normal equations) from the sketch solution
    ``y0``, for one right-hand side ``b``."""
    xp, (m, n) = P.xp, P.shape
    root = math.sqrt(P.lam)

    def matvec(y: Any) -> Any:
        t = pre.apply(y)
        return xp.concat([P.matvec(t), root * t]) if P.lam > 0 else P.matvec(t)

    def rmatvec(u: Any) -> Any:
        s = P.rmatvec(u[:m])
        return pre.apply_t(s + root * u[m:] if P.lam > 0 else s)

    rhs = xp.concat([b, P.zeros((n,))]) if P.lam > 0 else b
    if solver == "cg":
        y, kinfo = pcg(lambda v: rmatvec(matvec(v)), rmatvec(rhs), x0=y0, rtol=tol,
                       maxiter=2 * y0.shape[0] if maxiter is None else maxiter)
        return pre.apply(y), {"solver": "cg", "iterations": kinfo["iterations"],
                              "converged": kinfo["converged"], "restarts": 0,
                              "residual_history": kinfo["residuals"]}
    y, kinfo = lsqr((matvec, rmatvec), rhs, x0=y0, atol=tol, btol=tol, maxiter=maxiter)
    runs = [kinfo]
    if pre.cond > P.eps ** -0.25:
        # Ill-conditioned: restart once from the converged iterate (iterative refinement with
        # the residual recomputed; Epperly, Meier and Nakatsukasa 2024). The warm start's
        # forward error exceeds Householder QR's by up to ~ |S| ~ sqrt(m/d) (rounding of S A)
        # while its residual is already at rounding level, so the restart runs at least the
        # k steps that contract 10 sqrt(m/d) by the LSRN rate sqrt(n/d): k = log(10 sqrt(m/d))
        # / log(sqrt(d/n)).
        k_min = 0 if d == n else math.ceil(math.log(10 * math.sqrt(m / d))
                                           / math.log(math.sqrt(d / n)))
        y, kinfo = lsqr((matvec, rmatvec), rhs, x0=y, atol=tol, btol=tol, maxiter=maxiter,
                        miniter=k_min)
        runs.append(kinfo)
    return pre.apply(y), {
        "solver": "lsqr", "iterations": sum(k["iterations"] for k in runs),
        "iterations_per_run": [k["iterations"] for k in runs],
        "converged": runs[-1]["converged"], "restarts": len(runs) - 1,
        "residual_history": np.concatenate([k["residuals"] for k in runs])}


def cond_triangular(xp: Any, T: Any, *, lower: bool, iters: int = 10) -> float:
    r"""Estimate of :math:`\mathrm{cond}_2(T)` for a square triangular ``T``: power iteration on
    :math:`T^T T` and inverse iteration with triangular solves, ``iters`` steps each
    (:math:`O(n^2)` per step; a lower bound that is typically within a factor 2)."""
    n = T.shape[0]
    if not bool(xp.all(xp.linalg.diagonal(T) != 0)):
        return math.inf  # exactly singular (a zero column of A): no triangular solve
    start = np.random.default_rng(0).standard_normal(n)  # fixed start vector, no global state
    v = backend.from_host(start / np.linalg.norm(start), like=T, dtype=T.dtype)
    w = v
    big = small = 0.0
    for _ in range(iters):
        w = T.T @ (T @ w)
        big = float(xp.linalg.vector_norm(w))
        if not big > 0 or not math.isfinite(big):
            break
        w = w / big
    w = v
    for _ in range(iters):
        w = backend.solve_triangular(T, backend.solve_triangular(T, w, lower=lower, trans=True),
                                      lower=lower)
        small = float(xp.linalg.vector_norm(w))
        if not small > 0 or not math.isfinite(small):
            return math.inf
        w = w / small
    return math.sqrt(big * small) if big > 0 else math.inf
