"""orthonormalize (the range finder's Cholesky QR): orthonormal to working precision on
sketches far beyond one Cholesky QR's reach, without falling back to Householder QR, on every
backend and in float32 and float64; the fallback where no Cholesky pass can work."""

from __future__ import annotations

import importlib

import array_api_compat
import numpy as np
import pytest

from helpers import assert_close, eps, matrix_with_spectrum

rf = importlib.import_module("sketchlinalg._lowrank")
M, N = 2000, 40  # 80000 entries: above the size where orthonormalize prefers Householder QR


def sample(backend, cond, dtype, rng=0):
    """An M x N matrix with singular values log-spaced from 1 to 1/cond, in float64 on the
    host (returned as well) and in ``dtype`` on the backend."""
    s = np.logspace(0, -np.log10(cond), N)
    Y = matrix_with_spectrum(M, N, s, rng=rng)
    X = backend.asarray(Y, dtype=dtype)
    return X, backend.to_numpy(X).astype(np.float64)


def one_cholesky_qr_loss(Y):
    """||Z^T Z - I||_max of one plain Cholesky QR pass Z = Y R^{-1} (inf when the Cholesky
    factorization of the Gram fails), in Y's own precision."""
    try:
        L = np.linalg.cholesky(Y.T @ Y)
    except np.linalg.LinAlgError:
        return np.inf
    Z = np.linalg.solve(L, Y.T).T
    return float(np.abs(Z.T @ Z - np.eye(Y.shape[1])).max())


@pytest.fixture
def no_householder(monkeypatch):
    """Make the Householder fallback raise: the test must stay on the Gram path."""
    def refuse(A):
        raise AssertionError("orthonormalize fell back to Householder QR")

    monkeypatch.setattr(rf.backend, "qr", refuse)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cond", [1e12, 1e15])
def test_ill_conditioned_sketch_orthonormal_to_working_precision(backend, dtype, cond,
                                                                 no_householder):
    # cond(Y) >= 1e12 > u^(-1/2): a single Cholesky QR fails outright or loses orthogonality
    # to O(1) (its loss is ~ u cond^2), and the old SVQB gate sent such samples to Householder
    # QR. Shifted passes bring cond down to where CholQR2 finishes: Z orthonormal and
    # Y = Z C to a small multiple of eps (measured: <= 15 eps entrywise on every backend);
    # the bound N eps leaves a margin and is still 1e5 times below the loss of one pass
    # (float64) or below the float32 breakdown.
    X, Y = sample(backend, cond, dtype)
    assert one_cholesky_qr_loss(Y.astype(dtype)) > 1e-2
    xp = array_api_compat.array_namespace(X)
    Z, C = rf.orthonormalize(xp, X, passes=2)
    assert Z.dtype == C.dtype == X.dtype and Z.shape == (M, N) and C.shape == (N, N)
    Zn, Cn = backend.to_numpy(Z).astype(np.float64), backend.to_numpy(C).astype(np.float64)
    assert_close(Zn.T @ Zn, np.eye(N), factor=N, dtype=dtype)
    assert_close(Zn @ Cn, Y, factor=N, dtype=dtype)
    # range(Z) = range(Y) up to rounding: Y's component off range(Z) is O(eps) ||Y||.
    assert_close(Zn @ (Zn.T @ Y), Y, factor=N, dtype=dtype)
    assert np.allclose(np.tril(Cn, -1), 0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_well_conditioned_sample_costs_passes_plain_cholesky_qrs(backend, dtype, monkeypatch):
    # A well-conditioned sample costs CholQR2's two Gram + Cholesky + GEMM passes, no more;
    # passes=1 stops after one (orthogonality ~ u cond^2, at most 1e-2 by the gate).
    X, _ = sample(backend, 10.0, dtype, rng=1)
    xp = array_api_compat.array_namespace(X)
    solves = []
    original = rf._times_inverse_transpose

    def counting(*args, **kwargs):
        solves.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(rf, "_times_inverse_transpose", counting)
    for passes in (1, 2):
        solves.clear()
        Z, _ = rf.orthonormalize(xp, X, passes=passes)
        assert len(solves) == passes
        Zn = backend.to_numpy(Z).astype(np.float64)
        loss = np.abs(Zn.T @ Zn - np.eye(N)).max()
        assert loss <= (2 * rf._PLAIN_MAX_LOSS if passes == 1 else N * eps(dtype))


def test_zero_column_falls_back_to_householder():
    # A zero column has a zero Gram row: no shift gives it a direction, so Householder QR
    # (which completes the basis) takes over; the result is still an orthonormal Z, Y = Z C.
    Y = matrix_with_spectrum(M, N, np.ones(N), rng=2)
    Y[:, 5] = 0.0
    Z, C = rf.orthonormalize(np, Y, passes=2)
    assert_close(Z.T @ Z, np.eye(N), factor=10 * M)
    assert_close(Z @ C, Y, factor=10 * M)
