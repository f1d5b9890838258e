"""Parameters outside the supported layers: ``g / (1 + damping)`` by default, one more
exact block from ``torch.func`` per-sample gradients with ``fallback="torch.func"``."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from seng_oracle import (
    batch_loss,
    block_rows,
    check_direction,
    check_layers,
    dense_direction,
    full_grad,
    per_sample_grads,
)
from torch import nn

from helpers import assert_close
from seng import SENGPreconditioner

pytestmark = pytest.mark.usefixtures("float64")

DAMPING = 0.3
FALLBACK = "(torch.func)"


class Custom(nn.Module):
    """Unsupported parameters: a free scale, a custom elementwise gain and a PReLU slope;
    a weight tied between two Linear layers (its own shared block)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, 4))
        self.act = nn.PReLU()
        self.head = nn.Linear(4, 3)
        self.scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        h = self.act(self.a(x)) * self.gain
        return self.head(torch.tanh(self.b(h))) * self.scale


REST = ["gain", "scale", "act.weight"]  # named_parameters order


def ce(out, y):
    return F.cross_entropy(out, y, reduction="sum")


def test_default_is_damped_gradient():
    torch.manual_seed(0)
    model = Custom()
    x, y = torch.randn(7, 4), torch.randint(0, 3, (7,))
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=1)
    assert pre.unsupported_parameters() == REST
    batch_loss(model, ce, x, y, "mean").backward()
    g = {n: p.grad.clone() for n, p in model.named_parameters()}
    pre.step()
    params = dict(model.named_parameters())
    for n in REST:
        assert_close(params[n].grad, g[n] / (1 + DAMPING), factor=4)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("n", [1, 7, 32])
def test_torch_func_block_against_oracle(n, reduction):
    torch.manual_seed(n)
    model = Custom()
    gen = torch.Generator().manual_seed(n)
    x, y = torch.randn(n, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen)
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=1, loss_reduction=reduction,
                             fallback="torch.func")
    assert pre.unsupported_parameters() == []
    assert [r["name"] for r in pre.layer_info()] == ["a", "b", "head", "a.weight", FALLBACK]
    batch_loss(model, ce, x, y, reduction).backward()
    pre.step()
    ps = per_sample_grads(model, ce, x, y)
    g_ref = full_grad(ps, reduction)
    check_layers(model, ["head"], ps, g_ref, DAMPING)
    params = dict(model.named_parameters())
    # The tied weight left a and b's blocks for one of its own (the sum over both uses).
    for block in (["a.bias"], ["b.bias"], ["a.weight"], REST):
        want, cond = dense_direction(block_rows(ps, block),
                                     torch.cat([g_ref[k].reshape(-1) for k in block]), DAMPING)
        got = torch.cat([params[k].grad.reshape(-1) for k in block])
        check_direction(got, want, cond, got.numel())


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 3)
        self.lin = nn.Linear(3, 2)
        self.mix = nn.Parameter(torch.tensor([0.3, -0.2]))

    def forward(self, idx, x):
        return self.lin(self.emb(idx) + x) * self.mix


def test_two_positional_inputs_and_curvature_batch():
    torch.manual_seed(0)
    model = TwoInputs()
    n = 9
    idx, x, y = torch.randint(0, 5, (n,)), torch.randn(n, 3), torch.randint(0, 2, (n,))
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=1, fallback="torch.func",
                             curvature_batch=5, rng=1)
    out = model(idx, x)
    per = torch.stack([ce(out[i:i + 1], y[i:i + 1]) for i in range(n)])
    per.mean().backward()
    pre.step()
    rows = pre.last_curvature_indices
    assert rows is not None and rows.numel() == 5

    def loss_i(p, i_, x_, y_):
        out = torch.func.functional_call(model, p, (i_[None], x_[None]))
        return ce(out, y_[None])

    params = {k: v.detach() for k, v in model.named_parameters()}
    ps = torch.func.vmap(torch.func.grad(loss_i), in_dims=(None, 0, 0, 0))(params, idx, x, y)
    want, cond = dense_direction(ps["mix"][rows], ps["mix"].mean(0), DAMPING)
    check_direction(model.mix.grad, want, cond, 2)


def test_state_dict_round_trip_keeps_fallback_block():
    torch.manual_seed(0)
    model = Custom()
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=4, fallback="torch.func")
    batch_loss(model, ce, x, y, "mean").backward()
    pre.step()
    other = SENGPreconditioner(model, damping=DAMPING, update_freq=4, fallback="torch.func")
    other.load_state_dict(copy.deepcopy(pre.state_dict()))
    g = {p: torch.randn_like(p) for p in model.parameters()}
    a, b = pre.precondition(g), other.precondition(g)
    assert all(torch.equal(a[p], b[p]) for p in g)


def test_bad_fallback_and_inputs():
    model = Custom()
    with pytest.raises(ValueError, match="fallback"):
        SENGPreconditioner(model, fallback="vmap")

    class Kw(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.s = nn.Parameter(torch.ones(()))

        def forward(self, x, flag):
            return self.lin(x) * self.s

    SENGPreconditioner(kw := Kw(), fallback="torch.func")
    with pytest.raises(TypeError, match="positional inputs"):
        kw(torch.randn(3, 2), True)


def test_random_layers_are_refused():
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.PReLU(), nn.Linear(3, 2))
    pre = SENGPreconditioner(model, update_freq=1, fallback="torch.func")
    F.cross_entropy(model(torch.randn(4, 3)), torch.tensor([0, 1, 0, 1])).backward()
    with pytest.raises(RuntimeError, match="samples must not interact"):
        pre.step()
