"""Randomized truncated SVD, in 2q + 2 passes over ``A`` or in one."""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from .._linop import Matrix
from .._lowrank import (
    basis,
    check_products_finite,
    check_single_pass_sketch,
    corange_size,
    corange_solve,
    omega,
    orthonormalize,
    prepare,
    sample,
    svd_from_basis,
    to_input_dtype,
)
from .._rng import RNGLike, normalize_rng
from .._validation import check_int
from ..sketching import SketchingOperator
from ..sketching._spec import SketchSpec, build_operator

__all__ = ["rsvd"]

# power_iters=None: this many for the two-pass form (none in one pass).
DEFAULT_POWER_ITERS = 2


def rsvd(
    A: Any,
    rank: int,
    oversample: int = 10,
    power_iters: int | None = None,
    sketch: SketchSpec = "gaussian",
    rng: RNGLike = 0,
    *,
    single_pass: bool = False,
) -> tuple[Any, Any, Any]:
    r"""Randomized truncated SVD :math:`A \approx U \operatorname{diag}(s) V^T`.

    **Two-pass form** (the default; HMT 2011, Algorithm 5.1). With the orthonormal
    :math:`Q \in \mathbb{R}^{m \times \ell}` of :func:`sketchlinalg.range_finder` (same
    arguments), one more pass gives :math:`W = A^T Q = P R` with orthonormal :math:`P` and
    :math:`R \in \mathbb{R}^{\ell \times \ell}` (Cholesky QR, as in the range finder), so
    that :math:`Q^T A = R^T P^T`. The SVD of the small matrix :math:`R^T = X
    \operatorname{diag}(\hat s) \hat Y^T` then yields

    .. math::

        Q Q^T A = (Q X) \operatorname{diag}(\hat s) (P \hat Y)^T,

    truncated to the leading ``rank`` triplets: :math:`U = Q X_{:, :k}`,
    :math:`s = \hat s_{:k}`, :math:`V^T = \hat Y_{:, :k}^T P^T` (factoring the tall
    :math:`W` replaces the SVD of the wide :math:`Q^T A` at lower cost).
    With :math:`A_k` the best rank-``k`` approximation, the error obeys
    :math:`\|A - U \operatorname{diag}(s) V^T\| \le \|A - A_k\| + \|(I - QQ^T)A\|` in
    the spectral and Frobenius norms (HMT 2011, Sec. 9.4), with the expectation bounds of
    :func:`sketchlinalg.range_finder` for the last term, and by Weyl's inequality
    :math:`0 \le \sigma_j - s_j \le \|(I - QQ^T)A\|_2`, up to rounding. Cost: :math:`2q + 2`
    passes over ``A`` and :math:`2q + 2` orthonormalizations of :math:`\ell`-column matrices
    (each a few Gram matrices and triangular solves).

    **Single-pass form** (``single_pass=True``): the low-rank approximation of Tropp,
    Yurtsever, Udell and Cevher (2017) with their fixed-rank truncation, for a matrix that
    can be read only once (streamed from disk, a Dask array). One pass over ``A`` forms the
    range sketch :math:`Y = A\Omega` (``m x l``, the same test matrix :math:`\Omega` as the
    two-pass form for the same ``rng``) and the co-range sketch :math:`W = \Psi A`
    (``l' x n``; :math:`\Psi` a second, independent operator of the same family, with
    :math:`\ell' = \min(2\ell + 1, m)` rows); then, without ``A``,

    .. math::

        Q = \operatorname{orth}(Y), \qquad
        X = (\Psi Q)^\dagger W = \arg\min_X \|\Psi Q X - W\|_F, \qquad
        \hat A = Q X,

    and the factors are the rank-``k`` truncated SVD of :math:`\hat A` (the SVD of the
    ``l x n`` :math:`X` as above, with :math:`X^T` in place of :math:`A^T Q`). For Gaussian
    operators, with :math:`\tau_j^2 = \sum_{i \ge j} \sigma_i^2` and
    :math:`f(s, t) = s/(t - s - 1)` (their Theorems 4.3 and 5.1; in their notation
    :math:`\ell` is k, :math:`\ell'` is l and ``k`` is r),

    .. math::

        \mathbb{E}\|A - QX\|_F^2 \le (1 + f(\ell, \ell'))
        \min_{\varrho \le \ell - 2} (1 + f(\varrho, \ell))\, \tau_{\varrho + 1}^2,
        \qquad
        \mathbb{E}\|A - U \operatorname{diag}(s) V^T\|_F \le \tau_{k + 1}
        + 2\,(\mathbb{E}\|A - QX\|_F^2)^{1/2};

    with :math:`\ell' = 2\ell + 1` the first factor is 2 (what the co-range sketch costs
    over the two-pass form's :math:`\|(I - QQ^T)A\|_F^2`). Power iterations need two more
    passes each and are refused. Cost: one pass, in which each row block :math:`A_i` gives
    its rows :math:`A_i \Omega` of :math:`Y` and adds :math:`\Psi_{:, i} A_i` to :math:`W`:
    :math:`2mn(\ell + \ell')` flops (about 1.5 times the two-pass form's :math:`4mn\ell` at
    :math:`q = 0`), memory :math:`m\ell + \ell' n` for the sketches.

    Parameters
    ----------
    A : array (NumPy, PyTorch or CuPy), scipy.sparse matrix or scipy LinearOperator
        The ``m x n`` matrix.
        A Dask array chunked by rows is accepted too: the tall products run in Dask, the
        small factorizations in memory, in ``2 q + 2`` passes over ``A`` (one with
        ``single_pass``); the tall factor ``U`` is returned as a Dask array (see the Dask
        guide).
    rank : int
        Number ``k`` of singular triplets, ``1 <= k <= min(m, n)``.
    oversample : int, default 10
        Extra sampled columns ``p >= 0``; ``rank + oversample`` is clipped to ``min(m, n)``
        (then the factorization is exact up to rounding).
    power_iters : int or None, default None
        Power iterations ``q >= 0``, each re-orthonormalized. None means 2 in the two-pass
        form and 0 with ``single_pass``; a positive value with ``single_pass`` raises
        ``ValueError``.
    sketch : str, SketchingOperator or callable, default "gaussian"
        The test matrix :math:`\Omega = S^T`: a family name (``"gaussian"``,
        ``"srht"``, ``"countsketch"``, ``"sparse_sign"``, ``"sampling"``; see
        :func:`sketchlinalg.sketch`), an operator ``S`` of shape ``(l, n)`` with
        ``l = min(rank + oversample, m, n)``, or a factory called as ``factory(l, n, rng=gen)``
        that returns one (a class such as :class:`sketchlinalg.SparseSign`, or
        ``functools.partial(SparseSign, nnz=4)``). A name or a factory draws from ``rng``; an
        operator brings its own random data. With ``single_pass`` only a name or a factory
        (``TypeError`` for an operator): :math:`\Psi` is drawn from it too, as
        ``factory(l', m, rng=gen)`` after :math:`\Omega`; on a Dask array ``"srht"`` gives
        :math:`\Psi` = :class:`sketchlinalg.BlockSRHT` on ``A``'s row chunks (another
        operator than the in-memory SRHT). The bounds above are for Gaussian operators; a
        co-range sketch of ``2l + 1`` rows is a weaker embedding for the sparse families and
        row sampling.
    rng : int, numpy.random.Generator, numpy.random.SeedSequence or None
        Source of randomness (SPEC 7). An int or SeedSequence seeds a fresh generator, a
        Generator is used (and advanced) as given, None draws fresh OS entropy. The random
        data is drawn on the host, so one seed gives the same result on every backend.
    single_pass : bool, default False
        Read ``A`` once (Tropp et al. 2017) instead of :math:`2q + 2` times.

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
    J. A. Tropp, A. Yurtsever, M. Udell, V. Cevher, "Practical sketching algorithms for
    low-rank matrix approximation", SIAM J. Matrix Anal. Appl. 38(4), 2017, Theorems 4.3
    and 5.1.
    """
    q = _power_iters(power_iters, single_pass)
    if single_pass:
        check_single_pass_sketch(sketch)
    if array_api_compat.is_dask_array(A):
        from .._dask import drivers
        if single_pass:
            return drivers.rsvd_single_pass(A, rank, oversample, sketch, rng)
        return drivers.rsvd(A, rank, oversample, q, sketch, rng)
    if single_pass:
        return _rsvd_single_pass(A, rank, oversample, sketch, rng)
    M, _, q, S = prepare(A, rank, oversample, q, sketch, rng)
    Q = basis(M, q, S)
    U, s, Vh = svd_from_basis(M.xp, Q, M.rmatmat(Q), int(rank))
    return tuple(to_input_dtype(Z, A, M) for Z in (U, s, Vh))  # type: ignore[return-value]


