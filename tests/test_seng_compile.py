"""SENG on ``torch.compile``'d models: the same layers, names and steps as on the plain model,
and state_dicts that load across the two (backend "eager": Dynamo's graph capture without
Inductor's code generation, so that steps are bitwise comparable and the tests fast)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seng import SENGPreconditioner

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Dynamo's own notices


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 3)).double()


def batch(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + k)
    return (torch.randn(12, 6, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (12,), generator=g))


def train(forward: nn.Module, params: nn.Module, pre: SENGPreconditioner,
          steps: range) -> list[torch.Tensor]:
    """Run SGD + SENG on ``steps``; the parameters after each step."""
    opt = torch.optim.SGD(params.parameters(), lr=0.1)
    out = []
    for k in steps:
        x, y = batch(k)
        opt.zero_grad()
        F.cross_entropy(forward(x), y).backward()
        pre.step()
        opt.step()
        out.append(torch.cat([p.detach().reshape(-1) for p in params.parameters()]))
    return out


def preconditioner(model: nn.Module, seed: int = 0) -> SENGPreconditioner:
    return SENGPreconditioner(model, damping=0.5, update_freq=2, rng=seed)


def test_compiled_model_has_the_plain_model_layers_and_steps():
    plain = make_model()
    compiled_base = make_model()
    compiled = torch.compile(compiled_base, backend="eager")
    pre_plain, pre_compiled = preconditioner(plain), preconditioner(compiled)
    assert [r["name"] for r in pre_compiled.layer_info()] == \
        [r["name"] for r in pre_plain.layer_info()] == ["0", "1", "3"]
    ref = train(plain, plain, pre_plain, range(3))
    got = train(compiled, compiled_base, pre_compiled, range(3))
    assert pre_compiled.counters["curvature_updates"] == 6  # steps 0 and 2, three layers
    for a, b in zip(ref, got, strict=True):
        assert torch.equal(a, b)


def test_model_compiled_and_run_before_the_preconditioner_is_captured():
    # torch.compile does not guard on module hooks: code compiled before SENG registered its
    # hooks would skip them, and no curvature would ever be captured.
    plain = make_model()
    base = make_model()
    compiled = torch.compile(base, backend="eager")
    x, y = batch(0)
    F.cross_entropy(compiled(x), y).backward()
    base.zero_grad()
    pre = preconditioner(compiled)
    ref = train(plain, plain, preconditioner(plain), range(2))
    got = train(compiled, base, pre, range(2))
    assert pre.counters["missing_curvature"] == 0
    assert torch.equal(ref[-1], got[-1])


@pytest.mark.parametrize("saved_on", ["compiled", "plain"])
def test_state_dict_loads_across_compiled_and_plain_models(saved_on):
    # Reference: one uninterrupted run on the plain model (steps 0-4).
    plain = make_model()
    ref = train(plain, plain, preconditioner(plain), range(5))

    # Steps 0-2 on one kind of model, saved; steps 3-4 resumed on the other kind, with a
    # preconditioner built from another seed (the state restores the checkpoint's).
    first = make_model()
    forward = torch.compile(first, backend="eager") if saved_on == "compiled" else first
    pre = preconditioner(forward)
    train(forward, first, pre, range(3))
    saved = copy.deepcopy({"model": first.state_dict(), "seng": pre.state_dict()})

    second = make_model()
    second.load_state_dict(saved["model"])
    forward = second if saved_on == "compiled" else torch.compile(second, backend="eager")
    resumed = preconditioner(forward, seed=7)
    resumed.load_state_dict(saved["seng"])
    got = train(forward, second, resumed, range(3, 5))
    for a, b in zip(ref[3:], got, strict=True):
        assert torch.equal(a, b)


def test_state_dict_with_other_layer_names_is_refused():
    model = make_model()
    state = preconditioner(model).state_dict()
    state["layers"] = {f"_orig_mod.{k}": v for k, v in state["layers"].items()}
    with pytest.raises(ValueError, match="state has layers"):
        preconditioner(torch.compile(make_model(), backend="eager")).load_state_dict(state)
