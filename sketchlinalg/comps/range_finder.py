"""Range finders: fixed rank with power (subspace) iterations, and adaptive rank driven by
the a-posteriori error estimator of Halko, Martinsson and Tropp (2011)."""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import array_api_compat
import scipy.sparse
import scipy.sparse.linalg

from .. import _backend
from .._linop import Matrix, as_matrix
from .._rng import RNGLike, normalize_rng
from .._validation import check_int, check_nonnegative
from ..sketching import KINDS
from ..sketching import sketch as make_sketch

logger = logging.getLogger(__name__)

__all__ = ["adaptive_range_finder", "range_finder"]

# HMT (2011), eq. (4.3): ||(I - QQ^T) A|| <= 10 sqrt(2/pi) max_i ||(I - QQ^T) A w_i|| for r
# standard Gaussian w_i, except with probability at most 10^-r.
_ESTIMATOR_FACTOR = 10.0 * math.sqrt(2.0 / math.pi)


def range_finder(
    A: Any,
    rank: int,
    oversample: int = 10,
    power_iters: int = 2,
    sketch: str = "gaussian",
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
    rank : int
        Target rank ``k``, ``1 <= k <= min(m, n)``.
    oversample : int, default 10
        Extra columns ``p >= 0``. ``rank + oversample`` is clipped to ``min(m, n)``, where
        the sampled range is already all of ``range(A)``; ``Q.shape[1]`` shows the size used.
    power_iters : int, default 2
        Number ``q >= 0`` of power iterations; each costs two passes over ``A``.
    sketch : {"gaussian", "srht", "countsketch", "sparse_sign", "sampling"}
        Family of the test matrix (see :func:`sketchlinalg.sketch`).
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
    M, l, q, kind, gen = prepare(A, rank, oversample, power_iters, sketch, rng)
    return to_input_dtype(basis(M, l, q, kind, gen), A, M)


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
        omega = _backend.from_host(gen.standard_normal((n, b)), like, M.dtype)
        Y = _project_out(xp, Q, M.matmat(omega))
        passes += 1
        estimate = _ESTIMATOR_FACTOR * float(xp.max(xp.linalg.vector_norm(Y, axis=0)))
        if not math.isfinite(estimate):
            raise ValueError("A @ x is not finite: A contains NaN or Inf, or its products "
                             "overflow")
        rank = 0 if Q is None else Q.shape[1]
        if estimate <= tol or rank >= max_rank:
            break
        Y = Y[:, : max_rank - rank]
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


# -- shared by the drivers (rsvd, nystrom, eigh_randomized) --------------------------------

def prepare(
    A: Any, rank: Any, oversample: Any, power_iters: Any, sketch: Any, rng: RNGLike,
    square: bool = False,
) -> tuple[Matrix, int, int, str, Any]:
    """Validate the common arguments (``square``: ``A`` must be ``n x n``); return
    ``(M, l, q, kind, generator)``."""
    rank = check_int(rank, "rank", minimum=1)
    p = check_int(oversample, "oversample", minimum=0)
    q = check_int(power_iters, "power_iters", minimum=0)
    kind = check_kind(sketch)
    gen = normalize_rng(rng)
    # A dense Gaussian Omega has no zero entry, so A @ Omega (checked by every driver before
    # any factorization) is non-finite wherever A is: the up-front pass over A is saved.
    M = checked_matrix(A, up_front=kind != "gaussian")
    m, n = M.shape
    if square and m != n:
        raise ValueError(f"shape mismatch: A must be square (symmetric), got shape {(m, n)}")
    if rank > min(m, n):
        raise ValueError(f"rank must be <= min(m, n) = {min(m, n)} for A of shape {(m, n)}, "
                         f"got {rank}")
    l = min(rank + p, m, n)
    if l < rank + p:
        logger.debug("rank + oversample = %d clipped to min(m, n) = %d", rank + p, l)
    return M, l, q, kind, gen


def checked_matrix(A: Any, up_front: bool = True) -> Matrix:
    """``as_matrix(A)``, with the NaN/Inf test of a dense ``A`` done by one sum
    (:func:`sketchlinalg._backend.all_finite`; on torch the elementwise test alone costs
    about a third of an ``rsvd`` of a 3000 x 3000 matrix), or left to the caller's test of
    its first product when not ``up_front`` (the sum is another 5% of that ``rsvd``)."""
    dense = not (scipy.sparse.issparse(A) or isinstance(A, scipy.sparse.linalg.LinearOperator))
    M = as_matrix(A, "A", check_values=not dense)
    if dense and up_front and not _backend.all_finite(M.data):
        raise ValueError("A contains NaN or Inf entries")
    return M


def check_kind(sketch: Any) -> str:
    if not isinstance(sketch, str):
        raise TypeError(f"sketch must be a str, got {type(sketch).__name__}")
    if sketch not in KINDS:
        raise ValueError(f"unknown sketch kind {sketch!r}; valid kinds: {', '.join(KINDS)}")
    return sketch


def omega(M: Matrix, l: int, kind: str, gen: Any) -> Any:
    """``Omega = S^T`` (``n x l``) as a dense array in the backend and dtype of ``M``."""
    S = make_sketch(kind, l, M.shape[1], rng=gen)
    return S.T @ M.xp.eye(l, dtype=M.dtype, **device_kw(probe_like(M)))


def sample(M: Matrix, l: int, kind: str, gen: Any) -> Any:
    """``A @ Omega`` with ``Omega = S^T``; a dense ``A`` goes through the operator's own
    product (a GEMM, a fast transform or a scatter-add, by family)."""
    if M.kind == "dense":
        return M.data @ make_sketch(kind, l, M.shape[1], rng=gen).T
    return M.matmat(omega(M, l, kind, gen))


def basis(M: Matrix, l: int, q: int, kind: str, gen: Any) -> Any:
    """The ``m x l`` orthonormal ``Q`` of :func:`range_finder` (HMT 2011, Algorithm 4.4)."""
    xp = M.xp
    Y = sample(M, l, kind, gen)
    check_products_finite(xp, Y)  # before any factorization sees a NaN
    for _ in range(q):
        Z, _ = orthonormalize(xp, M.rmatmat(orthonormalize(xp, Y)[0]))
        Y = M.matmat(Z)
    Q, _ = orthonormalize(xp, Y, passes=2)
    check_products_finite(xp, Q)
    return Q


# A Cholesky QR pass runs unshifted when the Gram's eigenvalues predict a loss of
# orthogonality u cond(Y)^2 <= this; measured losses are 0.1-2 u cond^2 (m x n = 3000 x 60,
# 300 x 12, 1e5 x 20, float32 and float64), so the next pass sees cond <= 1.02.
_PLAIN_MAX_LOSS = 1e-2
# A pass applies L^{-T} as a GEMM with the inverse and refines it once when cond(L) exceeds
# this (the shifted passes): the GEMM's residual, measured at 2-30 u ||Y|| for cond 1e1-1e5
# and 55 u ||Y|| at 1e6, is then ~1.5 u ||Y||.
_REFINE_ABOVE = 1e5
# Cholesky QR passes (shifted ones included) before Householder QR takes over: a shifted pass
# divides cond by about (u (m + n^2))^(-1/2), so 8 reach cond ~ 1 from any float64 sample.
_MAX_PASSES = 8
# Below this many entries Householder QR is cheaper than the Gram path's fixed cost (its
# l x l eigvalsh and Cholesky): measured on CPU with NumPy and torch, e.g. 64 x 16 (QR 3-7x
# faster), against 4096 x 64 (Gram path faster, and far steadier under load). The name is
# the one the tests patch to send small matrices down the Gram path (it was SVQB's).
_SVQB_MIN_SIZE = 1 << 14


def orthonormalize(xp: Any, Y: Any, passes: int = 1) -> tuple[Any, Any]:
    r"""``(Z, C)`` with ``Y = Z C``, ``Z`` (``m x l``) with orthonormal columns spanning
    ``range(Y)``, ``C`` upper triangular ``l x l``.

    Cholesky QR (CholQR): :math:`Y^T Y = R^T R`, :math:`Z = Y R^{-1}` (a Gram, an
    :math:`\ell \times \ell` Cholesky and inverse, and a GEMM: GEMM speed, where Householder
    QR of a tall thin matrix is panel-bound and several times slower on CPU and GPU, and
    where a triangular solve on NumPy would run in SciPy's BLAS, whose idle threads then
    compete with NumPy's for the cores). The product with :math:`R^{-1}` gets one step of
    iterative refinement, :math:`Z \leftarrow Z + (Y - ZR) R^{-1}`, when
    :math:`\kappa(R) > 10^5` (the shifted passes in float64), which leaves the residual of a
    backward-stable triangular solve, :math:`\|Y - ZR\| = O(u)\|Y\| + O(u\,\kappa(R))^2
    \|Y\|` (measured: under :math:`2u\|Y\|`; without it, 2-30 :math:`u\|Y\|` for
    :math:`\kappa(R) \le 10^5`), so the span is kept to :math:`O(u\,\kappa(Y))`; the
    orthogonality of ``Z`` is lost to about :math:`u\,\kappa(Y)^2` (Yamamoto, Nakatsukasa,
    Yanagisawa and Fukaya 2015), which a second pass on ``Z`` (:math:`\kappa \approx 1`)
    brings to :math:`O(u)`: CholQR2. The eigenvalues of each Gram decide the pass:

    - :math:`u\,\kappa^2 \le 10^{-2}`: a plain pass (it counts toward ``passes``);
    - otherwise (the Cholesky factor would be inaccurate or fail): a shifted pass,
      :math:`R^T R = Y^T Y + sI` with :math:`s = u\,(m + \ell(\ell + 1))\,\|Y\|_2^2`, the
      shift of Fukaya, Kannan, Nakatsukasa, Yamamoto and Yanagisawa (2020) with the rounding
      of the Gram at its typical size instead of its worst case (theirs,
      :math:`11(m\ell + \ell(\ell+1))u\|Y\|_2^2`, needs 10 passes or more in float32 where
      this needs 2-6; a failed Cholesky retries with a 100 times larger shift). The shift
      keeps :math:`\|Z\| \le 1` and divides :math:`\kappa` by about
      :math:`(u(m + \ell^2))^{-1/2}` (:math:`10^6` in float64, 50 in float32), so sketches
      with :math:`\kappa` up to and beyond :math:`1/u` (numerically rank-deficient) end with
      plain passes too: sCholQR3 and its repetitions.

    ``passes=1`` stops after one plain pass (orthogonality :math:`\lesssim 10^{-2}`, enough
    for the power iterations, whose span is what matters); ``passes=2`` after two
    (orthogonality to working precision). ``C`` is the product of the passes' factors.
    Householder QR (``C = R``) serves small ``Y`` (fewer than :math:`2^{14}` entries, where it
    is faster), ``Y`` with an exactly zero or dependent column that no shift can fill, and
    the rare sample that more than 8 passes do not settle.
    """
    m, n = Y.shape
    if m * n < _SVQB_MIN_SIZE:
        return _backend.qr(Y)
    u = float(xp.finfo(Y.dtype).eps) / 2  # unit roundoff
    Z, C = Y, None
    plain = 0
    for _ in range(_MAX_PASSES):
        G = Z.T @ Z
        # After a plain pass cond(Z) <= 1.02: no need to look at the spectrum again.
        L = _backend.cholesky(G) if plain else None
        cond, shifted = 1.0, False
        if L is None:
            lam = xp.linalg.eigvalsh(G)
            lo, hi = float(lam[0]), float(lam[-1])
            if not (math.isfinite(hi) and float(xp.min(xp.linalg.diagonal(G))) > 0):
                break  # a zero column (no shift fills it) or a non-finite Y
            if u * hi <= _PLAIN_MAX_LOSS * lo:
                L, cond = _backend.cholesky(G), math.sqrt(hi / lo)
            if L is None:
                L, shift = _shifted_cholesky(xp, G, u * (m + n * (n + 1)) * hi)
                if L is None:
                    break
                cond, shifted = math.sqrt((hi + shift) / (max(lo, 0.0) + shift)), True
        plain += not shifted
        Z = _times_inverse_transpose(xp, Z, L, refine=cond > _REFINE_ABOVE)
        C = L.T if C is None else L.T @ C
        if plain == passes:
            return Z, C
    return _backend.qr(Y)


def _shifted_cholesky(xp: Any, G: Any, shift: float) -> tuple[Any, float]:
    """``(L, s)``: the lower Cholesky factor of ``G + s I`` with ``s = shift`` or, failing
    that, ``100 shift``; ``L`` is None when both fail."""
    eye = xp.eye(G.shape[0], dtype=G.dtype, device=array_api_compat.device(G))
    for s in (shift, 100.0 * shift):
        L = _backend.cholesky(G + s * eye)
        if L is not None:
            break
    return L, s


def _times_inverse_transpose(xp: Any, Z: Any, L: Any, refine: bool) -> Any:
    """``Z L^{-T}`` for lower triangular ``L``, as a GEMM with the explicit inverse, refined
    once (``W - (W L^T - Z) L^{-T}``) when ``refine``; in place where the backend allows, as
    every m x l temporary costs page faults on NumPy."""
    Lit = xp.linalg.inv(L).T
    W = Z @ Lit
    if refine:
        E = W @ L.T
        E -= Z
        W -= E @ Lit
    return W


def check_products_finite(xp: Any, X: Any) -> None:
    """Reject NaN or Inf in a product with ``A`` (an operator's output, or overflow); it
    would propagate into every later product and factor."""
    if not bool(xp.all(xp.isfinite(X))):
        raise ValueError("A @ x is not finite: A contains NaN or Inf, or its products overflow")


def check_symmetric_sketch(xp: Any, B: Any, scale: float, n: int, dtype: Any) -> None:
    """Reject a nonsymmetric ``A`` from its sketch ``B = Omega^T A Omega`` (``Omega``
    orthonormal, ``scale = ||A Omega||_F >= ||B||_F``).

    For a symmetric ``A`` the asymmetry of ``B`` is rounding, about ``sqrt(n) eps`` relative
    (random-rounding model of the length-``n`` inner products); a nonsymmetric ``A`` gives
    asymmetry of order one almost surely. The threshold sits well between the two.
    """
    if scale == 0.0:  # A @ Omega = 0, so B = 0
        return
    eps = float(xp.finfo(dtype).eps)
    asym = float(xp.linalg.vector_norm(B - B.T)) / scale
    if asym > max(math.sqrt(eps), 10.0 * math.sqrt(n) * eps):
        raise ValueError(
            f"A must be symmetric: its sketch Omega^T A Omega has relative asymmetry "
            f"{asym:.2e} (rounding would give about {math.sqrt(n) * eps:.1e})"
        )


def probe_like(M: Matrix) -> Any:
    """An array with the backend and device of ``M`` (NumPy for sparse and operators)."""
    return M.data if M.kind == "dense" else M.xp.empty(0, dtype=M.dtype)


def device_kw(like: Any) -> dict[str, Any]:
    """``device=`` of ``like`` for array-API creation functions."""
    return {"device": array_api_compat.device(like)}


def to_input_dtype(X: Any, A: Any, M: Matrix) -> Any:
    """Cast a result back to the dtype of a float16/bfloat16 dense input (computed in
    float32); every other input already has the result's dtype."""
    if M.kind != "dense" or X.dtype == A.dtype:
        return X
    return M.xp.astype(X, A.dtype)


def _project_out(xp: Any, Q: Any, Y: Any) -> Any:
    """``(I - Q Q^T) Y`` (``Q`` None means the empty basis)."""
    return Y if Q is None else Y - Q @ (Q.T @ Y)
