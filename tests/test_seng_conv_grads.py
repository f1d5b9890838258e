"""Dense per-sample convolution gradients by the grouped weight-gradient kernel
(``ConvHelper.weight_grads``) against ``G^T A`` from the im2col factors, for every
padding mode, string padding, stride, dilation, groups, 1-D/2-D/3-D, frozen weight or bias,
and a module called twice; grouped convolutions on the ``F.unfold`` im2col route against the
``torch.func`` per-sample gradients."""

from __future__ import annotations

import pytest
import torch
from seng_oracle import per_sample_grads
from torch import nn

from helpers import assert_close
from seng.layers import helper_for
from seng.persample import KroneckerFactors

CONVS = [
    lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2, padding_mode="circular"),
    lambda: nn.Conv1d(3, 2, 2, dilation=2),
    lambda: nn.Conv2d(4, 6, 3, groups=2, dilation=2, padding=2, padding_mode="reflect"),
    lambda: nn.Conv2d(3, 4, (2, 3), padding="same", dilation=(1, 2)),
    lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False),
    lambda: nn.Conv2d(2, 4, 3, padding="valid", padding_mode="replicate"),
    lambda: nn.Conv3d(2, 4, (2, 3, 2), stride=(1, 2, 1), padding=1, dilation=(2, 1, 1),
                      groups=2),
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # torch's note on even kernels
@pytest.mark.parametrize("live", [("weight", "bias"), ("weight",), ("bias",)])
@pytest.mark.parametrize("make", CONVS)
def test_dense_grads_match_im2col(make, live):
    torch.manual_seed(0)
    conv = make().double()
    if conv.bias is None:
        live = tuple(n for n in live if n == "weight") or ("weight",)
    helper = helper_for(conv)
    spatial = (9, 8, 7)[:len(conv.kernel_size)]
    calls = []
    for _ in range(2):  # two calls: their gradients add up
        x = torch.randn(5, conv.in_channels, *spatial, dtype=torch.float64)
        gy = torch.randn_like(conv(x))
        calls.append((helper.capture_forward((x,), None), gy))
    rep = helper.per_sample(calls, live, 0.7)
    plain = KroneckerFactors(rep.A, rep.G)  # im2col factors, G^T A by matmul
    # Each entry sums 2 T products (T <= 9 * 8 * 7 positions).
    assert_close(rep.to_dense().rows, plain.to_dense().rows, factor=4 * 2 * 504)
    assert rep.to_dense().block_shape == plain.block_shape


# Grouped convolutions that take the F.unfold route of ConvHelper.patches (at most two
# spatial dimensions, zero padding given as numbers): group j's columns of the im2col matrix
# are its C_in/groups input channels, which the route splits off by a reshape.
UNFOLD_GROUPED = [
    lambda: nn.Conv2d(4, 6, 3, groups=2),
    lambda: nn.Conv2d(6, 9, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=3),
    lambda: nn.Conv1d(4, 8, 3, stride=2, padding=1, dilation=2, groups=4),
    lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False),  # depthwise
]


@pytest.mark.parametrize("make", UNFOLD_GROUPED,
                         ids=["2d-groups2", "2d-groups3-strided", "1d-groups4", "2d-depthwise"])
def test_grouped_unfold_factors_match_torch_func(make, monkeypatch):
    # Oracle: per-sample gradients of 0.5 ||conv(x_i) - y_i||^2 by torch.func (vmap of grad),
    # in the block layout (groups, C_out/groups, C_in/groups * prod(kernel) [+ bias]).
    torch.manual_seed(1)
    conv = make().double()
    spatial = (9, 8)[:len(conv.kernel_size)]
    x = torch.randn(5, conv.in_channels, *spatial, dtype=torch.float64)
    y = torch.randn_like(conv(x))

    def loss(out, target):
        return 0.5 * ((out - target) ** 2).sum()

    ps = per_sample_grads(conv, loss, x, y)
    n, g = x.shape[0], conv.groups
    dg = conv.out_channels // g
    blocks = [ps["weight"].reshape(n, g, dg, -1)]
    live = ("weight",)
    if conv.bias is not None:
        blocks.append(ps["bias"].reshape(n, g, dg, 1))
        live = ("weight", "bias")
    want = torch.cat(blocks, dim=3).reshape(n, -1)

    out = conv(x)
    gy = torch.autograd.grad(loss(out, y), out)[0]  # per-sample output gradients
    helper = helper_for(conv)
    unfolds = []
    unfold = torch.nn.functional.unfold
    monkeypatch.setattr(torch.nn.functional, "unfold",
                        lambda *a, **k: unfolds.append(1) or unfold(*a, **k))
    rep = helper.per_sample([(helper.capture_forward((x,), None), gy.detach())], live, 1.0)
    A = rep.A
    assert unfolds, "the im2col factor did not come from F.unfold"
    assert A.shape[:2] == (n, g)
    T = A.shape[2]
    # Each entry of G_i^T A_i sums T products: rounding below 4 T eps times the sum of their
    # absolute values (Higham eq. 3.5); the oracle's kernel has the same accumulation length.
    bound = (rep.G.abs().transpose(2, 3) @ A.abs()).reshape(n, -1)
    got = KroneckerFactors(A, rep.G).to_dense().rows
    assert_close(got, want, factor=4 * T, scale=float(bound.max()))
    # The Gram through the Kronecker identity (T^2 d_a d_g products per group) and the dense
    # per-sample gradients of the grouped weight-gradient kernel, against the same oracle.
    p = want.shape[1]
    gram, method = rep.gram("kronecker")
    assert method == "kronecker"
    assert_close(gram, want @ want.T, factor=4 * (T * T + p),
                 scale=float((bound @ bound.T).max()))
    assert_close(rep.to_dense().rows, want, factor=4 * T, scale=float(bound.max()))
