"""Argument checks shared by every public entry point: clear errors naming the argument."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import backend


def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """An integer argument (bools rejected), optionally bounded below."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_real(value: Any, name: str) -> float:
    """A real scalar as a float: a Python or NumPy int or float, or a 0-d integer or floating
    array of any backend (a NumPy array, a torch tensor). Bools and complex numbers raise
    ``TypeError``; arrays with one or more dimensions raise ``ValueError``."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number, got bool")
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if hasattr(value, "ndim") and hasattr(value, "dtype"):
        try:
            xp = backend.namespace(value)
        except TypeError:
            xp = None
        if xp is not None:
            if value.ndim != 0:
                raise ValueError(
                    f"{name} must be a scalar (a number or a 0-d array), got an array of shape "
                    f"{tuple(value.shape)}"
                )
            if xp.isdtype(value.dtype, ("integral", "real floating")):
                return float(value)
            raise TypeError(f"{name} must be a real number, got a 0-d array of dtype "
                            f"{value.dtype}")
    raise TypeError(f"{name} must be a real number (or a 0-d array), got "
                    f"{type(value).__name__}")


def check_nonnegative(value: Any, name: str) -> float:
    """A finite real scalar >= 0 (see :func:`check_real` for what counts as a scalar)."""
    value = check_real(value, name)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def check_dense(A: Any, name: str, *, ndim: tuple[int, ...] = (1, 2)) -> tuple[Any, Any]:
    """Validate a dense floating array; return ``(xp, compute_dtype)``.

    Raises ``TypeError`` for non-arrays and non-floating dtypes, ``ValueError`` for the
    wrong number of dimensions.
    """
    try:
        xp = backend.namespace(A)
    except TypeError:
        raise TypeError(
            f"{name} must be a NumPy, PyTorch or CuPy array (or another array-API array, "
            f"e.g. JAX), got {type(A).__name__}"
        ) from None
    backend.check_concrete(A, name)
    if A.ndim not in ndim:
        want = " or ".join(f"{n}-D" for n in ndim)
        raise ValueError(f"{name} must be {want}, got shape {tuple(A.shape)}")
    return xp, backend.compute_dtype(xp, A.dtype, name)


def check_finite(xp: Any, A: Any, name: str) -> None:
    """Reject NaN or Inf entries (never return a silent NaN result)."""
    if not backend.all_finite(A):
        raise ValueError(f"{name} contains NaN or Inf entries")
