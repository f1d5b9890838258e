"""Exactness of the SENG preconditioner against a dense oracle built from ``torch.func``
per-sample gradients: with ``sketch=None`` and ``update_freq=1`` every supported layer's
``p.grad`` must become ``(U U^T + damping I)^{-1} g`` to float64 rounding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from helpers import assert_close
from seng import SENGPreconditioner
from seng.persample import KroneckerFactors

DAMPING = 0.3

pytestmark = [pytest.mark.filterwarnings("ignore:Using padding='same'"),
              pytest.mark.usefixtures("float64")]


# -- oracle --------------------------------------------------------------------------------
def per_sample_grads(model, loss_fn, x, y):
    """``{name: (N, *shape)}`` per-sample gradients of the trainable parameters."""
    train = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    frozen = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad}

    def loss_i(p, xi, yi):
        return loss_fn(functional_call(model, {**frozen, **p}, (xi[None],)), yi[None])

    return vmap(grad(loss_i), in_dims=(None, 0, 0))(train, x, y)


def batch_loss(model, loss_fn, x, y, reduction):
    out = model(x)
    per = torch.stack([loss_fn(out[i:i + 1], y[i:i + 1]) for i in range(x.shape[0])])
    return per.mean() if reduction == "mean" else per.sum()


def dense_direction(ps, names, g, damping, rows=None):
    """``(U U^T + damping I)^{-1} g`` densely, ``U`` the per-sample gradients of the block
    ``names`` (of the samples ``rows``) over ``sqrt(#samples)``, and the condition number."""
    U = torch.cat([ps[n].reshape(ps[n].shape[0], -1) for n in names], dim=1)
    if rows is not None:
        U = U[rows]
    U = U.T / math.sqrt(U.shape[0])
    K = U @ U.T + damping * torch.eye(U.shape[0], dtype=U.dtype, device=U.device)
    w = torch.linalg.eigvalsh(K)
    return torch.linalg.solve(K, g), float(w[-1] / w[0])


def check_block(model, layer_names, ps, g_ref, damping, rows=None):
    """Compare every listed layer's ``p.grad`` with the dense oracle."""
    params = dict(model.named_parameters())
    for layer in layer_names:
        names = [n for n in params if n.rsplit(".", 1)[0] == layer and n in ps]
        g = torch.cat([g_ref[n].reshape(-1) for n in names])
        want, cond = dense_direction(ps, names, g, damping, rows)
        got = torch.cat([params[n].grad.reshape(-1) for n in names])
        # Gram accumulation over p coordinates and the n x n Cholesky each lose ~(p + n) eps
        # relative to ||K||; the solve multiplies that by cond(K).
        assert_close(got, want, factor=4 * (g.numel() + 32) * cond, scale=float(want.abs().max()))


def full_grad(ps, reduction):
    return {n: (v.mean(0) if reduction == "mean" else v.sum(0)) for n, v in ps.items()}


# -- models ----------------------------------------------------------------------------------
def ce(out, y):
    return F.cross_entropy(out, y, reduction="sum")


def mse(out, y):
    return ((out - y) ** 2).sum()


def make_case(name, n, gen):
    """``(model, x, y, loss, supported layer names)`` in float64."""
    if name == "mlp":
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        x, y = torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)
        return model, x, y, ce, ["0", "2"]
    if name == "tokens":  # (N, T, d) inputs; ReLU(inplace) modifies the Linear output view
        model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(inplace=True), nn.Linear(6, 4))
        x, y = torch.randn(n, 3, 5, generator=gen), torch.randn(n, 3, 4, generator=gen)
        return model, x, y, mse, ["0", "2"]
    if name == "cnn":
        model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(),
                              nn.Conv2d(4, 4, 3, stride=2, groups=2, bias=False),
                              nn.Flatten(), nn.Linear(36, 3))
        x, y = torch.randn(n, 2, 7, 7, generator=gen), torch.randint(0, 3, (n,), generator=gen)
        return model, x, y, ce, ["0", "2", "4"]
    if name == "grouped_dilated2d":
        model = nn.Sequential(nn.Conv2d(4, 6, 3, groups=2, dilation=2, padding=2,
                                        padding_mode="reflect"), nn.Tanh(),
                              nn.Conv2d(6, 2, (2, 3), padding="same", dilation=(1, 2)),
                              nn.Flatten(), nn.Linear(50, 2))
        x, y = torch.randn(n, 4, 5, 5, generator=gen), torch.randn(n, 2, generator=gen)
        return model, x, y, mse, ["0", "2", "4"]
    if name == "conv1d":
        model = nn.Sequential(nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2,
                                        padding_mode="circular"), nn.Tanh(),
                              nn.Conv1d(6, 3, 2, dilation=2), nn.Flatten(), nn.Linear(9, 2))
        x, y = torch.randn(n, 4, 10, generator=gen), torch.randint(0, 2, (n,), generator=gen)
        return model, x, y, ce, ["0", "2", "4"]
    if name == "conv3d":
        model = nn.Sequential(nn.Conv3d(2, 4, (2, 3, 2), stride=(1, 2, 1), padding=1,
                                        dilation=(2, 1, 1), groups=2), nn.Tanh(),
                              nn.Flatten(), nn.Linear(4 * 4 * 3 * 5, 2))
        x, y = torch.randn(n, 2, 4, 5, 4, generator=gen), torch.randn(n, 2, generator=gen)
        return model, x, y, mse, ["0", "3"]
    raise ValueError(name)