def _power_iters(power_iters: Any, single_pass: Any) -> int:
    """The number of power iterations ``power_iters`` stands for (None: the default of the
    form), after checking ``single_pass`` and that one pass is not asked to iterate."""
    if not isinstance(single_pass, (bool, np.bool_)):
        raise TypeError(f"single_pass must be True or False, got {single_pass!r}")
    if power_iters is None:
        return 0 if single_pass else DEFAULT_POWER_ITERS
    q = check_int(power_iters, "power_iters", minimum=0)
    if single_pass and q > 0:
        raise ValueError(
            f"power_iters={q} cannot be combined with single_pass=True: each power "
            f"iteration reads A twice more; use power_iters=None (or 0) for one pass, or "
            f"single_pass=False for 2q + 2 passes")
    return q


def _rsvd_single_pass(A: Any, rank: Any, oversample: Any, sketch: Any,
                      rng: RNGLike) -> tuple[Any, Any, Any]:
    """The single-pass form of :func:`rsvd` for an in-memory ``A``."""
    gen = normalize_rng(rng)
    M, l, _, S = prepare(A, rank, oversample, 0, sketch, gen)
    m = M.shape[0]
    Psi = build_operator(sketch, corange_size(l, m), m, gen,
                         role="l' x m, l' = min(2 l + 1, m), m the rows of A")
    xp = M.xp
    Y = sample(M, S)
    W = _corange_sample(M, Psi)
    check_products_finite(xp, Y)
    check_products_finite(xp, W)
    Q, _ = orthonormalize(xp, Y, passes=2)
    X = corange_solve(Psi @ Q, W)
    U, s, Vh = svd_from_basis(xp, Q, X.T, int(rank))
    return tuple(to_input_dtype(Z, A, M) for Z in (U, s, Vh))  # type: ignore[return-value]


def _corange_sample(M: Matrix, Psi: SketchingOperator) -> Any:
    """``W = Psi A``: the operator's own product on a dense ``A``; ``(A^T Psi^T)^T`` with a
    dense ``Psi^T`` for sparse and operator inputs (a sparse product, no densified ``A``)."""
    if M.kind == "dense":
        return Psi @ M.data
    return M.rmatmat(omega(M, Psi)).T
