"""BlockSRHT, the SRHT for row-distributed data: the property tests of every family (dense
oracle on each backend, isometry in expectation, norm and subspace embedding), its block
structure, and its bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

import sketchlinalg as sl
from helpers import assert_close, orthonormal


def tol_factor(m: int) -> float:
    return 10 * np.sqrt(m)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_apply_matches_dense_and_block_formula(dtype, backend):
    d, m, n = 24, 300, 5
    S = sl.BlockSRHT(d, m, blocks=(100, 120, 80), rng=1)
    A_np = np.random.default_rng(2).standard_normal((m, n))
    A = backend.asarray(A_np, dtype)
    D = S.to_dense()
    scale = float(np.abs(D).sum(axis=1).max() * np.abs(A_np).max())
    Y = S @ A
    assert type(Y) is type(A) and Y.dtype == A.dtype
    assert_close(Y, D @ A_np, factor=tol_factor(m), dtype=dtype, scale=scale)
    col = A.T @ S.T if backend.defers_matmul else (S @ A).T  # strict arrays never defer
    assert_close(col, (D @ A_np).T, factor=tol_factor(m), dtype=dtype, scale=scale)
    Z = np.random.default_rng(3).standard_normal((d, n))
    assert_close(S.T @ backend.asarray(Z, dtype), D.T @ Z, factor=tol_factor(d), dtype=dtype,
                 scale=float(np.abs(D).sum(axis=0).max() * np.abs(Z).max()))
    # The definition: S_i = diag(left_i) Phi [diag(right_i); 0], Phi the shared SRHT of order 128.
    Phi = S.inner.to_dense()
    assert S.b_pad == 128 and Phi.shape == (d, 128)
    for i, (a, b) in enumerate([(0, 100), (100, 220), (220, 300)]):
        right, left = S.block_signs(i)
        assert_close(D[:, a:b], left[:, None] * Phi[:, : b - a] * right, factor=tol_factor(128))


def test_isometry_in_expectation():
    d, m, trials = 4, 16, 3000
    mean, sq = np.zeros((m, m)), np.zeros((m, m))
    for seed in range(trials):
        D = sl.BlockSRHT(d, m, blocks=(5, 5, 6), rng=seed).to_dense()
        G = D.T @ D
        mean += G
        sq += G * G
    mean /= trials
    se = np.sqrt(np.maximum(sq / trials - mean**2, 0) / trials)
    # (Right signs shared between blocks would put a mean of 1 on the cross diagonals.)
    assert np.all(np.abs(mean - np.eye(m)) <= 5 * se + 1e-12), np.abs(mean - np.eye(m)).max()


def test_norm_preserved_in_mean_and_subspace_embedding():
    d, m, trials = 32, 512, 400
    x = np.random.default_rng(10**6).standard_normal(m)
    x /= np.linalg.norm(x)
    ratios = np.array([np.linalg.norm(sl.BlockSRHT(d, m, blocks=128, rng=s) @ x) ** 2
                       for s in range(trials)])
    assert abs(ratios.mean() - 1) <= 5 * ratios.std(ddof=1) / np.sqrt(trials)
    # A coherent subspace (coordinate vectors, one per block) is embedded as by the SRHT:
    # E ||U^T S^T S U - I||_F^2 is O(n^2 / d); sampling alone would annihilate it.
    U = np.eye(m)[:, [3, 130, 260, 390]]
    errs = [np.linalg.norm((sl.BlockSRHT(64, m, blocks=128, rng=s) @ U).T
                           @ (sl.BlockSRHT(64, m, blocks=128, rng=s) @ U) - np.eye(4)) ** 2
            for s in range(200)]
    assert np.mean(errs) <= 2 * (4**2 + 4) / 64
    V = orthonormal(m, 4, rng=1)
    errs = [np.linalg.norm((sl.BlockSRHT(64, m, blocks=128, rng=s) @ V).T
                           @ (sl.BlockSRHT(64, m, blocks=128, rng=s) @ V) - np.eye(4)) ** 2
            for s in range(200)]
    assert np.mean(errs) <= 2 * (4**2 + 4) / 64


def test_blocks_argument_and_bad_input():
    assert sl.BlockSRHT(4, 10, blocks=4, rng=0).blocks == (4, 4, 2)
    assert sl.BlockSRHT(4, 10, rng=0).blocks == (10,)
    with pytest.raises(ValueError, match="blocks must sum to m = 10"):
        sl.BlockSRHT(4, 10, blocks=(4, 5))
    with pytest.raises(ValueError, match="blocks must be >= 1"):
        sl.BlockSRHT(4, 10, blocks=(10, 0))
    with pytest.raises(TypeError, match="blocks must be an int"):
        sl.BlockSRHT(4, 10, blocks=2.5)
    with pytest.raises(ValueError, match="d must be <= 4"):
        sl.BlockSRHT(5, 12, blocks=3)  # blocks of 3 rows pad to 4 < d
    sl.BlockSRHT(4, 12, blocks=3)  # just inside
    with pytest.raises(ValueError, match="d must be <= m"):
        sl.BlockSRHT(11, 10)
    S = sl.BlockSRHT(4, 10, blocks=5, rng=0)
    with pytest.raises(ValueError, match="shape mismatch"):
        S @ np.ones((11, 2))
    g = np.random.default_rng(0)
    assert not np.array_equal(sl.BlockSRHT(4, 10, rng=g).to_dense(),
                              sl.BlockSRHT(4, 10, rng=g).to_dense())
    assert np.array_equal(sl.BlockSRHT(4, 10, rng=5).to_dense(),
                          sl.BlockSRHT(4, 10, rng=np.random.default_rng(5)).to_dense())
