"""Randomized eigendecomposition of a symmetric matrix."""

from __future__ import annotations

from typing import Any

import array_api_compat

from .._lowrank import basis, check_symmetric_sketch, prepare, to_input_dtype
from .._rng import RNGLike
from ..sketching._spec import SketchSpec

__all__ = ["eigh_randomized"]


def eigh_randomized(
    A: Any,
    rank: int,
    oversample: int = 10,
    power_iters: int = 2,
    sketch: SketchSpec = "gaussian",
    rng: RNGLike = 0,
) -> tuple[Any, Any]:
    r"""Randomized partial eigendecomposition :math:`A \approx V \operatorname{diag}(w) V^T`
    of a symmetric (possibly indefinite) ``A``: the ``rank`` eigenpairs of largest
    magnitude.

    With the orthonormal :math:`Q \in \mathbb{R}^{n \times \ell}` of
    :func:`sketchlinalg.range_finder` (same arguments; :math:`A^T = A`), one more pass gives
    the Rayleigh-Ritz matrix :math:`B = Q^T A Q`, and

    .. math::

        B = Z \operatorname{diag}(\theta) Z^T \ (\text{eigh}), \qquad V = Q Z_{:, J},
        \quad w = \theta_J,

    where :math:`J` indexes the ``rank`` Ritz values of largest magnitude, returned in
    ascending order as :func:`numpy.linalg.eigh` does (HMT 2011, Algorithm 5.3). With
    :math:`\varepsilon = \|(I - QQ^T)A\|_2`, :math:`\|A - QBQ^T\|_2 \le 2\varepsilon`, so each
    kept Ritz value is within :math:`2\varepsilon` of the matching eigenvalue (Weyl), and
    :math:`\|A - V \operatorname{diag}(w) V^T\|_2 \le 2\varepsilon + |\lambda|_{(k+1)}`,
    the :math:`(k+1)`-th largest eigenvalue magnitude (Cauchy interlacing bounds the
    dropped Ritz values). Cost: :math:`2q + 2` passes over ``A``.

    Parameters
    ----------
    A : array (NumPy, PyTorch or CuPy), scipy.sparse matrix or scipy LinearOperator
        Symmetric, ``n x n``. A nonsymmetric ``A`` is detected from the asymmetry of
        :math:`Q^T A Q` (``ValueError``).
        A Dask array chunked by rows is accepted too: the tall products run in Dask, the
        small factorizations in memory, in ``2 q + 2`` passes over ``A``; the tall factor
        ``V`` is returned as Dask arrays (see the Dask guide).
    rank : int
        Number ``k`` of eigenpairs, ``1 <= k <= n``.
    oversample : int, default 10
        Extra sampled columns ``p >= 0``; ``rank + oversample`` is clipped to ``n``.
    power_iters : int, default 2
        Power iterations ``q >= 0``, each re-orthonormalized.
    sketch : str, SketchingOperator or callable, default "gaussian"
        The test matrix :math:`\Omega = S^T`: a family name (``"gaussian"``,
        ``"srht"``, ``"countsketch"``, ``"sparse_sign"``, ``"sampling"``; see
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
    w : array of shape (k,)
        Eigenvalue estimates, ascending.
    V : array of shape (n, k)
        Orthonormal eigenvector estimates, ``V[:, j]`` for ``w[j]``.

    Both in the backend, device and dtype of ``A`` (NumPy for sparse and operator inputs).

    References
    ----------
    N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with randomness",
    SIAM Review 53(2), 2011, Algorithms 4.4 and 5.3.
    """
    if array_api_compat.is_dask_array(A):
        from .._dask import drivers
        return drivers.eigh_randomized(A, rank, oversample, power_iters, sketch, rng)
    M, l, q, S = prepare(A, rank, oversample, power_iters, sketch, rng, square=True)
    xp, n, k = M.xp, M.shape[0], int(rank)
    Q = basis(M, q, S)
    AQ = M.matmat(Q)
    B = Q.T @ AQ
    check_symmetric_sketch(xp, B, float(xp.linalg.vector_norm(AQ)), n, M.dtype)
    theta, Z = xp.linalg.eigh(0.5 * (B + B.T))
    keep = xp.argsort(xp.abs(theta))[l - k:]
    keep = xp.take(keep, xp.argsort(xp.take(theta, keep)))
    w = xp.take(theta, keep)
    V = Q @ xp.take(Z, keep, axis=1)
    return to_input_dtype(w, A, M), to_input_dtype(V, A, M)
