"""Mixed precision: bf16 autocast (CPU), GradScaler (CPU scaler, and fp16 on CUDA)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from seng_oracle import batch_loss, dense_direction, full_grad, per_sample_grads
from torch import nn

from helpers import assert_close
from seng import SENGPreconditioner

DAMPING = 0.5


def ce(out, y):
    return F.cross_entropy(out.float(), y, reduction="sum")


def make_model():
    """Conv, GroupNorm, Linear on tokens, LayerNorm, Embedding: every helper's upcast."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3, padding=1)
            self.gn = nn.GroupNorm(2, 4)
            self.tok = nn.Linear(4, 6)
            self.ln = nn.LayerNorm(6)
            self.emb = nn.Embedding(3, 6)
            self.head = nn.Linear(6, 3)

        def forward(self, x):
            h = torch.tanh(self.gn(self.conv(x)))  # (N, 4, 5, 5)
            h = self.ln(self.tok(h.flatten(2).transpose(1, 2)))  # 25 tokens of width 6
            h = h + self.emb(torch.arange(25, device=x.device).remainder(3).expand(x.shape[0], 25))
            return self.head(torch.tanh(h).mean(1))

    return Net()


LAYERS = ["conv", "gn", "tok", "ln", "emb", "head"]


def test_bf16_autocast_upcasts_and_matches_float64_direction():
    """Under CPU bf16 autocast the captured activations and gradients are bf16; the factors
    are upcast to float32 and the Gram solved in float64. The direction is compared with the
    float64 oracle of the same model without autocast, to a bf16 bound: each of the ~2 x 6
    rounded ops of the forward and backward perturbs U and g by <= eps_bf16 relative, and the
    solve amplifies relative perturbations of K and g by cond(K) (three such terms)."""
    torch.manual_seed(0)
    model = make_model()
    n = 8
    x, y = torch.randn(n, 2, 5, 5), torch.randint(0, 3, (n,))
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    batch_loss(lambda _: out, ce, x, y, "mean").backward()
    pre.step()
    for layer in pre._layers:
        assert layer.curvature.gram.dtype == torch.float64
        assert all(t.dtype == torch.float32 for t in layer.curvature.store.tensors().values()
                   if t.is_floating_point())
    got = {name: p.grad.clone() for name, p in model.named_parameters()}
    assert all(g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in got.values())

    model64 = make_model().double()
    model64.load_state_dict(model.state_dict())
    ps = per_sample_grads(model64, ce, x.double(), y)
    g_ref = full_grad(ps, "mean")
    params = dict(model.named_parameters())
    for layer in LAYERS:
        names = [k for k in params if k.rsplit(".", 1)[0] == layer]
        U = torch.cat([ps[k].reshape(n, -1) for k in names], dim=1)
        want, cond = dense_direction(U, torch.cat([g_ref[k].reshape(-1) for k in names]),
                                     DAMPING)
        d = torch.cat([got[k].reshape(-1) for k in names])
        assert_close(d, want, factor=3 * 12 * cond, dtype=torch.bfloat16,
                     scale=float(want.abs().max()))


def mlp():
    return nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 3))


def test_grad_scaler_unscales_captured_gradients_and_skips_overflow():
    """A CPU GradScaler: the hooks see the gradients of the scaled loss; with
    ``grad_scaler`` they are unscaled, so the direction is the unscaled run's (the scale is a
    power of two, so only the order of a few roundings differs). On an overflowed step the
    gradient stays non-finite, the curvature is kept, and the scaler skips the update."""
    torch.manual_seed(0)
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    ref_model = mlp()
    model = mlp()
    model.load_state_dict(ref_model.state_dict())

    ref = SENGPreconditioner(ref_model, damping=DAMPING, update_freq=1, solve_dtype=torch.float64)
    F.cross_entropy(ref_model(x), y).backward()
    ref.step()

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=1, grad_scaler=scaler)
    scaler.scale(F.cross_entropy(model(x), y)).backward()
    scaler.unscale_(opt)
    pre.step()
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert_close(p.grad, q.grad, factor=64)  # float32 roundings of the same quantities
    scaler.step(opt)
    scaler.update()

    grams = [layer.curvature.gram.clone() for layer in pre._layers]
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    scaler.scale(F.cross_entropy(model(x), y) * math.inf).backward()  # overflow
    scaler.unscale_(opt)
    with pytest.warns(RuntimeWarning, match="NaN/Inf in the gradient"):
        pre.step()
    scaler.step(opt)
    scaler.update()
    assert pre.counters["nonfinite_grads"] == len(pre._layers)
    assert all(torch.equal(g, layer.curvature.gram) for g, layer in zip(grams, pre._layers,
                                                                      strict=True))
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert scaler.get_scale() < 2.0**12


def test_grad_scaler_is_needed():
    """Without ``grad_scaler`` the captured gradients are 2^12 times too large (the Gram
    2^24), which the check above would catch."""
    torch.manual_seed(0)
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    model = mlp()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=1)
    scaler.scale(F.cross_entropy(model(x), y)).backward()
    scaler.unscale_(torch.optim.SGD(model.parameters(), lr=0.1))
    g = [p.grad.clone() for p in model.parameters()]
    pre.step()
    ratio = [float(p.grad.norm() / gi.norm()) for p, gi in zip(model.parameters(), g,
                                                                strict=True)]
    assert max(ratio) < 0.01  # (U U^T + lam I)^{-1} with U inflated 2^12 times


def test_bad_grad_scaler():
    with pytest.raises(TypeError, match="grad_scaler"):
        SENGPreconditioner(mlp(), grad_scaler=2.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_fp16_autocast_with_grad_scaler_cuda():
    """fp16 autocast and a CUDA GradScaler: the direction matches the float64 oracle to an
    fp16 bound (as for bf16 above, with eps_fp16)."""
    torch.manual_seed(0)
    model = make_model().cuda()
    n = 8
    x, y = torch.randn(n, 2, 5, 5, device="cuda"), torch.randint(0, 3, (n,), device="cuda")
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10)
    pre = SENGPreconditioner(model, damping=DAMPING, update_freq=1, grad_scaler=scaler)
    with torch.autocast("cuda", dtype=torch.float16):
        out = model(x)
    scaler.scale(batch_loss(lambda _: out, ce, x, y, "mean")).backward()
    scaler.unscale_(opt)
    pre.step()
    got = {k: p.grad.cpu() for k, p in model.named_parameters()}
    model64 = make_model().double()
    model64.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    ps = per_sample_grads(model64, ce, x.cpu().double(), y.cpu())
    g_ref = full_grad(ps, "mean")
    for layer in LAYERS:
        names = [k for k in got if k.rsplit(".", 1)[0] == layer]
        U = torch.cat([ps[k].reshape(n, -1) for k in names], dim=1)
        want, cond = dense_direction(U, torch.cat([g_ref[k].reshape(-1) for k in names]),
                                     DAMPING)
        d = torch.cat([got[k].reshape(-1) for k in names])
        assert_close(d, want, factor=3 * 12 * cond, dtype=torch.float16,
                     scale=float(want.abs().max()))
