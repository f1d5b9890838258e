"""Dask arrays (chunked by rows, in memory, on disk or on a ``dask.distributed`` cluster):
sketches, low-rank drivers and ridge regression built from Dask's own operations.

Private: the public entry points (``S @ A``, ``rsvd``, ``ridge``, ...) dispatch here when
handed a Dask array, and only then is this package (and Dask) imported.
"""
