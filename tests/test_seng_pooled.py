"""Curvature pooled over recent batches (``curvature_memory``) against a dense oracle: after
each refresh every layer's ``p.grad`` must be ``(U U^T + damping I)^{-1} g`` with
``U = [U_1, ..., U_k] / sqrt(k)``, ``U_j`` the ``torch.func`` per-sample gradients of batch
``j`` at the parameters of its own step over ``sqrt(N_j)``, and ``g`` the current batch's."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from test_seng_exact import batch_loss, full_grad, make_case, per_sample_grads
from torch import nn

from helpers import assert_close
from seng import SENG, SENGPreconditioner
from seng.persample import DenseGrads, EmbeddingGrads, KroneckerFactors, PerSampleGrads

DAMPING = 0.3

pytestmark = [pytest.mark.usefixtures("float64")]


def tokens_case(n, gen):
    """An embedding and a Linear over ``(N, T)`` tokens, the sequence length ``T`` free."""
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3))

    def loss_fn(out, y):
        return ((out - y) ** 2).sum()

    def batch(t):
        return (torch.randint(0, 10, (n, t), generator=gen),
                torch.randn(n, t, 3, generator=gen))

    return model, batch, loss_fn, ["0", "1"]


def pooled_direction(batches, names, g, damping):
    """The oracle: ``batches`` holds each pooled batch's per-sample gradients."""
    cols = [torch.cat([ps[n].reshape(ps[n].shape[0], -1) for n in names], dim=1).T
            / math.sqrt(ps[names[0]].shape[0]) for ps in batches]
    U = torch.cat(cols, dim=1) / math.sqrt(len(batches))
    K = U @ U.T + damping * torch.eye(U.shape[0])
    w = torch.linalg.eigvalsh(K)
    return torch.linalg.solve(K, g), float(w[-1] / w[0])


def check_pooled(model, layers, batches, g_ref, damping):
    params = dict(model.named_parameters())
    for layer in layers:
        names = [n for n in params if n.rsplit(".", 1)[0] == layer]
        g = torch.cat([g_ref[n].reshape(-1) for n in names])
        want, cond = pooled_direction(batches, names, g, damping)
        got = torch.cat([params[n].grad.reshape(-1) for n in names])
        # As test_seng_exact.check_block, with the Woodbury form's cancellation of U alpha
        # against g (roundings relative to |g| / damping), and up to 3 x 9 samples.
        assert_close(got, want, factor=4 * (g.numel() + 32) * cond,
                     scale=max(float(want.abs().max()), float(g.abs().max()) / damping))


def refresh(model, pre, loss_fn, x, y):
    """One refreshing step at the current parameters; the batch's per-sample gradients."""
    model.zero_grad()
    batch_loss(model, loss_fn, x, y, "mean").backward()
    pre.step()
    return per_sample_grads(model, loss_fn, x, y)


def perturb(model, gen):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("memory", [2, 3])
@pytest.mark.parametrize("name", ["mlp", "cnn", "conv1d", "tokens"])
def test_pooled_against_dense_oracle(name, memory):
    """``memory + 1`` refreshes at moving parameters with batches of 7, 5, 9 and 6 samples:
    the pool fills, then drops its oldest batch."""
    gen = torch.Generator().manual_seed(3 + memory)
    model, _, _, loss_fn, layers = make_case(name, 1, gen)
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=1, curvature_memory=memory)
    seen = []
    for n in (7, 5, 9, 6)[:memory + 1]:
        _, x, y, _, _ = make_case(name, n, gen)  # data only: the model is the first one
        ps = refresh(model, pre, loss_fn, x, y)
        seen.append(ps)
        pooled = seen[-memory:]
        check_pooled(model, layers, pooled, full_grad(ps, "mean"), DAMPING)
        for r in pre.layer_info():
            assert r["last"]["pooled_batches"] == len(pooled)
            assert r["last"]["samples"] == sum(next(iter(p.values())).shape[0] for p in pooled)
        perturb(model, gen)


def test_embedding_pool_restarts_on_a_new_sequence_length():
    """The embedding's store holds ``T`` positions per sample, so a batch of another length
    starts its pool again; the token-wise Linear's store (materialized ``p``-vectors) does
    not depend on ``T`` and keeps pooling."""
    gen = torch.Generator().manual_seed(11)
    model, batch, loss_fn, _ = tokens_case(6, gen)
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=1, curvature_memory=2)
    emb, lin = [], []
    for t, restart in ((3, True), (3, False), (4, True), (4, False)):
        ps = refresh(model, pre, loss_fn, *batch(t))
        emb = ([] if restart else emb) + [ps]
        lin = [*lin[-1:], ps]
        check_pooled(model, ["0"], emb, full_grad(ps, "mean"), DAMPING)
        check_pooled(model, ["1"], lin, full_grad(ps, "mean"), DAMPING)
        rows = pre.layer_info()
        assert [r["last"]["pooled_batches"] for r in rows] == [len(emb), len(lin)]
        assert [r["last"]["store"] for r in rows] == ["embedding", "dense"]
        perturb(model, gen)


