"""``nn.RNN``, ``nn.LSTM``, ``nn.GRU`` against the dense oracle: per-sample gradients by
``torch.func`` (one sample at a time through the whole model), the SENG direction of each
recurrent block, with the gradient flowing in through the output sequence, the final hidden
state and the LSTM's cell state, ``batch_first`` either way, a given initial state,
``proj_size``, bidirectional stacks and an unbatched call."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from seng_oracle import check_direction, dense_direction
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.utils.rnn import pack_padded_sequence

from seng import SENGPreconditioner
from seng.layers import RecurrentHelper, helper_for

pytestmark = pytest.mark.usefixtures("float64")

DAMPING = 0.3
N, T, D_IN = 5, 4, 3


class Model(nn.Module):
    """A recurrent layer and a Linear head on what ``use`` says: the mean of the output
    sequence, the last layer's final hidden state, and/or the final cell states."""

    def __init__(self, rnn, use=("out",)):
        super().__init__()
        self.rnn = rnn
        self.use = use
        width = rnn.hidden_size if rnn.proj_size == 0 else rnn.proj_size
        self.head = nn.Linear(width * (2 if rnn.bidirectional else 1), 3)

    def forward(self, x, h0=None):
        out, h = self.rnn(x) if h0 is None else self.rnn(x, h0)
        h, c = h if isinstance(self.rnn, nn.LSTM) else (h, None)
        batch_first = self.rnn.batch_first and x.dim() == 3
        feats = 0.0
        if "out" in self.use:
            feats = feats + self.head(out.mean(1 if batch_first or x.dim() == 2 else 0))
        if "h" in self.use:  # the last layer's final state, both directions
            last = h[-2:] if self.rnn.bidirectional else h[-1:]
            feats = feats + self.head(torch.cat(list(last), dim=-1))
        if "c" in self.use:
            feats = feats + c.square().sum(dim=(0, -1))[..., None]
        return feats


