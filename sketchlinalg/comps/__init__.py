"""Computational routines: range finders, Krylov solvers (LSQR, PCG), the damped Gram
factorization of the Woodbury identity."""

from .damped_gram import DampedGramFactor, damped_gram_factor
from .lsqr import lsqr
from .pcg import pcg
from .range_finder import adaptive_range_finder, range_finder
