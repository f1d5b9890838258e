"""Randomized Nystrom approximation of a positive-semidefinite matrix, in the stable shifted
form."""

from __future__ import annotations

import math
from typing import Any

import array_api_compat

from .. import backend
from .._lowrank import (
    check_products_finite,
    check_symmetric_sketch,
    device_kw,
    omega,
    orthonormalize,
    prepare,
    to_input_dtype,
)
from .._rng import RNGLike
from ..sketching._spec import SketchSpec

__all__ = ["nystrom"]


def nystrom(
    A: Any,
    rank: int,
    oversample: int = 10,
    sketch: SketchSpec = "gaussian",
    rng: RNGLike = 0,
) -> tuple[Any, Any]:
    r"""Randomized Nystrom approximation :math:`A \approx U \operatorname{diag}(\lambda) U^T`
    of a symmetric positive-semidefinite ``A``.

    With :math:`\ell = \min(\text{rank} + \text{oversample}, n)`, an orthonormalized test
    matrix :math:`\Omega = \operatorname{orth}(S^T) \in \mathbb{R}^{n \times \ell}` and one
    pass :math:`Y = A\Omega`, the Nystrom approximation
    :math:`\hat A = Y (\Omega^T Y)^{\dagger} Y^T` is computed in the shifted form that
    avoids the ill-conditioned pseudo-inverse (Tropp, Yurtsever, Udell and Cevher 2017,
    Algorithm 3):

    .. math::

        \nu = \sqrt{n}\, \epsilon\, \|Y\|_F, \quad Y_\nu = Y + \nu \Omega, \quad
        \Omega^T Y_\nu = C C^T \ (\text{Cholesky}), \quad
        E = Y_\nu C^{-T} = U \Sigma W^T \ (\text{thin SVD}), \quad
        \lambda = \max(0, \Sigma^2 - \nu),

    so that :math:`U \operatorname{diag}(\lambda) U^T` is the Nystrom approximation of
    :math:`A + \nu I` with the shift removed; ``U`` and ``lambda`` are then truncated to
    ``rank``. The SVD of :math:`E` is taken through :math:`Y_\nu = P R` (orthonormal
    :math:`P`, square :math:`R`; Cholesky QR as in the range finder) as the SVD
    of the small :math:`R C^{-T}`. For a Gaussian :math:`\Omega` and any :math:`r \le \ell - 2`,
    :math:`A - \hat A = A^{1/2}(I - P_{A^{1/2}\Omega})A^{1/2}` gives, with HMT (2011)
    Theorem 10.5 applied to :math:`A^{1/2}`,

    .. math::

        \mathbb{E}\,\|A - \hat A\|_* \le \Bigl(1 + \frac{r}{\ell - r - 1}\Bigr)
        \sum_{j > r} \lambda_j(A)

    (the trace-norm bound of Tropp et al. 2017, Theorem 4.1), and the rank-``k``
    truncation adds at most :math:`\sum_{j>k} \lambda_j(A)`. Cost: one pass over ``A``.

    Parameters
    ----------
    A : array (NumPy, PyTorch or CuPy), scipy.sparse matrix or scipy LinearOperator
        Symmetric positive-semidefinite, ``n x n``. A nonsymmetric ``A`` is detected from
        the asymmetry of :math:`\Omega^T A \Omega`, an indefinite one when
        :math:`\Omega^T A \Omega + \nu I` has no Cholesky factor (both ``ValueError``);
        an indefinite ``A`` whose sketch is positive definite is not detected.
        A Dask array chunked by rows is accepted too: the tall products run in Dask, the
        small factorizations in memory, in one pass over ``A``; the tall factor
        ``U`` is returned as Dask arrays (see the Dask guide).
    rank : int
        Number ``k`` of eigenpairs, ``1 <= k <= n``.
    oversample : int, default 10
        Extra sampled columns ``p >= 0``; ``rank + oversample`` is clipped to ``n``.
    sketch : str, SketchingOperator or callable, default "gaussian"
        The test matrix :math:`\Omega = S^T` (orthonormalized before use): a family name
        (``"gaussian"``, ``"srht"``, ``"countsketch"``, ``"sparse_sign"``, ``"sampling"``; see
        :func:`sketchlinalg.sketch`), an operator ``S`` of shape ``(l, n)`` with
        ``l = min(rank + oversample, n)``, or a factory called as ``factory(l, n, rng=gen)``
        that returns one (a class such as :class:`sketchlinalg.SparseSign`, or
        ``functools.partial(SparseSign, nnz=4)``). A name or a factory draws from ``rng``; an
        operator brings its own random data.
    rng : int, numpy.random.Generator, numpy.random.SeedSequence or None
        Source of randomness (SPEC 7). An int or SeedSequence seeds a fresh generator, a
        Generator is used (and advanced) as given, None draws fresh OS entropy. The random
        data is drawn on the host, so one seed gives the same result on every backend.

    Returns
    -------
    U : array of shape (n, k)
        Orthonormal eigenvector estimates.
    lam : array of shape (k,)
        Eigenvalue estimates, non-negative and non-increasing.

    Both in the backend, device and dtype of ``A`` (NumPy for sparse and operator inputs).

    References
    ----------
    J. A. Tropp, A. Yurtsever, M. Udell, V. Cevher, "Fixed-rank approximation of a
    positive-semidefinite matrix from streaming data", NeurIPS 2017, Algorithm 3 and
    Theorem 4.1. Z. Frangella, J. A. Tropp, M. Udell, "Randomized Nystrom preconditioning",
    SIAM J. Matrix Anal. Appl. 44(2), 2023, Algorithm 2.1.
    """
    if array_api_compat.is_dask_array(A):
        from .._dask import drivers
        return drivers.nystrom(A, rank, oversample, sketch, rng)
    M, _, _, S = prepare(A, rank, oversample, 0, sketch, rng, square=True)
    xp, n, k = M.xp, M.shape[0], int(rank)
    Omega, _ = orthonormalize(xp, omega(M, S), passes=2)
    Y = M.matmat(Omega)
    check_products_finite(xp, Y)
    scale = float(xp.linalg.vector_norm(Y))
    if scale == 0.0:  # A = 0: every orthonormal U is exact, with zero eigenvalues
        lam = xp.zeros(k, dtype=M.dtype, **device_kw(Y))
        return to_input_dtype(Omega[:, :k], A, M), to_input_dtype(lam, A, M)
    nu = math.sqrt(n) * float(xp.finfo(M.dtype).eps) * scale
    Y_nu = Y + nu * Omega
    B = Omega.T @ Y_nu
    check_symmetric_sketch(xp, B, scale, n, M.dtype)
    C = backend.cholesky(0.5 * (B + B.T))
    if C is None:
        raise ValueError(
            "A is not positive semidefinite: the sketch Omega^T A Omega + nu I has no "
            "Cholesky factor (use eigh_randomized for symmetric indefinite matrices)"
        )
    P, R = orthonormalize(xp, Y_nu, passes=2)
    # E = Y_nu C^{-T} = P (R C^{-T}) and R C^{-T} = (C^{-1} R^T)^T.
    X, sigma, _ = xp.linalg.svd(backend.solve_triangular(C, R.T, lower=True).T)
    U = P @ X[:, :k]
    lam = xp.clip(sigma[:k] ** 2 - nu, min=0.0)
    return to_input_dtype(U, A, M), to_input_dtype(lam, A, M)

