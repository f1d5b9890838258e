"""Gradient accumulation (``accumulation_steps``): the curvature of k micro-batches is that
of their concatenation. Oracles: torch.func per-sample gradients of the concatenated batch,
and the same preconditioner run once on the concatenated batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from seng_oracle import batch_loss, check_layers, full_grad, per_sample_grads
from torch import nn

from helpers import assert_close
from seng import SENG, SENGPreconditioner

pytestmark = pytest.mark.usefixtures("float64")

DAMPING = 0.3
K = 3  # micro-batches per step
N_MICRO = 5


def ce(out, y):
    return F.cross_entropy(out, y, reduction="sum")


def mse(out, y):
    return ((out - y) ** 2).sum()


class Shared(nn.Module):
    """A Linear called twice per forward, plus a discarded call (no gradient)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 5)
        self.shared = nn.Linear(5, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        self.shared(h)  # discarded
        return self.head(torch.tanh(self.shared(torch.tanh(self.shared(h)))))


def make_case(name, n, gen):
    """``(model, x, y, per-sample loss, layers)`` in float64."""
    if name == "mlp":
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        x, y = torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)
        return model, x, y, ce, ["0", "2"]
    if name == "tokens":
        model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4))
        x, y = torch.randn(n, 3, 5, generator=gen), torch.randn(n, 3, 4, generator=gen)
        return model, x, y, mse, ["0", "2"]
    if name == "cnn":
        model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(),
                              nn.Conv2d(4, 4, 3, stride=2, groups=2), nn.Flatten(),
                              nn.Linear(36, 3))
        x, y = torch.randn(n, 2, 7, 7, generator=gen), torch.randint(0, 3, (n,), generator=gen)
        return model, x, y, ce, ["0", "2", "4"]
    if name == "shared":
        model = Shared()
        x, y = torch.randn(n, 4, generator=gen), torch.randn(n, 2, generator=gen)
        return model, x, y, mse, ["inp", "shared", "head"]
    raise ValueError(name)


def accumulate(model, loss_fn, x, y, reduction):
    """Backward of K micro-batches; a mean loss is divided by K (the usual recipe)."""
    for m in range(K):
        sl = slice(m * N_MICRO, (m + 1) * N_MICRO)
        loss = batch_loss(model, loss_fn, x[sl], y[sl], reduction)
        (loss / K if reduction == "mean" else loss).backward()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", ["mlp", "tokens", "cnn", "shared"])
def test_accumulated_curvature_is_that_of_the_concatenated_batch(name, reduction):
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(1)
    model, x, y, loss_fn, layers = make_case(name, K * N_MICRO, gen)
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=1, accumulation_steps=K,
                             loss_reduction=reduction)
    accumulate(model, loss_fn, x, y, reduction)
    pre.step()
    assert pre.counters["curvature_updates"] == len(layers)
    ps = per_sample_grads(model, loss_fn, x, y)
    check_layers(model, layers, ps, full_grad(ps, reduction), DAMPING)


@pytest.mark.parametrize("sketch", ["countsketch", "gaussian"])
def test_sketched_accumulation_equals_one_pass(sketch):
    """The sketch depends on the seed and step only, so k micro-batches and one pass over
    their concatenation give the same direction, to rounding."""
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(2)
    model, x, y, loss_fn, _ = make_case("cnn", K * N_MICRO, gen)
    twin = make_case("cnn", 1, torch.Generator())[0]
    twin.load_state_dict(model.state_dict())
    options = dict(damping=DAMPING, update_freq=1, sketch=sketch, sketch_size=12, rng=5)
    pre = SENGPreconditioner(model, accumulation_steps=K, **options)
    ref = SENGPreconditioner(twin, **options)
    accumulate(model, loss_fn, x, y, "mean")
    batch_loss(twin, loss_fn, x, y, "mean").backward()
    pre.step()
    ref.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        # float64; both sums run over the same 15 samples in another order
        assert_close(p.grad, q.grad, factor=1e3, scale=float(q.grad.abs().max()))


def test_seng_optimizer_with_accumulation_follows_one_pass():
    gen = torch.Generator().manual_seed(4)
    model, x, y, loss_fn, _ = make_case("mlp", K * N_MICRO, gen)
    twin = make_case("mlp", 1, torch.Generator())[0]
    twin.load_state_dict(model.state_dict())
    opt = SENG(model, lr=0.1, damping=DAMPING, update_freq=2, accumulation_steps=K)
    ref = SENG(twin, lr=0.1, damping=DAMPING, update_freq=2)
    for _ in range(3):  # steps 0 and 2 refresh, step 1 reuses the stored curvature
        opt.zero_grad()
        accumulate(model, loss_fn, x, y, "mean")
        opt.step()
        ref.zero_grad()
        batch_loss(twin, loss_fn, x, y, "mean").backward()
        ref.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert_close(p, q, factor=1e3, scale=float(q.detach().abs().max()))


def test_calls_not_a_multiple_of_the_micro_batches_warn_and_keep_the_curvature():
    gen = torch.Generator().manual_seed(5)
    model, x, y, loss_fn, _ = make_case("mlp", K * N_MICRO, gen)
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=1, accumulation_steps=K)
    batch_loss(model, loss_fn, x[:N_MICRO], y[:N_MICRO], "mean").backward()  # 1 of 3
    with pytest.warns(RuntimeWarning) as record:
        pre.step()
    messages = " ".join(str(w.message) for w in record)
    assert "accumulation_steps=3" in messages and "no curvature" in messages
    assert pre.counters["curvature_updates"] == 0
    assert pre.counters["missing_curvature"] == 2  # g / (1 + damping), visibly


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True])
def test_invalid_accumulation_steps(value):
    model = nn.Linear(3, 2)
    with pytest.raises((TypeError, ValueError), match="accumulation_steps"):
        SENGPreconditioner(model, accumulation_steps=value)