def test_overflowing_curvature_leaves_the_pool_untouched():
    """One sample scaled by 1e160 overflows layer 0's Gram (its gradient stays finite): that
    refresh is skipped and layer 0 pools the next batch with the last finite one, while
    layer 2 (tanh inputs, finite Gram) pools the scaled batch."""
    gen = torch.Generator().manual_seed(5)
    model, x, y, loss_fn, _ = make_case("mlp", 8, gen)
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=1, curvature_memory=2)
    first = refresh(model, pre, loss_fn, x, y)
    big = x.clone()
    big[2] *= 1e160
    with pytest.warns(RuntimeWarning, match="curvature of layer '0': update skipped"):
        scaled = refresh(model, pre, loss_fn, big, y)
    assert pre.counters["skipped_updates"] == 1
    _, x3, y3, _, _ = make_case("mlp", 8, gen)
    ps = refresh(model, pre, loss_fn, x3, y3)
    check_pooled(model, ["0"], [first, ps], full_grad(ps, "mean"), DAMPING)
    check_pooled(model, ["2"], [scaled, ps], full_grad(ps, "mean"), DAMPING)


def train(model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def test_resume_continues_the_pool_exactly():
    """A run saved after two steps and resumed (through torch.save) matches the
    uninterrupted run bit for bit: the pool's earlier batches travel in the state."""
    gen = torch.Generator().manual_seed(2)
    data = [(torch.randn(10, 6, generator=gen), torch.randint(0, 3, (10,), generator=gen))
            for _ in range(4)]

    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        return model, SENG(model, lr=0.1, update_freq=1, curvature_memory=3)

    model, opt = build()
    train(model, opt, data)
    want = [p.detach().clone() for p in model.parameters()]

    model, opt = build()
    train(model, opt, data[:2])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    model, opt = build()
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    train(model, opt, data[2:])
    for p, w in zip(model.parameters(), want, strict=True):
        assert torch.equal(p, w)
    rows = opt.preconditioner.layer_info()
    assert [r["last"]["pooled_batches"] for r in rows] == [3, 3]


def test_memory_counts_the_pooled_stores():
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    pre = SENGPreconditioner(model, update_freq=1, curvature_memory=2)
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    for _ in range(2):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        pre.step()
    for layer, row in zip(pre._layers, pre.layer_info(), strict=True):
        held = (layer.curvature.nbytes + layer.recent[0].nbytes
                + layer.recent_gram.numel() * layer.recent_gram.element_size())
        assert row["memory_bytes"] == held and len(layer.recent) == 1
        assert layer.recent_gram.shape == (5, 5)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2", None])
def test_invalid_memory_is_refused(value):
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="curvature_memory"):
        SENGPreconditioner(model, curvature_memory=value)


def test_memory_needs_the_exact_route():
    """Pooling sketched Grams is undefined (each batch's sketch differs): refused at 2,
    accepted at 1, and named per layer for a route override."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    SENGPreconditioner(model, sketch="countsketch", curvature_memory=1)
    with pytest.raises(ValueError, match="exact route on every layer; not exact: 0, 2"):
        SENGPreconditioner(model, sketch="countsketch", curvature_memory=2)
    with pytest.raises(ValueError, match=r"not exact: 2$"):
        SENGPreconditioner(model, routes={"2": "lowrank"}, curvature_memory=2)
    SENGPreconditioner(model, routes={"2": "exact"}, curvature_memory=2)


def test_memory_is_refused_by_seng_distributed():
    """A pool over processes is not built yet: refused at 2 (no process group needed to
    construct), accepted at 1."""
    from seng.distributed import DistributedSENGPreconditioner

    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    DistributedSENGPreconditioner(model, curvature_memory=1)
    with pytest.raises(ValueError, match=r"curvature_memory: 2 is not available with "
                                         r"seng\.distributed"):
        DistributedSENGPreconditioner(model, curvature_memory=2)


def _stores(kind, n, gen):
    """A store of ``kind`` with ``n`` samples and a fixed layout (float64)."""
    if kind == "dense":
        return DenseGrads(torch.randn(n, 7, generator=gen), (7,))
    if kind.startswith("kronecker"):
        groups, t = (2, 3) if kind == "kronecker-grouped" else (1, 1)
        return KroneckerFactors(torch.randn(n, groups, t, 4, generator=gen),
                                torch.randn(n, groups, t, 5, generator=gen))
    return EmbeddingGrads(torch.randint(0, 6, (n, 3), generator=gen),
                          torch.randn(n, 3, 4, generator=gen), 6)


@pytest.mark.parametrize("method", ["kronecker", "dense"])
@pytest.mark.parametrize("kind", ["dense", "kronecker", "kronecker-grouped", "embedding"])
def test_cross_gram_against_materialized_gradients(kind, method, monkeypatch):
    """U^T V of two stores of one layout (5 and 3 samples) equals the product of their
    materialized per-sample gradients, by either Gram method of the Kronecker factors."""
    import seng.persample

    monkeypatch.setattr(seng.persample, "choose_gram_method",
                        lambda costs: method if method in costs else next(iter(costs)))
    gen = torch.Generator().manual_seed(4)
    a, b = _stores(kind, 5, gen), _stores(kind, 3, gen)
    want = a.to_dense().rows @ b.to_dense().rows.T
    got = a.cross_gram(b)
    assert got.shape == (5, 3)
    assert_close(got, want, factor=64, scale=float(want.abs().max()))
    with pytest.raises(ValueError, match="another layout"):
        PerSampleGrads.cross_gram(a, _stores("dense" if kind != "dense" else "embedding", 3,
                                             gen))
