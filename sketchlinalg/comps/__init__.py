"""Computational routines: range finders, Krylov solvers (LSQR, PCG)."""

from .range_finder import adaptive_range_finder, range_finder
