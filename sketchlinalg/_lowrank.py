"""Machinery shared by the range finders and the low-rank drivers (rsvd, nystrom,
eigh_randomized): argument checks, the sketch of ``A``, the sampled basis, and Cholesky QR
orthonormalization."""

from __future__ import annotations

import logging
import math
from typing import Any

import array_api_compat
import scipy.sparse
import scipy.sparse.linalg

from . import backend
from ._linop import Matrix, as_matrix
from ._rng import RNGLike, normalize_rng
from ._validation import check_int
from .sketching import GaussianSketch, SketchingOperator
from .sketching._spec import build_operator, check_spec

logger = logging.getLogger(__name__)


def check_rank_shape(rank: int, m: int, n: int, square: bool) -> None:
    """A ``ValueError`` unless ``rank <= min(m, n)`` (and ``m == n`` when ``square``)."""
    if square and m != n:
        raise ValueError(f"shape mismatch: A must be square (symmetric), got shape {(m, n)}")
    if rank > min(m, n):
        raise ValueError(f"rank must be <= min(m, n) = {min(m, n)} for A of shape {(m, n)}, "
                         f"got {rank}")


def prepare(
    A: Any, rank: Any, oversample: Any, power_iters: Any, sketch: Any, rng: RNGLike,
    square: bool = False,
) -> tuple[Matrix, int, int, SketchingOperator]:
    """Validate the common arguments (``square``: ``A`` must be ``n x n``); return
    ``(M, l, q, S)`` with ``S`` the ``l x n`` sketching operator whose adjoint is the test
    matrix (built from ``sketch``: a family name, an operator or a factory, with ``rng``)."""
    rank = check_int(rank, "rank", minimum=1)
    p = check_int(oversample, "oversample", minimum=0)
    q = check_int(power_iters, "power_iters", minimum=0)
    check_spec(sketch)
    gen = normalize_rng(rng)
    dense = not (scipy.sparse.issparse(A) or isinstance(A, scipy.sparse.linalg.LinearOperator))
    M = as_matrix(A, "A", check_values=not dense)
    m, n = M.shape
    check_rank_shape(rank, m, n, square)
    l = min(rank + p, m, n)
    if l < rank + p:
        logger.debug("rank + oversample = %d clipped to min(m, n) = %d", rank + p, l)
    S = build_operator(sketch, l, n, gen,
                       role="l x n, l = min(rank + oversample, m, n), n the columns of A")
    # A dense Gaussian Omega has no zero entry, so A @ Omega (checked by every driver before
    # any factorization) is non-finite wherever A is: the up-front pass over A is saved.
    if dense and not isinstance(S, GaussianSketch):
        check_all_finite(M)
    return M, l, q, S


def checked_matrix(A: Any) -> Matrix:
    """``as_matrix(A)``, with the NaN/Inf test of a dense ``A`` done by one sum
    (:func:`check_all_finite`)."""
    dense = not (scipy.sparse.issparse(A) or isinstance(A, scipy.sparse.linalg.LinearOperator))
    M = as_matrix(A, "A", check_values=not dense)
    if dense:
        check_all_finite(M)
    return M


def check_all_finite(M: Matrix) -> None:
    """Reject NaN/Inf in a dense ``M`` by one sum (:func:`sketchlinalg.backend.all_finite`; on
    torch the elementwise test alone costs about a third of an ``rsvd`` of a 3000 x 3000
    matrix)."""
    if not backend.all_finite(M.data):
        raise ValueError("A contains NaN or Inf entries")


def omega(M: Matrix, S: SketchingOperator) -> Any:
    """``Omega = S^T`` (``n x l``) as a dense array in the backend and dtype of ``M``."""
    l = S.shape[0]
    return S.T @ M.xp.eye(l, dtype=M.dtype, **device_kw(probe_like(M)))


def sample(M: Matrix, S: SketchingOperator) -> Any:
    """``A @ Omega`` with ``Omega = S^T``; a dense ``A`` goes through the operator's own
    product (a GEMM, a fast transform or a sparse product, by family)."""
    if M.kind == "dense":  # A @ S^T = (S @ A^T)^T, not A @ S.T: not every array defers to S
        return (S @ M.data.T).T
    return M.matmat(omega(M, S))


