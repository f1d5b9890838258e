"""The relative and spectral damping rules: the direction against a dense oracle, and
invariance of SENG's trajectory under a rescaled loss (with the learning rate rescaled as
for SGD), which the paper's absolute rule does not have."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from seng_oracle import (
    batch_loss,
    block_rows,
    check_direction,
    dense_direction,
    full_grad,
    per_sample_grads,
)
from torch import nn

from helpers import assert_close
from seng import SENG, SENGPreconditioner
from seng.curvature import Curvature
from seng.persample import DenseGrads

pytestmark = pytest.mark.usefixtures("float64")

N = 12


class Net(nn.Module):
    """Two Linear layers, a LayerNorm and a free scale (a parameter without curvature)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 7)
        self.norm = nn.LayerNorm(7)
        self.fc2 = nn.Linear(7, 3)
        self.scale = nn.Parameter(torch.tensor(1.3))

    def forward(self, x):
        return self.fc2(torch.tanh(self.norm(self.fc1(x)))) * self.scale


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, 5, generator=g), torch.randint(0, 3, (N,), generator=g)


def ce(out, y):
    return F.cross_entropy(out, y)


def oracle_scale(rows, rule):
    """The rule's curvature scale of U = rows^T / sqrt(N): tr(U^T U) / N or ||U^T U||_2."""
    if rule == "relative":
        return float(rows.square().sum()) / N**2
    return float(torch.linalg.eigvalsh(rows @ rows.T / N)[-1])


@pytest.mark.parametrize("rule", ["relative", "spectral"])
@pytest.mark.parametrize("damping", [0.05, 1.0, 20.0])
def test_relative_direction_against_dense_oracle(damping, rule):
    """Each layer: d = (I + U U^T / (damping s))^{-1} g with s = tr(U^T U) / N (relative) or
    the largest eigenvalue of U^T U (spectral) from the torch.func per-sample gradients; the
    free scale gets g damping / (1 + damping)."""
    torch.manual_seed(0)
    model = Net()
    x, y = data()
    ps = per_sample_grads(model, ce, x, y)
    g_ref = full_grad(ps, "mean")
    pre = SENGPreconditioner(model, damping=damping, damping_rule=rule)
    batch_loss(model, ce, x, y, "mean").backward()
    pre.step()
    params = dict(model.named_parameters())
    for layer in ("fc1", "norm", "fc2"):
        names = [n for n in params if n.startswith(layer + ".")]
        rows = block_rows(ps, names)
        s = oracle_scale(rows, rule)
        g = torch.cat([g_ref[n].reshape(-1) for n in names])
        want, cond = dense_direction(rows, g, damping * s)
        got = torch.cat([params[n].grad.reshape(-1) for n in names])
        check_direction(got, want * (damping * s), cond, g.numel())
    assert_close(params["scale"].grad, g_ref["scale"] * (damping / (1 + damping)), factor=4)
    assert "g damping / (1 + damping) for: scale" in pre.report()


def train(rule, factor, lr, steps=7, sketch=None):
    """SENG (update_freq 2: stale curvature on odd steps) on ``factor`` times the loss."""
    torch.manual_seed(0)
    model = Net()
    opt = SENG(model, lr=lr, damping=0.5, update_freq=2, damping_rule=rule, sketch=sketch,
               sketch_size=16)
    for k in range(steps):
        x, y = data(k)
        opt.zero_grad()
        (factor * ce(model(x), y)).backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("rule", ["relative", "spectral"])
@pytest.mark.parametrize("c", [1e-3, 3.0, 64.0])
@pytest.mark.parametrize("sketch", [None, "gaussian"])
def test_relative_rule_trajectory_is_invariant_to_the_loss_scale(c, sketch, rule):
    """Loss times c with lr / c takes the same steps as the loss with lr: each direction is
    c times the unscaled one, so only rounding (relative ~eps per operation, a few hundred
    operations per coordinate over 7 steps) separates the runs."""
    want = train(rule, 1.0, 0.1, sketch=sketch)
    got = train(rule, c, 0.1 / c, sketch=sketch)
    assert_close(got, want, factor=1e3, scale=float(want.abs().max()))


def test_absolute_rule_is_not_invariant():
    """The same check fails for the paper's absolute damping: its damping is a number in
    the loss's units, so the runs differ far beyond rounding (the check above can fail)."""
    want = train("absolute", 1.0, 0.1)
    got = train("absolute", 3.0, 0.1 / 3.0)
    gap = float((got - want).abs().max()) / float(want.abs().max())
    assert gap > 1e3 * 1e3 * torch.finfo(torch.float64).eps, gap