def per_sample_grads(model, x, y, h0=None):
    """``{name: (N, *shape)}`` by torch.func: ``vmap`` over the samples of ``grad`` of the
    loss of the whole model on a batch of one (the initial state passed explicitly, zeros
    when none is given, which lets ``vmap`` run the recurrent layer)."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    rnn = model.rnn
    dim = 0 if rnn.batch_first else 1
    if h0 is None:
        layers = rnn.num_layers * (2 if rnn.bidirectional else 1)
        width = rnn.proj_size or rnn.hidden_size
        h0 = (torch.zeros(layers, N, width),)
        if isinstance(rnn, nn.LSTM):
            h0 = (*h0, torch.zeros(layers, N, rnn.hidden_size))

    def loss_i(p, xi, hi, yi):
        hi = tuple(h[:, None] for h in hi)
        out = functional_call(model, p, (xi.unsqueeze(dim), hi if len(hi) == 2 else hi[0]))
        return F.cross_entropy(out, yi[None])

    return vmap(grad(loss_i), in_dims=(None, dim, 1, 0))(params, x, h0, y)


def check_blocks(model, ps, prefixes):
    params = dict(model.named_parameters())
    for prefix in prefixes:
        names = [n for n in params if n.startswith(prefix + ".")]
        rows = torch.cat([ps[n].reshape(N, -1) for n in names], dim=1)
        want, cond = dense_direction(rows, rows.mean(0), DAMPING)
        got = torch.cat([params[n].grad.reshape(-1) for n in names])
        check_direction(got, want, cond, rows.shape[1])


def data(batch_first, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((N, T, D_IN) if batch_first else (T, N, D_IN), generator=g)
    return x, torch.randint(0, 3, (N,), generator=g)


def run(model, x, y, h0=None):
    pre = SENGPreconditioner(model, damping=DAMPING, strict=True)
    assert pre.uncovered_parameters() == {}
    F.cross_entropy(model(x, h0), y).backward()
    pre.step()
    return pre


CASES = [  # (make the layer, what the head uses)
    (lambda: nn.LSTM(D_IN, 4), ("out",)),
    (lambda: nn.LSTM(D_IN, 4, num_layers=2, bidirectional=True, batch_first=True), ("h", "c")),
    (lambda: nn.LSTM(D_IN, 5, proj_size=2, batch_first=True), ("out", "h", "c")),
    (lambda: nn.GRU(D_IN, 4, num_layers=2), ("out", "h")),
    (lambda: nn.GRU(D_IN, 4, bidirectional=True, batch_first=True, bias=False), ("h",)),
    (lambda: nn.RNN(D_IN, 4, nonlinearity="relu", num_layers=2), ("out", "h")),
]


@pytest.mark.parametrize(("make", "use"), CASES)
def test_direction_matches_dense_oracle(make, use):
    torch.manual_seed(0)
    model = Model(make(), use)
    x, y = data(model.rnn.batch_first)
    ps = per_sample_grads(model, x, y)
    pre = run(model, x, y)
    assert [r["name"] for r in pre.layer_info()] == ["rnn", "head"]
    check_blocks(model, ps, ["rnn", "head"])


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_given_initial_state_and_frozen_bias(cls):
    """An initial state passed as ``hx=`` (a keyword), and a frozen bias: the block is the
    trainable rest, exact; the frozen bias keeps no gradient."""
    torch.manual_seed(1)
    model = Model(cls(D_IN, 4, num_layers=2), ("out", "h"))
    model.rnn.bias_ih_l1.requires_grad_(False)
    x, y = data(False, seed=1)
    g = torch.Generator().manual_seed(2)
    h0 = tuple(torch.randn(2, N, 4, generator=g) for _ in range(2 if cls is nn.LSTM else 1))
    ps = per_sample_grads(model, x, y, h0)

    def forward(x, h0=None):  # the initial state as a keyword argument
        out, h = model.rnn(x, hx=h0 if cls is nn.LSTM else h0[0])
        return model.head(out.mean(0)) + model.head(h[0][-1] if cls is nn.LSTM else h[-1])

    model.forward = forward
    pre = SENGPreconditioner(model, damping=DAMPING)
    F.cross_entropy(model(x, h0), y).backward()
    pre.step()
    assert model.rnn.bias_ih_l1.grad is None
    params = dict(model.named_parameters())
    names = [n for n in params if n.startswith("rnn.") and n != "rnn.bias_ih_l1"]
    rows = torch.cat([ps[n].reshape(N, -1) for n in names], dim=1)
    want, cond = dense_direction(rows, rows.mean(0), DAMPING)
    got = torch.cat([params[n].grad.reshape(-1) for n in names])
    check_direction(got, want, cond, rows.shape[1])


def test_loop_equals_vmap_and_unbatched_is_one_sample():
    """The one-sample-at-a-time path gives the vmap path's per-sample gradients; an
    unbatched sequence is one sample."""
    torch.manual_seed(3)
    lstm = nn.LSTM(D_IN, 4, num_layers=2, bidirectional=True)
    helper = helper_for(lstm)
    assert isinstance(helper, RecurrentHelper) and helper.vectorize
    x = torch.randn(T, N, D_IN)
    out, (h, c) = lstm(x)
    grads = tuple(torch.randn_like(t) for t in (out, h, c))
    call = (helper.capture_forward((x,), (out, (h, c))), helper.capture_grad(grads))
    fast = helper.per_sample([call], helper.param_names, 1.0).rows
    helper.vectorize = False
    slow = helper.per_sample([call], helper.param_names, 1.0).rows
    assert fast.shape == (N, sum(p.numel() for p in lstm.parameters()))
    check_direction(slow, fast, 1.0, T * 16)
    out1, (h1, c1) = lstm(x[:, 0])  # unbatched: (T, D_IN)
    one = (helper.capture_forward((x[:, 0],), (out1, (h1, c1))),
           helper.capture_grad((grads[0][:, 0], grads[1][:, 0], grads[2][:, 0])))
    assert torch.allclose(helper.per_sample([one], helper.param_names, 1.0).rows, fast[:1],
                          rtol=0, atol=1e-13)


def test_dropout_between_layers_is_named_and_packed_input_is_not_recorded():
    with pytest.warns(UserWarning, match=r"rnn\.weight_ih_l0 \(LSTM with dropout between"):
        SENGPreconditioner(Model(nn.LSTM(D_IN, 4, num_layers=2, dropout=0.1)))
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        one_layer = Model(nn.LSTM(D_IN, 4, num_layers=1, dropout=0.1))
    with warnings.catch_warnings():  # one layer: nothing to drop, covered
        warnings.simplefilter("error")
        SENGPreconditioner(one_layer, strict=True)
    rnn = nn.GRU(D_IN, 4)
    pre = SENGPreconditioner(rnn, damping=DAMPING)
    x, _ = data(False)
    out, _ = rnn(pack_padded_sequence(x, [4, 4, 3, 2, 1]))
    out.data.sum().backward()
    with pytest.warns(RuntimeWarning, match="has a gradient but no curvature"):
        pre.step()
    assert pre.counters["missing_curvature"] == 1


def test_second_backward_adds_to_every_output_gradient():
    """Two backward passes through one forward: the recorded gradients of the output
    sequence and of both final states add up (as p.grad does), so U is that of twice the
    loss; boundary: one pass gives the direction of the plain loss."""
    torch.manual_seed(4)
    model = Model(nn.LSTM(D_IN, 4), ("out", "h", "c"))
    x, y = data(False, seed=4)
    ps = per_sample_grads(model, x, y)
    pre = SENGPreconditioner(model, damping=DAMPING, strict=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward(retain_graph=True)
    loss.backward()
    pre.step()
    check_blocks(model, {n: 2 * v for n, v in ps.items()}, ["rnn"])
