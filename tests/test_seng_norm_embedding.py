"""Normalization and embedding layers: per-sample gradients and the exact SENG direction
against ``torch.func`` per-sample gradients (float64); train-mode BatchNorm and
``scale_grad_by_freq`` against the hook-defined per-sample contributions."""

from __future__ import annotations

import copy
import math

import numpy as np
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

import seng.cost as embedding_cost
from helpers import assert_close
from seng import SENGPreconditioner
from seng.layers import helper_for
from seng.persample import EmbeddingGrads
from seng.routes import ExactRoute

pytestmark = pytest.mark.usefixtures("float64")

DAMPING = 0.3


def ce(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="sum")


class TinyTransformer(nn.Module):
    """Token and position embeddings, pre-LN single-head attention and MLP on tokens,
    mean-pooled Linear head; a padding token and a LayerNorm without bias."""

    def __init__(self, vocab=7, d=8, t=5, classes=3):
        super().__init__()
        self.tok = nn.Embedding(vocab, d, padding_idx=0)
        self.pos = nn.Embedding(t, d)
        self.ln1 = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln2 = nn.LayerNorm(d, bias=False)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)
        self.head = nn.Linear(d, classes)

    def forward(self, idx):
        n, t = idx.shape
        h = self.tok(idx) + self.pos(torch.arange(t).expand(n, t))
        z = self.ln1(h)
        att = torch.softmax(self.q(z) @ self.k(z).transpose(1, 2) / math.sqrt(z.shape[-1]), -1)
        h = h + self.o(att @ self.v(z))
        h = h + self.fc2(torch.tanh(self.fc1(self.ln2(h))))
        return self.head(h.mean(dim=1))


TRANSFORMER_LAYERS = ["tok", "pos", "ln1", "q", "k", "v", "o", "ln2", "fc1", "fc2", "head"]


def make_case(name, n, gen):
    if name == "transformer":
        model = TinyTransformer()
        x = torch.randint(0, 7, (n, 5), generator=gen)  # small vocab: repeated tokens, pads
        return model, x, torch.randint(0, 3, (n,), generator=gen), TRANSFORMER_LAYERS
    # A CNN with GroupNorm (2 groups) and a LayerNorm over (C, H, W).
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Tanh(),
                          nn.Conv2d(4, 4, 3, stride=2), nn.LayerNorm([4, 3, 3]), nn.Tanh(),
                          nn.Flatten(), nn.Linear(36, 3))
    x = torch.randn(n, 2, 7, 7, generator=gen)
    return model, x, torch.randint(0, 3, (n,), generator=gen), ["0", "1", "3", "4", "7"]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("n", [1, 7, 32])
@pytest.mark.parametrize("name", ["transformer", "norm_cnn"])
def test_exact_against_per_sample_oracle(name, n, reduction):
    gen = torch.Generator().manual_seed(n + (0 if name == "transformer" else 1000))
    torch.manual_seed(n)
    model, x, y, layers = make_case(name, n, gen)
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=1, loss_reduction=reduction)
    assert {r["name"] for r in pre.layer_info()} == set(layers)
    assert pre.unsupported_parameters() == []
    batch_loss(model, ce, x, y, reduction).backward()
    pre.step()
    ps = per_sample_grads(model, ce, x, y)
    check_layers(model, layers, ps, full_grad(ps, reduction), DAMPING)


# -- BatchNorm -------------------------------------------------------------------------------
def record(model, names):
    """Drive the helpers' capture API by hand (the preconditioner only captures
    training-mode forwards): ``{name: (helper, [(payload, grad)])}``."""
    out = {}
    for name in names:
        module = model.get_submodule(name)
        helper, calls = helper_for(module), []

        def hook(m, inputs, output, helper=helper, calls=calls):
            rec = [helper.capture_forward(inputs, output), None]
            calls.append(rec)
            output.register_hook(lambda g: rec.__setitem__(1, helper.capture_grad(g)))

        module.register_forward_hook(hook)
        out[name] = (helper, calls)
    return out


def bn_cnn():
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                         nn.Unflatten(1, (3, 25)), nn.BatchNorm1d(3), nn.Flatten(),
                         nn.Linear(75, 4), nn.BatchNorm1d(4), nn.Tanh(),
                         nn.Unflatten(1, (1, 1, 2, 2)), nn.BatchNorm3d(1), nn.Flatten(),
                         nn.Linear(4, 3))