def test_zero_curvature_gives_the_gradient():
    """U = 0 (s = 0): the relative direction is g itself, finite, with no solve failure."""
    curv = Curvature(DenseGrads(torch.zeros(4, 6), (6,)), torch.zeros(4, 4), {})
    g = torch.linspace(-1, 1, 6)
    for rule in ("relative", "spectral"):
        d, fallback = curv.direction(g, 0.1, rule)
        assert not fallback
        assert torch.equal(d, g)


def test_scale_is_the_mean_gram_diagonal():
    rows = torch.arange(12.0).reshape(3, 4)
    curv = Curvature(DenseGrads(rows, (4,)), rows @ rows.T, {})
    assert curv.scale == pytest.approx(float(rows.square().sum()) / 3, rel=1e-15)
    assert curv.system_damping(0.5, "relative") == pytest.approx(0.5 * curv.scale)
    assert curv.system_damping(0.5, "absolute") == 0.5


def test_top_is_the_largest_gram_eigenvalue():
    rows = torch.arange(12.0).reshape(3, 4)
    curv = Curvature(DenseGrads(rows, (4,)), rows @ rows.T, {})
    want = float(torch.linalg.svdvals(rows)[0]) ** 2
    assert curv.top == pytest.approx(want, rel=1e-13)
    assert curv.system_damping(0.5, "spectral") == pytest.approx(0.5 * want, rel=1e-13)


def test_gram_eigenvalues_against_the_dense_oracle():
    """The spectrum the damping is compared with: eigenvalues of U^T U, U = rows^T / sqrt(N)
    (a layer's per-sample gradients), per layer; layers never captured are left out."""
    torch.manual_seed(0)
    model = Net()
    x, y = data()
    pre = SENGPreconditioner(model)
    assert pre.gram_eigenvalues() == {}
    batch_loss(model, F.cross_entropy, x, y, "mean").backward()
    pre.step()
    ps = per_sample_grads(model, F.cross_entropy, x, y)
    got = pre.gram_eigenvalues()
    assert set(got) == {"fc1", "norm", "fc2"}
    for layer, w in got.items():
        rows = block_rows(ps, [n for n in ps if n.rsplit(".", 1)[0] == layer])
        want = torch.linalg.eigvalsh(rows @ rows.T / N)
        assert_close(w, want, scale=float(want[-1]))


@pytest.mark.parametrize("rule", ["Relative", "", None, 1.0, "spectral "])
def test_bad_damping_rule(rule):
    with pytest.raises(ValueError, match="damping_rule"):
        SENGPreconditioner(Net(), damping_rule=rule)


def test_relative_rule_survives_a_state_dict_round_trip():
    """The scale is recomputed from the stored Gram after loading: the next direction is
    bitwise the one of the uninterrupted preconditioner."""
    torch.manual_seed(0)
    model = Net()
    pre = SENGPreconditioner(model, damping=0.2, update_freq=3, damping_rule="relative")
    x, y = data()
    ce(model(x), y).backward()
    pre.step()
    clone = copy.deepcopy(model)
    other = SENGPreconditioner(clone, damping=0.2, update_freq=3, damping_rule="relative")
    other.load_state_dict(copy.deepcopy(pre.state_dict()))
    for m in (model, clone):
        m.zero_grad()
        x, y = data(1)
        ce(m(x), y).backward()
    pre.step()
    other.step()
    for p, q in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
    assert math.isfinite(float(p.grad.abs().sum()))


@pytest.mark.parametrize("rule", ["absolute", "relative"])
def test_only_the_spectral_rule_pays_for_an_eigenvalue_solve(rule, monkeypatch):
    """The largest eigenvalue is computed for the spectral rule alone (an eigenvalue solve
    per layer and refresh would otherwise slow every rule's curvature steps)."""
    def refuse(*args, **kwargs):
        raise AssertionError("eigenvalue solve under the " + rule + " rule")

    torch.manual_seed(0)
    model = Net()
    pre = SENGPreconditioner(model, damping=0.5, update_freq=1, damping_rule=rule)
    x, y = data()
    monkeypatch.setattr(torch.linalg, "eigvalsh", refuse)
    ce(model(x), y).backward()
    pre.step()
    assert pre.counters["curvature_updates"] == 3
