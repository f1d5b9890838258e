"""Regularized least squares min ||A x - b||^2 + lam ||x||^2: direct, sketch-and-solve and
sketch-and-precondition (Blendenpik / LSRN) solvers, and a visible automatic choice."""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import numpy as np

from .. import backend
from .._linop import as_matrix
from .._ridge_solve import (
    RightFactor,
    augment,
    cond_triangular,
    krylov_columns,
    resolve_sketch_size,
)
from .._rng import RNGLike, normalize_rng
from .._validation import check_dense, check_finite, check_int, check_nonnegative
from ..sketching import sketch as make_sketch
from ..sketching._spec import SketchSpec, build_operator, check_spec, describe

__all__ = ["ridge"]

METHODS = ("auto", "direct", "sketch_solve", "sketch_precondition")
SOLVERS = ("lsqr", "cg")
# auto sketches only dense problems this tall and this large; smaller ones are solved directly.
AUTO_MIN_ASPECT = 8
AUTO_MIN_SIZE = 1 << 20


def ridge(
    A: Any,
    b: Any,
    lam: Any = 0.0,
    *,
    method: str = "auto",
    rng: RNGLike = 0,
    sketch: SketchSpec = "sparse_sign",
    sketch_size: int | None = None,
    solver: str = "lsqr",
    tol: float | None = None,
    maxiter: int | None = None,
    return_info: bool = False,
) -> Any:
    r"""Solve the ridge (Tikhonov) problem :math:`\min_x \|A x - b\|_2^2 + \lambda \|x\|_2^2`.

    Equivalently :math:`\min_x \|\bar A x - \bar b\|_2` with
    :math:`\bar A = [A; \sqrt{\lambda} I_n]`, :math:`\bar b = [b; 0]`, whose solution is
    :math:`x = (A^T A + \lambda I)^{-1} A^T b`. With :math:`\lambda = 0` and
    :math:`m \ge n` this is ordinary least squares; a numerically rank-deficient ``A`` (an
    exactly zero column included) then gets the minimum-norm solution on its numerical range,
    as ``scipy.linalg.lstsq`` / ``numpy.linalg.lstsq`` give, with every method and input type
    (truncated SVD, reported in ``info["factorization"]``).

    **Rank rule** (that of ``numpy.linalg.lstsq`` and ``numpy.linalg.matrix_rank``):
    singular values :math:`\sigma_i \le \max(m, n)\, \epsilon\, \sigma_1` count as zero,
    :math:`\epsilon` the machine epsilon of the working dtype. The singular values are those of
    the triangular factor :math:`R` of :math:`\bar A` (``"direct"``, equal to
    :math:`\bar A`'s) or of :math:`[S A; \sqrt\lambda I]` (the sketch methods, equal to
    :math:`\bar A`'s within the embedding distortion). They are computed (an
    :math:`n \times n` SVD) only when the condition estimate of :math:`R` exceeds
    :math:`0.1 / (\max(m, n)\, \epsilon)`, the estimate being a lower bound; the Cholesky
    route is never taken for such a matrix (it needs :math:`\hat\kappa \le
    \epsilon^{-1/4}`).

    ``method`` selects the algorithm:

    ``"direct"``
        Cholesky :math:`L L^T = A^T A + \lambda I` of the normal equations when they keep
        at least half of the working digits, i.e. when the condition-number estimate
        :math:`\hat\kappa(\bar A) = \hat\kappa(L) \le \epsilon^{-1/4}` (forward error
        :math:`\approx \epsilon \kappa^2 \le \sqrt{\epsilon}`); otherwise Householder QR of
        :math:`[\bar A \mid \bar b]` (forward error :math:`\approx \epsilon \kappa`, plus the
        :math:`\epsilon \kappa^2 \|r\| / (\|A\| \|x\|)` term of every least-squares solver).
        Golub and Van Loan, *Matrix Computations*, 4th ed., Sec. 5.3.
    ``"sketch_solve"``
        Sketch-and-solve (Sarlos 2006): :math:`x = \arg\min \|S A x - S b\|^2 +
        \lambda \|x\|^2`, with :math:`S` of shape ``(sketch_size, m)``. Approximate: with a
        subspace embedding of :math:`\mathrm{range}([\bar A, \bar b])` of distortion
        :math:`\varepsilon` its objective is within a factor
        :math:`((1 + \varepsilon)/(1 - \varepsilon))^2` of the optimum; exact when ``b`` is
        consistent (:math:`b = A x_*`, :math:`\lambda = 0`).
    ``"sketch_precondition"``
        Blendenpik / LSRN (Avron, Maymounkov and Toledo 2010; Meng, Saunders and Mahoney
        2014): Householder QR :math:`[S A; \sqrt{\lambda} I] = Q R` (rows of ``A``
        sketched, :math:`\sqrt{\lambda} I` appended unsketched), then LSQR on the
        right-preconditioned :math:`\min_y \|\bar A R^{-1} y - \bar b\|`,
        :math:`x = R^{-1} y`, started from the sketch-and-solve answer. If :math:`S` embeds
        :math:`\mathrm{range}(\bar A)` with distortion :math:`\varepsilon`,
        :math:`\mathrm{cond}(\bar A R^{-1}) \le (1 + \varepsilon)/(1 - \varepsilon)` whatever
        :math:`\mathrm{cond}(A)`, and LSQR gains a factor :math:`\approx \varepsilon` per
        iteration: for a Gaussian :math:`S`, :math:`\varepsilon \approx \sqrt{n/d}` and
        about :math:`\log(\text{tol}/2) / \log\sqrt{n/d}` iterations (LSRN, Sec. 4). When
        :math:`\hat\kappa(R) > \epsilon^{-1/4}` LSQR is restarted once from its result
        (iterative refinement with a recomputed residual; Epperly, Meier and Nakatsukasa
        2024), which brings the forward error of inconsistent ill-conditioned problems to
        that of Householder QR. ``solver="cg"`` runs CG on the preconditioned normal
        equations instead: as fast, but for ill-conditioned ``A`` only as accurate as
        normal equations (:math:`\epsilon \kappa^2`). A numerically rank-deficient :math:`R`
        (by the rank rule below; only possible for :math:`\lambda \approx 0`) is replaced by
        its truncated SVD, preconditioner :math:`V_r \Sigma_r^{-1}`.
    ``"auto"``
        A ``scipy.sparse`` ``A`` (with :math:`m \ge n`) goes to ``"sketch_precondition"``
        (LSQR needs only products). A dense ``A`` that is not tall and large
        (:math:`m < 8n` or :math:`mn < 2^{20}`) goes to ``"direct"``. Otherwise ``auto``
        estimates :math:`\kappa(\bar A)` from the Cholesky factor of the Gram of ``4n``
        uniformly sampled rows (:math:`O(n^3)`; it does not read all of ``A``): at most
        :math:`\epsilon^{-1/4}` picks the Cholesky normal equations (on a CPU the cheapest
        accurate solver of a well-conditioned dense problem: one SYRK), whose own
        :math:`\hat\kappa(L)` is checked again; a larger estimate, or a rejection by that
        check, picks ``"sketch_precondition"`` (cheaper than Householder QR of ``A``: one
        sparse sketch and LSQR sweeps instead of :math:`2 m n^2` flops). The choice and its
        reason are reported in ``info["method"]`` and ``info["auto_reason"]``.

    Parameters
    ----------
    A : array of shape (m, n), scipy.sparse matrix or scipy.sparse.linalg.LinearOperator
        A dense array of any backend (NumPy, PyTorch, CuPy). A sparse matrix stays sparse
        (``"direct"`` forms its Gram by a sparse product and densifies ``A`` only for its QR
        branch). A LinearOperator is densified once as ``A @ I_n`` (``n`` products: the same
        cost as forming any sketch :math:`S A` with ``sketch_size >= n``). A Dask array
        chunked by rows (with ``m >= n``) is sketched in one pass, LSQR's products with it
        run in Dask, ``"direct"`` (``"auto"``'s pick) is Householder QR by Dask's TSQR (one
        pass), ``sketch="srht"`` means the ``BlockSRHT`` on its row chunks, ``b`` may be a
        NumPy or Dask array, ``x`` is NumPy and ``info["passes"]`` counts the passes over
        ``A`` (see the Dask guide).
    b : array of shape (m,) or (m, k)
        On the backend and device of ``A`` (NumPy for sparse or operator ``A``). A 2-D ``b``
        holds ``k`` right-hand sides, solved with one factorization (and, for
        ``"sketch_precondition"``, one Krylov run per column), as in ``scipy.linalg.lstsq``.
    lam : float
        :math:`\lambda \ge 0`: a number or a 0-d array of any backend (a NumPy array, a torch
        tensor). ``lam = 0`` needs ``m >= n``.
    method : {"auto", "direct", "sketch_solve", "sketch_precondition"}
    rng : int, numpy.random.Generator, numpy.random.SeedSequence or None
        Source of randomness (SPEC 7) for the sketches: an int or SeedSequence seeds a fresh
        generator, a Generator is used (and advanced) as given, None draws fresh OS entropy.
    sketch : str, SketchingOperator or callable, default "sparse_sign"
        The sketch :math:`S` of the sketch methods: a family name (``"sparse_sign"``,
        ``"gaussian"``, ``"srht"``, ``"countsketch"``, ``"sampling"``; the default, sparse
        sign with 8 nonzeros per column, makes one pass over ``A`` with an embedding quality
        close to Gaussian), an operator of shape ``(sketch_size, m)``, or a factory called as
        ``factory(sketch_size, m, rng=gen)`` that returns one, e.g.
        ``functools.partial(sl.SparseSign, nnz=4)`` to set the nonzeros per column.
    sketch_size : int, optional
        Rows ``d`` of :math:`S`, ``n <= d <= m``; default ``min(4 n, m)``, or the rows of an
        operator ``sketch``.
    solver : {"lsqr", "cg"}
        Krylov solver of ``"sketch_precondition"``.
    tol : float, optional
        Relative tolerance of the Krylov solver (LSQR's ``atol`` and ``btol``, CG's
        ``rtol``); default ``10 eps`` (float64) or ``100 eps`` (float32).
    maxiter : int, optional
        Iteration cap of the Krylov solver (default ``2 n``).
    return_info : bool
        Also return a dict: ``"method"`` (the method run), ``"factorization"``,
        ``"cond"`` (estimate of :math:`\mathrm{cond}(\bar A)`), ``"residual"``
        (:math:`\|\bar A x - \bar b\|`, computed explicitly), and where they apply
        ``"iterations"``, ``"converged"``, ``"residual_history"`` (the Krylov solver's
        residual estimates), ``"sketch"``, ``"auto_reason"``, ``"note"``. With a 2-D ``b``,
        ``"residual"`` is a NumPy array (one norm per column) and the Krylov entries are
        lists with one entry per column (``"converged"``: whether all converged). An empty
        problem (``n = 0`` or ``k = 0``) returns an empty ``x`` with
        ``"factorization": "none"``.

    Returns
    -------
    x : array of shape (n,) or (n, k)
        On the backend and device of ``b``, in the promoted floating dtype of ``A`` and ``b``
        (float16/bfloat16 computed in float32 and cast back).
    info : dict
        Only with ``return_info=True``.

    Raises
    ------
    TypeError, ValueError
        Unsupported objects or dtypes; shape mismatch (``b`` neither 1-D nor 2-D, or not
        ``m`` rows); ``lam`` not a scalar (an array of one or more dimensions), ``lam < 0`` or
        not finite; NaN or Inf
        in ``A`` or ``b``; ``lam = 0`` with ``m < n``; sketch methods with ``m < n``; a bad
        ``method``, ``sketch``, ``sketch_size``, ``solver``, ``tol`` or ``maxiter``.
    """
    _check_choice(method, "method", METHODS)
    check_spec(sketch)
    _check_choice(solver, "solver", SOLVERS)
    if not isinstance(return_info, bool):
        raise TypeError(f"return_info must be a bool, got {type(return_info).__name__}")
    if tol is not None:
        tol = check_nonnegative(tol, "tol")
        if not 0 < tol < 1:
            raise ValueError(f"tol must be in (0, 1), got {tol}")
    if maxiter is not None:
        maxiter = check_int(maxiter, "maxiter", minimum=0)
    if array_api_compat.is_dask_array(A) or array_api_compat.is_dask_array(b):
        from .._dask.ridge import ridge as dask_ridge
        return dask_ridge(A, b, lam, method=method, rng=rng, sketch=sketch,
                          sketch_size=sketch_size, solver=solver, tol=tol, maxiter=maxiter,
                          return_info=return_info)
    P = _Problem(A, b, lam)
    m, n = P.shape
    if method in ("sketch_solve", "sketch_precondition") and m < n:
        raise ValueError(
            f"method={method!r} needs m >= n (it sketches the rows of A), got A of shape "
            f"{(m, n)}; use method='direct'"
        )
    sketch_size = resolve_sketch_size(sketch, sketch_size, m, n)
    gen = normalize_rng(rng)
    if n == 0 or P.nrhs == 0:  # nothing to solve: x is empty (and exact)
        x = P.finish(P.zeros((n, P.nrhs) if P.b.ndim == 2 else (n,)))
        if return_info:
            return x, {"method": "direct", "factorization": "none", "cond": math.nan,
                       "note": f"empty problem (A of shape {(m, n)}, b of shape "
                               f"{tuple(P.b.shape)}): x is empty", "residual": P.residual(x)}
        return x

    info: dict[str, Any] = {}
    if method == "auto":
        method, info["auto_reason"] = _auto_method(P, gen)
    x = None
    # "cholesky_or_sketch" is auto's internal pick: Cholesky, unless its own check rejects it.
    if method in ("direct", "cholesky_or_sketch"):
        x, finfo = _cholesky(P)
        if x is None and method == "direct":
            x, qinfo = _qr(P)
            finfo = {**qinfo, "note": finfo["note"]}
        if x is None:  # auto's Cholesky was rejected: sketch-and-precondition instead
            info["auto_reason"] += f"; {finfo['note']} -> sketch_precondition"
            method = "sketch_precondition"
        else:
            method = "direct"
            info.update(finfo)
    info["method"] = method
    if method in ("sketch_solve", "sketch_precondition"):
        pre = _sketch_factor(P, sketch, sketch_size, gen)
        info.update(sketch=pre.sketch, factorization="qr_of_sketch"
                    + pre.truncation, cond=pre.cond)
        x = pre.apply(pre.y0)
        if method == "sketch_precondition":
            x, kinfo = krylov_columns(P, pre, sketch_size, solver, tol, maxiter)
            info.update(kinfo)
    if not bool(P.xp.all(P.xp.isfinite(x))):
        raise FloatingPointError(f"ridge ({info['method']}): the solution overflowed to NaN/Inf; "
                                 f"scale A and b or increase lam")
    x = P.finish(x)
    if return_info:
        info["residual"] = P.residual(x)
        return x, info
    return x


