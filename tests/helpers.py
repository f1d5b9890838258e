"""Test helpers: dtype-derived tolerances and matrices with a prescribed spectrum."""

from __future__ import annotations

import numpy as np

from sketchlinalg.backend import to_host


def eps(dtype) -> float:
    """Machine epsilon of a floating dtype of any backend (NumPy, torch, CuPy, JAX,
    array-api-strict) or of its name."""
    name = str(dtype)
    if "bfloat16" in name:
        return 2.0**-7
    for bits in ("float16", "float32", "float64"):
        if bits in name:
            return float(np.finfo(np.dtype(bits)).eps)
    raise TypeError(f"not a floating dtype: {dtype!r}")


def assert_close(actual, desired, *, factor: float = 100.0, dtype=None, scale=None) -> None:
    """``|actual - desired| <= factor * eps(dtype) * scale`` entrywise.

    ``dtype`` defaults to the dtype of ``actual``; ``scale`` defaults to the largest magnitude
    of ``desired`` (a norm-wise bound, the natural one for a matrix product or a solve).
    ``factor`` absorbs the accumulation length and conditioning; callers derive it from them.
    """
    dtype = actual.dtype if dtype is None else dtype
    a = to_host(actual).astype(np.float64)
    d = to_host(desired).astype(np.float64)
    assert a.shape == d.shape, f"shape {a.shape} != {d.shape}"
    scale = max(float(np.abs(d).max()) if d.size else 0.0, 1e-300) if scale is None else scale
    tol = factor * eps(dtype) * scale
    err = float(np.abs(a - d).max()) if a.size else 0.0
    assert err <= tol, f"max error {err:.3e} > tolerance {tol:.3e} ({factor} eps * {scale:.3e})"


def matrix_with_spectrum(m: int, n: int, singular_values, rng=0) -> np.ndarray:
    """A dense ``m x n`` float64 matrix ``U diag(s) V^T`` with Haar-random ``U``, ``V``."""
    rng = np.random.default_rng(rng)
    s = np.asarray(singular_values, dtype=np.float64)
    k = s.size
    U, _ = np.linalg.qr(rng.standard_normal((m, k)))
    V, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return (U * s) @ V.T


def orthonormal(m: int, n: int, rng=0) -> np.ndarray:
    """A Haar-random ``m x n`` matrix with orthonormal columns."""
    Q, _ = np.linalg.qr(np.random.default_rng(rng).standard_normal((m, n)))
    return Q


def tensor_sketch_variance(X: np.ndarray, Y: np.ndarray, d: int) -> float:
    """Exact ``Var <S x, S y>`` of a degree-2 TensorSketch with ``d`` rows, for ``x, y`` the
    row-major ``vec`` of the ``m1 x m2`` matrices ``X, Y`` (the formula of
    ``sketchlinalg.TensorSketch``'s docstring; every sum over ``i != k, j != l`` by inclusion
    and exclusion of the equal-index terms)."""
    P, Q, Z = X.T @ Y, X @ Y.T, X * Y
    X2, Y2 = X * X, Y * Y

    def off(total, same_row, same_col, same_both):  # sum over i != k and j != l
        return total - same_row - same_col + same_both

    same_j = np.sum(P**2 + P * P.T) - np.sum(np.diag(P) ** 2 + np.diag(P) ** 2)
    same_i = np.sum(Q**2 + Q * Q.T) - np.sum(np.diag(Q) ** 2 + np.diag(Q) ** 2)
    rows_x2, rows_y2 = X2.sum(axis=1), Y2.sum(axis=1)
    cols_x2, cols_y2 = X2.sum(axis=0), Y2.sum(axis=0)
    squares = off(X2.sum() * Y2.sum(), rows_x2 @ rows_y2, cols_x2 @ cols_y2, np.sum(X2 * Y2))
    products = off(Z.sum() ** 2, np.sum(Z.sum(axis=1) ** 2), np.sum(Z.sum(axis=0) ** 2),
                   np.sum(Z * Z))
    # sum X_ij X_il Y_kj Y_kl and sum X_ij X_kj Y_il Y_kl over i != k, j != l
    cross_cols = off(np.sum((X.T @ X) * (Y.T @ Y)), np.sum(Z.sum(axis=1) ** 2),
                     cols_x2 @ cols_y2, np.sum(Z * Z))
    cross_rows = off(np.sum((X @ X.T) * (Y @ Y.T)), rows_x2 @ rows_y2,
                     np.sum(Z.sum(axis=0) ** 2), np.sum(Z * Z))
    c = np.gcd(2, d)
    return float((same_j + same_i + squares + products) / d
                 + c * (cross_cols + cross_rows) / d**2)
