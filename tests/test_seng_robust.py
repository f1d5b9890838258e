"""Robustness of the SENG preconditioner: bad arguments, NaN/Inf, odd batch sizes, the
update-norm cap, half precision and the registration report."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from helpers import assert_close
from seng import SENG, SENGPreconditioner
from seng.preconditioner import finite_flags
from seng.routes import ExactRoute


def mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def backward(model, n=10, seed=1, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g).to(next(model.parameters()).dtype) * scale
    y = torch.randint(0, 3, (n,), generator=g)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"damping": -1.0}, "Invalid damping value: -1.0"),
    ({"damping": 0.0}, "Invalid damping value: 0.0"),
    ({"damping": float("nan")}, "Invalid damping value: nan"),
    ({"update_freq": 0}, "Invalid update_freq value: 0"),
    ({"update_freq": 2.5}, "Invalid update_freq value: 2.5"),
    ({"sketch": "fourier"}, "Invalid sketch value: 'fourier'"),
    ({"sketch_size": 0}, "Invalid sketch_size value: 0"),
    ({"loss_reduction": "max"}, "Invalid loss_reduction value: 'max'"),
    ({"curvature_batch": 0}, "Invalid curvature_batch value: 0"),
    ({"max_update_norm": -2.0}, "Invalid max_update_norm value: -2.0"),
    ({"routes": {"nope": "exact"}}, "no module named 'nope'"),
    ({"routes": {"0": "fast"}}, "Invalid route value for 0: 'fast'"),
    ({"solve_dtype": torch.float16}, "Invalid solve_dtype value"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SENGPreconditioner(mlp(), **kwargs)


def test_bad_model():
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module, got list"):
        SENGPreconditioner([nn.Linear(2, 2)])
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        SENG(object(), lr=0.1)
    with pytest.raises(ValueError, match="no supported layer"):
        SENGPreconditioner(nn.Sequential(nn.ReLU(), nn.PReLU()))
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        SENG(mlp(), lr=-1)
    with pytest.raises(ValueError, match=r"Invalid momentum value: 1\.0"):
        SENG(mlp(), lr=0.1, momentum=1.0)


def test_bad_schedules_raise_at_step():
    pre = SENGPreconditioner(mlp(), damping=lambda k: -0.5)
    backward(pre.model)
    with pytest.raises(ValueError, match=r"Invalid damping value: -0.5 returned by damping\(0\)"):
        pre.step()
    pre = SENGPreconditioner(mlp(), update_freq=lambda k: 0)
    backward(pre.model)
    g = [p.grad.clone() for p in pre.model.parameters()]
    with pytest.raises(ValueError, match=r"Invalid update_freq value: 0 returned by"):
        pre.step()
    # Raised before any change: gradients and step counter untouched.
    assert all(torch.equal(a, p.grad) for a, p in zip(g, pre.model.parameters(), strict=True))
    assert pre.step_count == 0


def test_update_freq_schedule():
    """A callable update_freq decides, before each forward, whether hooks capture."""
    pre = SENGPreconditioner(mlp(), update_freq=lambda k: 1 if k < 2 else 3)
    refreshed = []
    for _ in range(8):
        backward(pre.model)
        refreshed.append(sum(len(c) for c in pre._capture.calls.values()) > 0)
        pre.step()
    # freq(k) counts from the last refresh: 0, 1 (freq 1), then 4 and 7 (freq 3).
    assert refreshed == [True, True, False, False, True, False, False, True]
    assert pre.counters["curvature_updates"] == 2 * 4


@pytest.mark.parametrize("update_freq", [1, 10])
def test_nonfinite_gradient_left_untouched_and_state_kept(update_freq):
    """On a refresh step (update_freq 1) and between refreshes (10), where the gradient is
    tested only after its direction came out non-finite."""
    model = mlp()
    pre = SENGPreconditioner(model, update_freq=update_freq)
    backward(model)
    pre.step()
    kept = {r["name"]: r["last"]["step"] for r in pre.layer_info()}
    backward(model, seed=2)
    model[0].weight.grad[0, 0] = float("nan")
    before = [model[0].weight.grad.clone(), model[0].bias.grad.clone()]
    with pytest.warns(RuntimeWarning, match="NaN/Inf in the gradient of layer '0'"):
        pre.step()
    assert torch.equal(model[0].weight.grad.isnan(), before[0].isnan())
    assert torch.equal(model[0].weight.grad[1:], before[0][1:])
    assert torch.equal(model[0].bias.grad, before[1])
    assert {r["name"]: r["last"]["step"] for r in pre.layer_info()} == {
        "0": 0, "2": 1 if update_freq == 1 else 0}
    assert kept["0"] == 0 and pre.counters["nonfinite_grads"] == 1
    assert pre.counters["skipped_updates"] == 0  # the curvature is not blamed
    assert bool(torch.isfinite(model[2].weight.grad).all())


def test_finite_flags_decide_by_sums_and_check_an_overflowed_sum():
    nan, inf = float("nan"), float("inf")
    tensors = [torch.ones(3), torch.tensor([1.0, nan]), torch.tensor([inf, -inf]),
               torch.tensor([3e38, 3e38]),  # finite entries whose float32 sum overflows
               torch.tensor([3e38, inf])]
    assert finite_flags(tensors) == [True, False, False, True, False]
    assert finite_flags([]) == []


def test_nonfinite_curvature_skipped_with_finite_gradients():
    """Inputs of 1e25 keep float32 gradients finite but overflow the Gram (~1e50): the
    update is skipped, warned once, counted, and p.grad stays finite."""
    model = mlp()
    pre = SENGPreconditioner(model, damping=0.5, update_freq=1)
    backward(model)
    pre.step()
    good = {r["name"]: r["last"]["step"] for r in pre.layer_info()}
    backward(model, seed=3, scale=1e25)
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    with pytest.warns(RuntimeWarning, match="NaN/Inf in the curvature of layer '0'"):
        pre.step()
    assert pre.counters["skipped_updates"] >= 1
    assert {r["name"]: r["last"]["step"] for r in pre.layer_info()}["0"] == good["0"]
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    # Warned once: a second overflow is counted silently.
    backward(model, seed=4, scale=1e25)
    count = pre.counters["skipped_updates"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pre.step()
    assert pre.counters["skipped_updates"] > count


def test_nonfinite_curvature_without_previous_state_falls_back():
    model = mlp()
    pre = SENGPreconditioner(model, damping=0.5, update_freq=1)
    backward(model, scale=1e25)
    g = [p.grad.clone() for p in model.parameters()]
    with pytest.warns(RuntimeWarning):
        pre.step()
    assert pre.layer_info()[0]["last"] is None
    assert_close(model[0].weight.grad, g[0] / 1.5, factor=2)


@pytest.mark.parametrize("sizes", [[1, 1, 1], [32, 32, 7], [5, 1, 3]])
def test_any_batch_size(sizes):
    """Batch size 1 and a last partial batch, refreshed and stale."""
    model = mlp()
    pre = SENGPreconditioner(model, update_freq=2)
    for k, n in enumerate(sizes):
        backward(model, n=n, seed=k)
        pre.step()
        assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    assert pre.counters["curvature_updates"] == 4


class TwoSizes(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, x):
        return self.lin(x)[:2] + self.lin(x[:2])


def test_calls_with_different_sample_counts_are_refused():
    model = TwoSizes()
    pre = SENGPreconditioner(model, damping=1.0, update_freq=1)
    x = torch.randn(5, 6)
    model(x).square().sum().backward()
    g = model.lin.weight.grad.clone()
    with pytest.warns(RuntimeWarning) as record:
        pre.step()
    messages = " ".join(str(w.message) for w in record)
    assert "different leading" in messages and "no curvature" in messages
    assert_close(model.lin.weight.grad, g / 2, factor=2)


def test_max_update_norm():
    model = mlp()
    pre = SENGPreconditioner(model, damping=1e-3, update_freq=1, max_update_norm=0.1)
    backward(model)
    pre.step()
    norm = torch.sqrt(sum(p.grad.double().square().sum() for p in model.parameters()))
    assert float(norm) == pytest.approx(0.1, rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model(dtype):
    """Half-precision parameters: factors in float32, solve in float64, grads keep dtype.

    Compared with the same preconditioner applied in float32 to the float32 copies of the
    gradients and captures, the error is that of rounding the result to ``dtype``."""
    model = mlp(dtype=dtype)
    pre = SENGPreconditioner(model, update_freq=1)
    backward(model)
    g = {n: p.grad.float() for n, p in model.named_parameters()}
    calls = {name: [(c.payload.float(), c.grad.float()) for c in cs]
             for name, cs in pre._capture.calls.items()}
    pre.step()
    ref = mlp(dtype=torch.float32)
    ref.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    ref_pre = SENGPreconditioner(ref, update_freq=1)
    for layer, recorded in zip(ref_pre._layers, calls.values(), strict=True):
        params = layer.params
        rep = layer.helper.per_sample(recorded, tuple(params), 10 / 10**0.5)
        curv = ExactRoute(torch.float64).build(rep)
        names = list(params)
        block = layer.helper.grads_to_block({n: g[f"{layer.name}.{n}"] for n in names})
        d = curv.direction(block, 1.0)[0]
        for n, t in layer.helper.block_to_grads(d, tuple(names)).items():
            got = dict(model.named_parameters())[f"{layer.name}.{n}"].grad
            assert got.dtype == dtype
            assert_close(got.float(), t, factor=2, dtype=dtype)


def test_report_lists_layers_routes_and_memory():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(12, 2))
    model.register_parameter("free", nn.Parameter(torch.ones(1)))
    pre = SENGPreconditioner(model, routes={model[2]: "gaussian"})
    model(torch.randn(4, 2, 4, 4)).sum().backward()
    pre.step()
    text = pre.report()
    assert "Conv2d" in text and "Linear" in text and "gaussian" in text
    assert "g / (1 + damping) for: free" in text
    info = pre.layer_info()
    assert [r["name"] for r in info] == ["0", "2"]
    assert all(r["memory_bytes"] > 0 for r in info)
    assert info[0]["last"]["gram_method"] in ("kronecker", "dense")
    assert info[0]["last"]["gram_flops"] > 0 and info[1]["last"]["sketch_shape"] == [1, 2, 13]


def test_sparse_embedding_gradients_get_the_plain_scaling():
    # nn.Embedding(sparse=True) is not preconditioned; its sparse gradient must not crash the
    # finiteness check and gets g / (1 + damping).
    torch.manual_seed(0)
    emb = nn.Embedding(20, 4, sparse=True)
    head = nn.Linear(4, 2)
    model = nn.Sequential(emb, nn.Flatten(), head)
    pre = SENGPreconditioner(model, damping=0.5, update_freq=1)
    idx = torch.randint(0, 20, (6, 1))
    model.zero_grad()
    nn.functional.mse_loss(model(idx), torch.randn(6, 2)).backward()
    g = emb.weight.grad.coalesce().to_dense().clone()
    pre.step()  # the sparse gradient is one of the "other parameters"
    assert torch.allclose(emb.weight.grad.to_dense(), g / 1.5)
