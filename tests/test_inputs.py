"""What each entry point accepts, across entry points (the table of the guide's section
"What each entry point accepts"): half precision in and out everywhere, scalar arrays for
lam, empty inputs. Accuracy for these inputs is tested with each routine's own oracle in its
test file; here every public entry point goes through the same checks."""

from __future__ import annotations

import numpy as np
import pytest

import sketchlinalg as sl
from helpers import assert_close


def halves(backend):
    """The half-precision dtypes of a backend (float16 everywhere, bfloat16 on torch and JAX;
    skipped where there are none)."""
    return backend.halves()


def convert(backend, X, dtype):
    return backend.cast(X, dtype)


ENTRY_POINTS = {
    "sketch": lambda A, C, b: (sl.sketch("srht", 8, A.shape[0], rng=0) @ A,),
    "range_finder": lambda A, C, b: (sl.range_finder(A, 4, rng=0),),
    "adaptive_range_finder": lambda A, C, b: (sl.adaptive_range_finder(A, tol=0.5, rng=0)[0],),
    "rsvd": lambda A, C, b: sl.rsvd(A, 4, rng=0),
    "nystrom": lambda A, C, b: sl.nystrom(C, 4, rng=0),
    "eigh_randomized": lambda A, C, b: sl.eigh_randomized(C, 4, rng=0),
    "ridge": lambda A, C, b: (sl.ridge(A, b, 0.5),),
    "woodbury_solve": lambda A, C, b: (sl.woodbury_solve(A, b, 0.5),),
    "lsqr": lambda A, C, b: (sl.lsqr(A, b)[0],),
    "pcg": lambda A, C, b: (sl.pcg(C, A.T @ b)[0],),
    "damped_gram_factor": lambda A, C, b: (sl.damped_gram_factor(C, 0.5).solve(A.T @ b),),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_half_precision_in_half_precision_out(backend, entry):
    # float16 (bfloat16 too on torch) is computed in float32 and every array returned comes
    # back in the input's dtype and backend.
    rng = np.random.default_rng(0)
    A = rng.standard_normal((64, 12)) / 8
    C = A.T @ A + np.eye(12)
    b = rng.standard_normal(64)
    for dtype in halves(backend):
        Ah, Ch, bh = (convert(backend, X, dtype) for X in (A, C, b))
        for out in ENTRY_POINTS[entry](Ah, Ch, bh):
            assert out.dtype == dtype and type(out) is type(Ah), (entry, dtype, out.dtype)
            assert np.all(np.isfinite(backend.to_numpy(out).astype(np.float64)))


def test_lam_as_a_scalar_array(backend):
    # Every lam accepts a 0-d array of the backend (and a NumPy one); longer arrays are
    # refused by ridge and damped_gram_factor (woodbury_solve takes a 1-D array of lams).
    rng = np.random.default_rng(1)
    A = rng.standard_normal((40, 6))
    b = rng.standard_normal(40)
    C = A.T @ A
    for lam in (np.array(0.5), backend.asarray(np.array(0.5))):
        assert_close(sl.ridge(A, b, lam), sl.ridge(A, b, 0.5), factor=1)
        assert_close(sl.woodbury_solve(A, b, lam), sl.woodbury_solve(A, b, 0.5), factor=1)
        assert sl.damped_gram_factor(C, lam).lam == 0.5
    for fn in (lambda lam: sl.ridge(A, b, lam), lambda lam: sl.damped_gram_factor(C, lam)):
        with pytest.raises(ValueError, match="lam must be a scalar"):
            fn(backend.asarray(np.array([0.5, 1.0])))


def test_gram_solves_with_no_columns(backend):
    # U with no columns: the Gram is 0 x 0 and (U U^T + lam I)^{-1} g = g / lam (the empty
    # Gram made damped_gram_factor's condition number fail on an empty maximum).
    g = backend.asarray(np.arange(1.0, 11.0))
    F = sl.damped_gram_factor(backend.asarray(np.zeros((0, 0))), 2.0)
    assert F.cond == 1.0 and tuple(F.solve(backend.asarray(np.zeros((0, 3)))).shape) == (0, 3)
    U = backend.asarray(np.zeros((10, 0)))
    assert_close(sl.woodbury_solve(U, g, 2.0), np.arange(1.0, 11.0) / 2, factor=1)
    X = sl.woodbury_solve(U, g, [2.0, 4.0])
    assert_close(X, np.arange(1.0, 11.0)[None, :] / np.array([[2.0], [4.0]]), factor=1)
