"""Dense oracles for the seng extension tests: per-sample gradients by ``torch.func`` and
the SENG direction ``(U U^T + damping I)^{-1} g`` computed from them."""

from __future__ import annotations

import math

import torch
from torch.func import functional_call, grad, vmap

from helpers import assert_close


def per_sample_grads(model, loss_fn, x, y):
    """``{name: (N, *shape)}`` gradients of ``loss_fn(model(x_i), y_i)`` per sample."""
    train = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    rest = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad}
    buffers = dict(model.named_buffers())

    def loss_i(p, xi, yi):
        out = functional_call(model, ({**rest, **p}, buffers), (xi[None],))
        return loss_fn(out, yi[None])

    return vmap(grad(loss_i), in_dims=(None, 0, 0))(train, x, y)


def batch_loss(model, loss_fn, x, y, reduction):
    """Mean or sum over the batch of the per-sample losses ``loss_fn(out_i, y_i)``."""
    out = model(x)
    per = torch.stack([loss_fn(out[i:i + 1], y[i:i + 1]) for i in range(x.shape[0])])
    return per.mean() if reduction == "mean" else per.sum()


def full_grad(ps, reduction):
    return {n: (v.mean(0) if reduction == "mean" else v.sum(0)) for n, v in ps.items()}


def dense_direction(U_rows, g, damping):
    """``((U U^T + damping I)^{-1} g, cond)`` with ``U = U_rows^T / sqrt(N)``."""
    U = U_rows.T / math.sqrt(U_rows.shape[0])
    K = U @ U.T + damping * torch.eye(U.shape[0], dtype=U.dtype)
    w = torch.linalg.eigvalsh(K)
    return torch.linalg.solve(K, g), float(w[-1] / w[0])


def block_rows(ps, names):
    return torch.cat([ps[n].reshape(ps[n].shape[0], -1) for n in names], dim=1)


def check_layers(model, layers, ps, g_ref, damping):
    """Every listed module's ``p.grad`` (after ``pre.step()``) against the dense oracle,
    weight and bias of a module forming one block."""
    params = dict(model.named_parameters())
    for layer in layers:
        names = [n for n in params if n.rsplit(".", 1)[0] == layer and n in ps]
        g = torch.cat([g_ref[n].reshape(-1) for n in names])
        want, cond = dense_direction(block_rows(ps, names), g, damping)
        got = torch.cat([params[n].grad.reshape(-1) for n in names])
        # SENG's Woodbury form d = (g - U alpha) / damping cancels U alpha against g: its
        # roundings are relative to |g| / damping, which exceeds |d| where curvature dominates.
        check_direction(got, want, cond, g.numel(),
                        scale=max(float(want.abs().max()), float(g.abs().max()) / damping))


def check_direction(got, want, cond, p, scale=None):
    # The Gram sums p products per entry and the N x N Cholesky adds ~N more roundings, each
    # relative to ||K||; the solve amplifies them by cond(K) (Higham, Thm 10.4); N <= 32.
    # ``scale``: the magnitude the roundings are relative to (default: the largest |want|).
    scale = float(want.abs().max()) if scale is None else scale
    assert_close(got, want, factor=4 * (p + 32) * cond, scale=scale)
