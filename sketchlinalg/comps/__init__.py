"""Computational routines: range finders, Krylov solvers (LSQR, PCG)."""

from .lsqr import lsqr
from .pcg import pcg
from .range_finder import adaptive_range_finder, range_finder
