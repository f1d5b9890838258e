"""The damped N x N systems of several layers factored in one batched call
(:func:`seng.curvature.factor_together`) give the directions of one call per layer, bit for
bit, and a system Cholesky fails on still takes the eigendecomposition fallback."""

from __future__ import annotations

import pytest
import torch

from seng.curvature import Curvature, woodbury_directions
from seng.persample import DenseGrads

pytestmark = pytest.mark.usefixtures("float64")


def curvatures(n=6, p=9, count=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        rows = torch.randn(n, p, generator=g)
        out.append(Curvature(DenseGrads(rows, (p,)), rows @ rows.T, {}))
    return out, [torch.randn(p, generator=g) for _ in range(count)]


# The relative rules give each layer a damping of its own.
@pytest.mark.parametrize("rule", ["absolute", "relative", "spectral"])
@pytest.mark.parametrize("reuse", [True, False])
def test_batched_factors_give_the_per_layer_directions(reuse, rule):
    together, blocks = curvatures()
    alone, _ = curvatures()
    got = woodbury_directions(together, blocks, 0.3, rule, reuse=reuse)
    assert all(isinstance(c._factor[1], torch.Tensor) for c in together)  # batched Cholesky
    for c, b, (d, fallback) in zip(alone, blocks, got, strict=True):
        want, want_fallback = woodbury_directions([c], [b], 0.3, rule, reuse=reuse)[0]
        assert torch.equal(d, want) and fallback == want_fallback is False


def test_a_failed_cholesky_in_the_batch_falls_back_alone():
    """G = -I (not PSD: an input damped_gram_factor clips to 0) fails Cholesky at damping
    0.5; its neighbours keep their batched factors and the fallback is reported for it only."""
    cs, blocks = curvatures(count=3)
    bad = Curvature(DenseGrads(torch.zeros(6, 9), (9,)), -torch.eye(6), {})
    cs.insert(1, bad)
    blocks.insert(1, torch.linspace(-1, 1, 9))
    got = woodbury_directions(cs, blocks, 0.5, "absolute")
    assert [fb for _, fb in got] == [False, True, False, False]
    # U = 0: the clipped system is 0.5 I and the direction g / 0.5
    assert torch.equal(got[1][0], blocks[1] / 0.5)
    assert all(torch.isfinite(d).all() for d, _ in got)
