"""Computational routines: range finders, Krylov solvers (LSQR, PCG)."""