MODELS = ["mlp", "tokens", "cnn", "grouped_dilated2d", "conv1d", "conv3d"]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("n", [1, 7, 32])
@pytest.mark.parametrize("name", MODELS)
def test_exact_against_per_sample_oracle(name, n, reduction):
    gen = torch.Generator().manual_seed(100 * MODELS.index(name) + n)
    torch.manual_seed(n)
    model, x, y, loss_fn, layers = make_case(name, n, gen)
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=1, loss_reduction=reduction)
    batch_loss(model, loss_fn, x, y, reduction).backward()
    pre.step()
    ps = per_sample_grads(model, loss_fn, x, y)
    check_block(model, layers, ps, full_grad(ps, reduction), DAMPING)
    assert {r["name"] for r in pre.layer_info()} == set(layers)


def test_stale_curvature_and_damping_schedule():
    """Between refreshes the stored U of the last curvature batch preconditions new
    gradients, with the damping of the current step; nothing is captured meanwhile."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model, _, _, loss_fn, layers = make_case("cnn", 5, gen)
    batches = [make_case("cnn", 5, gen)[1:3] for _ in range(4)]
    damping = lambda k: 0.5 + k  # noqa: E731
    pre = SENGPreconditioner(model, damping=damping, update_freq=3)
    for k, (x, y) in enumerate(batches):
        model.zero_grad()
        batch_loss(model, loss_fn, x, y, "mean").backward()
        recorded = sum(len(c) for c in pre._capture.calls.values())
        assert (recorded > 0) == (k in (0, 3))  # capture only on curvature steps
        pre.step()
        curv_x, curv_y = batches[0 if k < 3 else 3]
        ps_curv = per_sample_grads(model, loss_fn, curv_x, curv_y)
        g_now = full_grad(per_sample_grads(model, loss_fn, x, y), "mean")
        check_block(model, layers, ps_curv, g_now, damping(k))


def test_curvature_batch_subsample():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2)
    model, x, y, loss_fn, layers = make_case("tokens", 12, gen)
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=1, curvature_batch=5, rng=3)
    batch_loss(model, loss_fn, x, y, "mean").backward()
    pre.step()
    rows = pre.last_curvature_indices
    assert rows is not None and rows.numel() == 5 and len(set(rows.tolist())) == 5
    ps = per_sample_grads(model, loss_fn, x, y)
    check_block(model, layers, ps, full_grad(ps, "mean"), DAMPING, rows=rows)


class Shared(nn.Module):
    """One Linear used twice in a forward, a call whose output is discarded, a layer whose
    output is detached (no gradient) and a layer never called."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 5)
        self.shared = nn.Linear(5, 5)
        self.side = nn.Linear(4, 5)
        self.unused = nn.Linear(5, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        self.shared(h * 3.0)  # output discarded: contributes nothing
        h = torch.tanh(self.shared(torch.tanh(self.shared(h)))) + self.side(x).detach()
        return self.head(h)


def test_module_called_several_times_and_missing_grads():
    torch.manual_seed(0)
    model = Shared()
    x, y = torch.randn(9, 4), torch.randn(9, 2)
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=1)
    batch_loss(model, mse, x, y, "mean").backward()
    pre.step()
    ps = per_sample_grads(model, mse, x, y)
    check_block(model, ["inp", "shared", "head"], ps, full_grad(ps, "mean"), DAMPING)
    assert model.side.weight.grad is None and model.unused.weight.grad is None


