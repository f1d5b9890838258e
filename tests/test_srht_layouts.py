"""SRHT: both layouts of its second pass (one GEMM per group of kept rows, and the batched
GEMM over padded groups used when the outer order b is large) give the operator of the
definition, sqrt(m'/d) R H D with SciPy's Hadamard matrix, forward and adjoint, on every
backend (the looped layout runs on NumPy and torch on the CPU; elsewhere both parameters
run the padded one); the same seed gives the same operator whichever layout runs."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import scipy.linalg

import sketchlinalg as sl
from helpers import assert_close

srht = importlib.import_module("sketchlinalg.sketching.srht")


def oracle(S):
    m_pad, (d, m) = S.m_pad, S.shape
    H = scipy.linalg.hadamard(m_pad) / np.sqrt(m_pad)
    return np.sqrt(m_pad / d) * H[S.rows][:, :m] * S.signs


@pytest.mark.parametrize("looped", [True, False])
@pytest.mark.parametrize(("d", "m"), [(1, 1), (7, 300), (64, 1024), (100, 2000)])
def test_both_layouts_match_the_definition(backend, looped, d, m, monkeypatch):
    # Rounding: each entry of S A is a sum of m' products of size |A| sqrt(m'/d)/sqrt(m'),
    # computed in two stages; 10 m' eps of the largest row sum bounds it.
    if looped and backend.name == "jax":
        pytest.skip("JAX runs the padded layout for both parameters: compiled once, not twice")
    monkeypatch.setattr(srht, "_LOOP_MAX_GROUPS", 1 << 30 if looped else 0)
    S = sl.SRHT(d, m, rng=3)
    assert S._looped is looped
    rng = np.random.default_rng(4)
    A, Y = rng.standard_normal((m, 5)), rng.standard_normal((d, 4))
    D = oracle(S)
    scale = float(np.abs(D).sum(axis=1).max() * max(np.abs(A).max(), np.abs(Y).max()))
    SA = backend.to_numpy(S @ backend.asarray(A))
    StY = backend.to_numpy(S.T @ backend.asarray(Y))
    assert_close(SA, D @ A, factor=10 * S.m_pad, scale=scale)
    assert_close(StY, D.T @ Y, factor=10 * S.m_pad, scale=scale)
