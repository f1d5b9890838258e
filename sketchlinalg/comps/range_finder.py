"""Range finders: fixed rank with power (subspace) iterations, and adaptive rank driven by
the a-posteriori error estimator of Halko, Martinsson and Tropp (2011)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import array_api_compat

from .. import backend
from .._lowrank import (
    basis,
    checked_matrix,
    device_kw,
    orthonormalize,
    prepare,
    probe_like,
    to_input_dtype,
)
from .._rng import RNGLike, normalize_rng
from .._validation import check_int, check_nonnegative
from ..sketching._spec import SketchSpec

__all__ = ["adaptive_range_finder", "range_finder"]

# HMT (2011), eq. (4.3): ||(I - QQ^T) A|| <= 10 sqrt(2/pi) max_i ||(I - QQ^T) A w_i|| for r
# standard Gaussian w_i, except with probability at most 10^-r.
_ESTIMATOR_FACTOR = 10.0 * math.sqrt(2.0 / math.pi)


def range_finder(
    A: Any,
    rank: int,
    oversample: int = 10,
    power_iters: int = 2,
    sketch: SketchSpec = "gaussian",
    rng: RNGLike = 0,
) -> Any:
    r"""Orthonormal basis of an approximate range of ``A`` (randomized subspace iteration).

    With :math:`\ell = \min(\text{rank} + \text{oversample}, m, n)`, a test matrix
    :math:`\Omega = S^T \in \mathbb{R}^{n \times \ell}` from the sketching operator
    ``S = sketch(kind, l, n, rng)``, and :math:`q` = ``power_iters``,

    .. math::

        Q_0 = \operatorname{qr}(A \Omega), \qquad
        Q_j = \operatorname{qr}\bigl(A\, \operatorname{qr}(A^T Q_{j-1})\bigr),
        \quad j = 1, \dots, q,

    and :math:`Q = Q_q` spans the range of :math:`(A A^T)^q A \Omega`. Every product is
    re-orthonormalized, so singular values below :math:`\epsilon^{1/(2q+1)} \sigma_1` are
    not lost to rounding (HMT 2011, Algorithm 4.4). Each orthonormalization is Cholesky QR
    (a Gram matrix, an :math:`\ell \times \ell` Cholesky and a triangular solve; twice for
    the returned :math:`Q`, CholQR2), preceded by shifted Cholesky QR passes when the product
    is too ill-conditioned for it (sCholQR3 of Fukaya et al. 2020), so every step runs at
    GEMM speed and keeps the span to rounding; small products use Householder QR (see
    ``orthonormalize`` in this module).
    For a Gaussian :math:`\Omega` and :math:`p = \ell - k \ge 2`,

    .. math::

        \mathbb{E}\,\|(I - QQ^T)A\| \le \Bigl[\bigl(1 + \sqrt{\tfrac{k}{p-1}}\bigr)
        \sigma_{k+1}^{2q+1} + \tfrac{e\sqrt{k+p}}{p}
        \bigl(\textstyle\sum_{j>k} \sigma_j^{2(2q+1)}\bigr)^{1/2}\Bigr]^{1/(2q+1)}

    (HMT 2011, Corollary 10.10; Theorems 10.5 and 10.6 for :math:`q = 0`). Other sketch
    families carry no such theorem; for matrices whose singular vectors are not aligned with
    the coordinate axes they behave like the Gaussian in practice (HMT 2011, Sec. 11).

    Parameters
    ----------
    A : array (NumPy, PyTorch or CuPy), scipy.sparse matrix or scipy LinearOperator
        The ``m x n`` matrix. NaN/Inf entries raise: a dense ``A`` is checked up front, or,
        with the Gaussian test matrix, by its first product (every entry of ``A`` meets a
        nonzero of :math:`\Omega` there, so a non-finite one shows); an operator whose
        products are not finite raises as well.
        A Dask array chunked by rows is accepted too: the tall products run in Dask, the
        small factorizations in memory, in ``2 q + 1`` passes over ``A``; the tall factor
        ``Q`` is returned as Dask arrays (see the Dask guide).
    rank : int
        Target rank ``k``, ``1 <= k <= min(m, n)``.
    oversample : int, default 10
        Extra columns ``p >= 0``. ``rank + oversample`` is clipped to ``min(m, n)``, where
        the sampled range is already all of ``range(A)``; ``Q.shape[1]`` shows the size used.
    power_iters : int, default 2
        Number ``q >= 0`` of power iterations; each costs two passes over ``A``.
    sketch : str, SketchingOperator or callable, default "gaussian"
        The test matrix :math:`\Omega = S^T`: a family name (``"gaussian"``,
        ``"srht"``, ``"countsketch"``, ``"sparse_sign"``, ``"sampling"``; see
        :func:`sketchlinalg.sketch`), an operator ``S`` of shape ``(l, n)`` with
        ``l = min(rank + oversample, m, n)``, or a factory called as ``factory(l, n, rng=gen)``
        that returns one (a class such as :class:`sketchlinalg.SparseSign`, or
        ``functools.partial(SparseSign, nnz=4)``). A name or a factory draws from ``rng``; an
        operator brings its own random data.
    rng : int, numpy.random.Generator, numpy.random.SeedSequence or None
        Source of randomness (SPEC 7). An int or SeedSequence seeds a fresh generator, a
        Generator is used (and advanced) as given, None draws fresh OS entropy. The random
        data is drawn on the host, so one seed gives the same result on every backend.

    Returns
    -------
    Q : array of shape (m, l)
        Orthonormal columns, in the backend, device and dtype of ``A`` (float16 and bfloat16
        are computed in float32); NumPy for sparse and operator inputs.

    References
    ----------
    N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with randomness:
    probabilistic algorithms for constructing approximate matrix decompositions",
    SIAM Review 53(2), 2011, Algorithm 4.4 and Section 10.
    """
    if array_api_compat.is_dask_array(A):
        from .._dask import drivers
        return drivers.range_finder(A, rank, oversample, power_iters, sketch, rng)
    M, _, q, S = prepare(A, rank, oversample, power_iters, sketch, rng)
    return to_input_dtype(basis(M, q, S), A, M)


def adaptive_range_finder(
    A: Any,
    tol: float,
    block_size: int = 10,
    power_iters: int = 1,
    max_rank: int | None = None,
    rng: RNGLike = 0,
) -> tuple[Any, dict[str, Any]]:
    r"""Orthonormal basis ``Q`` with :math:`\|(I - QQ^T)A\|_2 \le` ``tol``, rank chosen
    adaptively from an a-posteriori error estimate.

    The basis grows by blocks of ``b = block_size`` columns. Before each block, ``b`` fresh
    standard Gaussian vectors :math:`\omega_i` give the samples
    :math:`y_i = (I - QQ^T) A \omega_i`, and

    .. math::

        \|(I - QQ^T) A\|_2 \le 10 \sqrt{2/\pi}\, \max_{i \le b} \|y_i\|_2

    holds except with probability at most :math:`10^{-b}` (HMT 2011, Sec. 4.3, eq. (4.3)).
    When the right-hand side (``error_estimate``) is at most ``tol`` the current ``Q`` is
    returned; otherwise the samples are refined by ``power_iters`` steps of subspace
    iteration on :math:`(I - QQ^T)A`, orthonormalized against ``Q`` (twice, for
    orthogonality to working precision) and appended (a blocked form of HMT 2011,
    Algorithm 4.2; Martinsson and Voronin 2016). The estimator needs Gaussian vectors, so
    no other sketch family is offered here.

    Parameters
    ----------
    A : array (NumPy, PyTorch or CuPy), scipy.sparse matrix or scipy LinearOperator
        The ``m x n`` matrix.
    tol : float
        Absolute tolerance ``> 0`` on the spectral-norm error :math:`\|(I - QQ^T)A\|_2`
        (for a relative tolerance, multiply by an estimate of :math:`\|A\|_2`).
    block_size : int, default 10
        Columns added per step, ``>= 1``; also the number of probe vectors of the
        estimator, whose failure probability is ``10**-block_size``.
    power_iters : int, default 1
        Power iterations per block, ``>= 0``.
    max_rank : int, optional
        Largest rank allowed, ``1 <= max_rank <= min(m, n)`` (default ``min(m, n)``). If it
        is reached before the estimate meets ``tol``, a ``RuntimeWarning`` is issued and
        ``info["converged"]`` is False.
    rng : int, numpy.random.Generator, numpy.random.SeedSequence or None
        Source of randomness (SPEC 7), as in :func:`range_finder`.

    Returns
    -------
    Q : array of shape (m, rank)
        Orthonormal columns, in the backend, device and dtype of ``A`` (NumPy for sparse and
        operator inputs). ``rank`` may be 0 when ``A`` already meets the tolerance.
    info : dict
        ``"rank"`` (``Q.shape[1]``), ``"error_estimate"`` (the last estimate, a bound on
        :math:`\|(I - QQ^T)A\|_2` with probability :math:`\ge 1 - 10^{-b}`),
        ``"converged"`` (``error_estimate <= tol``) and ``"passes"`` (products with ``A`` or
        :math:`A^T` of ``b`` columns each).

    References
    ----------
    N. Halko, P.-G. Martinsson, J. A. Tropp, SIAM Review 53(2), 2011, Sections 4.3-4.4.
    P.-G. Martinsson, S. Voronin, "A randomized blocked algorithm for efficiently computing
    rank-revealing factorizations of matrices", SIAM J. Sci. Comput. 38(5), 2016.
    """
    tol = check_nonnegative(tol, "tol")
    if tol == 0:
        raise ValueError("tol must be > 0, got 0.0")
    b = check_int(block_size, "block_size", minimum=1)
    q = check_int(power_iters, "power_iters", minimum=0)
    gen = normalize_rng(rng)
    M = checked_matrix(A)
    m, n = M.shape
    cap = min(m, n)
    if max_rank is None:
        max_rank = cap
    max_rank = check_int(max_rank, "max_rank", minimum=1)
    if max_rank > cap:
        raise ValueError(f"max_rank must be <= min(m, n) = {cap} for A of shape {(m, n)}, "
                         f"got {max_rank}")

    xp, like = M.xp, probe_like(M)
    Q = None
    passes = 0
    while True:
        omega = backend.from_host(gen.standard_normal((n, b)), like, M.dtype)
        Y = _project_out(xp, Q, M.matmat(omega))
        passes += 1
        estimate = _ESTIMATOR_FACTOR * float(xp.max(xp.linalg.vector_norm(Y, axis=0)))
        if not math.isfinite(estimate):
            raise ValueError("A @ x is not finite: A contains NaN or Inf, or its products "
                             "overflow")
        rank = 0 if Q is None else Q.shape[1]
        if estimate <= tol or rank >= max_rank:
            break
        Y = Y[:, : min(max_rank - rank, b)]
        for _ in range(q):
            Z, _ = orthonormalize(xp, M.rmatmat(orthonormalize(xp, Y)[0]))
            Y = _project_out(xp, Q, M.matmat(Z))
            passes += 2
        Qb, _ = orthonormalize(xp, Y, passes=2)
        Qb, _ = orthonormalize(xp, _project_out(xp, Q, Qb), passes=2)
        Q = Qb if Q is None else xp.concat([Q, Qb], axis=1)

    if Q is None:
        Q = xp.zeros((m, 0), dtype=M.dtype, **device_kw(like))
    converged = estimate <= tol
    if not converged:
        warnings.warn(
            f"adaptive_range_finder reached max_rank={max_rank} with an error estimate "
            f"{estimate:.3e} > tol={tol:.3e}; Q does not certify the tolerance",
            RuntimeWarning, stacklevel=2,
        )
    info = {"rank": int(Q.shape[1]), "error_estimate": estimate, "converged": converged,
            "passes": passes}
    return to_input_dtype(Q, A, M), info


def _project_out(xp: Any, Q: Any, Y: Any) -> Any:
    """``(I - Q Q^T) Y`` (``Q`` None means the empty basis)."""
    return Y if Q is None else Y - Q @ (Q.T @ Y)