def test_frozen_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(),
                          nn.Linear(8, 3))
    model[0].weight.requires_grad_(False)  # block = bias only
    model[2].requires_grad_(False)  # whole layer frozen
    model[4].bias.requires_grad_(False)  # block = weight only
    x, y = torch.randn(7, 6), torch.randint(0, 3, (7,))
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=1)
    batch_loss(model, ce, x, y, "mean").backward()
    pre.step()
    ps = per_sample_grads(model, ce, x, y)
    check_block(model, ["0", "4"], ps, full_grad(ps, "mean"), DAMPING)
    assert model[2].weight.grad is None
    assert {r["name"]: r["last"]["route"] for r in pre.layer_info() if r["last"]} == {
        "0": "exact", "4": "exact"}


def test_conv_parameters_frozen_after_construction():
    """Exact-route convolutions form their per-sample gradients in the backward hook for
    all block parameters; a parameter frozen after construction is sliced out at step()."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(),
                          nn.Conv2d(3, 3, 3, stride=2), nn.Flatten(), nn.Linear(27, 2))
    x, y = torch.randn(6, 2, 7, 7), torch.randint(0, 2, (6,))
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=1)
    model[0].bias.requires_grad_(False)  # block = weight only
    model[2].weight.requires_grad_(False)  # block = bias only
    batch_loss(model, ce, x, y, "mean").backward()
    assert all(c.reduced for c in pre._capture.calls["0"] + pre._capture.calls["2"])
    pre.step()
    ps = per_sample_grads(model, ce, x, y)
    check_block(model, ["0", "2", "4"], ps, full_grad(ps, "mean"), DAMPING)


def test_second_backward_through_a_reduced_call_skips_the_refresh():
    """The convolution's and BatchNorm's calls are reduced in the backward hook and their
    inputs dropped: a second backward through the same forward cannot be added, so their
    curvature is not updated (warned), never wrong; the Linear adds the two passes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(),
                          nn.Linear(75, 2))
    x, y = torch.randn(4, 2, 7, 7), torch.randint(0, 2, (4,))
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=1)
    loss = batch_loss(model, ce, x, y, "mean")
    loss.backward(retain_graph=True)
    loss.backward()
    with pytest.warns(RuntimeWarning) as record:
        pre.step()
    messages = " ".join(str(w.message) for w in record)
    assert "cannot be combined" in messages and "no curvature" in messages
    assert [r["last"] is not None for r in pre.layer_info()] == [False, False, True]


def test_eval_and_no_grad_forwards_are_not_captured():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(4)
    model, x, y, loss_fn, layers = make_case("mlp", 7, gen)
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=10)
    loss = batch_loss(model, loss_fn, x, y, "mean")
    model.eval()
    model(torch.randn(3, 6))  # eval forward with autograd: not captured
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 6))  # training-mode forward without autograd: not captured
    loss.backward()
    pre.step()
    ps = per_sample_grads(model, loss_fn, x, y)
    check_block(model, layers, ps, full_grad(ps, "mean"), DAMPING)


