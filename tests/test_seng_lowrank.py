"""The low-rank route: exact when the rank kept reaches the true per-sample rank, within the
Eckart-Young / Cauchy-Schwarz truncation bound otherwise, and exact for the truncated
factors; the cost model picks it for a large convolution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from seng_oracle import (
    batch_loss,
    check_direction,
    check_layers,
    dense_direction,
    full_grad,
    per_sample_grads,
)
from torch import nn

import seng.cost as lowrank_cost
from helpers import assert_close
from seng import SENGPreconditioner
from seng.persample import KroneckerFactors
from seng.routes import AutoRoute, ExactRoute, LowRankRoute

DAMPING = 0.3


def factors(n, g, t, da, dg, inner=None, seed=0, decay=None):
    """Kronecker factors ``(N, groups, T, d)``; ``inner`` caps the per-sample rank (A_i of
    rank ``inner``); ``decay`` scales the positions of A_i geometrically, so that
    ``W_i = G_i^T A_i`` has a decaying spectrum."""
    rng = np.random.default_rng(seed)
    if inner is None:
        A = rng.standard_normal((n, g, t, da))
    else:
        A = rng.standard_normal((n, g, t, inner)) @ rng.standard_normal((n, g, inner, da))
    if decay is not None:
        A = A * decay ** np.arange(t)[:, None]
    G = rng.standard_normal((n, g, t, dg))
    return KroneckerFactors(torch.from_numpy(A), torch.from_numpy(G))


def per_sample(rep):
    """``W_i`` as ``(N, groups, dg, da)``."""
    return rep.G.transpose(2, 3) @ rep.A


def build(rep, rank, seed=0):
    return LowRankRoute(torch.float64, rank).build(rep, np.random.default_rng(seed))


def gram_of(W):
    U = W.reshape(W.shape[0], -1)
    return U @ U.T


# (n, groups, T, da, dg, inner, rank, svd used): QR on both sides, on one side, on none;
# rsvd where the core is large against rank + OVERSAMPLE and its call overhead is not
# charged (the tests' cores are small).
EXACT_CASES = [
    (7, 2, 3, 6, 5, None, 3, "exact"),  # T < da, dg: rank <= T = 3
    (5, 1, 12, 6, 3, None, 3, "exact"),  # T > dg: rank <= dg = 3
    (6, 1, 40, 30, 35, 3, 4, "rsvd"),  # rank 3 by construction, 30 x 30 core
]


@pytest.mark.parametrize(("n", "g", "t", "da", "dg", "inner", "rank", "svd"), EXACT_CASES)
def test_equals_exact_route_when_rank_reaches_true_rank(n, g, t, da, dg, inner, rank, svd,
                                                        monkeypatch):
    monkeypatch.setattr(lowrank_cost, "RSVD_CALL_FLOPS", 0.0)
    rep = factors(n, g, t, da, dg, inner)
    low = build(rep, rank)
    assert low.info["svd"] == svd
    exact = ExactRoute(torch.float64).build(rep)
    W = per_sample(rep)
    scale = float(W.square().sum(dim=(1, 2, 3)).max())
    # Entries of W_i are sums of T products; the truncation rounds at ~sqrt(len) eps relative.
    assert_close(low.gram, exact.gram, factor=8 * (t + da + dg), scale=scale)
    assert low.info["truncation_error"] <= 1e3 * torch.finfo(torch.float64).eps ** 0.5
    g_block = torch.from_numpy(np.random.default_rng(1).standard_normal((g, dg, da)))
    want, cond = dense_direction(W.reshape(n, -1) * math.sqrt(n), g_block.reshape(-1), DAMPING)
    got, _ = low.direction(g_block, DAMPING)
    check_direction(got.reshape(-1), want, cond, t * (da + dg))


def truncated_oracle(W, k):
    """Best rank-``k`` approximations (exact SVD) and the discarded ``sum sigma^2``."""
    U, s, Vh = torch.linalg.svd(W, full_matrices=False)
    return (U[..., :k] * s[..., None, :k]) @ Vh[..., :k, :], s[..., k:].square().sum(-1)


@pytest.mark.parametrize(("n", "g", "t", "da", "dg", "rank", "svd"), [
    (8, 2, 6, 9, 7, 2, "exact"),
    (6, 1, 30, 40, 35, 5, "rsvd"),  # rank 30 > k + OVERSAMPLE = 15: randomized range
])
def test_truncation_matches_svd_oracle_and_bounds(n, g, t, da, dg, rank, svd, monkeypatch):
    rep = factors(n, g, t, da, dg, decay=0.6)
    # For rsvd, l = k + OVERSAMPLE reaches past the sharp decay (0.6 per position, and
    # power iterations): Q holds the leading k-dimensional subspace to rounding, so the
    # truncation is the SVD's.
    monkeypatch.setattr(lowrank_cost, "RSVD_CALL_FLOPS", 0.0)
    low = build(rep, rank)
    assert low.info["svd"] == svd and low.info["rank"] == rank
    W = per_sample(rep)
    W_hat, tail = truncated_oracle(W, rank)
    got = per_sample(low.store) if isinstance(low.store, KroneckerFactors) else \
        low.store.rows.reshape(W.shape)
    norm = float(W.abs().max())
    assert_close(got, W_hat, factor=1e3, scale=norm)  # rsvd subspace error ~ (s_l/s_k)^5
    # Eckart-Young: ||W_i - W_hat_i||_F^2 = tail_i; the Gram error by Cauchy-Schwarz.
    err = (W - got).square().sum(dim=(2, 3)).sum(1).sqrt()
    assert_close(err, tail.sum(1).sqrt(), factor=1e3, scale=norm)
    nW = W.square().sum(dim=(1, 2, 3)).sqrt()
    nWh = got.square().sum(dim=(1, 2, 3)).sqrt()
    bound = err[:, None] * nW[None, :] + nWh[:, None] * err[None, :]
    slack = 64 * (t + da) * torch.finfo(torch.float64).eps * float(nW.max()) ** 2
    assert bool(((low.gram - gram_of(W)).abs() <= bound + slack).all())
    rel = math.sqrt(float(tail.sum()) / float(W.square().sum()))
    assert abs(low.info["truncation_error"] - rel) <= 1e-6 * max(rel, 1e-3)


def test_randomized_truncation_within_hmt_bound(monkeypatch):
    """Without power iterations and a flat tail, the randomized truncation is not optimal;
    per sample ``||W - W_hat||_F >= tail`` (Eckart-Young) and, on average over samples,
    ``<= (1 + sqrt(1 + k / (o - 1))) tail`` (HMT 2011, Thm 9.3 with Thm 10.5, Gaussian test
    matrix, oversampling o)."""
    monkeypatch.setattr(lowrank_cost, "POWER_ITERS", 0)
    monkeypatch.setattr(lowrank_cost, "OVERSAMPLE", 4)
    monkeypatch.setattr(lowrank_cost, "RSVD_CALL_FLOPS", 0.0)  # the randomized path is taken
    n, k, o = 32, 3, 4
    rep = factors(n, 1, 40, 40, 40)  # full rank 40 per sample, flat spectrum
    low = build(rep, k, seed=5)
    assert low.info["svd"] == "rsvd"
    W = per_sample(rep)
    got = per_sample(low.store)
    err = (W - got).square().sum(dim=(1, 2, 3)).sqrt()
    tail = truncated_oracle(W, k)[1].sum(1).sqrt()
    assert bool((err >= tail * (1 - 1e-10)).all())
    ratio = float((err / tail).mean())
    assert ratio <= 1 + math.sqrt(1 + k / (o - 1))
    nW = W.square().sum(dim=(1, 2, 3)).sqrt()
    nWh = got.square().sum(dim=(1, 2, 3)).sqrt()
    bound = err[:, None] * nW[None, :] + nWh[:, None] * err[None, :]
    assert bool(((low.gram - gram_of(W)).abs() <= bound * (1 + 1e-10)).all())


def test_direction_is_exact_for_the_truncated_factors():
    rep = factors(9, 2, 6, 9, 7, decay=0.7, seed=3)
    low = build(rep, 2)
    U = per_sample(low.store).reshape(9, -1)  # rows: truncated u_i (already / sqrt(N) here)
    g_block = torch.from_numpy(np.random.default_rng(4).standard_normal((2, 7, 9)))
    want, cond = dense_direction(U * 3.0, g_block.reshape(-1), DAMPING)  # sqrt(N) = 3
    got, _ = low.direction(g_block, DAMPING)
    check_direction(got.reshape(-1), want, cond, 2 * (9 + 7))


def test_nonfinite_factors_give_nonfinite_gram():
    rep = factors(4, 1, 3, 5, 4)
    rep.G[1, 0, 0, 0] = float("nan")
    assert not bool(torch.isfinite(build(rep, 2).gram).all())


# -- through the preconditioner ----------------------------------------------------------------
def ce(out, y):
    return F.cross_entropy(out, y, reduction="sum")


def cnn():
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(),
                         nn.Conv2d(4, 4, 3, stride=2, groups=2), nn.Flatten(), nn.Linear(36, 3))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("n", [1, 7, 32])
def test_lowrank_route_with_full_rank_is_exact(n, reduction, float64):
    """Conv 0 (T = 49 positions, W_i 4 x 19: rank <= 4) and conv 2 (T = 9, groups 2, W_i
    2 x 19: rank <= 2) with rank 4 kept: the per-sample gradients are not truncated, so
    p.grad is the dense torch.func direction."""
    torch.manual_seed(n)
    gen = torch.Generator().manual_seed(n)
    model = cnn()
    x, y = torch.randn(n, 2, 7, 7, generator=gen), torch.randint(0, 3, (n,), generator=gen)
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=1, loss_reduction=reduction,
                             routes={"0": "lowrank", "2": "lowrank"}, lowrank_rank=4)
    batch_loss(model, ce, x, y, reduction).backward()
    pre.step()
    ps = per_sample_grads(model, ce, x, y)
    check_layers(model, ["0", "2", "4"], ps, full_grad(ps, reduction), DAMPING)
    used = {r["name"]: r["last"]["route"] for r in pre.layer_info()}
    assert used == {"0": "lowrank", "2": "lowrank", "4": "exact"}


def test_lowrank_route_rejects_norm_layers():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match="lowrank"):
        SENGPreconditioner(model, routes={"1": "lowrank"})


def test_cost_model_picks_lowrank_for_a_large_conv():
    """A 64 -> 64 channel 3x3 convolution on 4x4 maps, batch 128: the exact Gram (dense,
    2 N^2 d_a d_g) costs several times the rank-4 truncation (2 N^2 k^2 (d_a + d_g)); a
    small convolution stays exact; without a rank, a sketch of its whole 36928-coordinate
    block to 16384 costs more than half the exact Gram (exact), while for a 512 -> 512
    convolution CountSketch (TensorSketch of the factors) is the approximation."""
    t, da, dg = 16, 64 * 9 + 1, 64
    big = KroneckerFactors(torch.zeros(128, 1, t, da), torch.zeros(128, 1, t, dg))
    route, costs = AutoRoute(torch.float64, 16384, 4).choose(big)
    assert route.name == "lowrank" and costs["lowrank_flops"] < 0.5 * costs["exact_flops"]
    route, costs = AutoRoute(torch.float64, 16384, None).choose(big)
    assert route.name == "exact" and costs["sketched_flops"] >= 0.5 * costs["exact_flops"]
    wide = KroneckerFactors(torch.zeros(32, 1, t, 512 * 9 + 1), torch.zeros(32, 1, t, 512))
    route, costs = AutoRoute(torch.float64, 16384, None).choose(wide)
    assert route.name == "countsketch" and costs["sketched_flops"] < 0.5 * costs["exact_flops"]
    small = KroneckerFactors(torch.zeros(8, 1, 4, 10), torch.zeros(8, 1, 4, 3))
    assert AutoRoute(torch.float64, 16384, 2).choose(small)[0].name == "exact"


def test_auto_route_visible_in_report():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.Flatten(), nn.Linear(1024, 2))
    x, y = torch.randn(128, 64, 4, 4), torch.randint(0, 2, (128,))
    pre = SENGPreconditioner(model, update_freq=1, sketch="auto", lowrank_rank=4)
    F.cross_entropy(model(x), y).backward()
    pre.step()
    info = {r["name"]: r["last"] for r in pre.layer_info()}
    assert info["0"]["route"] == "lowrank" and info["0"]["rank"] == 4
    assert 0 < info["0"]["truncation_error"] < 1
    assert "lowrank" in pre.report()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