class _Problem:
    """Validated inputs in one namespace and working dtype, with the products of ``A``."""

    def __init__(self, A: Any, b: Any, lam: Any) -> None:
        M = as_matrix(A, "A")
        xb, _ = check_dense(b, "b", ndim=(1, 2))
        m, n = M.shape
        if b.shape[0] != m:
            raise ValueError(
                f"shape mismatch: A has shape {(m, n)} but b has shape {tuple(b.shape)}; b "
                f"needs {m} rows"
            )
        self.nrhs = b.shape[1] if b.ndim == 2 else 1
        if M.kind == "dense":
            backend.namespace(M.data, b)  # one backend for both
        elif backend.backend_name(b) != "numpy":
            raise TypeError("b must be a NumPy array when A is a scipy.sparse matrix or operator")
        check_finite(xb, b, "b")
        self.lam = check_nonnegative(lam, "lam")
        if self.lam == 0 and m < n:
            raise ValueError(
                f"lam = 0 with m < n (A of shape {(m, n)}) is underdetermined; pass lam > 0"
            )
        self.xp, self.shape = xb, (m, n)
        # A's input dtype (before as_matrix's half-to-float32 cast) and b's: the result dtype.
        self.prec = backend.precision(xb, A.dtype if M.kind == "dense" else M.dtype, b.dtype,
                                       name="b")
        self.work, self.eps = self.prec.work, self.prec.eps
        data = M.data
        if M.kind == "operator":  # densified once (documented)
            data = M.matmat(np.eye(n, dtype=M.dtype)) if n > 0 else np.zeros((m, 0), M.dtype)
            check_finite(xb, data, "A @ I (LinearOperator)")
        self.sparse = M.kind == "sparse"
        self.A = self.prec.compute(data)
        self.b = self.prec.compute(b)

    def matvec(self, v: Any) -> Any:
        return self.A @ v

    def rmatvec(self, u: Any) -> Any:
        return self.A.T @ u

    def dense(self) -> Any:
        return self.xp.asarray(self.A.toarray()) if self.sparse else self.A

    def eye(self, n: int) -> Any:
        return self.xp.eye(n, dtype=self.work, device=_device(self.b))

    def zeros(self, shape: tuple[int, ...]) -> Any:
        return self.xp.zeros(shape, dtype=self.work, device=_device(self.b))

    def finish(self, x: Any) -> Any:
        return self.prec.result(x)

    def residual(self, x: Any) -> Any:
        """``|A_bar x - b_bar|``: a float, or a NumPy array (one per column) for a 2-D ``b``."""
        x = self.prec.compute(x)
        Ax = self.matvec(x)
        r = backend.to_host(self.xp.linalg.vector_norm(
            (np.asarray(Ax) if self.sparse else Ax) - self.b, axis=0)).astype(np.float64)
        xn = backend.to_host(self.xp.linalg.vector_norm(x, axis=0)).astype(np.float64)
        res = np.hypot(r, math.sqrt(self.lam) * xn)
        return float(res) if self.b.ndim == 1 else res


