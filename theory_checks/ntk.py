r"""Claim 1: linear convergence in the neural-tangent-kernel (NTK) regime.

The network is the two-layer ReLU model of :mod:`theory_checks._relu_net`, trained in ``W`` on
the squared loss :math:`\frac12\|r\|^2`, :math:`r = u(W) - y`. With :math:`J` the Jacobian of
``u`` and :math:`H = J J^T` its Gram, the steps are

* Gauss-Newton / natural gradient (the Fisher of the Gaussian likelihood, :math:`J^T J`):
  :math:`W \leftarrow W - \eta J^T (H + \lambda I)^{-1} r`;
* sketched Gauss-Newton: the same with :math:`H` replaced by :math:`\tilde H = (S J^T)^T (S J^T)`;
* gradient descent: :math:`W \leftarrow W - \eta J^T r`.

Linearized, :math:`r^+ = (I - \eta H (H + \lambda I)^{-1}) r` and :math:`r^+ = (I - \eta H) r`,
which give the rates checked here; the docs page ``docs/theory/ntk.md`` derives them and the
PASS rules.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import numpy as np

import sketchlinalg as sl
from sketchlinalg import backend

from . import _fit
from ._arrays import Arrays, eye_like
from ._config import Config, settings
from ._plot import figure, progress
from ._relu_net import ReLUNet, init_weights, ntk_gram, sphere_data
from ._result import Check, Result
from ._threads import one_thread

NAME = "ntk"
CLAIM = "Linear convergence in the NTK regime (two-layer ReLU, squared loss)"
CURVATURE = ("Gauss-Newton J^T J (the Fisher of the Gaussian likelihood; the exact-Fisher "
             "NGD of Zhang et al. 2019), exact and sketched; gradient descent for contrast")

FULL: dict[str, Any] = {
    "n": 10,                       # data points
    "d": 10,                       # input dimension
    "angles": (None, 0.4, 0.2),    # data sets: None = uniform; else one pair at this angle
    "mc_widths": (64, 256, 1024, 4096, 16384),
    "mc_draws": 16,
    "width": 16384,                # width of the GN and GD rate runs
    "eta": 0.5,                    # Gauss-Newton step
    "gn_damping": 1e-3,            # lambda / lambda0 of the "small lambda" Gauss-Newton runs
    "gn_steps": 20,
    "gd_steps": 200,
    "gd_mode_tol": 1e-3,           # GD fit window starts when the fast modes are this small
    "bound_width": 4096,           # width of the damped and sketched runs
    "bound_damping": 1.0,          # lambda / lambda0 there
    "bound_steps": 40,
    "sketches": ("sparse_sign", "srht"),
    "sketch_size": 640,
    "sketch_scale": 1.0,           # multiplies S (1 = the isometric scaling; tests break it)
    "drift_widths": (256, 1024, 4096, 16384),
    "drift_seeds": 3,
}
QUICK: dict[str, Any] = {
    "n": 6,
    "angles": (None, 0.4),
    "mc_widths": (64, 256, 1024, 4096),
    "mc_draws": 8,
    "width": 4096,
    "gn_steps": 12,
    "gd_steps": 120,
    "bound_width": 1024,
    "bound_steps": 24,
    "sketches": ("sparse_sign",),
    "sketch_size": 384,
    "drift_widths": (256, 1024, 4096),
    "drift_seeds": 2,
}


@one_thread()
def run(config: Config | None = None) -> Result:
    """Run the NTK checks; see the module docstring and ``docs/theory/ntk.md``."""
    config = Config() if config is None else config
    p = settings(config, FULL, QUICK)
    t0 = time.perf_counter()
    ar = Arrays(config)
    root = np.random.SeedSequence([config.seed, 1])
    data_seed, mc_seed, run_seed, drift_seed, sketch_seed = root.spawn(5)
    data = []
    for k, angle in enumerate(p["angles"]):
        X, y = sphere_data(p["n"], p["d"], angle, np.random.default_rng(data_seed))
        Hinf, var = ntk_gram(X)
        w, V = np.linalg.eigh(Hinf)
        data.append({"name": "uniform" if angle is None else f"pair at {angle} rad", "X": X,
                     "y": y, "Hinf": Hinf, "var": var, "eig": w, "vec": V, "index": k})
    p["eta_gd"] = 1.0 / max(float(ds["eig"][-1]) for ds in data)
    figures: list = []
    checks: list[Check] = []

    def rates() -> None:
        rows = [_rate_runs(ar, p, ds, run_seed) for ds in data]
        checks.extend(_rate_checks(p, data, rows))
        _plot_rates(config, figures, p, data, rows)

    stages = [
        lambda: checks.append(_monte_carlo(ar, p, data[0], mc_seed, config, figures)),
        rates,
        lambda: checks.append(_bound_checks(ar, p, data[0], run_seed, sketch_seed, config,
                                            figures)),
        lambda: checks.append(_drift(ar, p, data[0], drift_seed, config, figures)),
    ]
    for stage in progress(config, stages, "ntk"):
        stage()
    details = _details(p, data)
    return Result(NAME, CLAIM, CURVATURE, checks, figures, details, time.perf_counter() - t0)


# -- H-infinity against Monte Carlo ---------------------------------------------------------
def _monte_carlo(ar: Arrays, p: dict, ds: dict, seed: np.random.SeedSequence, config: Config,
                 figures: list) -> Check:
    r""":math:`E\|H_m - H^\infty\|_F^2 = V / m` exactly (an average of ``m`` i.i.d. terms)."""
    xp = ar.xp
    X = ar.asarray(ds["X"])
    Hinf = ar.asarray(ds["Hinf"])
    V = float(ds["var"].sum())
    widths = np.array(p["mc_widths"])
    rng = np.random.default_rng(seed)
    err = np.empty((widths.size, p["mc_draws"]))
    for i, m in enumerate(widths):
        for j in range(p["mc_draws"]):
            W = ar.asarray(rng.standard_normal((int(m), p["d"])))
            A = xp.astype(X @ W.T >= 0, xp.float64)
            E = (X @ X.T) * (A @ A.T) / float(m) - Hinf
            err[i, j] = ar.item(xp.sum(E * E))
    ratio = err * widths[:, None] / V  # each has mean exactly 1
    mean, half = _fit.mean_ci(ratio)
    fit = _fit.exponent(np.repeat(widths, p["mc_draws"]), np.sqrt(err.ravel()))
    ci = fit.half_width(0.99)
    passed = abs(mean - 1.0) <= half and abs(fit.slope + 0.5) <= ci
    with figure(config, "ntk_gram_mc", figures) as ax:
        if ax is not None:
            ax.loglog(np.repeat(widths, p["mc_draws"]), np.sqrt(err.ravel()), ".", alpha=0.4,
                      label="draws")
            ax.loglog(widths, np.sqrt(V / widths), "k-", label=r"$\sqrt{V/m}$ (theory)")
            ax.set_xlabel("width m")
            ax.set_ylabel(r"$\|H_m - H^\infty\|_F$")
            ax.set_title(f"Monte Carlo Gram, fitted slope {fit.slope:.3f}")
            ax.legend()
    return Check(
        "H-infinity vs Monte Carlo",
        "E m||H_m-H∞||_F²/V = 1; slope -1/2",
        f"mean {mean:.3f} ± {half:.3f}; slope {fit.slope:.3f} ± {ci:.3f} (r² {fit.r2:.3f})",
        passed,
        "|mean - 1| <= 3 standard errors over draws and widths, and |slope + 1/2| within the "
        "99% confidence interval of the log-log fit",
        {"ratio_mean": mean, "slope": fit.slope},
    )


# -- Gauss-Newton and gradient-descent rates ------------------------------------------------
def _trajectory(net: ReLUNet, W: Any, y: Any, eta: float, steps: int, direction: Any,
                Hinf: Any | None = None) -> dict[str, np.ndarray]:
    """Run ``steps`` steps ``W <- W - eta J^T alpha`` and record, per step ``k``:
    ``r2`` (||r_k||^2), ``e`` (flip bound of the step, relative to ||r_k||), ``mu`` and
    ``lmax`` (extreme eigenvalues of H_k), ``dinf`` (||H_k - H-infinity||_2), ``dstep``
    (||H_{k+1} - H_k||_2) and whatever ``direction`` reports in its dict."""
    xp = net.xp
    ar = net.ar
    rec: dict[str, list[float]] = {k: [] for k in ("r2", "e", "mu", "lmax", "dinf", "dstep")}
    u, A, P = net.forward(W)
    H = net.gram(A)
    for k in range(steps):
        r = u - y
        alpha, extra = direction(k, r, A, H)
        dW = -eta * net.jt(alpha, A)
        e = net.flip_bound(P, dW)
        r2 = ar.item(xp.sum(r * r))
        w = xp.linalg.eigvalsh(H)
        rec["r2"].append(r2)
        rec["e"].append(math.sqrt(ar.item(xp.sum(e * e)) / r2))
        rec["mu"].append(ar.item(w[0]))
        rec["lmax"].append(ar.item(w[-1]))
        if Hinf is not None:
            rec["dinf"].append(ar.item(xp.max(xp.abs(xp.linalg.eigvalsh(H - Hinf)))))
        for key, val in extra.items():
            rec.setdefault(key, []).append(val)
        W = W + dW
        u, A, P = net.forward(W)
        H_new = net.gram(A)
        rec["dstep"].append(ar.item(xp.max(xp.abs(xp.linalg.eigvalsh(H_new - H)))))
        H = H_new
    out = {k: np.array(v) for k, v in rec.items()}
    out["W"] = W
    return out


def _solve_psd(M: Any, r: Any) -> Any:
    L = backend.cholesky(M)
    if L is None:
        raise FloatingPointError("Cholesky of the damped Gram failed")
    return backend.solve_triangular(L, backend.solve_triangular(L, r, lower=True),
                                     lower=True, trans=True)


def _gn(lam: float) -> Any:
    def direction(k: int, r: Any, A: Any, H: Any) -> tuple[Any, dict]:
        return _solve_psd(H + lam * eye_like(H, H.shape[0]), r), {}
    return direction


def _gd(k: int, r: Any, A: Any, H: Any) -> tuple[Any, dict]:
    return r, {}


def _network(ar: Arrays, p: dict, ds: dict, m: int, seed: np.random.SeedSequence
             ) -> tuple[ReLUNet, Any, Any]:
    W0, a = init_weights(m, p["d"], np.random.default_rng(seed))
    net = ReLUNet(ar, ds["X"], a)
    return net, ar.asarray(W0), ar.asarray(ds["y"])


def _rate_runs(ar: Arrays, p: dict, ds: dict, seed: np.random.SeedSequence) -> dict:
    """Gauss-Newton (small damping) and GD from the same initialization at ``width``."""
    net, W0, y = _network(ar, p, ds, p["width"], seed.spawn(1)[0])
    lam0 = float(ds["eig"][0])
    Hinf = ar.asarray(ds["Hinf"])
    gn = _trajectory(net, W0, y, p["eta"], p["gn_steps"], _gn(p["gn_damping"] * lam0))
    eta_gd = p["eta_gd"]
    gd = _trajectory(net, W0, y, eta_gd, p["gd_steps"], _gd, Hinf)
    r0 = ar.host(net.forward(W0)[0] - y)
    return {"gn": gn, "gd": gd, "r0": r0}


def _gd_window(p: dict, ds: dict, r0: np.ndarray, r2: np.ndarray) -> tuple[int, int, float]:
    """Fit window of the GD rate and the smallest linearized factor |1 - eta lambda_i| of the
    modes of H-infinity still active in it.

    The window ends where rounding starts to matter (:func:`_fit.above_rounding`) and starts
    where the modes faster than the slowest have decayed (in the linearized dynamics, from
    the projections c_i of r_0) to ``gd_mode_tol`` of it, but no later than half way. Modes
    whose weight (c_i/c_0)^2 (f_i/f_0)^(2 start) is still above ``gd_mode_tol`` there are
    active."""
    eta, w, V = p["eta_gd"], ds["eig"], ds["vec"]
    c2 = (V.T @ r0) ** 2
    f = np.abs(1 - eta * w)
    stop = _fit.above_rounding(r2, ds["y"])
    q = np.max(f[1:]) / f[0]
    iso = math.log(p["gd_mode_tol"] * c2[0] / np.sum(c2[1:])) / (2 * math.log(q))
    start = min(max(math.ceil(iso), 0), stop // 2)
    weight = c2 / c2[0] * (f / f[0]) ** (2 * start)
    return start, stop, float(np.min(f[weight >= p["gd_mode_tol"]]))


def _rate_checks(p: dict, data: list, rows: list) -> list[Check]:
    eta = p["eta"]
    gn_ok, gn_meas, gn_vals = True, [], {}
    for ds, row in zip(data, rows, strict=True):
        tr = row["gn"]
        fit = _fit.rate(tr["r2"])
        ebar = float(tr["e"].max())
        lo, hi = (1 - eta - ebar) ** 2, 1 - eta
        rate = math.exp(fit.slope)
        ok = lo <= rate <= hi
        gn_ok &= ok
        row["gn_fit"] = fit
        gn_meas.append(f"{ds['name']} (λ0={ds['eig'][0]:.3f}): {rate:.4f} (r² {fit.r2:.4f})")
        gn_vals[f"rate_{ds['index']}"] = rate
    checks = [Check(
        "Gauss-Newton ||r||² per step, any λ0",
        f"(1-η)² = {(1 - eta) ** 2:.4f}",
        "; ".join(gn_meas), gn_ok,
        "every data set: (1-η-ē)² <= fitted factor <= 1-η, with ē the largest relative "
        "linearization error of a step (exact ReLU flip bound) and 1-η the finite-width rate "
        "of Zhang, Martens and Grosse (2019)",
        gn_vals,
    )]
    eta_gd = p["eta_gd"]
    gd_ok, gd_meas, gd_pred, gd_vals, rates = True, [], [], {}, []
    for ds, row in zip(data, rows, strict=True):
        tr = row["gd"]
        lam0 = float(ds["eig"][0])
        start, stop, fmin = _gd_window(p, ds, row["r0"], tr["r2"])
        fit = _fit.rate(tr["r2"][:stop], start)
        row["gd_fit"], row["gd_window"] = fit, (start, stop)
        width = stop - start
        delta = float(tr["dinf"].max())
        ebar = float(tr["e"][start:stop].max())
        bias = math.log1p(p["n"] * p["gd_mode_tol"]) * _fit.bounded_slope(width)
        lo = 2 * math.log(max(fmin - eta_gd * delta - ebar, 1e-300)) - bias
        hi = 2 * math.log(1 - eta_gd * (lam0 - delta) + ebar)
        regime = delta <= lam0 / 2
        ok = regime and width >= 3 and lo <= fit.slope <= hi
        gd_ok &= ok
        rate = math.exp(fit.slope)
        rates.append((lam0, rate))
        gd_pred.append(f"{(1 - eta_gd * lam0) ** 2:.4f}")
        gd_meas.append(f"{rate:.4f} [{math.exp(lo):.4f}, {math.exp(hi):.4f}] "
                       f"(r² {fit.r2:.4f}, Δ/λ0={delta / lam0:.2f})")
        gd_vals[f"rate_{ds['index']}"] = rate
        gd_vals[f"regime_{ds['index']}"] = delta / lam0
    by_lam0 = [f for _, f in sorted(rates, reverse=True)]  # largest lambda0 first
    ordered = all(b > a for a, b in itertools.pairwise(by_lam0))
    checks.append(Check(
        "GD ||r||² per step degrades with λ0",
        f"(1-ηλ0)² = {', '.join(gd_pred)} (η={eta_gd:.3f})",
        "; ".join(gd_meas) + ("" if ordered else "; NOT ordered by λ0"),
        gd_ok and ordered,
        "every data set in the NTK regime Δ = max_k ||H_k - H∞||_2 <= λ0/2 (Du et al. 2019) "
        "and (f_min-ηΔ-ē)² <= factor <= (1-η(λ0-Δ)+ē)², f_min = min |1-ηλ_i| over the modes "
        "of H∞ not yet decayed below gd_mode_tol of the slowest at the window start (λ0 "
        "alone when it is isolated); factors increase as λ0 decreases",
        gd_vals,
    ))
    return checks


# -- damped and sketched Gauss-Newton -------------------------------------------------------
def _sketched(ar: Arrays, net: ReLUNet, lam: float, kind: str, size: int, scale: float,
              seed: np.random.SeedSequence) -> Any:
    xp = ar.xp

    def direction(k: int, r: Any, A: Any, H: Any) -> tuple[Any, dict]:
        J = net.jacobian(A)
        S = sl.sketch(kind, size, J.shape[1], rng=np.random.default_rng(seed.spawn(1)[0]))
        SJ = scale * (S @ J.T)
        Ht = SJ.T @ SJ
        L = backend.cholesky(H)
        M = backend.solve_triangular(L, backend.solve_triangular(L, Ht, lower=True).T,
                                      lower=True)
        w = ar.host(xp.linalg.eigvalsh((M + M.T) / 2))
        eps = float(np.max(np.abs(w - 1.0)))
        return _solve_psd(Ht + lam * eye_like(H, H.shape[0]), r), {"eps": eps}
    return direction


def _bound_checks(ar: Arrays, p: dict, ds: dict, run_seed: np.random.SeedSequence,
                  sketch_seed: np.random.SeedSequence, config: Config, figures: list) -> Check:
    """Damped and sketched Gauss-Newton against 1 - eta mu / ((1 + eps) mu + lambda)."""
    net, W0, y = _network(ar, p, ds, p["bound_width"], run_seed.spawn(1)[0])
    lam = p["bound_damping"] * float(ds["eig"][0])
    eta = p["eta"]
    runs = {"damped": _trajectory(net, W0, y, eta, p["bound_steps"], _gn(lam))}
    for kind in p["sketches"]:
        runs[kind] = _trajectory(net, W0, y, eta, p["bound_steps"],
                                 _sketched(ar, net, lam, kind, p["sketch_size"],
                                           p["sketch_scale"], sketch_seed))
    ok, meas, pred, vals = True, [], [], {}
    for name, tr in runs.items():
        eps = tr.get("eps", np.zeros_like(tr["mu"]))
        mu, lmax, e = tr["mu"], tr["lmax"], tr["e"]
        rho = 1 - eta * mu / ((1 + eps) * mu + lam)
        fit = _fit.rate(tr["r2"])
        tr["fit"] = fit
        if name == "damped":
            # I - eta H (H + lam I)^{-1} is symmetric: the bound holds per step in ||.||_2.
            limit = float(np.max(2 * np.log(rho + e)))
            applicable = True
        else:
            # The bound holds in the H_k^{-1} norm; converting to ||.||_2 costs
            # log(max lmax / min mu) spread over the window, plus the change of norm per step.
            kappa = lmax / mu
            change = np.log1p(tr["dstep"] / np.append(mu[1:], mu[-1]))
            spread = math.log(lmax.max() / mu.min()) * _fit.bounded_slope(len(mu))
            limit = float(np.max(2 * np.log(rho + np.sqrt(kappa) * e) + change)) + spread
            applicable = bool(np.all(eps < 1) and np.all(eta * (1 / (1 - eps) + 1) <= 2))
        passed = applicable and fit.slope <= limit
        ok &= passed
        factor = math.exp(fit.slope / 2)
        bound = float(np.max(rho))
        pred.append(f"{name} <= {bound:.4f}")
        extra = f", ε<={float(eps.max()):.3f}" if name != "damped" else ""
        meas.append(f"{name} {factor:.4f} (limit {math.exp(limit / 2):.4f}, r² {fit.r2:.4f}"
                    f"{extra})")
        vals[f"factor_{name}"] = factor
        vals[f"eps_{name}"] = float(eps.max())
    with figure(config, "ntk_bounds", figures) as ax:
        if ax is not None:
            for name, tr in runs.items():
                k = np.arange(len(tr["r2"]))
                (h,) = ax.semilogy(k, np.sqrt(tr["r2"]), label=f"{name}")
                rho = 1 - eta * tr["mu"] / ((1 + tr.get("eps", 0 * tr["mu"])) * tr["mu"] + lam)
                ax.semilogy(k, math.sqrt(tr["r2"][0]) * float(np.max(rho)) ** k, "--",
                            color=h.get_color(), lw=0.8)
            ax.set_xlabel("step k")
            ax.set_ylabel(r"$\|r_k\|$")
            ax.set_title(f"damped/sketched GN, λ = {p['bound_damping']}·λ0 (dashed: bound)")
            ax.legend(fontsize=7)
    return Check(
        "damped/sketched GN ||r|| per step",
        "1-ημ/((1+ε)μ+λ): " + ", ".join(pred),
        "; ".join(meas), ok,
        "fitted ||r|| factor <= the bound, with μ = λ_min(H_k) and ε = ||H_k^{-1/2} H̃_k "
        "H_k^{-1/2} - I||_2 measured every step; for the sketched runs the bound holds in the "
        "H_k^{-1} norm and the conversion to ||.||_2 (log κ(H) over the window, plus the change "
        "of H_k) is added; requires ε < 1 and η(1/(1-ε)+1) <= 2",
        vals,
    )


# -- Gram drift, neuron movement and activation flips ---------------------------------------
def _drift(ar: Arrays, p: dict, ds: dict, seed: np.random.SeedSequence, config: Config,
           figures: list) -> Check:
    xp = ar.xp
    widths = np.array(p["drift_widths"])
    lam = p["gn_damping"] * float(ds["eig"][0])
    stats = {"gram": [], "move": [], "flip": []}
    ws = []
    for m in widths:
        for s in seed.spawn(p["drift_seeds"]):
            net, W0, y = _network(ar, p, ds, int(m), s)
            tr = _trajectory(net, W0, y, p["eta"], p["gn_steps"], _gn(lam))
            _, A0, P0 = net.forward(W0)
            _, A1, P1 = net.forward(tr["W"])
            D = net.gram(A1) - net.gram(A0)
            stats["gram"].append(ar.item(xp.max(xp.abs(xp.linalg.eigvalsh(D)))))
            dW = tr["W"] - W0
            stats["move"].append(ar.item(xp.max(xp.sqrt(xp.sum(dW * dW, axis=1)))))
            stats["flip"].append(ar.item(xp.mean(xp.astype((P0 >= 0) != (P1 >= 0),
                                                          xp.float64))))
            ws.append(int(m))
    ok, meas, vals = True, [], {}
    fits = {}
    for key, label in (("gram", "||H(K)-H(0)||_2"), ("move", "max_r ||w_r(K)-w_r(0)||"),
                       ("flip", "flip fraction")):
        fit = _fit.exponent(np.array(ws), np.array(stats[key]))
        fits[key] = fit
        ci = fit.half_width(0.99)
        passed = abs(fit.slope + 0.5) <= ci
        ok &= passed
        meas.append(f"{label}: {fit.slope:.3f} ± {ci:.3f} (r² {fit.r2:.3f})")
        vals[f"slope_{key}"] = fit.slope
    with figure(config, "ntk_drift", figures) as ax:
        if ax is not None:
            for key, fit in fits.items():
                (h,) = ax.loglog(ws, stats[key], "o", alpha=0.6, label=f"{key} ({fit.slope:.2f})")
                ax.loglog(widths, np.exp(fit.intercept) * widths ** fit.slope, "-",
                          color=h.get_color(), lw=0.8)
            ax.set_xlabel("width m")
            ax.set_title("drift after Gauss-Newton training (fitted slopes)")
            ax.legend(fontsize=7)
    return Check(
        "Gram drift, neuron movement, flips ~ m^(-1/2)",
        "log-log slope -1/2",
        "; ".join(meas), ok,
        "|slope + 1/2| within the 99% confidence interval of the log-log fit over widths and "
        "seeds",
        vals,
    )


def _plot_rates(config: Config, figures: list, p: dict, data: list, rows: list) -> None:
    with figure(config, "ntk_rates", figures, ncols=2) as axes:
        if axes is None:
            return
        for ds, row in zip(data, rows, strict=True):
            lam0 = ds["eig"][0]
            (h,) = axes[0].semilogy(row["gn"]["r2"], label=f"{ds['name']}, λ0={lam0:.3f}")
            k = np.arange(len(row["gn"]["r2"]))
            axes[0].semilogy(k, row["gn"]["r2"][0] * (1 - p["eta"]) ** (2 * k), "k--", lw=0.6)
            (h,) = axes[1].semilogy(row["gd"]["r2"], label=f"λ0={lam0:.3f}")
            k = np.arange(len(row["gd"]["r2"]))
            start, stop = row["gd_window"]
            fit = row["gd_fit"]
            axes[1].semilogy(k[start:stop], np.exp(fit.intercept + fit.slope * k[start:stop]),
                             "--", color=h.get_color(), lw=0.8)
        axes[0].set_title(f"Gauss-Newton, η={p['eta']} (dashed: (1-η)^(2k))")
        axes[1].set_title("gradient descent (dashed: fit window)")
        for ax in axes:
            ax.set_xlabel("step k")
            ax.set_ylabel(r"$\|r_k\|^2$")
            ax.legend(fontsize=7)


def _details(p: dict, data: list) -> str:
    lines = [
        f"n = {p['n']} points on the unit sphere of R^{p['d']}, labels uniform in [-1, 1]; "
        f"rate runs at width m = {p['width']}, Gauss-Newton step η = {p['eta']} with "
        f"λ = {p['gn_damping']}·λ0, GD step η = {p['eta_gd']:.4f} = 1 / max λ_max(H∞).",
        "",
        "| data set | λ0 = λ_min(H∞) | λ_1 | λ_max |",
        "|---|---|---|---|",
    ]
    for ds in data:
        w = ds["eig"]
        lines.append(f"| {ds['name']} | {w[0]:.4f} | {w[1]:.4f} | {w[-1]:.4f} |")
    return "\n".join(lines) + "\n"
