"""Factor ``G + lam I`` for a positive semidefinite Gram ``G``: the small system of the
Woodbury identity, shared by ``woodbury_solve`` and the SENG optimizer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

from .. import backend
from .._validation import check_dense, check_finite, check_real


@dataclass
class DampedGramFactor:
    """A factorization of ``G + lam I`` that solves ``(G + lam I) X = B``.

    ``method`` is ``"cholesky"`` (``L`` lower triangular) or, when Cholesky failed,
    ``"eigh"`` (``w``, ``V`` with ``G = V diag(w) V^T`` and rounding-level negative ``w``
    clipped to 0). ``cond`` is the condition number of ``G + lam I`` (exact from eigh; from
    Cholesky the lower bound ``(max L_ii / min L_ii)^2``). The factors are held in the
    working dtype (float32 for a half-precision ``G``); ``dtype`` is ``G``'s own.
    """

    method: str
    lam: float
    cond: float
    L: Any = None
    w: Any = None
    V: Any = None
    dtype: Any = None

    @property
    def fallback(self) -> bool:
        """Whether Cholesky failed and the eigendecomposition was used instead."""
        return self.method == "eigh"

    def solve(self, B: Any) -> Any:
        """``(G + lam I)^{-1} B`` for ``B`` of shape ``(n,)`` or ``(n, k)``, computed in the
        working dtype of the factors and returned in the promoted dtype of ``G`` and ``B``
        (half precision in, half precision out)."""
        F = self.L if self.method == "cholesky" else self.V
        xp = backend.namespace(F, B)
        prec = backend.precision(xp, F.dtype if self.dtype is None else self.dtype, B.dtype,
                                  name="B")
        B = prec.compute(B)
        if self.method == "cholesky":
            L = prec.compute(self.L)
            Y = backend.solve_triangular(L, B, lower=True)
            return prec.result(backend.solve_triangular(L, Y, lower=True, trans=True))
        V, w = prec.compute(self.V), prec.compute(self.w)
        scale = 1.0 / (w + self.lam)
        return prec.result(V @ ((V.T @ B) * (scale if B.ndim == 1 else scale[:, None])))


def damped_gram_factor(G: Any, lam: float) -> DampedGramFactor:
    r"""Factor :math:`G + \lambda I` for a symmetric positive semidefinite :math:`G`.

    For :math:`\lambda > 0` the matrix is positive definite, so Cholesky is tried first.
    When :math:`\lambda` is below the rounding level of :math:`\|G\|`, the computed matrix may
    not be numerically positive definite and Cholesky fails; the factorization then falls
    back to :math:`G = V \operatorname{diag}(w) V^T` with the rounding-level negative
    :math:`w_i` set to 0, so that every eigenvalue of the solved matrix is at least
    :math:`\lambda`. The choice is reported in ``method`` (the caller decides how to surface
    it: ``woodbury_solve`` warns, SENG counts it).

    Parameters
    ----------
    G : array of shape (n, n)
        A symmetric PSD matrix of any backend (a Gram ``U^T U``): float32 or float64, or
        float16/bfloat16, factored in float32 (``solve`` casts back).
    lam : float
        The shift, finite and > 0.

    Returns
    -------
    DampedGramFactor
        With ``solve(B)``, ``method``, ``fallback`` and ``cond``.
    """
    xp, _ = check_dense(G, "G", ndim=(2,))
    if G.shape[0] != G.shape[1]:
        raise ValueError(f"G must be square, got shape {tuple(G.shape)}")
    check_finite(xp, G, "G")
    lam = check_real(lam, "lam")
    if not np.isfinite(lam) or lam <= 0:
        raise ValueError(f"lam must be finite and > 0, got {lam}")
    dtype = G.dtype
    G = backend.precision(xp, dtype, name="G").compute(G)
    eye = xp.eye(G.shape[0], dtype=G.dtype, device=array_api_compat.device(G))
    L = backend.cholesky(G + lam * eye)
    if L is not None:
        diag = backend.to_host(xp.linalg.diagonal(L)).astype(np.float64)
        cond = float((diag.max() / diag.min()) ** 2) if diag.size else 1.0  # n = 0: empty
        return DampedGramFactor("cholesky", lam, cond, L=L, dtype=dtype)
    w, V = xp.linalg.eigh(G)
    w = xp.where(w > 0, w, xp.zeros_like(w))
    wh = backend.to_host(w).astype(np.float64)
    return DampedGramFactor("eigh", lam, float((wh.max() + lam) / (wh.min() + lam)), w=w, V=V,
                            dtype=dtype)
