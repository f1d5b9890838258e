"""``nn.MultiheadAttention`` (with its ``out_proj``) against the dense oracle: per-sample
gradients by ``torch.func`` (or, with attention dropout, by one backward per sample through
the batched forward), the SENG direction ``(U U^T + damping I)^{-1} g`` of the block, for
packed and separate projections, ``bias_k``/``bias_v``, ``add_zero_attn``, masks,
``is_causal``, a loss on the attention weights, and ``batch_first`` either way."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from seng_oracle import check_direction, dense_direction
from torch import nn
from torch.func import functional_call, grad, vmap

from seng import SENGPreconditioner

pytestmark = [pytest.mark.usefixtures("float64"),
              pytest.mark.filterwarnings("ignore:There is a performance drop")]  # vmap of SDPA

DAMPING = 0.3
N, L, S, E = 6, 5, 4, 8


class Attend(nn.Module):
    """Attention then a Linear head on the mean over positions; ``call`` holds the keyword
    arguments of the attention call, ``weights_loss`` adds a loss on the attention weights."""

    def __init__(self, attn, call=None, weights_loss=False):
        super().__init__()
        self.attn = attn
        self.head = nn.Linear(attn.embed_dim, 3)
        self.call = call or {}
        self.weights_loss = weights_loss

    def forward(self, q, kv, kpm=None):
        extra = {} if kpm is None else {"key_padding_mask": kpm}
        out, w = self.attn(q, kv, kv, **extra, **self.call)
        seq = 1 if self.attn.batch_first or q.dim() == 2 else 0
        logits = self.head(out.mean(seq))
        if self.weights_loss:  # the gradient also flows in through the weights
            logits = logits + weights_term(w, logits.shape[0])
        return logits


def weights_term(w, n):
    """A term on the first logit from the attention weights of each of the ``n`` samples (the
    weights of a row sum to one: squares, so that the gradient is not zero)."""
    return F.pad(w.reshape(n, -1).square().sum(-1, keepdim=True), (0, 2))


def losses(model, q, kv, y, kpm=None):
    return F.cross_entropy(model(q, kv, kpm), y, reduction="none")


def func_grads(model, q, kv, y, kpm=None):
    """Per-sample gradients by torch.func: vmap over the sample dimension of every input."""
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    frozen = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad}
    dim = 0 if model.attn.batch_first else 1

    def loss_i(p, qi, kvi, yi, kpmi):
        qi, kvi = qi.unsqueeze(dim), kvi.unsqueeze(dim)
        kpmi = None if kpmi is None else kpmi[None]
        out = functional_call(model, {**frozen, **p}, (qi, kvi, kpmi))
        return F.cross_entropy(out, yi[None])

    in_dims = (None, dim, dim, 0, None if kpm is None else 0)
    return vmap(grad(loss_i), in_dims=in_dims)(params, q, kv, y, kpm)


def check_block(model, ps, names, reduction="mean"):
    """``p.grad`` of the block ``names`` (after ``pre.step()``) against the dense direction."""
    params = dict(model.named_parameters())
    rows = torch.cat([ps[n].reshape(N, -1) for n in names], dim=1)
    g = rows.mean(0) if reduction == "mean" else rows.sum(0)
    want, cond = dense_direction(rows, g, DAMPING)
    got = torch.cat([params[n].grad.reshape(-1) for n in names])
    check_direction(got, want, cond, g.numel())


def data(batch_first, kdim=E, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape_q, shape_kv = ((N, L, E), (N, S, kdim)) if batch_first else ((L, N, E), (S, N, kdim))
    return (torch.randn(shape_q, generator=g), torch.randn(shape_kv, generator=g),
            torch.randint(0, 3, (N,), generator=g))


def attention_names(model):
    return [n for n, p in model.named_parameters() if n.startswith("attn.") and p.requires_grad]


def run(model, q, kv, y, kpm=None, **options):
    pre = SENGPreconditioner(model, damping=DAMPING, strict=True, **options)
    assert pre.uncovered_parameters() == {}
    losses(model, q, kv, y, kpm).mean().backward()
    pre.step()
    return pre


@pytest.mark.parametrize("batch_first", [True, False])
def test_packed_self_attention_with_masks(batch_first):
    """Packed in_proj, key padding mask and a 2-D attention mask given as keywords, no
    weights: the block (in_proj_weight, in_proj_bias, out_proj) exact."""
    torch.manual_seed(0)
    model = Attend(nn.MultiheadAttention(E, 2, batch_first=batch_first),
                   {"attn_mask": torch.triu(torch.ones(L, L, dtype=torch.bool), 2),
                    "need_weights": False})
    x, _, y = data(batch_first)
    kpm = torch.zeros(N, L, dtype=torch.bool)
    kpm[1, -2:] = True
    kpm[4, -1] = True
    ps = func_grads(model, x, x, y, kpm)
    pre = run(model, x, x, y, kpm)
    assert [r["name"] for r in pre.layer_info()] == ["attn", "head"]
    names = attention_names(model)
    assert names == ["attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
                     "attn.out_proj.bias"]
    check_block(model, ps, names)
    check_block(model, ps, ["head.weight", "head.bias"])


@pytest.mark.parametrize("batch_first", [True, False])
def test_separate_projections_bias_kv_zero_attn_and_weights_loss(batch_first):
    """kdim, vdim != embed_dim (separate q/k/v_proj_weight), bias_k/bias_v, add_zero_attn, a
    per-head 3-D float mask, and a loss on the per-head attention weights."""
    torch.manual_seed(1)
    attn = nn.MultiheadAttention(E, 2, kdim=5, vdim=5, add_bias_kv=True, add_zero_attn=True,
                                 batch_first=batch_first)
    g = torch.Generator().manual_seed(5)
    mask = 0.3 * torch.randn(N * 2, L, S, generator=g)
    model = Attend(attn, {"attn_mask": mask, "average_attn_weights": False},
                   weights_loss=True)
    q, kv, y = data(batch_first, kdim=5, seed=1)
    # The torch.func oracle calls the model on one sample: give it that sample's mask rows.
    params = {k: v.detach() for k, v in model.named_parameters()}
    dim = 0 if batch_first else 1

    def loss_i(p, qi, kvi, yi, mi):
        call = {"attn_mask": mi, "average_attn_weights": False}
        out, w = functional_call(model.attn, {k[5:]: v for k, v in p.items()
                                              if k.startswith("attn.")},
                                 (qi.unsqueeze(dim), kvi.unsqueeze(dim), kvi.unsqueeze(dim)),
                                 call)
        logits = functional_call(model.head, {k[5:]: v for k, v in p.items()
                                              if k.startswith("head.")}, (out.mean(1 - dim),))
        logits = logits + weights_term(w, 1)
        return F.cross_entropy(logits, yi[None])

    ps = vmap(grad(loss_i), in_dims=(None, dim, dim, 0, 0))(params, q, kv, y,
                                                            mask.reshape(N, 2, L, S))
    run(model, q, kv, y)
    names = attention_names(model)
    assert names == ["attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight",
                     "attn.in_proj_bias", "attn.bias_k", "attn.bias_v", "attn.out_proj.weight",
                     "attn.out_proj.bias"]
    check_block(model, ps, names)


def test_causal_hint_and_frozen_parameters():
    """is_causal with its mask (SDPA's causal path), in_proj_bias and out_proj.bias frozen:
    the rest of the block exact, the frozen ones untouched."""
    torch.manual_seed(2)
    mask = nn.Transformer.generate_square_subsequent_mask(L)
    model = Attend(nn.MultiheadAttention(E, 4, batch_first=True),
                   {"attn_mask": mask, "is_causal": True, "need_weights": False})
    model.attn.in_proj_bias.requires_grad_(False)
    model.attn.out_proj.bias.requires_grad_(False)
    x, _, y = data(True, seed=2)
    ps = func_grads(model, x, x, y)
    run(model, x, x, y)
    assert model.attn.in_proj_bias.grad is None
    check_block(model, ps, ["attn.in_proj_weight", "attn.out_proj.weight"])


def test_unbatched_call_is_one_sample():
    """An unbatched query (L, E) is one sample: the Gram is 1 x 1 and the direction exact."""
    torch.manual_seed(3)
    attn = nn.MultiheadAttention(E, 2)
    x = torch.randn(L, E)
    pre = SENGPreconditioner(attn, damping=DAMPING, loss_reduction="sum")
    out, _ = attn(x, x, x)
    out.square().sum().backward()
    u = torch.cat([p.grad.reshape(-1).clone() for p in attn.parameters()])
    pre.step()
    got = torch.cat([p.grad.reshape(-1) for p in attn.parameters()])
    want, cond = dense_direction(u[None], u, DAMPING)
    check_direction(got, want, cond, u.numel())
    assert pre.layer_info()[0]["last"]["samples"] == 1


def test_dropout_mask_is_replayed():
    """Attention dropout in training: the recomputation draws the same mask. Oracle: one
    backward per sample through the same batched forward (same random state)."""
    torch.manual_seed(4)
    model = Attend(nn.MultiheadAttention(E, 2, dropout=0.5, batch_first=True))
    x, _, y = data(True, seed=4)
    params = dict(model.named_parameters())
    torch.manual_seed(10)
    per = losses(model, x, x, y)
    rows = [torch.autograd.grad(per[i], list(params.values()), retain_graph=True)
            for i in range(N)]
    ps = {n: torch.stack([r[j] for r in rows]) for j, n in enumerate(params)}
    for p in params.values():
        p.grad = None
    pre = SENGPreconditioner(model, damping=DAMPING, strict=True)
    torch.manual_seed(10)
    losses(model, x, x, y).mean().backward()
    state = torch.get_rng_state()
    pre.step()
    assert torch.equal(torch.get_rng_state(), state)  # the replay leaves the stream alone
    check_block(model, ps, attention_names(model))


def test_dropout_with_curvature_subset_is_refused():
    model = Attend(nn.MultiheadAttention(E, 2, dropout=0.1, batch_first=True))
    x, _, y = data(True)
    pre = SENGPreconditioner(model, damping=DAMPING, curvature_batch=N - 1)
    losses(model, x, x, y).mean().backward()
    with pytest.raises(ValueError, match=r"dropout: the curvature needs every sample .* 5 of 6"):
        pre.step()


def test_transformer_layer_batch_first_false_self_attention_exact():
    """The default (sequence-first) TransformerEncoderLayer: its self_attn block is exact too
    (the attention reads batch_first from the module, whatever sample_dim is inferred)."""
    torch.manual_seed(5)
    model = nn.Sequential()
    model.add_module("layer", nn.TransformerEncoderLayer(E, 2, dim_feedforward=12, dropout=0.0))
    x = torch.randn(L, N, E, generator=torch.Generator().manual_seed(6))
    params = {k: v.detach() for k, v in model.named_parameters()}
    target = torch.randn(L, N, E, generator=torch.Generator().manual_seed(7))

    def loss_i(p, xi, ti):
        return (functional_call(model, p, (xi[:, None],))[:, 0] - ti).square().sum()

    ps = vmap(grad(loss_i), in_dims=(None, 1, 1))(params, x, target)
    pre = SENGPreconditioner(model, damping=DAMPING, strict=True, loss_reduction="sum")
    (model(x) - target).square().sum().backward()
    pre.step()
    assert "layer.self_attn" in [r["name"] for r in pre.layer_info()]
    check_block(model, ps, [f"layer.self_attn.{n}" for n in
                            ("in_proj_weight", "in_proj_bias", "out_proj.weight",
                             "out_proj.bias")], "sum")


def test_curvature_subset_with_per_head_mask():
    """curvature_batch < N without dropout: the recorded rows (their per-head 3-D mask rows
    and key padding rows too) give U of the kept samples exactly."""
    torch.manual_seed(6)
    g = torch.Generator().manual_seed(8)
    mask = 0.5 * torch.randn(N * 2, L, L, generator=g)
    model = Attend(nn.MultiheadAttention(E, 2, batch_first=True), {"attn_mask": mask})
    x, _, y = data(True, seed=6)
    kpm = torch.zeros(N, L)  # float, like the attention mask
    kpm[2, -2:] = float("-inf")
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_i(p, xi, yi, mi, ki):  # the sample's own mask rows (heads, L, L)
        sub = {k[5:]: v for k, v in p.items() if k.startswith("attn.")}
        out, _ = functional_call(model.attn, sub, (xi[None], xi[None], xi[None]),
                                 {"attn_mask": mi, "key_padding_mask": ki[None]})
        head = {k[5:]: v for k, v in p.items() if k.startswith("head.")}
        return F.cross_entropy(functional_call(model.head, head, (out.mean(1),)), yi[None])

    ps = vmap(grad(loss_i), in_dims=(None, 0, 0, 0, 0))(params, x, y,
                                                         mask.reshape(N, 2, L, L), kpm)
    pre = SENGPreconditioner(model, damping=DAMPING, curvature_batch=4, strict=True)
    losses(model, x, x, y, kpm).mean().backward()
    pre.step()
    kept = pre.last_curvature_indices
    assert kept is not None and len(kept) == 4
    names = attention_names(model)
    rows = torch.cat([ps[n][kept].reshape(4, -1) for n in names], dim=1)
    g_full = torch.cat([ps[n].reshape(N, -1) for n in names], dim=1).mean(0)
    want, cond = dense_direction(rows, g_full, DAMPING)
    got = torch.cat([dict(model.named_parameters())[n].grad.reshape(-1) for n in names])
    check_direction(got, want, cond, g_full.numel())


def test_accumulated_micro_batches_replay_each_call_dropout():
    """Two micro-batches with dropout: each recorded call replays its own random state.
    Oracle: one backward per sample through each micro-batch's forward."""
    torch.manual_seed(7)
    model = Attend(nn.MultiheadAttention(E, 2, dropout=0.3, batch_first=True))
    x, _, y = data(True, seed=7)
    params = dict(model.named_parameters())
    halves = [slice(0, N // 2), slice(N // 2, N)]
    rows = []
    torch.manual_seed(11)
    for h in halves:
        per = losses(model, x[h], x[h], y[h])
        rows += [torch.autograd.grad(per[i], list(params.values()), retain_graph=True)
                 for i in range(per.shape[0])]
    ps = {n: torch.stack([r[j] for r in rows]) for j, n in enumerate(params)}
    pre = SENGPreconditioner(model, damping=DAMPING, accumulation_steps=2, strict=True)
    torch.manual_seed(11)
    for h in halves:  # each micro-batch's mean over the k micro-batches: the batch mean
        (losses(model, x[h], x[h], y[h]).mean() / 2).backward()
    pre.step()
    check_block(model, ps, attention_names(model))
