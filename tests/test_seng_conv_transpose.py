"""``nn.ConvTranspose1d/2d/3d``: per-sample gradients (Kronecker factors over output
positions and the dense weight-gradient route) against ``torch.func``, and the SENG
direction against the dense oracle, for stride, padding, output padding (also chosen through
``output_size``), dilation and groups."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from seng_oracle import batch_loss, check_layers, full_grad, per_sample_grads
from torch import nn
from torch.func import functional_call, vjp, vmap

from helpers import assert_close
from seng import SENGPreconditioner
from seng.layers import ConvTransposeHelper, helper_for
from seng.persample import KroneckerFactors

pytestmark = pytest.mark.usefixtures("float64")

DAMPING = 1e-3  # small against U U^T: the direction depends on the curvature (cond ~ 1e2-1e3)

CONVS = [  # (module, input spatial shape, output_size passed to forward or None)
    (lambda: nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
     (7,), None),
    (lambda: nn.ConvTranspose1d(3, 2, 2, dilation=3, padding=2), (6,), None),
    (lambda: nn.ConvTranspose1d(2, 3, 3, stride=1, dilation=2, output_padding=1), (5,), None),
    (lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=2), (4, 5), (8, 10)),
    (lambda: nn.ConvTranspose2d(3, 4, (2, 3), stride=(3, 1), padding=(0, 2), dilation=(1, 2),
                                bias=False), (3, 4), None),
    (lambda: nn.ConvTranspose2d(4, 4, 3, padding=3, groups=4), (6, 6), None),  # crops
    (lambda: nn.ConvTranspose3d(2, 4, (2, 3, 2), stride=(2, 1, 2), padding=(1, 0, 1),
                                output_padding=(1, 0, 0), dilation=(1, 2, 1), groups=2),
     (3, 4, 3), None),
]


def torch_func_grads(conv, x, gy, output_size):
    """``{name: (N, *shape)}`` per-sample vector-Jacobian products of the layer alone."""
    params = {k: v.detach() for k, v in conv.named_parameters()}

    def one(xi, gi):
        _, pull = vjp(lambda p: functional_call(conv, p, (xi[None],),
                                                {"output_size": output_size}), params)
        return pull(gi[None])[0]

    return vmap(one)(x, gy)


@pytest.mark.parametrize("live", [("weight", "bias"), ("weight",), ("bias",)])
@pytest.mark.parametrize(("make", "spatial", "output_size"), CONVS)
def test_per_sample_grads_match_torch_func(make, spatial, output_size, live):
    """Both representations, two calls of the layer (their gradients add up), in the block
    layout of ``grads_to_block``; and ``block_to_grads`` inverts it."""
    torch.manual_seed(0)
    conv = make()
    if conv.bias is None:
        live = ("weight",)
    helper = helper_for(conv)
    assert isinstance(helper, ConvTransposeHelper)
    calls, want = [], None
    for _ in range(2):
        x = torch.randn(5, conv.in_channels, *spatial)
        gy = torch.randn_like(conv(x, output_size=output_size))
        calls.append((helper.capture_forward((x,), None), gy))
        ref = torch_func_grads(conv, x, gy, output_size)
        want = ref if want is None else {k: want[k] + ref[k] for k in ref}
    rows = torch.stack([helper.grads_to_block({n: want[n][i] for n in live}).reshape(-1)
                        for i in range(5)])
    rep = helper.per_sample(calls, live, 1.0)
    plain = KroneckerFactors(rep.A, rep.G)  # patches of the spread input, G^T A by matmul
    positions = plain.positions
    assert_close(rep.to_dense().rows, rows, factor=8 * positions)
    assert_close(plain.to_dense().rows, rows, factor=8 * positions)
    back = helper.block_to_grads(helper.grads_to_block({n: want[n][0] for n in live}), live)
    for n in live:
        assert torch.equal(back[n], want[n][0])


def test_unbatched_input_is_one_sample():
    torch.manual_seed(1)
    conv = nn.ConvTranspose2d(2, 3, 3, stride=2)
    helper = helper_for(conv)
    x = torch.randn(2, 4, 4)
    gy = torch.randn_like(conv(x))
    rep = helper.per_sample([(helper.capture_forward((x,), None), helper.capture_grad(gy))],
                            ("weight", "bias"), 1.0)
    ref = torch_func_grads(conv, x[None], gy[None], None)
    block = helper.grads_to_block({n: ref[n][0] for n in ("weight", "bias")})
    assert_close(rep.to_dense().rows[0], block.reshape(-1), factor=8 * 81)


class Decoder(nn.Module):
    """A small upsampling decoder: every parameter in a transposed convolution but the head."""

    def __init__(self):
        super().__init__()
        self.up1 = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1)
        self.up2 = nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2)
        self.up3 = nn.ConvTranspose1d(4, 2, 3, dilation=2)
        self.head = nn.Linear(2, 3)

    def forward(self, x):
        h = torch.tanh(self.up2(torch.tanh(self.up1(x))))  # (N, 4, 12, 12)
        h = torch.tanh(self.up3(h.mean(dim=3)))  # (N, 2, 16)
        return self.head(h.mean(dim=2))


def ce(out, y):
    return F.cross_entropy(out, y)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_seng_direction_matches_dense_oracle(reduction):
    """Exact route (the dense per-sample gradients are formed in the backward hook for the
    small blocks, Kronecker factors kept for up1's), against ``(U U^T + damping I)^{-1} g``
    from torch.func per-sample gradients; every parameter covered."""
    torch.manual_seed(2)
    model = Decoder()
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(8, 3, 3, 3, generator=g), torch.randint(0, 3, (8,), generator=g)
    pre = SENGPreconditioner(model, damping=DAMPING, loss_reduction=reduction, strict=True)
    assert pre.uncovered_parameters() == {}
    ps = per_sample_grads(model, ce, x, y)
    batch_loss(model, ce, x, y, reduction).backward()
    pre.step()
    check_layers(model, ["up1", "up2", "up3", "head"], ps, full_grad(ps, reduction), DAMPING)
