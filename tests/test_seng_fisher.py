"""The true (Monte Carlo) Fisher: targets drawn from the model, per-sample gradients of their
loss, against the torch.func oracle on the same targets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from seng_oracle import check_layers, full_grad, per_sample_grads
from torch import nn

from seng import SENGPreconditioner
from seng.fisher import sample_targets, sampled_loss

DAMPING = 0.05


def _ce(out, y):
    return F.cross_entropy(out, y)


def _mse(out, y):
    return F.mse_loss(out, y)


def _model(out_features):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, out_features)).double()


@pytest.mark.parametrize("likelihood, loss_fn, reduction", [
    ("categorical", _ce, "mean"), ("categorical", _ce, "sum"), ("gaussian", _mse, "mean")])
def test_true_fisher_direction_matches_oracle(likelihood, loss_fn, reduction):
    """U holds the per-sample gradients of the sampled targets' loss; g stays the training
    loss's gradient."""
    model = _model(3)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 5, generator=g, dtype=torch.float64)
    y = (torch.randint(0, 3, (12,), generator=g) if likelihood == "categorical"
         else torch.randn(12, 3, generator=g, dtype=torch.float64))
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=1, fisher="true",
                             loss_reduction=reduction)
    for _ in range(2):  # the second step uses a new draw
        model.zero_grad()
        out = model(x)
        assert pre.curvature_step and pre.sample_fisher(out, likelihood)
        assert all(p.grad is None for p in model.parameters())  # the sampled pass is separate
        loss = F.cross_entropy(out, y, reduction=reduction) if likelihood == "categorical" \
            else F.mse_loss(out, y, reduction=reduction)
        loss.backward()
        targets = pre.last_sampled_targets
        ps_true = per_sample_grads(model, loss_fn, x, targets)
        g_ref = full_grad(per_sample_grads(model, loss_fn, x, y), reduction)
        pre.step()
        check_layers(model, ["0", "2"], ps_true, g_ref, DAMPING)


def test_sampled_targets_follow_the_model():
    """Frequencies of categorical draws within 5 standard errors of softmax; Gaussian draws
    with mean f and variance D / 2 per feature (D = 4)."""
    logits = torch.tensor([[2.0, 0.0, -1.0]]).repeat(20000, 1)
    draws = sample_targets(logits, "categorical", torch.Generator().manual_seed(0))
    p = torch.softmax(logits[0], 0)
    freq = torch.bincount(draws, minlength=3) / 20000
    se = torch.sqrt(p * (1 - p) / 20000)
    assert torch.all((freq - p).abs() < 5 * se)
    f = torch.zeros(20000, 4, dtype=torch.float64)
    z = sample_targets(f, "gaussian", torch.Generator().manual_seed(0))
    assert abs(float(z.mean())) < 5 * math.sqrt(2 / 80000)
    var = float(z.var())
    assert abs(var - 2.0) < 5 * 2.0 * math.sqrt(2 / 80000)  # var of a variance estimate


def test_gaussian_loss_is_the_likelihood_of_its_variance():
    """-log N(y; f, D/2 I) = ||f - y||^2 / D + const: the sampled loss's gradient in f is
    2 (f - y) / (D N) for a mean over N samples, as F.mse_loss's."""
    f = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 4, dtype=torch.float64)
    (grad,) = torch.autograd.grad(sampled_loss(f, y, "gaussian", "mean"), f)
    (want,) = torch.autograd.grad(F.mse_loss(f, y), f)
    torch.testing.assert_close(grad, want, rtol=1e-14, atol=0)


def test_missing_sample_fisher_is_an_error_and_off_steps_cost_nothing():
    model = _model(3)
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=2, fisher="true")
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(ValueError, match="sample_fisher"):
        pre.step()
    model.zero_grad()
    out = model(x)
    assert pre.sample_fisher(out, "categorical")
    F.cross_entropy(out, y).backward()
    pre.step()
    model.zero_grad()
    out = model(x)
    assert not pre.curvature_step and not pre.sample_fisher(out, "categorical")
    F.cross_entropy(out, y).backward()
    pre.step()
    assert pre.counters["curvature_updates"] == 2  # both layers, once


def test_invalid_arguments():
    model = _model(3)
    with pytest.raises(ValueError, match="fisher"):
        SENGPreconditioner(model, fisher="exact")
    out = model(torch.randn(4, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="fisher='true'"):
        SENGPreconditioner(model).sample_fisher(out, "categorical")
    pre = SENGPreconditioner(model, fisher="true")
    with pytest.raises(ValueError, match="likelihood"):
        pre.sample_fisher(out, "poisson")
    with pytest.raises(TypeError, match="outputs"):
        pre.sample_fisher(out.detach(), "categorical")
