"""Where the samples are: sequence-first models against the torch.func oracle, the sample
dimension inferred for ``batch_first=False`` Transformer layers, and a clear error when the
layers of one curvature step disagree on N."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from seng_oracle import check_layers, full_grad
from torch import nn
from torch.func import functional_call, grad, vmap

from seng import SENGPreconditioner

pytestmark = [pytest.mark.usefixtures("float64"),
              pytest.mark.filterwarnings("ignore:SENG preconditions"),
              pytest.mark.filterwarnings("ignore:There is a performance drop")]  # vmap of SDPA

DAMPING = 0.3
T, N, D = 5, 6, 8


def seq_first_grads(model, x, y):
    """Per-sample gradients of a sequence-first model, sample i being x[:, i] (length T):
    vmap where it runs, a loop over the samples where it cannot (an LSTM)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_i(p, xi, yi):
        out = functional_call(model, p, (xi[:, None],))  # (T, 1, C)
        return F.cross_entropy(out.mean(0), yi[None])

    if not any(isinstance(m, nn.RNNBase) for m in model.modules()):
        return vmap(grad(loss_i), in_dims=(None, 1, 0))(params, x, y)
    rows = [grad(loss_i)(params, x[:, i], y[i]) for i in range(x.shape[1])]
    return {k: torch.stack([r[k] for r in rows]) for k in params}


def loss_of(model, x, y):
    return F.cross_entropy(model(x).mean(0), y)


class Encoder(nn.Module):
    """PyTorch's default (sequence-first) Transformer encoder layer and a Linear head applied
    at every position."""

    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(D, 2, dim_feedforward=12, dropout=0.0)
        self.head = nn.Linear(D, 3)

    def forward(self, x):
        return self.head(self.layer(x))


class LSTMHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, D)
        self.head = nn.Linear(D, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def data(features, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, N, features, generator=g), torch.randint(0, 3, (N,), generator=g)


def run(model, x, y, **options):
    pre = SENGPreconditioner(model, damping=DAMPING, **options)
    loss_of(model, x, y).backward()
    pre.step()
    return pre


def test_transformer_batch_first_false_is_inferred_and_exact():
    """linear1, linear2, norm1, norm2 inside a batch_first=False layer take their samples from
    dimension 1 without being told; the head, outside it, is told per module."""
    torch.manual_seed(0)
    model = Encoder()
    x, y = data(D)
    ps = seq_first_grads(model, x, y)
    run(model, x, y, sample_dim={"head": 1})
    layers = ["layer.linear1", "layer.linear2", "layer.norm1", "layer.norm2", "head"]
    check_layers(model, layers, ps, full_grad(ps, "mean"), DAMPING)


def test_sequence_first_lstm_head_exact_with_model_sample_dim():
    torch.manual_seed(0)
    model = LSTMHead()
    x, y = data(4)
    ps = seq_first_grads(model, x, y)
    run(model, x, y, sample_dim=1)
    check_layers(model, ["rnn", "head"], ps, full_grad(ps, "mean"), DAMPING)


def test_the_default_would_be_wrong_and_is_refused():
    """Without sample_dim the head reads T = 5 'samples' while the Transformer layer's
    Linear layers read N = 6: the step raises, naming both groups, and leaves p.grad as the
    plain gradient (nothing half-applied)."""
    torch.manual_seed(0)
    model = Encoder()
    x, y = data(D)
    pre = SENGPreconditioner(model, damping=DAMPING)
    loss_of(model, x, y).backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"N = 6: 'layer.self_attn', 'layer.linear1'.*"
                                         r"N = 5: 'head'.*sample_dim"):
        pre.step()
    assert all(torch.equal(p.grad, before[n]) for n, p in model.named_parameters())
    assert pre.step_count == 0


def test_lstm_head_default_is_refused():
    """The LSTM reads its samples from dimension 1 (batch_first=False) by itself; the head,
    by default, takes the T = 5 positions as samples: the step raises, naming both."""
    torch.manual_seed(0)
    model = LSTMHead()
    x, y = data(4)
    pre = SENGPreconditioner(model, damping=DAMPING)
    loss_of(model, x, y).backward()
    with pytest.raises(ValueError, match=r"N = 6: 'rnn'; N = 5: 'head'"):
        pre.step()


@pytest.mark.parametrize(("sample_dim", "error", "words"), [
    (-1, ValueError, "sample_dim value: -1"),
    (True, TypeError, "sample_dim must be"),
    ({"nope": 1}, ValueError, "'nope' is not a module"),
    ({"head": -2}, ValueError, "for 'head': -2"),
    ({"conv": 1}, ValueError, "Conv1d takes its samples in dimension 0"),
])
def test_bad_sample_dim(sample_dim, error, words):
    model = nn.Sequential()
    model.add_module("conv", nn.Conv1d(2, 2, 3))
    model.add_module("head", nn.Linear(2, 2))
    with pytest.raises(error, match=words):
        SENGPreconditioner(model, sample_dim=sample_dim)


def test_sample_dim_past_the_input_rank_is_a_clear_error():
    model = nn.Sequential(nn.Linear(3, 2))
    pre = SENGPreconditioner(model, sample_dim=2)
    with pytest.raises(ValueError, match=r"sample_dim for layer '0': 2.*\(4, 3\)"):
        model(torch.randn(4, 3)).sum().backward()
    assert pre.step_count == 0
