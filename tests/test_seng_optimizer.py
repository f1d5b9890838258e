"""The ``SENG`` optimizer: a real ``torch.optim.Optimizer``, equal to preconditioner + SGD,
bitwise reproducible through ``state_dict``, and faster than SGD on an ill-conditioned
problem."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from helpers import assert_close
from seng import SENG, SENGPreconditioner


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def batches(count, n=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g))
            for _ in range(count)]


def loss_of(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


def test_is_a_torch_optimizer_with_schedulers_and_closure():
    model = mlp()
    opt = SENG(model, lr=0.1, momentum=0.5, weight_decay=1e-3)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.defaults == {"lr": 0.1, "momentum": 0.5, "weight_decay": 1e-3}
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == 4
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for x, y in batches(2):
        def closure(x=x, y=y):
            opt.zero_grad()
            loss = loss_of(model, x, y)
            loss.backward()
            return loss

        loss = opt.step(closure)
        assert isinstance(loss, torch.Tensor)
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)
    assert opt.preconditioner.step_count == 2


def test_equals_preconditioner_plus_sgd():
    """SENG = (weight decay added to g) -> precondition -> SGD momentum, per step."""
    a, b = mlp(), mlp()
    opt_a = SENG(a, lr=0.2, momentum=0.9, weight_decay=0.01, damping=0.5, update_freq=2)
    pre_b = SENGPreconditioner(b, damping=0.5, update_freq=2)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.2, momentum=0.9)
    for x, y in batches(5):
        opt_a.zero_grad()
        loss_of(a, x, y).backward()
        grads_a = [p.grad.clone() for p in a.parameters()]
        opt_a.step()
        assert all(torch.equal(g, p.grad) for g, p in zip(grads_a, a.parameters(), strict=True))
        opt_b.zero_grad()
        loss_of(b, x, y).backward()
        for p in b.parameters():
            p.grad.add_(p, alpha=0.01)
        pre_b.step()
        opt_b.step()
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            assert_close(pa, pb, factor=8)


def run_steps(model, opt, pre, data):
    out = []
    for x, y in data:
        opt.zero_grad()
        loss_of(model, x, y).backward()
        if pre is not None:
            pre.step()
        opt.step()
        out.append([p.detach().clone() for p in model.parameters()])
    return out


@pytest.mark.parametrize("kind", ["seng", "preconditioner"])
def test_state_dict_round_trip_is_bitwise(kind):
    """A run resumed from a checkpoint takes bitwise the same steps (sketches, subsampling
    and stale curvature included), also when the resumed optimizer is built with another
    ``rng``: the checkpoint's seed replaces it (a lost seed would change every sketch)."""
    options = {"damping": 0.3, "update_freq": 3, "sketch": "countsketch", "sketch_size": 12,
               "curvature_batch": 6}
    data = batches(9)

    def build(model, rng=7):
        if kind == "seng":
            return SENG(model, lr=0.1, rng=rng, **options), None
        pre = SENGPreconditioner(model, rng=rng, **options)
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), pre

    model = mlp()
    opt, pre = build(model)
    run_steps(model, opt, pre, data[:4])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                "pre": None if pre is None else pre.state_dict()}, buffer)
    expected = run_steps(model, opt, pre, data[4:])

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed = mlp(seed=99)  # different initial weights, overwritten by the checkpoint
    resumed.load_state_dict(saved["model"])
    opt2, pre2 = build(resumed, rng=8)
    opt2.load_state_dict(saved["opt"])
    if pre2 is not None:
        pre2.load_state_dict(saved["pre"])
    got = run_steps(resumed, opt2, pre2, data[4:])
    for step_a, step_b in zip(expected, got, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(step_a, step_b, strict=True))


def test_load_state_dict_rejects_foreign_state():
    model = mlp()
    opt = SENG(model, lr=0.1)
    plain = torch.optim.SGD(model.parameters(), lr=0.1).state_dict()
    with pytest.raises(ValueError, match="'seng'"):
        opt.load_state_dict(plain)
    other = SENGPreconditioner(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="layers"):
        opt.preconditioner.load_state_dict(other.state_dict())


def ill_conditioned(seed):
    """Classification with feature scales over three decades (the teacher compensates,
    so small features matter as much as large ones)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-2.5, 0.5, 20)
    X = torch.randn(256, 20, generator=g) * scales
    y = (X @ (torch.randn(20, 4, generator=g) / scales[:, None])).argmax(1)
    return X, y


def train(make_opt, X, y, steps=40):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 4))
    opt = make_opt(model)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            losses.append(float(nn.functional.cross_entropy(model(X), y)))
    return losses


@pytest.mark.parametrize("seed", [0, 1])
def test_fewer_steps_than_tuned_sgd(seed):
    """SGD (momentum 0.9, cosine schedule) gets its best learning rate from a grid; SENG
    (damping 0.1, curvature every step) uses the same learning rate and schedule and must
    reach SGD's final training loss in at most half the steps."""
    X, y = ill_conditioned(seed)
    sgd = {lr: train(lambda m, lr=lr: torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9),
                     X, y) for lr in (0.03, 0.1, 0.3, 1.0, 3.0)}
    lr = min(sgd, key=lambda r: sgd[r][-1])
    seng = train(lambda m: SENG(m, lr=lr, momentum=0.9, damping=0.1, update_freq=1), X, y)
    reached = [k for k, v in enumerate(seng) if v <= sgd[lr][-1]]
    assert reached and reached[0] < len(seng) // 2


def test_step_not_taken_leaves_no_curvature_behind():
    # GradScaler skips step() on an overflow; zero_grad() before the next forward must drop
    # that batch's captured activations, so the next step sees only its own batch.
    torch.manual_seed(0)
    x1, x2 = torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)
    y = torch.randn(8, 3, dtype=torch.float64)

    def run(skip_first: bool) -> list[torch.Tensor]:
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
        opt = SENG(model, lr=0.1, momentum=0.0, damping=0.5, update_freq=1)
        if skip_first:
            opt.zero_grad()
            nn.functional.mse_loss(model(x1), y).backward()  # step not taken
        opt.zero_grad()
        nn.functional.mse_loss(model(x2), y).backward()
        opt.step()
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(run(True), run(False), strict=True):
        assert torch.equal(a, b)


def test_zero_grad_between_forward_and_backward_keeps_the_curvature():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    opt = SENG(model, lr=0.1, damping=0.5, update_freq=1)
    loss = nn.functional.mse_loss(model(torch.randn(8, 5, dtype=torch.float64)),
                                  torch.randn(8, 3, dtype=torch.float64))
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert opt.preconditioner.counters["curvature_updates"] >= 1


def test_sparse_gradients_step_as_preconditioner_plus_sgd():
    """A sparse gradient (nn.Embedding(sparse=True), preconditioned by the plain scaling)
    beside dense ones in the multi-tensor momentum and update."""
    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Embedding(12, 4, sparse=True), nn.Flatten(), nn.Linear(8, 3))

    a, b = build(), build()
    opt_a = SENG(a, lr=0.2, momentum=0.9, damping=0.5, update_freq=2)
    pre_b = SENGPreconditioner(b, damping=0.5, update_freq=2)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.2, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        x, y = torch.randint(0, 12, (10, 2), generator=g), torch.randint(0, 3, (10,), generator=g)
        for model, opt, pre in ((a, opt_a, None), (b, opt_b, pre_b)):
            opt.zero_grad()
            loss_of(model, x, y).backward()
            if pre is not None:
                pre.step()
            opt.step()
        assert a[0].weight.grad.is_sparse
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            assert_close(pa, pb, factor=8)