BN_LAYERS = ["1", "5", "8", "11"]  # BatchNorm2d, 1d on (N, C, L), 1d on (N, C), 3d


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("n", [1, 7, 32])
def test_batchnorm_eval_against_per_sample_oracle(n, reduction):
    torch.manual_seed(n)
    model = bn_cnn()
    model.train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            model(torch.randn(16, 2, 7, 7) * 2 + 1)
    model.eval()
    gen = torch.Generator().manual_seed(n)
    x, y = torch.randn(n, 2, 7, 7, generator=gen), torch.randint(0, 3, (n,), generator=gen)
    ps = per_sample_grads(model, ce, x, y)
    rec = record(model, BN_LAYERS)
    batch_loss(model, ce, x, y, reduction).backward()
    g_ref = full_grad(ps, reduction)
    scale = (n if reduction == "mean" else 1) / math.sqrt(n)
    for name, (helper, calls) in rec.items():
        rep = helper.per_sample(calls, ("weight", "bias"), scale)
        rows = block_rows(ps, [f"{name}.weight", f"{name}.bias"])
        # u_i sums <= 25 products per channel.
        assert_close(rep.rows, rows / math.sqrt(n), factor=4 * 25)
        g = {k: g_ref[f"{name}.{k}"] for k in ("weight", "bias")}
        curvature = ExactRoute(torch.float64).build(rep)
        d, _ = curvature.direction(helper.grads_to_block(g), DAMPING)
        got = torch.cat([t.reshape(-1) for t in helper.block_to_grads(d, ("weight",
                                                                          "bias")).values()])
        want, cond = dense_direction(rows, torch.cat(list(g.values())), DAMPING)
        check_direction(got, want, cond, got.numel())


def contributions(model, names, x, y, reduction):
    """Hook-defined per-sample contributions of train-mode BatchNorm parameters, by autograd:
    sample ``i`` gets its own copy ``w + dw_i``, ``b + db_i`` of the affine parameters
    (normalization by ``F.batch_norm`` with batch statistics), and
    ``d L / d dw_i = sum_p g_ip xhat_ip``."""
    model = copy.deepcopy(model)
    deltas = {}
    for name in names:
        m = model.get_submodule(name)
        shape = (x.shape[0], m.num_features)
        deltas[name] = (torch.zeros(shape, requires_grad=True),
                        torch.zeros(shape, requires_grad=True))

        def hook(m, inputs, output, dw=deltas[name][0], db=deltas[name][1]):
            xhat = F.batch_norm(inputs[0], None, None, training=True, eps=m.eps)
            expand = (*dw.shape, *([1] * (xhat.ndim - 2)))
            return (xhat * (m.weight + dw).reshape(expand) + (m.bias + db).reshape(expand))

        m.register_forward_hook(hook)
    batch_loss(model, ce, x, y, reduction).backward()
    return {name: torch.cat([dw.grad, db.grad], dim=1) for name, (dw, db) in deltas.items()}


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_batchnorm_train_mode_against_hook_defined_contributions(reduction):
    torch.manual_seed(0)
    model = bn_cnn()
    n = 9
    x, y = torch.randn(n, 2, 7, 7) * 3 + 1, torch.randint(0, 3, (n,))
    # per-sample losses l_i: the contributions of l = sum_i l_i (or the mean) times N.
    rows = contributions(model, BN_LAYERS, x, y, reduction)
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=1, loss_reduction=reduction)
    batch_loss(model, ce, x, y, reduction).backward()
    g = {name: torch.cat([model.get_submodule(name).weight.grad,
                          model.get_submodule(name).bias.grad]) for name in BN_LAYERS}
    for name in BN_LAYERS:  # the contributions add up to the batch gradient
        assert_close(rows[name].sum(0), g[name], factor=4 * n)
    pre.step()
    for name in BN_LAYERS:
        m = model.get_submodule(name)
        u = rows[name] * (n if reduction == "mean" else 1)  # gradients of l_i, not l_i / N
        want, cond = dense_direction(u, g[name], DAMPING)
        check_direction(torch.cat([m.weight.grad, m.bias.grad]), want, cond, u.shape[1])