def test_eval_mode_training_step_falls_back_visibly_then_refreshes():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(5)
    model, x, y, loss_fn, layers = make_case("mlp", 7, gen)
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=10)
    model.eval()
    batch_loss(model, loss_fn, x, y, "mean").backward()
    g = {n: p.grad.clone() for n, p in model.named_parameters()}
    with pytest.warns(RuntimeWarning, match="no curvature"):
        pre.step()
    for n, p in model.named_parameters():
        assert_close(p.grad, g[n] / (1 + DAMPING), factor=4)
    assert pre.counters["missing_curvature"] == 2
    # The layers lack curvature, so the next (train-mode) step captures and refreshes.
    model.train()
    model.zero_grad()
    batch_loss(model, loss_fn, x, y, "mean").backward()
    pre.step()
    ps = per_sample_grads(model, loss_fn, x, y)
    check_block(model, layers, ps, full_grad(ps, "mean"), DAMPING)


class WithExtras(nn.Module):
    """A free parameter (unsupported) and a weight tied between two Linear modules (its own
    block: the sum of its gradients through both)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.head = nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        return self.head(torch.tanh(self.b(torch.tanh(self.a(x))))) * self.scale


def test_unsupported_parameters_get_damped_gradient():
    torch.manual_seed(0)
    model = WithExtras()
    x, y = torch.randn(7, 4), torch.randn(7, 2)
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=1)
    assert pre.unsupported_parameters() == ["scale"]
    batch_loss(model, mse, x, y, "mean").backward()
    g = {n: p.grad.clone() for n, p in model.named_parameters()}
    pre.step()
    assert_close(model.scale.grad, g["scale"] / (1 + DAMPING), factor=4)
    ps = per_sample_grads(model, mse, x, y)
    check_block(model, ["head"], ps, full_grad(ps, "mean"), DAMPING)
    # The tied weight is out of a's and b's blocks (they keep their biases) and forms its own.
    ref = full_grad(ps, "mean")
    for layer in ["a", "b"]:
        want, cond = dense_direction(ps, [f"{layer}.bias"], ref[f"{layer}.bias"], DAMPING)
        got = getattr(model, layer).bias.grad
        assert_close(got, want, factor=4 * 40 * cond)
    want, cond = dense_direction(ps, ["a.weight"], ref["a.weight"].reshape(-1), DAMPING)
    assert_close(model.a.weight.grad.reshape(-1), want, factor=4 * 40 * cond)


@pytest.mark.parametrize("positions, da, dg", [(4, 5, 3), (4, 3, 5), (1, 5, 3)])
@pytest.mark.parametrize("method", ["kronecker", "dense"])
def test_gram_methods_agree(method, positions, da, dg, monkeypatch):
    """Both Gram methods (and the chunked Kronecker loop) give the dense U^T U; the
    products through either factor (and the one-position path) give U g and U^T alpha."""
    import seng.cost as cost

    monkeypatch.setattr(cost, "GRAM_CHUNK_ELEMENTS", 50)  # forces several row chunks
    rng = np.random.default_rng(0)
    A = torch.from_numpy(rng.standard_normal((6, 2, positions, da)))
    G = torch.from_numpy(rng.standard_normal((6, 2, positions, dg)))
    rep = KroneckerFactors(A, G)
    U = torch.einsum("njtd,njte->njde", G, A).reshape(6, -1)
    gram, used = rep.gram(method)
    assert used == method
    assert_close(gram, U @ U.T, factor=4 * 4 * 5 * 3)
    g = torch.from_numpy(rng.standard_normal((2, dg, da)))
    alpha = torch.from_numpy(rng.standard_normal(6))
    for r in (rep, rep.to_dense()):
        assert_close(r.rmatvec(g), U @ g.reshape(-1), factor=4 * 40)
        assert_close(r.matvec(alpha).reshape(-1), alpha @ U, factor=4 * 40)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", ["mlp", "cnn", "grouped_dilated2d"])
def test_exact_on_cuda(name):
    """The same oracle comparison with the model and data on the GPU (float64)."""
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    model, x, y, loss_fn, layers = make_case(name, 7, gen)
    model, x, y = model.cuda(), x.cuda(), y.cuda()
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=1, curvature_batch=5)
    batch_loss(model, loss_fn, x, y, "mean").backward()
    pre.step()
    ps = per_sample_grads(model, loss_fn, x, y)
    check_block(model, layers, ps, full_grad(ps, "mean"), DAMPING,
                rows=pre.last_curvature_indices.cuda())
