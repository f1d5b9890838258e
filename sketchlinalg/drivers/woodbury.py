"""Regularized inverse of a low-rank outer product through its small Gram: the Woodbury identity."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .. import backend
from .._linop import as_matrix
from .._rng import RNGLike, normalize_rng
from .._validation import check_dense, check_finite, check_int
from ..comps.damped_gram import damped_gram_factor
from ..sketching import SketchingOperator
from ..sketching._spec import SketchSpec, build_operator, check_spec, describe

__all__ = ["woodbury_solve"]


def woodbury_solve(
    U: Any,
    g: Any,
    lam: Any,
    *,
    sketch: SketchSpec | None = None,
    sketch_size: int | None = None,
    rng: RNGLike = 0,
    return_info: bool = False,
) -> Any:
    r"""Solve :math:`(U U^T + \lambda I_p)\, x = g` through the :math:`n \times n` Gram of ``U``.

    With :math:`U \in \mathbb{R}^{p \times n}` (``p >> n`` is the intended regime) the
    Sherman-Morrison-Woodbury identity gives

    .. math::

        (U U^T + \lambda I_p)^{-1} g = \frac{1}{\lambda}
        \left(g - U (U^T U + \lambda I_n)^{-1} U^T g\right),

    so only the Gram :math:`G = U^T U` (one GEMM, :math:`O(p n^2)`), the products
    :math:`U^T g` and :math:`U \alpha` (:math:`O(p n k)`) and an :math:`n \times n` solve are
    needed. For a scalar :math:`\lambda` the small system is solved by Cholesky of
    :math:`G + \lambda I`. When :math:`\lambda` is so small against :math:`\|G\|` that the
    computed :math:`G + \lambda I` is not numerically positive definite (its Cholesky
    factorization fails), the solve falls back to the eigendecomposition
    :math:`G = V \operatorname{diag}(w) V^T` with the rounding-level negative :math:`w_i`
    clipped to 0, emits a ``RuntimeWarning`` and reports ``"eigh"`` in ``info``. For an
    array of :math:`L` values of :math:`\lambda` one eigendecomposition serves all of them:
    :math:`\alpha_\ell = V \operatorname{diag}(1 / (w + \lambda_\ell)) V^T U^T g`.

    This is the damped empirical-Fisher solve of SENG (Yang et al., arXiv 2006.05924, Sec. 3,
    Eq. (3.6)), with :math:`U` the per-sample gradients scaled by :math:`1/\sqrt{N}`.

    Parameters
    ----------
    U : array of shape (p, n), scipy.sparse matrix or scipy.sparse.linalg.LinearOperator
        A dense array of any backend (NumPy, PyTorch, CuPy). A sparse matrix has its Gram
        formed by a sparse product; a LinearOperator is densified once as ``U @ I_n``
        (``n`` products).
    g : array of shape (p,) or (p, k)
        Right-hand side(s), on the backend and device of ``U`` (NumPy for sparse or
        operator ``U``).
    lam : float or 1-D array of floats
        The regularization(s) :math:`\lambda > 0`; a 1-D array (NumPy, list, or an array of
        ``U``'s backend) of length ``L`` gives a result with a leading axis of length ``L``.
    sketch : None, str, SketchingOperator or callable
        None (default) uses the exact Gram. A sketch replaces the Gram by
        :math:`U^T S^T S U` with :math:`S` of shape ``(sketch_size, p)``,
        :math:`E[S^T S] = I`, given as a family name (``"gaussian"``, ``"srht"``,
        ``"countsketch"``, ``"sparse_sign"``, ``"sampling"``), an operator of that shape, or
        a factory called as ``factory(sketch_size, p, rng=gen)`` that returns one (e.g.
        ``functools.partial(sl.SparseSign, nnz=4)``). Only the Gram is approximated:
        :math:`U^T g` and :math:`U \alpha` stay exact, so the result is the exact Woodbury
        formula evaluated with an approximate :math:`n \times n` matrix, not the solve of a
        sketched system.
    sketch_size : int, optional
        Rows of :math:`S`, ``1 <= sketch_size <= p``; required with a family name or a
        factory (an operator brings its own).
    rng : int, numpy.random.Generator, numpy.random.SeedSequence or None
        Source of randomness (SPEC 7) for the sketch: an int or SeedSequence seeds a fresh
        generator, a Generator is used (and advanced) as given, None draws fresh OS entropy.
        Unused without ``sketch`` or with an operator instance.
    return_info : bool
        Also return a dict with ``"factorization"`` (``"cholesky"`` or ``"eigh"``),
        ``"fallback"`` (True when Cholesky failed and eigh was used instead), ``"gram"``
        (``"exact"``, ``"<kind>(<sketch_size>)"`` or the operator's repr) and ``"cond"``, the
        condition number of :math:`G + \lambda I` (exact from eigh; from Cholesky the lower bound
        :math:`(\max_i L_{ii} / \min_i L_{ii})^2`; for an array of lams, the largest).

    Returns
    -------
    x : array of shape (p,), (p, k), (L, p) or (L, p, k)
        On the backend, device and dtype of ``g`` and ``U`` (their promoted floating type;
        float16/bfloat16 are computed in float32 and cast back).
    info : dict
        Only with ``return_info=True``.

    Raises
    ------
    ValueError
        For shape mismatches, ``lam <= 0`` or non-finite, and NaN/Inf in ``U`` or ``g``
        (for the exact Gram, non-finite ``U`` is detected on the diagonal of :math:`U^T U`,
        which also flags a Gram that overflows).

    Notes
    -----
    The residual :math:`(U U^T + \lambda I) x - g` equals :math:`U r / \lambda`, with
    :math:`r` the residual of the small solve, so the relative accuracy degrades like
    :math:`\epsilon (\|U\|^2 + \lambda) / \lambda`; for :math:`\lambda \to \infty`,
    :math:`x \to g / \lambda`. When ``p < n`` a direct ``p x p`` solve would be cheaper; the
    routine still goes through the ``n x n`` Gram.
    """
    if not isinstance(return_info, bool):
        raise TypeError(f"return_info must be a bool, got {type(return_info).__name__}")
    M = as_matrix(U, "U", check_values=False)
    p, n = M.shape
    xp, _ = check_dense(g, "g")
    if M.kind == "dense":
        backend.namespace(U, g)  # one backend for both
    elif backend.backend_name(g) != "numpy":
        raise TypeError("g must be a NumPy array when U is a scipy.sparse matrix or operator")
    if g.shape[0] != p:
        raise ValueError(
            f"shape mismatch: g has shape {tuple(g.shape)} but U has shape {(p, n)}; g needs "
            f"{p} rows"
        )
    lams = _check_lam(lam)
    d = 0  # rows of the sketch, when there is one
    if sketch is not None:
        check_spec(sketch)
        if sketch_size is None and isinstance(sketch, SketchingOperator):
            sketch_size = sketch.shape[0]
        if sketch_size is None:
            raise ValueError("sketch_size is required when sketch is a family name or a factory")
        d = check_int(sketch_size, "sketch_size", minimum=1)
        if d > p:
            raise ValueError(f"sketch_size must be <= p = {p} (rows of U), got {d}")
    elif sketch_size is not None:
        raise ValueError("sketch_size is given but sketch is None; pass a sketch kind too")

    out_dtype = xp.result_type(U.dtype if M.kind == "dense" else M.dtype, g.dtype)
    work = backend.compute_dtype(xp, out_dtype, "g")
    Ud = M.matmat(np.eye(n, dtype=M.dtype)) if M.kind == "operator" else M.data
    if Ud.dtype != work:
        Ud = xp.astype(Ud, work) if M.kind != "sparse" else Ud.astype(work)
    rhs = g if g.dtype == work else xp.astype(g, work)
    check_finite(xp, rhs, "g")

    # Gram: exact, or from the sketch S U (then non-finite U may hide, so check U itself).
    if sketch is None:
        G = Ud.T @ Ud
        if M.kind == "sparse":
            G = np.asarray(G.toarray())
        gram_name = "exact"
        if not bool(xp.all(xp.isfinite(xp.linalg.diagonal(G)))):
            raise ValueError("U contains NaN or Inf entries (or its Gram U^T U overflows)")
    else:
        check_finite(xp, Ud.data if M.kind == "sparse" else Ud, "U")
        S = build_operator(sketch, d, p, normalize_rng(rng),
                           role="sketch_size x p, p the rows of U")
        SU = S @ Ud
        G = SU.T @ SU
        gram_name = describe(sketch, S)
    vector = rhs.ndim == 1
    R = rhs[:, None] if vector else rhs  # (p, k)
    H = Ud.T @ R  # (n, k)
    if M.kind == "sparse":
        H = np.asarray(H)

    info: dict[str, Any] = {"gram": gram_name, "fallback": False}
    if lams.ndim == 0:
        lam0 = float(lams)
        F = damped_gram_factor(G, lam0)
        if F.fallback:
            warnings.warn(
                f"woodbury_solve: Cholesky of U^T U + lam I failed (lam={lam0:.3e} is below the "
                f"rounding level of the Gram); solving by eigendecomposition instead",
                RuntimeWarning, stacklevel=2,
            )
        alpha = F.solve(H)
        info.update(factorization=F.method, fallback=F.fallback, cond=F.cond)
        x = (R - Ud @ alpha) / lam0
    else:
        w, V = _clipped_eigh(xp, G)
        lam_dev = backend.from_host(lams, like=G, dtype=work)
        nl, k = lams.size, H.shape[1]
        alpha = V @ ((V.T @ H)[None, ...] / (w[None, :, None] + lam_dev[:, None, None]))
        # One product U @ [alpha_1 ... alpha_L] (a sparse U cannot batch): (L, n, k) -> (n, L k)
        A2 = xp.reshape(xp.permute_dims(alpha, (1, 0, 2)), (n, nl * k))
        Ua = xp.permute_dims(xp.reshape(Ud @ A2, (p, nl, k)), (1, 0, 2))
        x = (R[None, ...] - Ua) / lam_dev[:, None, None]
        info.update(factorization="eigh", cond=_eig_cond(w, lams))
    if vector:
        x = x[..., 0]
    if M.kind == "sparse":
        x = np.asarray(x)
    if x.dtype != out_dtype:
        x = xp.astype(x, out_dtype)
    return (x, info) if return_info else x


def _check_lam(lam: Any) -> np.ndarray:
    """``lam`` as a host float64 array of ndim 0 or 1, every entry finite and > 0."""
    if isinstance(lam, (bool, np.bool_)):
        raise TypeError("lam must be a positive number or a 1-D array of them, got bool")
    try:
        arr = backend.to_host(lam) if not isinstance(lam, (int, float, list, tuple, np.number)) \
            else np.asarray(lam)
    except TypeError:
        raise TypeError(
            f"lam must be a positive number or a 1-D array of them, got {type(lam).__name__}"
        ) from None
    if arr.dtype.kind not in "iuf" or arr.ndim > 1 or arr.size == 0:
        raise ValueError(
            f"lam must be a positive number or a non-empty 1-D array of them, got {lam!r}"
        )
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"lam must be finite and > 0 (every entry), got {lam!r}")
    return arr


def _clipped_eigh(xp: Any, G: Any) -> tuple[Any, Any]:
    """Eigenpairs of the PSD Gram; rounding-level negative eigenvalues are set to 0."""
    w, V = xp.linalg.eigh(G)
    return xp.where(w > 0, w, xp.zeros_like(w)), V


def _eig_cond(w: Any, lams: Any) -> float:
    wh = backend.to_host(w).astype(np.float64)
    if wh.size == 0:  # U with no columns: the solved matrix is lam I
        return 1.0
    return float(max((wh.max() + lam) / (wh.min() + lam) for lam in np.atleast_1d(lams)))