# -- Embedding ---------------------------------------------------------------------------------
def embedding_case(n=6, t=4, v=5, d=3, seed=0):
    rng = np.random.default_rng(seed)
    idx = torch.from_numpy(rng.integers(0, v, (n, t)))
    G = torch.from_numpy(rng.standard_normal((n, t, d)))
    dense = torch.zeros(n, v, d).index_put_(
        (torch.arange(n)[:, None].expand(n, t), idx), G, accumulate=True).reshape(n, -1)
    return EmbeddingGrads(idx, G, v), dense


@pytest.mark.parametrize("method", ["pairs", "rows"])
def test_embedding_gram_methods_and_products(method, monkeypatch):
    monkeypatch.setattr(embedding_cost, "GRAM_CHUNK_ELEMENTS", 40)  # several row chunks
    rep, U = embedding_case()
    gram, used = rep.gram(method)
    assert used == method
    assert_close(gram, U @ U.T, factor=4 * 4 * 4 * 3)  # <= T^2 D products per entry
    rng = np.random.default_rng(1)
    g = torch.from_numpy(rng.standard_normal((5, 3)))
    alpha = torch.from_numpy(rng.standard_normal(6))
    assert_close(rep.rmatvec(g), U @ g.reshape(-1), factor=4 * 12)
    assert_close(rep.matvec(alpha).reshape(-1), alpha @ U, factor=4 * 24)
    assert_close(rep.to_dense().rows, U, factor=4 * 4)


@pytest.mark.parametrize(("v", "d", "size", "shape"), [
    (12, 6, 8, (1, 2, 2)),  # both sides sketched: Kronecker factors (groups, s_out, s_in)
    (12, 3, 12, (1, 3, 4)),  # D kept whole
    (4, 6, 16, (4, 4)),  # V kept whole: still row gradients, of shape (V, s_out)
])
def test_embedding_sketch_is_unbiased(v, d, size, shape):
    """``E[(S u_i)^T (S u_j)] = u_i^T u_j`` for the Kronecker sketch of the (V, D) block:
    the mean over 1000 seeds is within 5 standard errors (entrywise, empirical)."""
    rep, U = embedding_case(n=4, t=3, v=v, d=d, seed=2)
    rng = np.random.default_rng(3)
    assert rep.sketch("gaussian", size, rng).block_shape == shape
    grams = torch.stack([rep.sketch("gaussian", size, rng).gram()[0] for _ in range(1000)])
    se = grams.std(0) / math.sqrt(grams.shape[0])
    assert bool(((grams.mean(0) - U @ U.T).abs() <= 5 * se + 1e-12).all())


def test_embedding_scale_grad_by_freq_contributions():
    """With ``scale_grad_by_freq`` the per-sample rows are the contributions
    ``sum_t e_idx g_it / count(idx)``; they add up to the batch gradient."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(6, 3, scale_grad_by_freq=True), nn.Flatten(),
                          nn.Linear(12, 2))
    x, y = torch.randint(0, 6, (8, 4)), torch.randint(0, 2, (8,))
    rec = record(model, ["0"])
    batch_loss(model, ce, x, y, "sum").backward()
    helper, calls = rec["0"]
    rep = helper.per_sample(calls, ("weight",), 1.0)
    assert_close(rep.to_dense().rows.sum(0), model[0].weight.grad.reshape(-1), factor=4 * 32)


def test_sparse_embedding_is_not_a_block():
    model = nn.Sequential(nn.Embedding(6, 3, sparse=True), nn.Flatten(), nn.Linear(12, 2))
    pre = SENGPreconditioner(model)
    assert [r["name"] for r in pre.layer_info()] == ["2"]
    assert pre.unsupported_parameters() == ["0.weight"]


def test_state_dict_round_trip_with_embedding():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model, x, y, _ = make_case("transformer", 6, gen)
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=5)
    batch_loss(model, ce, x, y, "mean").backward()
    pre.step()
    state = copy.deepcopy(pre.state_dict())
    assert state["layers"]["tok"]["curvature"]["store"]["kind"] == "embedding"
    other = SENGPreconditioner(model, damping=DAMPING, update_freq=5)
    other.load_state_dict(state)
    g = {p: torch.randn_like(p) for p in model.parameters()}
    a, b = pre.precondition(g), other.precondition(g)
    for p in g:
        assert torch.equal(a[p], b[p])
