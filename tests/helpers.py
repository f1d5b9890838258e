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
