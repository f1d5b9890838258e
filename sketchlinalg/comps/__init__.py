"""Computational routines: range finders, Krylov solvers (LSQR, PCG), the damped Gram
factorization of the Woodbury identity."""

from .damped_gram import DampedGramFactor, damped_gram_factor
from .lsqr import lsqr
from .pcg import pcg
from .range_finder import adaptive_range_finder, range_finder

__all__ = [
    "DampedGramFactor",
    "adaptive_range_finder",
    "damped_gram_factor",
    "lsqr",
    "pcg",
    "range_finder",
]
