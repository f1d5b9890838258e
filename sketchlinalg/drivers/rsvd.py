"""Randomized truncated SVD."""

from __future__ import annotations

from typing import Any

import array_api_compat

from .._lowrank import basis, orthonormalize, prepare, to_input_dtype
from .._rng import RNGLike
from ..sketching._spec import SketchSpec

__all__ = ["rsvd"]


def rsvd(
    A: Any,
    rank: int,
    oversample: int = 10,
    power_iters: int = 2,
    sketch: SketchSpec = "gaussian",
    rng: RNGLike = 0,
) -> tuple[Any, Any, Any]:
    r"""Randomized truncated SVD :math:`A \approx U \operatorname{diag}(s) V^T`.

    With the orthonormal :math:`Q \in \mathbb{R}^{m \times \ell}` of
    :func:`sketchlinalg.range_finder` (same arguments), one more pass gives
    :math:`W = A^T Q = P R` with orthonormal :math:`P` and :math:`R \in \mathbb{R}^{\ell
    \times \ell}` (Cholesky QR, as in the range finder), so that
    :math:`Q^T A = R^T P^T`. The SVD of the small matrix :math:`R^T = X
    \operatorname{diag}(\hat s) \hat Y^T` then yields

    .. math::

        Q Q^T A = (Q X) \operatorname{diag}(\hat s) (P \hat Y)^T,

    truncated to the leading ``rank`` triplets: :math:`U = Q X_{:, :k}`,
    :math:`s = \hat s_{:k}`, :math:`V^T = \hat Y_{:, :k}^T P^T` (HMT 2011, Algorithm 5.1;
    factoring the tall :math:`W` replaces the SVD of the wide :math:`Q^T A` at lower cost).
    With :math:`A_k` the best rank-``k`` approximation, the error obeys
    :math:`\|A - U \operatorname{diag}(s) V^T\| \le \|A - A_k\| + \|(I - QQ^T)A\|` in
    the spectral and Frobenius norms (HMT 2011, Sec. 9.4), with the expectation bounds of
    :func:`sketchlinalg.range_finder` for the last term, and by Weyl's inequality
    :math:`0 \le \sigma_j - s_j \le \|(I - QQ^T)A\|_2`, up to rounding. Cost: :math:`2q + 2`
    passes over ``A`` and :math:`2q + 2` orthonormalizations of :math:`\ell`-column matrices
    (each a few Gram matrices and triangular solves).

    Parameters
    ----------
    A : array (NumPy, PyTorch or CuPy), scipy.sparse matrix or scipy LinearOperator
        The ``m x n`` matrix.
        A Dask array chunked by rows is accepted too: the tall products run in Dask, the
        small factorizations in memory, in ``2 q + 2`` passes over ``A``; the tall factor
        ``U`` is returned as Dask arrays (see the Dask guide).
    rank : int
        Number ``k`` of singular triplets, ``1 <= k <= min(m, n)``.
    oversample : int, default 10
        Extra sampled columns ``p >= 0``; ``rank + oversample`` is clipped to ``min(m, n)``
        (then the factorization is exact up to rounding).
    power_iters : int, default 2
        Power iterations ``q >= 0``, each re-orthonormalized.
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
    U : array of shape (m, k)
        Orthonormal left singular vectors.
    s : array of shape (k,)
        Singular values, non-increasing.
    Vh : array of shape (k, n)
        Orthonormal right singular vectors, as rows.

    All in the backend, device and dtype of ``A`` (float16/bfloat16 computed in float32);
    NumPy for sparse and operator inputs.

    References
    ----------
    N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with randomness",
    SIAM Review 53(2), 2011, Algorithms 4.4 and 5.1, Sections 9.4 and 10.
    """
    if array_api_compat.is_dask_array(A):
        from .._dask import drivers
        return drivers.rsvd(A, rank, oversample, power_iters, sketch, rng)
    M, _, q, S = prepare(A, rank, oversample, power_iters, sketch, rng)
    Q = basis(M, q, S)
    P, R = orthonormalize(M.xp, M.rmatmat(Q), passes=2)
    X, s, Yh = M.xp.linalg.svd(R.T, full_matrices=False)
    k = int(rank)
    U = Q @ X[:, :k]
    Vh = Yh[:k, :] @ P.T
    return tuple(to_input_dtype(Z, A, M) for Z in (U, s[:k], Vh))  # type: ignore[return-value]
