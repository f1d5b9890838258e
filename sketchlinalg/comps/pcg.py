"""Preconditioned conjugate gradients for symmetric positive definite systems, on the array API."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .._linop import as_matrix
from .._validation import check_dense, check_finite, check_int, check_nonnegative
from ..backend import Precision, backend_name, namespace, precision

__all__ = ["pcg"]


def pcg(
    A: Any,
    b: Any,
    *,
    M: Any = None,
    x0: Any = None,
    rtol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    callback: Callable[[Any], None] | None = None,
) -> tuple[Any, dict[str, Any]]:
    r"""Solve :math:`A x = b` for symmetric positive definite :math:`A` by preconditioned CG.

    With :math:`M \approx A^{-1}` symmetric positive definite, :math:`r_0 = b - A x_0`,
    :math:`z_0 = M r_0`, :math:`p_0 = z_0` (Hestenes and Stiefel 1952; Saad, *Iterative
    Methods for Sparse Linear Systems*, 2nd ed., Alg. 9.1):

    .. math::

        \alpha_k = \frac{r_k^T z_k}{p_k^T A p_k},\quad x_{k+1} = x_k + \alpha_k p_k,\quad
        r_{k+1} = r_k - \alpha_k A p_k,\quad z_{k+1} = M r_{k+1},\quad
        p_{k+1} = z_{k+1} + \frac{r_{k+1}^T z_{k+1}}{r_k^T z_k} p_k.

    The error :math:`e_k = x_k - x_*` decreases monotonically in the :math:`A`-norm, and
    :math:`\|e_k\|_A \le 2 \left(\frac{\sqrt{\kappa} - 1}{\sqrt{\kappa} + 1}\right)^k
    \|e_0\|_A` with :math:`\kappa = \mathrm{cond}(M^{1/2} A M^{1/2})`.
    Stops when :math:`\|r_k\|_2 \le \max(\text{rtol}\,\|b\|_2, \text{atol})`.

    Parameters
    ----------
    A : array of shape (n, n), scipy.sparse matrix, LinearOperator, or callable
        A dense array of any backend, a sparse matrix or ``LinearOperator`` (NumPy ``b``), or
        a callable ``matvec(v) = A v`` on 1-D arrays of the backend of ``b``, in the working
        dtype (float32 for a half-precision ``b``). No SciPy call is
        made by the iteration itself.
    b : array of shape (n,)
    M : array of shape (n, n) or callable, optional
        The preconditioner, applied as ``M @ r`` (an approximation of :math:`A^{-1}`); None
        for plain CG.
    x0 : array of shape (n,), optional
        Starting point (default 0).
    rtol, atol : float
        Relative and absolute residual tolerances; ``rtol`` defaults to ``10 * eps`` of the
        working dtype for float64 and ``100 * eps`` for float32.
    maxiter : int, optional
        Iteration cap, default ``10 * n``.
    callback : callable, optional
        Called as ``callback(x_k)`` after every iteration.

    Returns
    -------
    x : array of shape (n,)
        On the backend and device of ``b``, in the promoted floating dtype of ``A`` and ``b``
        (``b``'s for a callable); float16/bfloat16 are computed in float32 and cast back.
    info : dict
        ``"iterations"``, ``"converged"`` (bool) and ``"residuals"``: a NumPy array of the
        recursively updated :math:`\|r_k\|_2`, :math:`k = 0, 1, \dots`.

    Raises
    ------
    ValueError
        For shape mismatches or NaN/Inf in ``b`` or ``x0``; ``FloatingPointError`` when
        :math:`p_k^T A p_k \le 0` or :math:`r_k^T z_k < 0` (``A`` or ``M`` not positive
        definite) or the iteration overflows.
    """
    xp, _ = check_dense(b, "b", ndim=(1,))
    check_finite(xp, b, "b")
    n = b.shape[0]
    matvec, prec = _square_operator(A, b, "A")
    precond = None if M is None else _square_operator(M, b, "M", prec)[0]
    b = prec.compute(b)
    eps = prec.eps
    rtol = (10 if eps < 1e-10 else 100) * eps if rtol is None else check_nonnegative(rtol, "rtol")
    atol = check_nonnegative(atol, "atol")
    maxiter = 10 * n if maxiter is None else check_int(maxiter, "maxiter", minimum=0)

    if x0 is None:
        x = xp.zeros_like(b)
        r = b
    else:
        check_dense(x0, "x0", ndim=(1,))
        check_finite(xp, x0, "x0")
        if tuple(x0.shape) != (n,):
            raise ValueError(f"shape mismatch: x0 has shape {tuple(x0.shape)}, expected {(n,)}")
        x = prec.compute(x0)
        r = b - matvec(x)
    threshold = max(rtol * _norm(xp, b), atol)
    residuals = [_norm(xp, r)]
    info: dict[str, Any] = {"iterations": 0, "converged": residuals[0] <= threshold}
    if info["converged"]:
        info["residuals"] = np.array(residuals)
        return prec.result(x), info
    z = r if precond is None else precond(r)
    p = z
    rz = _dot(xp, r, z)
    for k in range(1, maxiter + 1):
        Ap = matvec(p)
        pAp = _dot(xp, p, Ap)
        if not pAp > 0 or not math.isfinite(pAp):
            raise FloatingPointError(
                f"pcg: p^T A p = {pAp:.3e} at iteration {k}; A is not symmetric positive "
                f"definite (or the iteration overflowed)"
            )
        step = rz / pAp
        x = x + step * p
        r = r - step * Ap
        residuals.append(_norm(xp, r))
        info["iterations"] = k
        if callback is not None:
            callback(x)
        if residuals[-1] <= threshold:
            info["converged"] = True
            break
        z = r if precond is None else precond(r)
        rz_new = _dot(xp, r, z)
        if rz_new < 0:
            raise FloatingPointError(
                f"pcg: r^T M r = {rz_new:.3e} < 0; the preconditioner M is not positive definite"
            )
        p = z + (rz_new / rz) * p
        rz = rz_new
    info["residuals"] = np.array(residuals)
    return prec.result(x), info


def _square_operator(A: Any, b: Any, name: str, prec: Precision | None = None
                     ) -> tuple[Callable[[Any], Any], Precision]:
    """``(matvec, precision)`` for an n x n array, sparse matrix, LinearOperator or callable
    (then the dtypes are ``b``'s). A given ``prec`` (``A``'s, for the preconditioner ``M``)
    fixes the working dtype ``M`` is applied in."""
    xp = namespace(b)
    n = b.shape[0]
    if callable(A) and not hasattr(A, "shape"):
        return A, precision(xp, b.dtype, name="b") if prec is None else prec
    Mx = as_matrix(A, name)
    if Mx.shape != (n, n):
        raise ValueError(
            f"shape mismatch: {name} has shape {Mx.shape} but b has shape {(n,)}; {name} must "
            f"be {n} x {n}"
        )
    if Mx.kind != "dense":
        if backend_name(b) != "numpy":
            raise TypeError(f"b must be a NumPy array when {name} is a scipy.sparse matrix or "
                            f"operator")
        return Mx.matmat, precision(xp, Mx.dtype, b.dtype, name="b") if prec is None else prec
    namespace(Mx.data, b)  # one backend for both
    own = precision(xp, A.dtype, b.dtype, name="b")
    data = (own if prec is None else prec).compute(Mx.data)
    return (lambda v: data @ v), own if prec is None else prec


def _norm(xp: Any, v: Any) -> float:
    return float(xp.linalg.vector_norm(v))


def _dot(xp: Any, u: Any, v: Any) -> float:
    return float(xp.vecdot(u, v))
