"""LSQR (Paige and Saunders 1982) for min ||A x - b||_2, written against the array API."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .._linop import as_matrix
from .._validation import check_dense, check_finite, check_int, check_nonnegative
from ..backend import Precision, backend_name, namespace, precision

__all__ = ["lsqr"]

Operator = Any  # a dense array, scipy.sparse matrix, LinearOperator, or (matvec, rmatvec)


def lsqr(
    A: Operator,
    b: Any,
    *,
    x0: Any = None,
    atol: float | None = None,
    btol: float | None = None,
    maxiter: int | None = None,
    miniter: int = 0,
    callback: Callable[[Any], None] | None = None,
) -> tuple[Any, dict[str, Any]]:
    r"""Solve :math:`\min_x \|A x - b\|_2` by LSQR.

    LSQR (Paige and Saunders, ACM TOMS 8(1), 1982, Sec. 4) runs Golub-Kahan
    bidiagonalization :math:`\beta_1 u_1 = r_0`, :math:`\alpha_1 v_1 = A^T u_1`,

    .. math::

        \beta_{k+1} u_{k+1} = A v_k - \alpha_k u_k, \qquad
        \alpha_{k+1} v_{k+1} = A^T u_{k+1} - \beta_{k+1} v_k,

    and solves the projected bidiagonal least-squares problem by Givens rotations, which
    update :math:`x_k` with one vector recurrence per step. It is mathematically CG on the
    normal equations :math:`A^T A x = A^T b` but numerically more reliable; the error after
    :math:`k` steps falls like :math:`2 ((\kappa - 1)/(\kappa + 1))^k` with
    :math:`\kappa = \mathrm{cond}(A)`, which is what a sketched right preconditioner makes
    close to 1 (see :func:`sketchlinalg.ridge`).

    Stopping (the rules S1 and S2 of the paper, with the running estimates
    :math:`\|\bar A\|_F`, :math:`\|r_k\|`, :math:`\|A^T r_k\|`): stop when
    :math:`\|r_k\| \le \text{btol}\,\|b\| + \text{atol}\,\|A\|\,\|x_k\|` (consistent systems)
    or :math:`\|A^T r_k\| \le \text{atol}\,\|A\|\,\|r_k\|` (least squares).

    Parameters
    ----------
    A : array of shape (m, n), scipy.sparse matrix, LinearOperator, or (matvec, rmatvec)
        A dense array of any backend, a sparse matrix or a ``LinearOperator`` (NumPy ``b``),
        or a pair of callables ``matvec(v) = A v`` and ``rmatvec(u) = A^T u`` that take and
        return 1-D arrays of the backend of ``b``, in the working dtype (float32 for a
        half-precision ``b``). Only products are used: the routine makes no
        SciPy call of its own and runs on any backend.
    b : array of shape (m,)
    x0 : array of shape (n,), optional
        Starting point; LSQR then runs on :math:`r_0 = b - A x_0`.
    atol, btol : float, optional
        Relative tolerances of the stopping rules; default ``10 * eps`` of the working dtype
        for float64 and ``100 * eps`` for float32 (set them larger for a cheaper, looser
        answer).
    maxiter : int, optional
        Iteration cap, default ``2 * n``.
    miniter : int
        Iterations run before the tolerance tests apply (default 0). For iterative refinement
        from an iterate whose residual already sits at rounding level, where the forward
        error still falls by the contraction factor per step while the residual cannot show
        it.
    callback : callable, optional
        Called as ``callback(x_k)`` after every iteration.

    Returns
    -------
    x : array of shape (n,)
        On the backend and device of ``b``, in the promoted floating dtype of ``A`` and ``b``
        (``b``'s for callables); float16/bfloat16 are computed in float32 and cast back.
    info : dict
        ``"iterations"`` (int), ``"converged"`` (bool), ``"reason"`` (``"consistent"``,
        ``"least_squares"``, ``"exact"`` or ``"maxiter"``), ``"residuals"`` (NumPy array of
        the estimates :math:`\|b - A x_k\|` for :math:`k = 0, 1, \dots`),
        ``"normal_residuals"`` (estimates of :math:`\|A^T (b - A x_k)\|`), ``"anorm"`` (the
        Frobenius-norm estimate of :math:`A` from the bidiagonalization).
    """
    xp, _ = check_dense(b, "b", ndim=(1,))
    check_finite(xp, b, "b")
    matvec, rmatvec, prec, ncols = _operator(A, b)
    b = prec.compute(b)
    # Default tolerances: a few ulps of the working precision (the preconditioned problems of
    # ridge have cond ~ 1, so this costs a handful of extra iterations, not a stall).
    eps = prec.eps
    default_tol = (10 if eps < 1e-10 else 100) * eps
    atol = default_tol if atol is None else check_nonnegative(atol, "atol")
    btol = default_tol if btol is None else check_nonnegative(btol, "btol")

    bnorm = _norm(xp, b)
    u = b
    if x0 is not None:
        check_dense(x0, "x0", ndim=(1,))
        check_finite(xp, x0, "x0")
        if ncols is not None and tuple(x0.shape) != (ncols,):
            raise ValueError(f"shape mismatch: x0 has shape {tuple(x0.shape)}, A has {ncols} "
                             f"columns")
        x = prec.compute(x0)
        u = b - _checked(matvec(x), b.shape, "matvec(x0)")
    beta = _norm(xp, u)
    v = _first_rmatvec(rmatvec, u / beta if beta > 0 else u, ncols, A)
    if x0 is not None and tuple(x0.shape) != tuple(v.shape):
        raise ValueError(f"shape mismatch: x0 has shape {tuple(x0.shape)} but rmatvec returned "
                         f"shape {tuple(v.shape)} (A has {v.shape[0]} columns)")
    n = v.shape[0]
    if x0 is None:
        x = xp.zeros_like(v)
    maxiter = 2 * n if maxiter is None else check_int(maxiter, "maxiter", minimum=0)
    miniter = check_int(miniter, "miniter", minimum=0)

    info: dict[str, Any] = {"iterations": 0, "converged": True, "reason": "exact"}
    residuals, normal_residuals = [beta], []
    if beta == 0:
        info.update(residuals=np.array(residuals), normal_residuals=np.zeros(1), anorm=0.0)
        return prec.result(x), info
    u = u / beta
    alpha = _norm(xp, v)
    normal_residuals.append(alpha * beta)
    if alpha == 0:  # A^T r0 = 0: x0 already solves the least-squares problem
        info.update(residuals=np.array(residuals), normal_residuals=np.array(normal_residuals),
                    anorm=0.0)
        return prec.result(x), info
    v = v / alpha
    w = v
    phibar, rhobar = beta, alpha
    anorm2 = 0.0
    info.update(converged=False, reason="maxiter")

    for k in range(1, maxiter + 1):
        u = _checked(_first_matvec(matvec, v, k, A), b.shape, "matvec(v)") - alpha * u
        beta = _norm(xp, u)
        _finite(beta)
        if beta > 0:
            u = u / beta
            anorm2 += alpha**2 + beta**2
            v = _checked(rmatvec(u), (n,), "rmatvec(u)") - beta * v
            alpha = _norm(xp, v)
            _finite(alpha)
            if alpha > 0:
                v = v / alpha
        else:
            anorm2 += alpha**2
            alpha = 0.0
        # Givens rotation eliminating beta_{k+1} from the lower bidiagonal matrix.
        rho = math.hypot(rhobar, beta)
        c, s = rhobar / rho, beta / rho
        theta = s * alpha
        rhobar = -c * alpha
        phi = c * phibar
        phibar = s * phibar
        x = x + (phi / rho) * w
        w = v - (theta / rho) * w
        if callback is not None:
            callback(x)

        anorm = math.sqrt(anorm2)
        rnorm = abs(phibar)
        arnorm = alpha * abs(s * phi)
        residuals.append(rnorm)
        normal_residuals.append(arnorm)
        info["iterations"] = k
        if alpha == 0 or beta == 0:  # the Krylov space is exhausted: x is exact
            info.update(converged=True, reason="exact")
            break
        if k < miniter:
            continue
        if rnorm <= btol * bnorm + atol * anorm * _norm(xp, x):
            info.update(converged=True, reason="consistent")
            break
        if arnorm <= atol * anorm * rnorm:
            info.update(converged=True, reason="least_squares")
            break
    info.update(residuals=np.array(residuals), normal_residuals=np.array(normal_residuals),
                anorm=math.sqrt(anorm2))
    return prec.result(x), info


def _operator(A: Operator, b: Any) -> tuple[Callable[[Any], Any], Callable[[Any], Any],
                                            Precision, int | None]:
    """``(matvec, rmatvec, precision, columns)`` for an array, sparse matrix, LinearOperator
    or a pair of callables (then the dtypes are ``b``'s and the columns unknown). The result
    dtype is the promotion of ``A``'s (the input's, before any half-to-float32 cast) and
    ``b``'s."""
    xp = namespace(b)
    if isinstance(A, tuple):
        if len(A) != 2 or not all(callable(f) for f in A):
            raise TypeError("A given as a tuple must be (matvec, rmatvec), two callables")
        return A[0], A[1], precision(xp, b.dtype, name="b"), None
    M = as_matrix(A, "A")
    if M.shape[0] != b.shape[0]:
        raise ValueError(f"shape mismatch: A has shape {M.shape} but b has shape {tuple(b.shape)}")
    if M.kind != "dense":
        if backend_name(b) != "numpy":
            raise TypeError("b must be a NumPy array when A is a scipy.sparse matrix or operator")
        return M.matmat, M.rmatmat, precision(xp, M.dtype, b.dtype, name="b"), M.shape[1]
    namespace(M.data, b)  # one backend for both
    prec = precision(xp, A.dtype, b.dtype, name="b")
    data = prec.compute(M.data)
    return (lambda v: data @ v), (lambda u: data.T @ u), prec, M.shape[1]


def _first_rmatvec(rmatvec: Callable[[Any], Any], u: Any, ncols: int | None, A: Any) -> Any:
    """The first ``A^T u``, checked: 1-D, and ``ncols`` long when the columns are known."""
    v = rmatvec(u)
    name = "rmatvec" if isinstance(A, tuple) else "A.T @ u"
    shape = tuple(getattr(v, "shape", ()))
    if len(shape) != 1 or (ncols is not None and shape[0] != ncols):
        want = f"({ncols},)" if ncols is not None else "(n,), 1-D"
        raise ValueError(f"{name} returned shape {shape} for u of shape {tuple(u.shape)}; it must "
                         f"return A^T u, of shape {want}")
    return v


def _first_matvec(matvec: Callable[[Any], Any], v: Any, k: int, A: Any) -> Any:
    """``A v``; at the first iteration (``v`` from ``rmatvec``), a failure of a user's
    ``matvec`` on ``v`` is reported as ``rmatvec`` returning the wrong length."""
    if k > 1 or not isinstance(A, tuple):
        return matvec(v)
    try:
        return matvec(v)
    except Exception as exc:
        raise ValueError(
            f"matvec failed on A^T u from rmatvec (shape {tuple(v.shape)}): rmatvec must return "
            f"a vector of shape (n,), n the number of columns of A that matvec accepts "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _norm(xp: Any, v: Any) -> float:
    return float(xp.linalg.vector_norm(v))


def _finite(value: float) -> None:
    if not math.isfinite(value):
        raise FloatingPointError("lsqr: the iteration produced NaN or Inf (overflow in A v?)")


def _checked(y: Any, shape: tuple[int, ...], name: str) -> Any:
    if tuple(y.shape) != tuple(shape):
        raise ValueError(f"{name} returned shape {tuple(y.shape)}, expected {tuple(shape)}")
    return y
