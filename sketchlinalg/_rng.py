"""The ``rng`` argument, normalized once at the boundary (SPEC 7, as in SciPy)."""

from __future__ import annotations

import numpy as np

RNGLike = int | np.integer | np.random.Generator | np.random.SeedSequence | None

RNG_DOC = (
    "rng : int, numpy.random.Generator, numpy.random.SeedSequence or None\n"
    "    Source of randomness (SPEC 7). An int or SeedSequence seeds a fresh generator, a\n"
    "    Generator is used (and advanced) as given, None draws fresh OS entropy. The random\n"
    "    data is drawn on the host, so one seed gives the same result on every backend."
)


def normalize_rng(rng: RNGLike, name: str = "rng") -> np.random.Generator:
    """Turn an SPEC 7 ``rng`` argument into a ``numpy.random.Generator``.

    Raises ``TypeError`` for anything else (floats, strings, ``RandomState``, torch
    generators) and ``ValueError`` for a negative seed.
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, np.random.SeedSequence):
        return np.random.default_rng(rng)
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, (bool, np.bool_)):
        if rng < 0:
            raise ValueError(f"{name} must be a non-negative seed, got {rng}")
        return np.random.default_rng(int(rng))
    raise TypeError(
        f"{name} must be an int, a numpy.random.Generator, a numpy.random.SeedSequence or "
        f"None, got {type(rng).__name__}"
    )
