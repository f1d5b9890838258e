"""Which parameters SENG preconditions: subclasses matched by isinstance when they keep the
forward, every other trainable parameter named with its reason (one warning, or an error
with ``strict=True``), and the covered fraction in the report."""

from __future__ import annotations

import warnings

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

from seng import SENGPreconditioner

pytestmark = pytest.mark.usefixtures("float64")

DAMPING = 0.4


class PlainLinear(nn.Linear):
    """A subclass that keeps Linear's forward (a user's marker class)."""


class ScaledLinear(nn.Linear):
    """A subclass with its own forward: Linear's capture rules do not describe it."""

    def forward(self, x):
        return 2.0 * super().forward(x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = PlainLinear(4, 6)
        self.b = ScaledLinear(6, 6)
        self.c = nn.Linear(6, 3)
        self.d = nn.Linear(3, 3)
        self.gain = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.d(self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))) * self.gain


def ce(out, y):
    return F.cross_entropy(out, y)


def test_subclass_keeping_forward_is_exact_and_the_rest_is_named():
    """PlainLinear is preconditioned exactly (torch.func oracle); ScaledLinear and the free
    gain are named with their reasons in one warning at construction."""
    torch.manual_seed(0)
    model = Net()
    with pytest.warns(UserWarning, match="damped gradient only") as record:
        pre = SENGPreconditioner(model, damping=DAMPING)
    message = str(record[0].message)
    assert "b.weight (ScaledLinear subclasses nn.Linear with its own forward)" in message
    assert "b.bias (ScaledLinear" in message
    assert "gain (no SENG helper for Net)" in message
    assert "a.weight" not in message and "c.weight" not in message
    assert pre.uncovered_parameters() == {
        "b.weight": "ScaledLinear subclasses nn.Linear with its own forward",
        "b.bias": "ScaledLinear subclasses nn.Linear with its own forward",
        "gain": "no SENG helper for Net"}
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(10, 4, generator=g), torch.randint(0, 3, (10,), generator=g)
    ps = per_sample_grads(model, ce, x, y)
    batch_loss(model, ce, x, y, "mean").backward()
    pre.step()
    check_layers(model, ["a", "c", "d"], ps, full_grad(ps, "mean"), DAMPING)
    covered = sum(p.numel() for n, p in model.named_parameters() if n[0] in "acd")
    total = sum(p.numel() for p in model.parameters())
    assert f"preconditioned: {covered} of {total} trainable parameters" in pre.report()


def test_strict_makes_it_an_error_and_fallback_covers_all():
    with pytest.raises(ValueError, match=r"strict=True: .*b\.weight \(ScaledLinear"):
        SENGPreconditioner(Net(), strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pre = SENGPreconditioner(Net(), strict=True, fallback="torch.func")
    assert pre.uncovered_parameters() == {}
    with pytest.raises(TypeError, match="strict must be a bool"):
        SENGPreconditioner(Net(), strict=1)


def test_frozen_parameters_are_not_named():
    """A frozen parameter needs no curvature: nothing to warn about (boundary: the same
    model with the gain trainable warns)."""
    model = nn.Sequential(nn.Linear(3, 3), ScaledLinear(3, 2))
    model[1].requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SENGPreconditioner(model)
    model[1].bias.requires_grad_(True)
    with pytest.warns(UserWarning, match=r"1 trainable parameter\(s\).*1\.bias"):
        SENGPreconditioner(model)


class TiedLM(nn.Module):
    """Input embedding tied to the output projection (the usual language-model tie), and a
    convolution weight used by two convolutions."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.conv1 = nn.Conv1d(6, 6, 3, padding=1)
        self.conv2 = nn.Conv1d(6, 6, 3, padding=1, bias=False)
        self.conv2.weight = self.conv1.weight
        self.out = nn.Linear(6, 11)
        self.out.weight = self.emb.weight

    def forward(self, idx):
        h = self.emb(idx).transpose(1, 2)  # (N, 6, T)
        h = torch.tanh(self.conv2(torch.tanh(self.conv1(h)))).transpose(1, 2)
        return self.out(h).mean(1)  # (N, 11)


def test_tied_parameters_form_one_block_with_the_sum_over_their_uses():
    """Exact against torch.func (whose per-sample gradient of a tied weight is the sum over
    its uses): the embedding tied to the head, a conv weight used twice."""
    torch.manual_seed(0)
    model = TiedLM().double()
    gen = torch.Generator().manual_seed(2)
    idx, y = torch.randint(0, 11, (9, 5), generator=gen), torch.randint(0, 11, (9,), generator=gen)
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=1, strict=True)
    assert [r["name"] for r in pre.layer_info()] == ["conv1", "out", "emb.weight",
                                                     "conv1.weight"]
    assert pre.uncovered_parameters() == {}
    F.cross_entropy(model(idx), y).backward()
    pre.step()
    ps = per_sample_grads(model, ce, idx, y)
    g_ref = full_grad(ps, "mean")
    # conv1 and out keep their biases as blocks; each tied weight is a block of its own.
    for name in ("conv1.bias", "out.bias", "emb.weight", "conv1.weight"):
        want, cond = dense_direction(ps[name].reshape(9, -1), g_ref[name].reshape(-1), DAMPING)
        check_direction(dict(model.named_parameters())[name].grad.reshape(-1), want, cond,
                        want.numel())


def test_tied_parameters_whose_layout_differs_are_named():
    """A Conv2d weight tied to a ConvTranspose2d (the tied-autoencoder trick): the transposed
    convolution's block orders the weight differently, so the tie stays uncovered, named."""
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.Tanh(), nn.ConvTranspose2d(5, 3, 3))
    model[2].weight = model[0].weight
    with pytest.warns(UserWarning, match=r"0\.weight \(shared by 2 modules: the block of "
                                         r"ConvTranspose2d '2' is not laid out"):
        pre = SENGPreconditioner(model)
    assert list(pre.uncovered_parameters()) == ["0.weight"]


def test_multihead_attention_and_its_out_proj_are_covered():
    """nn.MultiheadAttention calls no submodule: its helper owns out_proj's parameters (one
    block with the input projections), out_proj gets no block of its own; a subclass with
    its own forward is named, out_proj with it."""
    model = nn.Sequential(nn.Linear(4, 8))
    model.add_module("attn", nn.MultiheadAttention(8, 2, batch_first=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pre = SENGPreconditioner(model, strict=True)
    assert [(r["name"], r["params"]) for r in pre.layer_info()] == [
        ("0", ["weight", "bias"]),
        ("attn", ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"])]

    class Gated(nn.MultiheadAttention):
        def forward(self, *args, **kwargs):
            out, w = super().forward(*args, **kwargs)
            return 2.0 * out, w

    model.attn = Gated(8, 2, batch_first=True)
    with pytest.warns(UserWarning, match="damped gradient only"):
        pre = SENGPreconditioner(model)
    uncovered = pre.uncovered_parameters()
    assert uncovered["attn.out_proj.weight"].startswith("used functionally by")
    assert uncovered["attn.in_proj_weight"] == ("Gated subclasses nn.MultiheadAttention with "
                                                "its own forward")
    assert [r["name"] for r in pre.layer_info()] == ["0"]
