"""The sketched route: an unbiased Gram estimate whose error follows the theory, and a
descent direction at the default settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sketchlinalg as sl
from helpers import assert_close
from seng import SENGPreconditioner
from seng.persample import DenseGrads, KroneckerFactors

KINDS = list(sl.KINDS)


def kron_case(rng, n=4, groups=2, t=3, da=24, dg=20):
    A = torch.from_numpy(rng.standard_normal((n, groups, t, da)))
    G = torch.from_numpy(rng.standard_normal((n, groups, t, dg)))
    return KroneckerFactors(A, G)


def sketched_grams(rep, kind, size, trials, seed=0):
    rng = np.random.default_rng(seed)
    return torch.stack([rep.sketch(kind, size, rng).gram()[0] for _ in range(trials)])


@pytest.mark.parametrize("kind", KINDS)
def test_sketched_gram_is_unbiased(kind):
    """Mean over independent sketches vs the exact Gram, entrywise within 5 standard errors
    (sample standard deviation over sqrt(trials))."""
    rep = kron_case(np.random.default_rng(1))
    assert rep.sketch_dims(72) == (6, 6)  # both factors sketched: S_out (x) S_in
    exact = rep.gram("dense")[0]
    trials = 200
    grams = sketched_grams(rep, kind, 72, trials)
    se = grams.std(dim=0) / trials**0.5
    assert bool(((grams.mean(dim=0) - exact).abs() <= 5 * se + 1e-12).all())
    # The bound is tight enough to catch a sketch scaled by 1.5 (e.g. a wrong normalization).
    assert not bool(((1.5 * grams.mean(dim=0) - exact).abs() <= 5 * se).all())


def test_dense_gaussian_error_matches_theory():
    r"""Gaussian sketch of dimension k of dense rows: E||G_hat - G||_F^2 = ((tr G)^2 +
    ||G||_F^2) / k (Var <Sx, Sy> = (|x|^2 |y|^2 + <x, y>^2) / k), so the error falls as
    1/sqrt(k)."""
    rows = torch.from_numpy(np.random.default_rng(2).standard_normal((5, 600)))
    rep = DenseGrads(rows, (600,))
    G = rows @ rows.T
    trials = 200
    for k in (16, 64, 256):
        err2 = ((sketched_grams(rep, "gaussian", k, trials, seed=k) - G) ** 2).sum(dim=(1, 2))
        theory = (torch.trace(G) ** 2 + (G**2).sum()) / k
        assert abs(float(err2.mean() - theory)) <= 5 * float(err2.std()) / trials**0.5


def test_kronecker_one_sided_error_matches_theory():
    r"""With d_g <= sqrt(size) only the input factor is sketched, S = I (x) S_in with S_in
    Gaussian s x d_a: G_hat_ij = tr(S_in^T S_in M_ij), M_ij = W_j^T W_i, whose variance is
    (||M_ij||_F^2 + tr(M_ij^2)) / s. The mean squared error must match at every s."""
    rep = kron_case(np.random.default_rng(3), n=4, groups=1, t=2, da=300, dg=4)
    W = torch.einsum("ntd,nte->nde", rep.G[:, 0], rep.A[:, 0])  # (N, dg, da)
    M = torch.einsum("jdb,ida->ijba", W, W)  # M_ij = W_j^T W_i
    spread = (M**2).sum(dim=(2, 3)) + torch.einsum("ijab,ijba->ij", M, M)
    G = rep.gram("dense")[0]
    trials = 200
    for size in (4 * 8, 4 * 32, 4 * 128):
        s_out, s_in = rep.sketch_dims(size)
        assert (s_out, s_in) == (4, size // 4)
        err2 = ((sketched_grams(rep, "gaussian", size, trials, seed=size) - G) ** 2).sum(
            dim=(1, 2))
        theory = spread.sum() / s_in
        assert abs(float(err2.mean() - theory)) <= 5 * float(err2.std()) / trials**0.5


@pytest.mark.parametrize("kind", KINDS)
def test_sketched_error_shrinks_with_size(kind):
    """Both factors sketched: the mean squared Gram error at 16x the size is at most half
    (theory: between 1/4 for rank-one blocks, where each factor's error ~ 1/s, and 1/16)."""
    rep = kron_case(np.random.default_rng(4), n=4, groups=1, t=2, da=96, dg=80)
    G = rep.gram("dense")[0]
    err = [float(((sketched_grams(rep, kind, size, 100, seed=size) - G) ** 2).sum(
        dim=(1, 2)).mean()) for size in (64, 1024)]
    assert err[1] <= 0.5 * err[0]


def test_sketch_larger_than_block_is_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    x, y = torch.randn(9, 6, dtype=torch.float64), torch.randn(9, 2, dtype=torch.float64)
    grads = []
    for sketch in (None, "gaussian"):
        model.zero_grad()
        pre = SENGPreconditioner(model, damping=0.5, update_freq=1, sketch=sketch,
                                 sketch_size=64)
        ((model(x) - y) ** 2).sum().backward()
        pre.step()
        pre.remove_hooks()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        assert_close(a, b, factor=100)


def descent_model():
    # Linear block 600 x 41 (> 16384: output factor sketched to 399 rows) and a conv block
    # 64 x 289 (input factor sketched to 256 columns).
    return nn.Sequential(nn.Conv2d(32, 64, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(64, 40), nn.Tanh(), nn.Linear(40, 600))


@pytest.mark.parametrize("kind", KINDS)
def test_descent_direction_at_defaults(kind):
    """g^T d > 0 for the preconditioned gradient d at default damping and sketch size."""
    torch.manual_seed(0)
    model = descent_model()
    x, y = torch.randn(32, 32, 6, 6), torch.randint(0, 600, (32,))
    for seed in range(3):
        pre = SENGPreconditioner(model, update_freq=1, sketch=kind, rng=seed)
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        g = [p.grad.clone() for p in model.parameters()]
        pre.step()
        pre.remove_hooks()
        info = {r["name"]: r["last"] for r in pre.layer_info()}
        assert info["6"]["route"] == kind and info["6"]["sketch_shape"] == [1, 399, 41]
        assert info["0"]["sketch_shape"] == [1, 64, 256]
        for gi, p in zip(g, model.parameters(), strict=True):
            assert float((gi * p.grad).sum()) > 0


def test_auto_route_choice_is_reported():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 64, 3), nn.Flatten(), nn.Linear(64 * 36, 3))
    pre = SENGPreconditioner(model, update_freq=1, sketch="auto", routes={"2": "exact"})
    model(torch.randn(16, 64, 8, 8)).square().mean().backward()
    pre.step()
    info = {r["name"]: r for r in pre.layer_info()}
    assert info["0"]["route"] == "auto" and info["0"]["last"]["route"] == "countsketch"
    assert info["0"]["last"]["sketched_flops"] < 0.5 * info["0"]["last"]["exact_flops"]
    assert info["2"]["route"] == "exact" and info["2"]["last"]["route"] == "exact"
    assert "countsketch" in pre.report()
    small = nn.Sequential(nn.Linear(20, 10), nn.Tanh(), nn.Linear(10, 3))
    pre = SENGPreconditioner(small, update_freq=1, sketch="auto")
    small(torch.randn(16, 20)).square().mean().backward()
    pre.step()
    assert [r["last"]["route"] for r in pre.layer_info()] == ["exact", "exact"]
