r"""Claim 3: which Fisher. The literal empirical-Fisher (SENG) step on the squared loss.

On the mean squared loss :math:`f = \frac1n \sum_i \frac12 r_i^2` the per-sample gradients
are :math:`\nabla l_i = r_i J_i^T`, so SENG's empirical Fisher is
:math:`F = \frac1n J^T D^2 J` with :math:`D = \operatorname{diag}(r)`, and its direction
:math:`d = (F + \lambda I)^{-1} \frac1n J^T r` moves the linearized residual to

.. math:: r^+ = r - \eta J d = r - \eta (D^2 + n\lambda G^{-1})^{-1} r, \qquad G = J J^T.

As :math:`r \to 0` this tends to gradient descent with step :math:`\eta / (n\lambda)`, rate
:math:`(1 - \eta \lambda_0 / (n\lambda))^2`, not the Gauss-Newton :math:`(1-\eta)^2`; when
:math:`\eta \lambda_{\max}(G) > 2 n\lambda` the point :math:`r = 0` is unstable and the
iteration does not converge. ``docs/theory/fisher.md`` has the derivation.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

import sketchlinalg as sl

from . import _fit
from ._arrays import Arrays, eye_like
from ._config import Config, settings
from ._plot import figure, progress
from ._relu_net import ReLUNet, init_weights, ntk_gram, sphere_data
from ._result import Check, Result
from ._threads import one_thread

NAME = "fisher"
CLAIM = "Which Fisher: the empirical-Fisher step on the squared loss, against Gauss-Newton"
CURVATURE = ("empirical Fisher F = (1/n) sum_i grad l_i grad l_i^T (SENG's, through "
             "sketchlinalg.woodbury_solve); Gauss-Newton J^T J for comparison")

FULL: dict[str, Any] = {
    "n": 10,
    "d": 10,
    "width": 4096,
    "eta": 0.5,
    "stable_damping": 1.2,    # n lambda / (eta lambda_max(H-infinity)) of the converging run (>= 1)
    "unstable_damping": 0.2,  # the same ratio for the run predicted not to converge (< 1/2)
    "steps": 80,
    "fisher_scale": 1.0,      # multiplies the real step's Fisher (1 = SENG's; tests break it)
    "damping_scale": 1.0,     # multiplies the real step's damping (likewise)
}
QUICK: dict[str, Any] = {"n": 6, "width": 1024, "steps": 50}


@one_thread()
def run(config: Config | None = None) -> Result:
    """Run the empirical-Fisher checks; see the module docstring."""
    config = Config() if config is None else config
    p = settings(config, FULL, QUICK)
    t0 = time.perf_counter()
    ar = Arrays(config)
    data_seed, init_seed = np.random.SeedSequence([config.seed, 3]).spawn(2)
    X, y_host = sphere_data(p["n"], p["d"], None, np.random.default_rng(data_seed))
    Hinf = ntk_gram(X)[0]
    eig, vec = np.linalg.eigh(Hinf)
    W0h, a = init_weights(p["width"], p["d"], np.random.default_rng(init_seed))
    net = ReLUNet(ar, X, a)
    W0, y = ar.asarray(W0h), ar.asarray(y_host)
    n, eta = p["n"], p["eta"]
    lams = {name: p[f"{name}_damping"] * eta * eig[-1] / n for name in ("stable", "unstable")}
    runs: dict[str, dict] = {}
    jobs = [("stable", "ef", lams["stable"]), ("unstable", "ef", lams["unstable"]),
            ("gauss-newton", "gn", 1e-3 * eig[0])]
    for name, kind, lam in progress(config, jobs, "fisher"):
        runs[name] = _trajectory(ar, net, W0, y, eta, lam, p["steps"], kind, p["fisher_scale"],
                                 p["damping_scale"])
    checks = [_closed_form(runs), _stable_rate(runs["stable"], y_host, eig, vec, n, eta),
              _unstable(runs["unstable"])]
    figures: list = []
    with figure(config, "fisher_rates", figures) as ax:
        if ax is not None:
            for name, tr in runs.items():
                label = (f"{name} EF, nλ/(ηλmax)={tr['lam'] * n / (eta * eig[-1]):.2f}"
                         if name != "gauss-newton" else "Gauss-Newton")
                ax.semilogy(tr["r2"], label=label)
            k = np.arange(p["steps"])
            r20 = runs["stable"]["r2"][0]
            ax.semilogy(k, r20 * (1 - eta) ** (2 * k), "k:", lw=0.7, label="(1-η)^(2k)")
            ax.semilogy(k, r20 * (1 - eta * eig[0] / (n * lams["stable"])) ** (2 * k), "k--",
                        lw=0.7, label="(1-ηλ0/(nλ))^(2k)")
            ax.set_ylim(max(1e-30, float(np.min(runs["gauss-newton"]["r2"])) / 10), None)
            ax.set_xlabel("step k")
            ax.set_ylabel(r"$\|r_k\|^2$")
            ax.set_title("empirical Fisher (SENG) vs Gauss-Newton")
            ax.legend(fontsize=7)
    details = (
        f"n = {n} points, width m = {p['width']}, η = {eta}; λ0 = {eig[0]:.4f}, "
        f"λ_max(H∞) = {eig[-1]:.4f}. Empirical-Fisher runs with λ = {lams['stable']:.4g} "
        f"(nλ >= ηλ_max: r = 0 stable) and λ = {lams['unstable']:.4g} (2nλ < ηλ_max: r = 0 "
        "unstable). The direction is computed as SENG computes it, "
        "`sketchlinalg.woodbury_solve(U, g, λ)` with U = J^T D / sqrt(n), g = J^T r / n.\n")
    return Result(NAME, CLAIM, CURVATURE, checks, figures, details, time.perf_counter() - t0)


def _trajectory(ar: Arrays, net: ReLUNet, W: Any, y: Any, eta: float, lam: float, steps: int,
                kind: str, fisher_scale: float, damping_scale: float) -> dict:
    """Run the real network; per step record ||r||^2, the residual predicted by the closed
    form, the measured next residual, the flip bound and a rounding allowance. The closed form
    and the rates use ``lam``; the real EF step uses ``damping_scale * lam`` and
    ``fisher_scale`` times the Fisher (both 1 unless a test breaks the step)."""
    xp = ar.xp
    n = net.n
    rec: dict[str, list] = {"r2": [], "gap": [], "rinf2": [], "e": [], "mu": [], "r": []}
    u, A, P = net.forward(W)
    eps = float(np.finfo(np.float64).eps)
    for _ in range(steps):
        r = u - y
        J = net.jacobian(A)
        G = J @ J.T
        if kind == "ef":
            U = J.T * r[None, :] * math.sqrt(fisher_scale / n)
            dvec = sl.woodbury_solve(U, J.T @ r / n, lam * damping_scale)
            Minv = xp.linalg.inv(r[:, None] ** 2 * eye_like(r, n) + n * lam * xp.linalg.inv(G))
            closed = r - eta * (Minv @ r)
        else:
            eye = eye_like(r, n)
            dvec = J.T @ xp.linalg.solve(G + lam * eye, r)
            closed = r - eta * (G @ xp.linalg.solve(G + lam * eye, r))
        dW = -eta * xp.reshape(dvec, W.shape)
        e = net.flip_bound(P, dW)
        W = W + dW
        u, A, P = net.forward(W)
        r_new = u - y
        # Rounding: products of length p = m d (gamma_p) and n x n solves with cond(G) and
        # cond(D^2 + n lam G^{-1}) (Higham, Thm. 7.2: relative error <= cond * c n eps).
        w = ar.host(xp.linalg.eigvalsh(G))
        scale = ar.item(xp.max(xp.abs(r))) + ar.item(xp.max(xp.abs(u)))
        allow = 10 * (J.shape[1] + n * (w[-1] / w[0]) ** 2) * eps * scale
        excess = ar.host(xp.abs(r_new - closed) - e)
        rec["gap"].append(float(np.max(excess)) - allow)
        rec["r2"].append(ar.item(xp.sum(r * r)))
        rec["rinf2"].append(ar.item(xp.max(r * r)))
        rec["e"].append(math.sqrt(ar.item(xp.sum(e * e)) / rec["r2"][-1]))
        rec["mu"].append(float(w[0]))
        rec["r"].append(ar.host(r))
    out = {k: np.array(v) for k, v in rec.items()}
    out["lam"] = lam
    return out


def _closed_form(runs: dict) -> Check:
    worst = max(float(np.max(tr["gap"])) for name, tr in runs.items())
    return Check(
        "EF closed form vs real step",
        "r⁺ = r - η(D² + nλG⁻¹)⁻¹r, up to the step's ReLU flip bound",
        f"max excess over the bound {worst:.2e} (<= 0 passes)",
        worst <= 0,
        "at every step of every run, |r⁺_real - r⁺_closed|_i <= flip bound_i + rounding "
        "allowance (10 (p + n κ(G)²) eps max(|r|, |u|))",
        {"err_excess": worst},
    )


def _stable_rate(tr: dict, y: np.ndarray, eig: np.ndarray, vec: np.ndarray, n: int,
                 eta: float) -> Check:
    """Late-phase rate of the converging EF run against (1 - eta lambda0 / (n lambda))^2."""
    lam = tr["lam"]
    r2 = tr["r2"]
    stop = _fit.above_rounding(r2, y)
    start = stop // 2
    fit = _fit.rate(r2[:stop], start)
    # faster modes (eigenvectors of H-infinity) in the residual at the window start; their
    # weight only decays, so it moves the fitted slope by at most log(1 + weight) spread out
    c2 = (vec.T @ tr["r"][start]) ** 2
    bias = math.log1p(float(np.sum(c2[1:]) / c2[0])) * _fit.bounded_slope(stop - start)
    delta = float(np.max(np.abs(eig[0] - tr["mu"][start:stop])))
    ebar = float(tr["e"][start:stop].max())
    rinf2 = float(tr["rinf2"][start:stop].max())
    lo = 2 * math.log(1 - eta * (eig[0] + delta) / (n * lam) - ebar) - bias
    hi = 2 * math.log(1 - eta / (rinf2 + n * lam / (eig[0] - delta)) + ebar)
    pred = (1 - eta * eig[0] / (n * lam)) ** 2
    rate = math.exp(fit.slope)
    passed = lo <= fit.slope <= hi and delta <= eig[0] / 2
    return Check(
        "EF late ||r||² per step (stable λ)",
        f"(1-ηλ0/(nλ))² = {pred:.4f} (Gauss-Newton: {(1 - eta) ** 2:.4f})",
        f"{rate:.4f} in [{math.exp(lo):.4f}, {math.exp(hi):.4f}] (r² {fit.r2:.4f})",
        passed,
        "over the second half of the run: (1-η(λ0+Δ)/(nλ)-ē)² e^(-b) <= factor <= "
        "(1-η/(max r_i² + nλ/(λ0-Δ))+ē)², Δ = max |λ_min(G_k) - λ0| <= λ0/2, b the slope "
        "shift the faster modes present at the window start can cause",
        {"rate": rate, "rate_lo": math.exp(lo), "rate_hi": math.exp(hi)},
    )


def _unstable(tr: dict) -> Check:
    r2 = tr["r2"]
    half = r2.size // 2
    fit = _fit.rate(r2, half)
    ci = fit.half_width(0.99)
    passed = fit.slope >= -ci
    return Check(
        "EF with 2nλ < ηλ_max(G) does not converge",
        "no linear decay (r = 0 unstable)",
        f"late slope of log||r||² {fit.slope:.2e} ± {ci:.2e}; final/initial "
        f"{r2[-1] / r2[0]:.2e}",
        passed,
        "fitted slope over the second half not below 0 by more than its 99% CI",
        {"slope": fit.slope},
    )
