"""Step control in SENG: Levenberg-Marquardt damping adaptation (the reduction ratio against
an oracle built from torch.func per-sample gradients, and the rule at its boundaries) and the
KL-clipping trust region."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from seng_oracle import block_rows, per_sample_grads
from torch import nn

from seng import SENG
from seng.optimizer import DAMPING_RANGE, levenberg_marquardt, quadratic_model_step

pytestmark = pytest.mark.usefixtures("float64")

N = 16
OMEGA = (19 / 20) ** 5


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def batch(k=0):
    g = torch.Generator().manual_seed(k)
    return torch.randn(N, 5, generator=g), torch.randint(0, 3, (N,), generator=g)


def ce(out, y):
    return F.cross_entropy(out, y)


@pytest.mark.parametrize(("rho", "factor"), [
    (0.76, OMEGA), (0.75, 1.0), (0.5, 1.0), (0.25, 1.0), (0.24, 1 / OMEGA),
    (-3.0, 1 / OMEGA), (-math.inf, 1 / OMEGA), (5.0, OMEGA),
])
def test_levenberg_marquardt_rule(rho, factor):
    assert levenberg_marquardt(0.3, rho, OMEGA) == pytest.approx(0.3 * factor, rel=1e-15)


def test_levenberg_marquardt_range():
    assert levenberg_marquardt(DAMPING_RANGE[1], 0.0, 0.5) == DAMPING_RANGE[1]
    assert levenberg_marquardt(DAMPING_RANGE[0], 1.0, 0.5) == DAMPING_RANGE[0]


def oracle_ratio(model, before, x, y):
    """rho = (h(w + delta) - h(w)) / (g^T delta + sum_l ||U_l^T delta_l||^2 / 2), from the
    parameters before and after the step and torch.func per-sample gradients at ``before``."""
    ps = per_sample_grads(before, ce, x, y)
    params, old = dict(model.named_parameters()), dict(before.named_parameters())
    delta = {n: (params[n] - old[n]).detach() for n in params}
    g = {n: v.mean(0) for n, v in ps.items()}
    linear = sum(float((g[n] * delta[n]).sum()) for n in params)
    quad = 0.0
    for layer in ("0", "2"):
        names = [f"{layer}.weight", f"{layer}.bias"]
        U = block_rows(ps, names).T / math.sqrt(N)
        d = torch.cat([delta[n].reshape(-1) for n in names])
        quad += float((U.T @ d).square().sum())
    with torch.no_grad():
        change = float(ce(model(x), y) - ce(before(x), y))
    return change / (linear + 0.5 * quad)


def test_reduction_ratio_matches_the_oracle_and_drives_the_damping():
    """adapt_interval 1, update_freq 1, no momentum: every step's rho equals the oracle's
    (so the re-evaluating forward was not captured: a captured second call would change the
    next curvature and the next rho), and the damping follows the rule."""
    model = mlp()
    opt = SENG(model, lr=0.5, momentum=0.0, damping=0.2, update_freq=1,
               adaptive_damping=True, adapt_interval=1)
    omega = 19 / 20
    for k in range(3):
        x, y = batch(k)
        before, damping = copy.deepcopy(model), opt.preconditioner.damping

        def closure(x=x, y=y):
            model.zero_grad()  # not opt.zero_grad(), which would also drop stray captures
            loss = ce(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
        want = oracle_ratio(model, before, x, y)
        assert opt.last_reduction_ratio == pytest.approx(want, rel=1e-9, abs=1e-12)
        assert opt.preconditioner.damping == pytest.approx(
            levenberg_marquardt(damping, want, omega), rel=1e-15)


def train(damping, lr, steps=10):
    model = mlp()
    opt = SENG(model, lr=lr, momentum=0.0, damping=damping, update_freq=1,
               adaptive_damping=True)
    x, y = batch()

    def closure():
        opt.zero_grad()
        loss = ce(model(x), y)
        loss.backward()
        return loss

    ratios = []
    for _ in range(steps):
        opt.step(closure)
        ratios.append(opt.last_reduction_ratio)
    return opt, ratios


def test_damping_falls_when_steps_are_timid_and_rises_when_they_overshoot():
    """Tiny steps (huge damping, small lr) follow the quadratic model (rho near 1): the
    damping falls by omega at each of the 2 adaptations of 10 steps. Steps 1000 times too
    long increase the loss (rho < 0): it rises by 1/omega."""
    opt, ratios = train(1e3, 1e-2)
    assert ratios[0] > 0.75
    assert opt.preconditioner.damping == pytest.approx(1e3 * OMEGA**2, rel=1e-12)
    opt, ratios = train(1e-3, 1e3)
    assert ratios[0] < 0.25
    assert opt.preconditioner.damping == pytest.approx(1e-3 / OMEGA**2, rel=1e-12)


def test_adapted_damping_is_checkpointed():
    opt, _ = train(1e-3, 1e3, steps=6)
    other = SENG(mlp(), lr=1.0, adaptive_damping=True)
    other.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert other.preconditioner.damping == opt.preconditioner.damping != 1e-3


def one_step(**options):
    model = mlp()
    opt = SENG(model, lr=0.7, momentum=0.0, damping=0.5, update_freq=1, **options)
    x, y = batch()
    before = [p.detach().clone() for p in model.parameters()]
    ce(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    return [(b - p.detach()) / 0.7 for b, p in zip(before, model.parameters(), strict=True)], grads


@pytest.mark.parametrize("margin", [1.01, 0.99])
def test_kl_clip_scales_the_step_just_past_its_bound(margin):
    """kl_clip just above lr^2 d^T g leaves the step alone; just below it scales the
    direction by sqrt(kl_clip / (lr^2 d^T g))."""
    d, g = one_step()
    vg = 0.7**2 * sum(float((a * b).sum()) for a, b in zip(d, g, strict=True))
    clipped, _ = one_step(kl_clip=margin * vg)
    nu = min(1.0, math.sqrt(margin))
    for a, b in zip(clipped, d, strict=True):
        torch.testing.assert_close(a, b * nu, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(("options", "error", "words"), [
    ({"kl_clip": 0.0}, ValueError, "kl_clip"),
    ({"adaptive_damping": 1}, TypeError, "adaptive_damping must be a bool"),
    ({"adaptive_damping": True, "damping": lambda k: 1.0}, ValueError, "not a schedule"),
    ({"adapt_interval": 0}, ValueError, "adapt_interval"),
    ({"adaptive_damping": True, "damping_rule": "relative"}, ValueError, "absolute"),
])
def test_bad_options(options, error, words):
    with pytest.raises(error, match=words):
        SENG(mlp(), lr=0.1, **options)


def test_adaptive_damping_needs_a_closure():
    model = mlp()
    opt = SENG(model, lr=0.1, adaptive_damping=True)
    x, y = batch()
    ce(model(x), y).backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="needs step\\(closure\\)"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_quadratic_model_step_solves_its_system_and_falls_back_on_parallel_candidates():
    rng = np.random.default_rng(0)
    M = rng.standard_normal((2, 2))
    A, E, b = M @ M.T, np.array([[2.0, 0.3], [0.3, 1.0]]), rng.standard_normal(2)
    x = quadratic_model_step(A, E, b, 0.5)
    np.testing.assert_allclose((A + 0.5 * E) @ x, -b, rtol=1e-12, atol=1e-14)
    # Parallel candidates (c_2 = 2 c_1): a singular 2 x 2 system, solved on c_1 alone.
    A1, E1 = np.array([[1.0, 2.0], [2.0, 4.0]]), np.array([[1.0, 2.0], [2.0, 4.0]])
    x = quadratic_model_step(A1, E1, np.array([-3.0, -6.0]), 1.0)
    np.testing.assert_allclose(x, [1.5, 0.0])
    assert list(quadratic_model_step(np.zeros((1, 1)), np.zeros((1, 1)), np.ones(1), 0.0)) == [0]


class ScaledMLP(nn.Module):
    """mlp() with a free output scale: a parameter without curvature (F = I for it)."""

    def __init__(self):
        super().__init__()
        self.net = mlp()
        self.free = nn.Parameter(torch.linspace(0.8, 1.2, 3))

    def forward(self, x):
        return self.net(x) * self.free


@pytest.mark.parametrize("free", [False, True])
def test_adaptive_step_minimizes_the_damped_quadratic_model(free):
    """lr 1: each update u minimizes M(delta) = g^T delta + delta^T (F + lambda I) delta / 2
    over span{d, previous update}: its model gradient g + (F + lambda I) u is orthogonal to u
    and to the previous update (F from torch.func per-sample gradients at the step's weights,
    blocks per layer, the identity for the free scale; update_freq 1, so F is this
    batch's)."""
    model = ScaledMLP() if free else mlp()
    layers = ("net.0", "net.2") if free else ("0", "2")
    damping = 0.3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the free scale's "no curvature" warning
        opt = SENG(model, lr=1.0, momentum=0.9, damping=damping, update_freq=1,
                   adaptive_step=True)
    previous = None
    for k in range(3):
        x, y = batch(k)
        before = copy.deepcopy(model)
        opt.zero_grad()
        ce(model(x), y).backward()
        opt.step()
        u = {n: (p - q).detach() for (n, p), (_, q) in zip(
            model.named_parameters(), before.named_parameters(), strict=True)}
        ps = per_sample_grads(before, ce, x, y)
        grad_m = {n: ps[n].mean(0) + damping * u[n] for n in u}
        if free:
            grad_m["free"] = grad_m["free"] + u["free"]
        for layer in layers:
            names = [f"{layer}.weight", f"{layer}.bias"]
            U = block_rows(ps, names).T / math.sqrt(N)
            flat = torch.cat([u[n].reshape(-1) for n in names])
            fu = U @ (U.T @ flat)
            offset = 0
            for n in names:
                grad_m[n] = grad_m[n] + fu[offset:offset + u[n].numel()].reshape(u[n].shape)
                offset += u[n].numel()
        scale = sum(float(v.abs().sum()) for v in ps.values())
        for other in [u] + ([previous] if previous is not None else []):
            inner = sum(float((grad_m[n] * other[n]).sum()) for n in u)
            norm = math.sqrt(sum(float(other[n].square().sum()) for n in u))
            assert abs(inner) <= 1e-9 * scale * norm
        previous = u
    assert k == 2


@pytest.mark.parametrize(("options", "error", "words"), [
    ({"adaptive_step": 1}, TypeError, "adaptive_step must be a bool"),
    ({"adaptive_step": True, "damping_rule": "relative"}, ValueError, "absolute"),
    ({"adaptive_step": True, "kl_clip": 1.0}, ValueError, "kl_clip=None"),
])
def test_adaptive_step_bad_options(options, error, words):
    with pytest.raises(error, match=words):
        SENG(mlp(), lr=0.1, **options)