def _auto_method(P: _Problem, gen: np.random.Generator) -> tuple[str, str]:
    m, n = P.shape
    if P.sparse:
        if m >= n:
            return "sketch_precondition", "scipy.sparse A: LSQR needs only products"
        return "direct", "scipy.sparse A with m < n: sketching rows cannot help"
    if m < AUTO_MIN_ASPECT * n or m * n < AUTO_MIN_SIZE:
        return "direct", (f"dense A of shape {(m, n)} is not tall and large "
                          f"(m >= {AUTO_MIN_ASPECT} n and m n >= {AUTO_MIN_SIZE})")
    # Cheap conditioning probe: Cholesky of the Gram of 4n sampled rows (+ lam I).
    d = min(4 * n, m)
    SA = make_sketch("sampling", d, m, rng=gen) @ P.A
    L = backend.cholesky(SA.T @ SA + P.lam * P.eye(n))
    kappa = math.inf if L is None else cond_triangular(P.xp, L, lower=True)
    limit = P.eps ** -0.25
    if kappa <= limit:
        return "cholesky_or_sketch", (f"cond estimate from {d} sampled rows {kappa:.2e} <= "
                                      f"eps^(-1/4) = {limit:.2e} -> direct (Cholesky)")
    return "sketch_precondition", (f"cond estimate from {d} sampled rows {kappa:.2e} > "
                                   f"eps^(-1/4) = {limit:.2e}")


