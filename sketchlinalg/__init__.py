"""sketchlinalg: randomized sketches, low-rank factorizations and regularized least squares
on NumPy, PyTorch and CuPy arrays.

The vocabulary follows RandLAPACK / PARLA: sketching operators (``sketching``),
computational routines and drivers. ``import sketchlinalg`` needs NumPy and SciPy only; a
backend (torch, cupy) is used only through the arrays the caller passes.
"""

from .comps import (
    DampedGramFactor,
    adaptive_range_finder,
    damped_gram_factor,
    lsqr,
    pcg,
    range_finder,
)
from .drivers import eigh_randomized, nystrom, ridge, rsvd, woodbury_solve
from .sketching import (
    KINDS,
    SRHT,
    BlockSRHT,
    CountSketch,
    GaussianSketch,
    RowSampling,
    SketchingOperator,
    SparseSign,
    TensorSketch,
    sketch,
)

__version__ = "0.1.0"

__all__ = [
    "KINDS",
    "SRHT",
    "BlockSRHT",
    "CountSketch",
    "DampedGramFactor",
    "GaussianSketch",
    "RowSampling",
    "SketchingOperator",
    "SparseSign",
    "TensorSketch",
    "adaptive_range_finder",
    "damped_gram_factor",
    "eigh_randomized",
    "lsqr",
    "nystrom",
    "pcg",
    "range_finder",
    "ridge",
    "rsvd",
    "sketch",
    "woodbury_solve",
]