def basis(M: Matrix, q: int, S: SketchingOperator) -> Any:
    """The ``m x l`` orthonormal ``Q`` of :func:`sketchlinalg.range_finder` (HMT 2011,
    Algorithm 4.4), ``l = S.shape[0]``."""
    xp = M.xp
    Y = sample(M, S)
    check_products_finite(xp, Y)  # before any factorization sees a NaN
    for _ in range(q):
        Z, _ = orthonormalize(xp, M.rmatmat(orthonormalize(xp, Y)[0]))
        Y = M.matmat(Z)
    Q, _ = orthonormalize(xp, Y, passes=2)
    check_products_finite(xp, Q)
    return Q


def svd_from_basis(xp: Any, Q: Any, Bt: Any, rank: int) -> tuple[Any, Any, Any]:
    r"""``(U, s, Vh)``: the rank-``rank`` truncated SVD of :math:`Q B` for an orthonormal ``m x
    l`` ``Q`` and ``Bt`` :math:`= B^T` (``n x l``).

    :math:`B^T = P R` (:func:`orthonormalize`, two passes), so :math:`Q B = Q R^T P^T`; the
    SVD of the small :math:`R^T = X \operatorname{diag}(\hat s) \hat Y^T` gives
    :math:`U = Q X_{:, :k}`, :math:`s = \hat s_{:k}`, :math:`V^T = \hat Y_{:, :k}^T P^T`
    (factoring the tall :math:`B^T` replaces the SVD of the wide :math:`B` at lower cost;
    ``k`` = ``rank``). ``Q`` may be a Dask array (then so is ``U``); the small factors are
    in ``xp``.
    """
    P, R = orthonormalize(xp, Bt, passes=2)
    X, s, Yh = xp.linalg.svd(R.T, full_matrices=False)
    return Q @ X[:, :rank], s[:rank], Yh[:rank, :] @ P.T


def corange_size(l: int, m: int) -> int:
    """Rows ``l'`` of the co-range sketch ``W = Psi A`` of the single-pass rsvd for a range
    sketch of ``l`` columns: ``2l + 1``, the choice of Tropp, Yurtsever, Udell and Cevher
    (2017), with which ``E||A - QX||_F^2`` is twice ``E||(I - QQ^T)A||_F^2`` (their Theorem
    4.3: the factor is ``1 + l/(l' - l - 1)``); at most ``m``."""
    return min(2 * l + 1, m)


def check_single_pass_sketch(sketch: Any) -> None:
    """A ``TypeError`` for an operator as the ``sketch`` of the single-pass rsvd, which needs
    two operators of different shapes from one specification."""
    if isinstance(sketch, SketchingOperator):
        raise TypeError(
            f"sketch must be a family name or a factory when single_pass=True (it draws two "
            f"operators: Omega^T of shape (l, n) and Psi of shape (l', m)), got the operator "
            f"{sketch!r}")


def corange_solve(PsiQ: Any, W: Any) -> Any:
    r"""``X`` :math:`= (\Psi Q)^\dagger W`, the least-squares solution of
    :math:`\min_X \|\Psi Q X - W\|_F` for the ``l' x l`` :math:`\Psi Q` (``l' >= l``, full
    column rank almost surely), by Householder QR :math:`\Psi Q = U T` and
    :math:`X = T^{-1} U^T W` (backward stable; the normal equations would square
    :math:`\kappa(\Psi Q)`)."""
    U, T = backend.qr(PsiQ)
    return backend.solve_triangular(T, U.T @ W, lower=False)


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
        return backend.qr(Y)
    u = float(xp.finfo(Y.dtype).eps) / 2  # unit roundoff
    Z, C = Y, None
    plain = 0
    for _ in range(_MAX_PASSES):
        G = Z.T @ Z
        # After a plain pass cond(Z) <= 1.02: no need to look at the spectrum again.
        L = backend.cholesky(G) if plain else None
        cond, shifted = 1.0, False
        if L is None:
            lam = xp.linalg.eigvalsh(G)
            lo, hi = float(lam[0]), float(lam[-1])
            if not (math.isfinite(hi) and float(xp.min(xp.linalg.diagonal(G))) > 0):
                break  # a zero column (no shift fills it) or a non-finite Y
            if u * hi <= _PLAIN_MAX_LOSS * lo:
                L, cond = backend.cholesky(G), math.sqrt(hi / lo)
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
    return backend.qr(Y)


def _shifted_cholesky(xp: Any, G: Any, shift: float) -> tuple[Any, float]:
    """``(L, s)``: the lower Cholesky factor of ``G + s I`` with ``s = shift`` or, failing
    that, ``100 shift``; ``L`` is None when both fail."""
    eye = xp.eye(G.shape[0], dtype=G.dtype, device=array_api_compat.device(G))
    for s in (shift, 100.0 * shift):
        L = backend.cholesky(G + s * eye)
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