def _cholesky(P: _Problem) -> tuple[Any, dict[str, Any]]:
    """Normal equations by Cholesky, or ``(None, {"note": why not})`` when not accurate."""
    n = P.shape[1]
    G = P.A.T @ P.A
    if P.sparse:
        G = P.xp.asarray(G.toarray())
    L = backend.cholesky(G + P.lam * P.eye(n))
    if L is None:
        return None, {"note": "Cholesky of A^T A + lam I failed (not numerically positive "
                              "definite)"}
    kappa = cond_triangular(P.xp, L, lower=True)
    limit = P.eps ** -0.25
    if kappa > limit:
        return None, {"note": f"Cholesky rejected: cond estimate {kappa:.2e} > eps^(-1/4) = "
                              f"{limit:.2e}"}
    y = backend.solve_triangular(L, P.rmatvec(P.b), lower=True)
    return backend.solve_triangular(L, y, lower=True, trans=True), {
        "factorization": "cholesky", "cond": kappa}


def _qr(P: _Problem) -> tuple[Any, dict[str, Any]]:
    """Householder QR of [A b; sqrt(lam) I 0]: R x = (Q^T [b; 0])_{1:n}."""
    F = RightFactor(P, backend.qr_r(augment(P, P.dense(), P.b)))
    return F.apply(F.y0), {"factorization": "qr" + F.truncation, "cond": F.cond}


def _sketch_factor(P: _Problem, spec: Any, d: int, gen: np.random.Generator) -> RightFactor:
    r"""QR of the sketched ``[S A  S b; sqrt(lam) I 0]``: the right preconditioner, and the
    sketch-and-solve solution ``N y0`` (``sketch`` labels ``S`` for the report)."""
    S = build_operator(spec, d, P.shape[0], gen, role="sketch_size x m, m the rows of A")
    SA = S @ P.A
    if P.sparse:
        SA = P.xp.asarray(SA, dtype=P.work)
    pre = RightFactor(P, backend.qr_r(augment(P, SA, S @ P.b)))
    pre.sketch = describe(spec, S)
    return pre


def _check_choice(value: Any, name: str, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {', '.join(choices)}; got "
                        f"{type(value).__name__}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _device(x: Any) -> Any:
    return array_api_compat.device(x)

