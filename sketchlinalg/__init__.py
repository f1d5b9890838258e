"""sketchlinalg: randomized sketches, low-rank factorizations and regularized least squares
on NumPy, PyTorch and CuPy arrays.

The vocabulary follows RandLAPACK / PARLA: sketching operators (``sketching``),
computational routines and drivers. ``import sketchlinalg`` needs NumPy and SciPy only; a
backend (torch, cupy) is used only through the arrays the caller passes.
"""

from .sketching import (
    KINDS,
    SRHT,
    CountSketch,
    GaussianSketch,
    RowSampling,
    SketchingOperator,
    SparseSign,
    sketch,
)
from .drivers import woodbury_solve

__version__ = "0.1.0"

__all__ = [
    "KINDS",
    "SRHT",
    "CountSketch",
    "GaussianSketch",
    "RowSampling",
    "SketchingOperator",
    "SparseSign",
    "sketch",
    "woodbury_solve",
]
