r"""Claim 4: the linear algebra SENG rests on.

* Woodbury: :math:`(UU^T + \lambda I)^{-1} g = \frac1\lambda (g - U (U^TU + \lambda I)^{-1} U^T g)`
  (``sketchlinalg.woodbury_solve``) against a dense solve, and the regularized
  least-squares form :math:`\alpha = \arg\min \|U\alpha - g\|^2 + \lambda\|\alpha\|^2`.
* Sketch distortion :math:`E = U^T S^T S U - I` of each family: the exact second moment
  :math:`E\|E\|_F^2` and the scaling :math:`\|E\|_2 \propto s^{-1/2}`; and the isometry
  :math:`E[S^T S] = I` itself: :math:`E\langle Sx, Sy\rangle = 0` for nonnegative
  :math:`x \perp y` (sign bias) and :math:`E\|SX\|_F^2 = \|X\|_F^2` through ``S @ X``,
  ``X.T @ S.T`` and ``S.T @ Y`` (scaling of either side).
* rSVD and the range finder against the Halko-Martinsson-Tropp expectation bounds.
* The convolution identity: per-sample Gram = block sums of :math:`(\hat A^T\hat A) \circ
  (\hat G^T \hat G)`.
* Distributed SENG: per-worker Grams, directions averaged, is a descent direction.

``docs/theory/linalg.md`` writes out the theory and the PASS rules.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import scipy.signal

import sketchlinalg as sl
from sketchlinalg import backend

from . import _fit
from ._arrays import Arrays, eye_like, zeros_like_vector
from ._config import Config, settings
from ._plot import figure, progress
from ._result import Check, Result
from ._threads import one_thread

NAME = "linalg"
CLAIM = "The linear algebra SENG rests on (Woodbury, sketches, rSVD, convolution Gram, "
CLAIM += "distributed directions)"
CURVATURE = ("empirical Fisher U U^T with U the scaled per-sample gradients (Woodbury, "
             "distributed); none for the sketch and rSVD checks")

EPS = float(np.finfo(np.float64).eps)

FULL: dict[str, Any] = {
    "wood_p": 800,
    "wood_n": 40,
    "wood_lams": (1e-6, 1e-3, 1.0),      # relative to ||U||_2^2
    "wood_error": 0.0,                  # relative error put on both solutions (tests break it)
    "sketch_m": 4096,                   # ambient dimension of the embedded subspace
    "sketch_n": 8,
    "sketch_sizes": (64, 128, 256, 512, 1024),
    "sketch_draws": 12,
    "sketch_kinds": ("gaussian", "srht", "countsketch", "sparse_sign", "sampling"),
    "sketch_probes": 16,                # orthonormal columns X whose ||S X||_F^2 measures the scale
    "sketch_scale": 1.0,                # multiplies S (1 = isometric scaling; tests break it)
    "sketch_adjoint_scale": 1.0,        # multiplies S.T only: B @ S.T and S.T @ Y (likewise)
    "rsvd_shape": (500, 300),
    "rsvd_rank": 10,
    "rsvd_oversample": 5,
    "rsvd_power": (0, 1, 2),
    "rsvd_draws": 10,
    "conv": (6, 3, 4, 8, 3),            # samples, in channels, out channels, image side, kernel
    "conv_error": 0.0,                  # error put on the identity, in units of each entry's
                                        # absolute term sum (tests break it)
    "dist_samples": 512,
    "dist_workers": (2, 4, 8),
    "dist_trials": 10,
    "dist_damping": 1e-2,
}
QUICK: dict[str, Any] = {
    "wood_p": 300,
    "wood_n": 20,
    "sketch_m": 1024,
    "sketch_sizes": (48, 96, 192, 384),
    "sketch_draws": 8,
    "rsvd_shape": (200, 120),
    "rsvd_power": (0, 1),
    "rsvd_draws": 8,
    "dist_samples": 256,
    "dist_workers": (2, 4),
    "dist_trials": 4,
}


@one_thread()
def run(config: Config | None = None) -> Result:
    """Run the linear-algebra checks; see the module docstring."""
    config = Config() if config is None else config
    p = settings(config, FULL, QUICK)
    t0 = time.perf_counter()
    ar = Arrays(config)
    seeds = np.random.SeedSequence([config.seed, 4]).spawn(5)
    figures: list = []
    stages = [
        lambda: _woodbury(ar, p, seeds[0]),
        lambda: _distortion(ar, p, seeds[1], config, figures),
        lambda: _rsvd(ar, p, seeds[2], config, figures),
        lambda: [_conv(ar, p, seeds[3])],
        lambda: [_distributed(ar, p, seeds[4])],
    ]
    checks: list[Check] = []
    for stage in progress(config, stages, "linalg"):
        checks.extend(stage())
    details = (
        f"Woodbury: U of shape ({p['wood_p']}, {p['wood_n']}) with singular values "
        f"logspace(0, -3); sketches embed a {p['sketch_n']}-dimensional subspace of "
        f"R^{p['sketch_m']} ({p['sketch_n'] // 2} block indicators and random directions; "
        f"{p['sketch_draws']} draws per size) and {p['sketch_probes']} orthonormal columns X "
        "for the scale; rSVD of a "
        f"{p['rsvd_shape'][0]} x {p['rsvd_shape'][1]} matrix with σ_j = 1/j, rank "
        f"{p['rsvd_rank']}, oversampling {p['rsvd_oversample']}.\n")
    return Result(NAME, CLAIM, CURVATURE, checks, figures, details, time.perf_counter() - t0)


def _spectrum_matrix(rng: np.random.Generator, m: int, n: int, s: np.ndarray) -> np.ndarray:
    U, _ = np.linalg.qr(rng.standard_normal((m, s.size)))
    V, _ = np.linalg.qr(rng.standard_normal((n, s.size)))
    return (U * s) @ V.T


# -- Woodbury and regularized least squares -------------------------------------------------
def _woodbury(ar: Arrays, p: dict, seed: np.random.SeedSequence) -> list[Check]:
    xp = ar.xp
    rng = np.random.default_rng(seed)
    P, n = p["wood_p"], p["wood_n"]
    Uh = _spectrum_matrix(rng, P, n, np.logspace(0, -3, n))
    gh = rng.standard_normal(P)
    U, g = ar.asarray(Uh), ar.asarray(gh)
    worst_w, worst_l, tol_note = 0.0, 0.0, []
    for rel in p["wood_lams"]:
        lam = rel  # ||U||_2 = 1
        x_wood = sl.woodbury_solve(U, g, lam)
        dense = U @ U.T + lam * eye_like(U, P)
        x_dense = xp.linalg.solve(dense, g)
        # regularized least squares through QR of [U; sqrt(lam) I]
        aug = xp.concat([U, math.sqrt(lam) * eye_like(U, n)])
        Q, R = backend.qr(aug)
        rhs = Q.T @ xp.concat([g, zeros_like_vector(g, n)])
        alpha = backend.solve_triangular(R, rhs, lower=False)
        x_lsq = (g - U @ alpha) / lam
        x_wood, x_lsq = (1 + p["wood_error"]) * x_wood, (1 + p["wood_error"]) * x_lsq
        kappa = (1.0 + lam) / lam  # cond(UU^T + lam I) on R^P (sigma_max = 1)
        # forward error of a backward-stable solve <= kappa * gamma_{cP}; two solves compared
        tol = 2 * kappa * _gamma(3 * P)
        scale = ar.item(xp.max(xp.abs(x_dense)))
        worst_w = max(worst_w, ar.item(xp.max(xp.abs(x_wood - x_dense))) / (tol * scale))
        worst_l = max(worst_l, ar.item(xp.max(xp.abs(x_lsq - x_dense))) / (tol * scale))
        tol_note.append(f"{tol:.1e}")
    lams = ", ".join(f"{v:g}" for v in p["wood_lams"])
    return [
        Check("Woodbury identity", f"woodbury_solve = dense solve (λ = {lams})",
              f"max error / tolerance = {worst_w:.2e}", worst_w <= 1,
              "max |x_woodbury - x_dense| <= 2 κ(UU^T+λI) γ_{3p} max|x| (backward-stable solves,"
              " Higham Thm 7.2), tolerances " + ", ".join(tol_note), {"err_ratio": worst_w}),
        Check("regularized least squares", "(g - U argmin(||Uα-g||²+λ||α||²))/λ = dense solve",
              f"max error / tolerance = {worst_l:.2e}", worst_l <= 1,
              "the same tolerance, with α from the QR of [U; sqrt(λ) I]", {"err_ratio": worst_l}),
    ]


def _gamma(k: int) -> float:
    return k * EPS / (1 - k * EPS)


# -- sketch distortion and isometry ---------------------------------------------------------
def _subspace(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    """Orthonormal ``U`` (``m x n``): ``n // 2`` normalized indicators of consecutive blocks of
    the coordinates, then random directions orthogonal to them.

    The indicators are nonnegative, so a sketch whose signs are biased gives ``E[E] != 0`` on
    them, and a Hadamard transform maps them onto ``n // 2`` of its rows (for ``m`` a power of
    two), so an SRHT without its random signs leaves them unmixed."""
    r = n // 2
    B = np.zeros((m, r))
    for b, idx in enumerate(np.array_split(np.arange(m), r)):
        B[idx, b] = 1.0 / math.sqrt(idx.size)
    G = rng.standard_normal((m, n - r))
    Q, _ = np.linalg.qr(G - B @ (B.T @ G))
    return np.concatenate([B, Q], axis=1)


def _second_moment(kind: str, U: np.ndarray, s: int) -> float:
    """E||U^T S^T S U - I||_F^2 for orthonormal U (m x n).

    Derivations in docs/sketching.md, with L4 = sum_j ||u_j||^4 over the rows of U. Gaussian:
    (n^2+n)/s; CountSketch and sparse sign: (n^2+n-2 L4)/s; sampling without replacement:
    (m-s)/(s(m-1)) (m L4 - n); SRHT (m' = m padded to a power of two): the sampling formula
    of HDU, whose expectation over the signs D is (m'-s)/(s(m'-1)) (n^2+n-2 L4)."""
    m, n = U.shape
    lev4 = float(np.sum(np.sum(U * U, axis=1) ** 2))
    if kind == "gaussian":
        return (n * n + n) / s
    if kind in ("countsketch", "sparse_sign"):
        return (n * n + n - 2 * lev4) / s
    if kind == "srht":
        mp = _padded(m)
        return (mp - s) / (s * (mp - 1)) * (n * n + n - 2 * lev4)
    return (m - s) / (s * (m - 1)) * (m * lev4 - n)


def _cross_moment(kind: str, m: int, s: int) -> float:
    """E<Sx, Sy>^2 for unit x, y with disjoint supports (so <x, y> = 0 and sum_j x_j^2 y_j^2 =
    0): 1/s for Gaussian, CountSketch and sparse sign (the column-product identity of
    docs/sketching.md), (m'-s)/(s(m'-1)) for the SRHT (HDx and HDy are independent given
    disjoint supports, so E sum_i (HDx)_i^2 (HDy)_i^2 = 1/m', then the sampling formula), 0
    for row sampling (x_i y_i = 0 for every kept row)."""
    if kind in ("gaussian", "countsketch", "sparse_sign"):
        return 1.0 / s
    if kind == "srht":
        mp = _padded(m)
        return (mp - s) / (s * (mp - 1))
    return 0.0


def _padded(m: int) -> int:
    return 1 << max(0, math.ceil(math.log2(m)))


def _distortion(ar: Arrays, p: dict, seed: np.random.SeedSequence, config: Config,
                figures: list) -> list[Check]:
    xp = ar.xp
    rng = np.random.default_rng(seed)
    m, n, k = p["sketch_m"], p["sketch_n"], p["sketch_probes"]
    Uh = _subspace(rng, m, n)
    Xh, _ = np.linalg.qr(rng.standard_normal((m, k)))
    W = ar.asarray(np.concatenate([Uh, Xh], axis=1))  # one product per draw for U and X
    Wt = ar.asarray(np.concatenate([Uh, Xh], axis=1).T)
    sizes = np.array(p["sketch_sizes"])
    eye = eye_like(W, n)
    # Rounding of ||SX||^2 / ||X||^2 computed through two products with S or S^T: each
    # entry's error is at most gamma_m' times its terms' absolute sum, so (Cauchy-Schwarz,
    # ||S||_F^2 ~ m) each product moves it by at most 2 gamma_m' sqrt(m' a), a the value.
    side_tol = 4 * _gamma(_padded(m)) * math.sqrt(_padded(m))
    out = []
    curves = {}
    for kind in p["sketch_kinds"]:
        ratios, eps_all, ss = [], [], []
        cross, cross_var, cross_round, left, sides = [], [], [], [], 0.0
        for s in sizes:
            moment = _second_moment(kind, Uh, int(s))
            for child in seed.spawn(p["sketch_draws"]):
                S = sl.sketch(kind, int(s), m, rng=np.random.default_rng(child))
                scale, adjoint = p["sketch_scale"], p["sketch_scale"] * p["sketch_adjoint_scale"]
                SW = scale * (S @ W)
                SX = SW[:, n:]
                XS = adjoint * (Wt[n:] @ S.T)  # X^T S^T: products on the right
                StSX = adjoint * (S.T @ SX)  # the adjoint operator
                SU = SW[:, :n]
                E = SU.T @ SU - eye
                ratios.append(ar.item(xp.sum(E * E)) / moment)
                eps_all.append(ar.item(xp.max(xp.abs(xp.linalg.eigvalsh(E)))))
                ss.append(int(s))
                # x, y = the first two block indicators: unit, nonnegative, disjoint supports
                cross.append(ar.item(xp.sum(SU[:, 0] * SU[:, 1])))
                cross_var.append(_cross_moment(kind, m, int(s)))
                cross_round.append(_gamma(_padded(m) + int(s)) * ar.item(
                    xp.linalg.vector_norm(SU[:, 0]) * xp.linalg.vector_norm(SU[:, 1])))
                # ||SX||^2 three ways: S @ X, X^T @ S.T, and <X, S^T (S X)>
                a = ar.item(xp.sum(SX * SX)) / k
                b = ar.item(xp.sum(XS * XS)) / k
                c = ar.item(xp.sum(Wt[n:].T * StSX)) / k
                left.append(a)
                sides = max(sides, max(abs(a - b), abs(a - c)) / (side_tol * math.sqrt(a)))
        mean, half = _fit.mean_ci(np.array(ratios))
        fit = _fit.exponent(np.array(ss), np.array(eps_all))
        ci = fit.half_width(0.99)
        # second-order terms of the theory over this grid: the Marchenko-Pastur edge
        # 2 sqrt(n/s) + n/s, and the finite-population factor of sampling without replacement
        mp = 2 * np.sqrt(n / sizes) + n / sizes
        if kind in ("sampling", "srht"):
            mp = mp * np.sqrt((m - sizes) / (m - 1))
        model = _fit.exponent(sizes, mp).slope
        slope_ok = abs(fit.slope + 0.5) <= abs(model + 0.5) + ci
        moment_ok = abs(mean - 1.0) <= half
        curves[kind] = (ss, eps_all, fit)
        out.append(Check(
            f"sketch distortion: {kind}",
            "E||E||_F² = formula (ratio = 1); ||E||_2 slope -1/2",
            f"ratio {mean:.3f} ± {half:.3f}; slope {fit.slope:.3f} ± {ci:.3f} "
            f"(r² {fit.r2:.3f}; allowed ±{abs(model + 0.5):.3f} + CI)",
            moment_ok and slope_ok,
            "mean of ||E||_F² / formula within 3 standard errors of 1, and |slope + 1/2| <= "
            "|slope of the second-order model + 1/2| + 99% CI; U holds block indicators "
            "(nonnegative, coherent after a Hadamard transform) and random directions",
            {"ratio": mean, "slope": fit.slope},
        ))
        out.append(_isometry(kind, np.array(cross), np.array(cross_var),
                             float(np.sum(cross_round)), np.array(left), sides))
    with figure(config, "linalg_sketch_distortion", figures) as ax:
        if ax is not None:
            for kind, (ss, eps_all, fit) in curves.items():
                (h,) = ax.loglog(ss, eps_all, ".", alpha=0.4)
                ax.loglog(sizes, np.exp(fit.intercept) * sizes ** fit.slope, "-",
                          color=h.get_color(), label=f"{kind} ({fit.slope:.2f})")
            ax.loglog(sizes, 2 * np.sqrt(n / sizes) + n / sizes, "k--", lw=0.8,
                      label="2√(n/s)+n/s")
            ax.set_xlabel("sketch size s")
            ax.set_ylabel(r"$\|U^TS^TSU - I\|_2$")
            ax.set_title(f"subspace distortion, n = {n}, m = {m}")
            ax.legend(fontsize=7)
    return out


def _isometry(kind: str, cross: np.ndarray, cross_var: np.ndarray, cross_round: float,
              left: np.ndarray, sides: float) -> Check:
    """E[S^T S] = I through every product with S: <Sx, Sy> has mean 0 for x perpendicular to y
    (a sign bias shows as a mean of order (1^T x)(1^T y)/s), ||S X||_F^2 has mean ||X||_F^2
    (a scaling c shows as c^2), and X^T S^T and S^T (S X) give the same number per draw (the
    adjoint, scaled or not, is the adjoint)."""
    sd = math.sqrt(float(np.sum(cross_var)))
    total = float(np.sum(cross))
    cross_ok = abs(total) <= 3 * sd + cross_round
    mean, half = _fit.mean_ci(left)
    z = total / sd if sd > 0 else 0.0
    return Check(
        f"sketch isometry: {kind}",
        "E<Sx,Sy> = 0 for x ⊥ y; E||SX||²/||X||² = 1 by S @ X = by X.T @ S.T = by S.T @ (SX)",
        f"sum <Sx,Sy> = {total:.3g} ({z:+.2f} sd); ||SX||²/||X||² {mean:.4f} ± {half:.4f}; "
        f"the three products differ by {sides:.2g} of rounding",
        cross_ok and abs(mean - 1.0) <= half and sides <= 1,
        "x, y block indicators (nonnegative, disjoint): |sum over draws of <Sx,Sy>| <= 3 "
        "sqrt(sum of the exact E<Sx,Sy>²) + rounding; ||SX||²/||X||² (X orthonormal) within 3 "
        "standard errors of 1; X.T @ S.T and <X, S.T @ (SX)> equal to it per draw up to "
        "rounding (4 γ_m' sqrt(m') relative)",
        {"cross_z": z, "scale": mean, "scale_ci": half, "err_sides": sides},
    )


# -- randomized SVD against Halko-Martinsson-Tropp --------------------------------------------
def _hmt_spectral(sig: np.ndarray, k: int, p: int, q: int) -> float:
    """HMT 2011, Cor. 10.10 (Thm. 10.6 for q = 0): bound on E||(I - QQ^T) A||_2."""
    t = 2 * q + 1
    tail = sig[k:]
    inner = ((1 + math.sqrt(k / (p - 1))) * tail[0] ** t
             + math.e * math.sqrt(k + p) / p * math.sqrt(float(np.sum(tail ** (2 * t)))))
    return inner ** (1 / t)


def _rsvd(ar: Arrays, p: dict, seed: np.random.SeedSequence, config: Config,
          figures: list) -> list[Check]:
    xp = ar.xp
    rng = np.random.default_rng(seed)
    m, n = p["rsvd_shape"]
    k, over = p["rsvd_rank"], p["rsvd_oversample"]
    sig = 1.0 / np.arange(1, min(m, n) + 1)
    A = ar.asarray(_spectrum_matrix(rng, m, n, sig))
    ok, meas, pred, vals = True, [], [], {}
    bars = []
    for q in p["rsvd_power"]:
        errs_q, errs_svd, errs_f = [], [], []
        for child in seed.spawn(p["rsvd_draws"]):
            Q = sl.range_finder(A, k, oversample=over, power_iters=q,
                                rng=np.random.default_rng(child))
            R = A - Q @ (Q.T @ A)
            errs_q.append(ar.item(xp.linalg.matrix_norm(R, ord=2)))
            errs_f.append(ar.item(xp.linalg.matrix_norm(R, ord="fro")))
            Uk, s, Vh = sl.rsvd(A, k, oversample=over, power_iters=q,
                                rng=np.random.default_rng(child))
            errs_svd.append(ar.item(xp.linalg.matrix_norm(A - (Uk * s) @ Vh, ord=2)))
        bound_q = _hmt_spectral(sig, k, over, q)
        bound_svd = sig[k] + bound_q
        rows = [("range", errs_q, bound_q), ("rsvd", errs_svd, bound_svd)]
        if q == 0:  # HMT Thm. 10.5
            bound_f = math.sqrt(1 + k / (over - 1)) * math.sqrt(float(np.sum(sig[k:] ** 2)))
            rows.append(("range_F", errs_f, bound_f))
        for label, errs, bound in rows:
            mean, half = _fit.mean_ci(np.array(errs))
            ok &= mean - half <= bound
            meas.append(f"q={q} {label} {mean:.4f}±{half:.4f}")
            pred.append(f"q={q} {label} <= {bound:.4f}")
            vals[f"{label}_q{q}"] = mean
            bars.append((f"q{q} {label}", mean, bound, sig[k]))
    with figure(config, "linalg_rsvd", figures, size=(7.0, 3.6)) as ax:
        if ax is not None:
            x = np.arange(len(bars))
            ax.bar(x - 0.2, [b[1] for b in bars], 0.4, label="measured mean")
            ax.bar(x + 0.2, [b[2] for b in bars], 0.4, label="HMT bound")
            ax.axhline(sig[k], color="k", lw=0.8, ls="--", label="σ_{k+1}")
            ax.set_xticks(x, [b[0] for b in bars], rotation=30, fontsize=7)
            ax.set_title(f"randomized range finder / rSVD errors, k={k}, p={over}")
            ax.legend(fontsize=7)
    return [Check(
        "rSVD vs Halko-Martinsson-Tropp", "; ".join(pred), "; ".join(meas), ok,
        "sample mean over draws minus 3 standard errors <= the expectation bound (Cor. 10.10 "
        "spectral, Thm. 10.5 Frobenius; rSVD adds σ_{k+1}, Sec. 9.4)", vals)]


# -- convolution Gram identity --------------------------------------------------------------
def _conv(ar: Arrays, p: dict, seed: np.random.SeedSequence) -> Check:
    """Per-sample Gram of a conv layer's weight gradients, two ways."""
    xp = ar.xp
    rng = np.random.default_rng(seed)
    N, C, O, side, k = p["conv"]
    out = side - k + 1
    T = out * out
    x = rng.standard_normal((N, C, side, side))
    gout = rng.standard_normal((N, O, out, out))
    # oracle: grad_i W[o, c] = correlate(x_i[c], g_i[o]) ("valid"), on the host
    grads = np.array([[[scipy.signal.correlate(x[i, c], gout[i, o], mode="valid")
                        for c in range(C)] for o in range(O)] for i in range(N)])
    grads = grads.reshape(N, -1)
    explicit = grads @ grads.T
    # identity: patches A_i (T x C k^2) and output gradients G_i (T x O), on the backend
    rows, cols = np.meshgrid(np.arange(out), np.arange(out), indexing="ij")
    cc, uu, vv = np.meshgrid(np.arange(C), np.arange(k), np.arange(k), indexing="ij")
    flat = ((cc.ravel()[None, :] * side + rows.ravel()[:, None] + uu.ravel()[None, :]) * side
            + cols.ravel()[:, None] + vv.ravel()[None, :])
    xb = xp.reshape(ar.asarray(x), (N, C * side * side))
    idx = backend.from_host(flat.ravel().astype(np.int64), like=xb,
                             dtype=xp.int64)
    Ahat = xp.reshape(xp.take(xb, idx, axis=1), (N * T, C * k * k))
    Ghat = xp.reshape(xp.permute_dims(xp.reshape(ar.asarray(gout), (N, O, T)), (0, 2, 1)),
                      (N * T, O))
    K = (Ahat @ Ahat.T) * (Ghat @ Ghat.T)
    gram = xp.sum(xp.reshape(K, (N, T, N, T)), axis=(1, 3))
    # |fl(sum) - sum| <= gamma_K sum |terms| for both computations (Higham, eq. 3.5)
    Aa, Ga = xp.abs(Ahat), xp.abs(Ghat)
    absum = ar.host(xp.sum(xp.reshape((Aa @ Aa.T) * (Ga @ Ga.T), (N, T, N, T)), axis=(1, 3)))
    tol = 2 * _gamma(T * T * (C * k * k + O) + T + O * C * k * k) * absum
    err = np.abs(ar.host(gram) + p["conv_error"] * absum - explicit)
    worst = float(np.max(err / tol))
    return Check(
        "convolution Gram identity",
        "<∇W_i, ∇W_j> = block sum of (ÂᵀÂ)∘(ĜᵀĜ)",
        f"max error / rounding bound = {worst:.2e}",
        worst <= 1,
        "entrywise |identity - explicit| <= 2 γ_K Σ|terms| (dot-product rounding bound), "
        "explicit per-sample gradients by scipy.signal.correlate",
        {"err_ratio": worst},
    )


# -- distributed directions -----------------------------------------------------------------
def _distributed(ar: Arrays, p: dict, seed: np.random.SeedSequence) -> Check:
    """Softmax regression on synthetic 10-class data: per-sample gradients (p_i - e_yi) x_i^T.

    Workers w hold disjoint batches; each preconditions the all-reduced gradient g with its
    own Gram: d_w = (U_w U_w^T + lam I)^{-1} g, and the directions are averaged. Since each
    (U_w U_w^T + lam I)^{-1} has eigenvalues in [1/(lam + ||U_w||^2), 1/lam],
    g^T dbar >= ||g||^2 / (lam + max_w ||U_w||_2^2) > 0 and ||dbar|| <= ||g|| / lam."""
    xp = ar.xp
    rng = np.random.default_rng(seed)
    N, d, C = p["dist_samples"], 64, 10
    means = rng.standard_normal((C, d))
    labels = rng.integers(0, C, N)
    X = means[labels] + 2.0 * rng.standard_normal((N, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    lam = p["dist_damping"]
    worst_lo, worst_up, cosines, local_desc = math.inf, 0.0, [], []
    for _ in range(p["dist_trials"]):
        Wt = 0.5 * rng.standard_normal((C, d))
        logits = X @ Wt.T
        prob = np.exp(logits - logits.max(axis=1, keepdims=True))
        prob /= prob.sum(axis=1, keepdims=True)
        prob[np.arange(N), labels] -= 1.0
        per = ar.asarray((prob[:, :, None] * X[:, None, :]).reshape(N, C * d))  # (N, C d)
        g = xp.mean(per, axis=0)
        d_global = sl.woodbury_solve(per.T / math.sqrt(N), g, lam)
        for P in p["dist_workers"]:
            parts = np.array_split(rng.permutation(N), P)
            dirs, dirs_local, norms = [], [], []
            for part in parts:
                Uw = xp.take(per, backend.from_host(part, like=per, dtype=xp.int64), axis=0).T
                Uw = Uw / math.sqrt(len(part))
                dirs.append(sl.woodbury_solve(Uw, g, lam))
                dirs_local.append(sl.woodbury_solve(Uw, xp.mean(Uw, axis=1) *
                                                    math.sqrt(len(part)), lam))
                norms.append(ar.item(xp.linalg.matrix_norm(Uw, ord=2)) ** 2)
            dbar = sum(dirs) / P
            gg = ar.item(xp.sum(g * g))
            lower = gg / (lam + max(norms))
            worst_lo = min(worst_lo, ar.item(xp.sum(g * dbar)) / lower)
            worst_up = max(worst_up, ar.item(xp.linalg.vector_norm(dbar)) * lam / math.sqrt(gg))
            cosines.append(ar.item(xp.sum(dbar * d_global)) / (
                ar.item(xp.linalg.vector_norm(dbar)) * ar.item(xp.linalg.vector_norm(d_global))))
            dl = sum(dirs_local) / P
            local_desc.append(ar.item(xp.sum(g * dl)) > 0)
    slack = 1 - 10 * _gamma(C * d)  # rounding of the two inner products
    passed = worst_lo >= slack and worst_up <= 1 / slack
    return Check(
        "distributed per-worker directions",
        "gᵀd̄ >= ||g||²/(λ + max_w ||U_w||²) > 0, ||d̄|| <= ||g||/λ",
        f"min gᵀd̄ / lower bound {worst_lo:.3f}; max ||d̄||λ/||g|| {worst_up:.3f}; cosine to the "
        f"global direction {min(cosines):.3f}..{max(cosines):.3f}; fully local variant "
        f"(local gradients) descent in {sum(local_desc)}/{len(local_desc)} cases",
        passed,
        "both bounds hold in every trial and worker count (up to rounding); the cosine and the "
        "fully local variant (no guarantee) are reported",
        {"lower_ratio": worst_lo, "cos_min": min(cosines)},
    )
