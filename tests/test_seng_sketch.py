"""The sketched route: an unbiased Gram estimate whose error follows the theory, and a
descent direction at the default settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sketchlinalg as sl
from helpers import assert_close, tensor_sketch_variance
from seng import SENGPreconditioner, cost
from seng.persample import BlockSketch, DenseGrads, KroneckerFactors
from seng.routes import SketchedRoute

KINDS = list(sl.KINDS)


def kron_case(rng, n=4, groups=2, t=3, da=40, dg=30):
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
    # each group's 30 x 40 block sketched as a whole, to 72 // 2 coordinates (countsketch:
    # by a TensorSketch of the factors)
    assert rep.sketch(kind, 72, np.random.default_rng(0)).block_shape == (2, 36)
    if kind == "countsketch":
        assert cost.block_sketch_method(kind, 3, 40, 30, 36) == "tensorsketch"
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


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("groups", "t", "da", "dg"), [(1, 1, 40, 30), (2, 3, 40, 30),
                                                     (1, 12, 24, 20)])
def test_sketch_of_factors_equals_dense_oracle(kind, groups, t, da, dg):
    """With the sketch made explicit (the same draws), the sketch of the Kronecker factors
    equals S U of the materialized per-sample gradients, S = diag(S_1, ..., S_groups), and
    the sketched route's Gram is (S U)^T (S U). Countsketch: by TensorSketch in the first
    two cases, by a CountSketch of the formed gradients in the third (a small block at many
    positions, where forming it is cheaper than the FFTs)."""
    size = 72
    rep = kron_case(np.random.default_rng(7), n=5, groups=groups, t=t, da=da, dg=dg)
    p, d = da * dg, size // groups
    method = cost.block_sketch_method(kind, t, da, dg, d)
    if kind == "countsketch":
        assert method == ("dense" if t == 12 else "tensorsketch")
    sketched = rep.sketch(kind, size, np.random.default_rng(8))
    rng = np.random.default_rng(8)
    blocks = [BlockSketch(kind, d, dg, da, rng, positions=t).matrix() for _ in range(groups)]
    U = rep.to_dense().rows.numpy()  # (N, groups * p)
    SU = np.concatenate([U[:, j * p:(j + 1) * p] @ S.T for j, S in enumerate(blocks)], axis=1)
    scale = float(np.abs(U).max() * max(np.abs(S).sum(axis=1).max() for S in blocks))
    assert_close(sketched.rows, SU, factor=100 * np.sqrt(p), scale=scale)
    curvature = SketchedRoute(torch.float64, kind, size).build(rep, np.random.default_rng(8))
    assert_close(curvature.gram, SU @ SU.T, factor=1000 * np.sqrt(p), scale=scale**2 * size)
    assert curvature.info["sketch_method"] == method
    assert curvature.info["sketch_shape"] == [groups, d]


@pytest.mark.parametrize("method", ["dense", "tensorsketch"])
def test_block_sketch_method_override_applies_its_own_matrix(method):
    """A forced method (the benchmark that checks the cost model times both) is used, and
    its sketch of the factors is S vec(W) for its own explicit S."""
    gen = torch.Generator().manual_seed(0)
    n, t, dg, da, d = 4, 3, 6, 5, 16
    G = torch.randn(n, t, dg, dtype=torch.float64, generator=gen)
    A = torch.randn(n, t, da, dtype=torch.float64, generator=gen)
    sketch = BlockSketch("countsketch", d, dg, da, np.random.default_rng(1), positions=t,
                         method=method)
    assert sketch.method == method
    W = torch.einsum("ntd,nte->nde", G, A).reshape(n, -1).numpy()
    S = sketch.matrix()
    assert_close(sketch.apply(G, A), W @ S.T, factor=100, scale=float(np.abs(W).sum(1).max()))


@pytest.mark.parametrize(("kind", "method"), [("countsketch", "face_split"),
                                              ("gaussian", "tensorsketch")])
def test_block_sketch_rejects_another_familys_method(kind, method):
    with pytest.raises(ValueError, match="Invalid method for kind"):
        BlockSketch(kind, 16, 6, 5, np.random.default_rng(0), method=method)


def test_tensorsketch_route_error_matches_theory():
    r"""The countsketch route's Gram entries are TensorSketch inner products of the
    d_g x d_a per-sample gradients W_i (sums over T = 2 positions: not rank one), so the mean
    squared Gram error is the sum over entries of the exact variance formula."""
    rep = kron_case(np.random.default_rng(3), n=4, groups=1, t=2, da=60, dg=40)
    assert all(cost.block_sketch_method("countsketch", 2, 60, 40, d) == "tensorsketch"
               for d in (32, 128))
    W = torch.einsum("ntd,nte->nde", rep.G[:, 0], rep.A[:, 0]).numpy()  # (N, dg, da)
    G = rep.gram("dense")[0]
    trials = 200
    for size in (32, 128):
        theory = sum(tensor_sketch_variance(W[i], W[j], size)
                     for i in range(4) for j in range(4))
        err2 = ((sketched_grams(rep, "countsketch", size, trials, seed=size) - G) ** 2).sum(
            dim=(1, 2))
        assert abs(float(err2.mean()) - theory) <= 5 * float(err2.std()) / trials**0.5


@pytest.mark.parametrize("kind", KINDS)
def test_sketched_error_shrinks_with_size(kind):
    """The mean squared Gram error at 16x the size is at most half (theory: about 1/16 for
    a sketch of the whole block, whose variance falls as 1/size; a Kronecker-structured
    S_out (x) S_in of sqrt(size) rows per factor fell only as 1/4 for rank-one blocks)."""
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
    # Linear block 600 x 41 and conv block 64 x 289: both more than the default 16384
    # coordinates, each sketched as a whole.
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
        assert info["6"]["route"] == kind and info["6"]["sketch_shape"] == [1, 16384]
        assert info["0"]["sketch_shape"] == [1, 16384]
        for gi, p in zip(g, model.parameters(), strict=True):
            assert float((gi * p.grad).sum()) > 0


def test_auto_route_choice_is_reported():
    # A 512 x 4609 convolution block at 16 positions, N = 32: its whole-block TensorSketch
    # to 16384 coordinates costs less than half its exact Gram (lowrank_rank = 16 = T: the
    # low-rank route would truncate nothing, so it does not compete).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(512, 512, 3), nn.Flatten(), nn.Linear(512 * 16, 3))
    pre = SENGPreconditioner(model, update_freq=1, sketch="auto", routes={"2": "exact"},
                             lowrank_rank=16)
    model(torch.randn(32, 512, 6, 6)).square().mean().backward()
    pre.step()
    info = {r["name"]: r for r in pre.layer_info()}
    assert info["0"]["route"] == "auto" and info["0"]["last"]["route"] == "countsketch"
    assert info["0"]["last"]["sketch_method"] == "tensorsketch"
    assert info["0"]["last"]["sketched_flops"] < 0.5 * info["0"]["last"]["exact_flops"]
    assert info["2"]["route"] == "exact" and info["2"]["last"]["route"] == "exact"
    assert "countsketch" in pre.report()
    # A 64 x 577 block at 36 positions, N = 16: a sketch of the whole block (36928
    # coordinates) costs more than half the exact Gram, which "auto" then builds.
    model = nn.Sequential(nn.Conv2d(64, 64, 3), nn.Flatten(), nn.Linear(64 * 36, 3))
    pre = SENGPreconditioner(model, update_freq=1, sketch="auto")
    model(torch.randn(16, 64, 8, 8)).square().mean().backward()
    pre.step()
    last = pre.layer_info()[0]["last"]
    assert last["route"] == "exact" and last["sketched_flops"] >= 0.5 * last["exact_flops"]
    small = nn.Sequential(nn.Linear(20, 10), nn.Tanh(), nn.Linear(10, 3))
    pre = SENGPreconditioner(small, update_freq=1, sketch="auto")
    small(torch.randn(16, 20)).square().mean().backward()
    pre.step()
    assert [r["last"]["route"] for r in pre.layer_info()] == ["exact", "exact"]
