"""Dense per-sample convolution gradients by the grouped weight-gradient kernel
(``ConvHelper.weight_grads``) against ``G^T A`` from the im2col factors, for every
padding mode, string padding, stride, dilation, groups, 1-D/2-D/3-D, frozen weight or bias,
and a module called twice."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import assert_close
from seng.layers import helper_for
from seng.routes.persample import KroneckerFactors

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
