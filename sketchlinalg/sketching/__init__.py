"""Sketching operators, one file per family, and the ``sketch`` factory."""

from __future__ import annotations

from typing import Any

from .._rng import RNGLike
from ._base import Adjoint, SketchingOperator
from .block_srht import BlockSRHT
from .countsketch import CountSketch
from .gaussian import GaussianSketch
from .sampling import RowSampling
from .sparse_sign import SparseSign
from .srht import SRHT
from .tensor_sketch import TensorSketch

KINDS: dict[str, type[SketchingOperator]] = {
    "gaussian": GaussianSketch,
    "srht": SRHT,
    "countsketch": CountSketch,
    "sparse_sign": SparseSign,
    "sampling": RowSampling,
}


def sketch(kind: str, d: int, m: int, rng: RNGLike = 0, **options: Any) -> SketchingOperator:
    """Build a sketching operator ``S`` of shape ``(d, m)`` by family name.

    Parameters
    ----------
    kind : str
        The family: ``"gaussian"``, ``"srht"``, ``"countsketch"``, ``"sparse_sign"`` or
        ``"sampling"``; see the class of each for its definition and scaling.
    d, m : int
        Output and input dimensions, ``1 <= d <= m``.
    rng : int, numpy.random.Generator, numpy.random.SeedSequence or None
        Source of randomness (SPEC 7): an int or SeedSequence seeds a fresh generator, a
        Generator is used (and advanced) as given, None draws fresh OS entropy. One ``rng``
        fixes the operator completely, on every backend and device.
    **options
        Family options, e.g. ``nnz`` for ``"sparse_sign"``.

    Returns
    -------
    SketchingOperator
        With ``E[S^T S] = I``.
    """
    if not isinstance(kind, str):
        raise TypeError(f"kind must be a str, got {type(kind).__name__}")
    if kind not in KINDS:
        raise ValueError(f"unknown sketch kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    return KINDS[kind](d, m, rng=rng, **options)


__all__ = [
    "KINDS",
    "SRHT",
    "Adjoint",
    "BlockSRHT",
    "CountSketch",
    "GaussianSketch",
    "RowSampling",
    "SketchingOperator",
    "SparseSign",
    "TensorSketch",
    "sketch",
]
