"""Random data drawn by blocks of columns, so that any range of an operator's columns can be
drawn on its own (by a Dask task, on any machine) and equal the same columns of the whole."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

# Columns per block: small enough that a block of a Gaussian sketch with d = 1000 rows is
# 32 MB, large enough that the per-block cost of a fresh generator (~20 us) stays small.
BLOCK_COLUMNS = 4096


@dataclass(frozen=True)
class ColumnStream:
    """The random stream of an ``m``-column operator: block ``k`` (columns
    ``[k B, (k + 1) B)``, ``B = BLOCK_COLUMNS``) is drawn from its own generator,
    ``SeedSequence(entropy, spawn_key=(k,))``; ``entropy`` is drawn once from the
    operator's ``rng``, so one ``rng`` still fixes the operator completely."""

    entropy: int
    m: int

    @classmethod
    def from_rng(cls, rng: np.random.Generator, m: int) -> ColumnStream:
        return cls(int(rng.integers(0, 2**63)), m)

    def blocks(self, start: int, stop: int) -> Iterator[tuple[np.random.Generator, int, int]]:
        """``(generator, lo, hi)`` for each block that meets columns ``[start, stop)``:
        the block's generator and its columns ``[lo, hi)``."""
        for k in range(start // BLOCK_COLUMNS, -(-stop // BLOCK_COLUMNS)):
            lo, hi = k * BLOCK_COLUMNS, min((k + 1) * BLOCK_COLUMNS, self.m)
            seed = np.random.SeedSequence(self.entropy, spawn_key=(k,))
            yield np.random.default_rng(seed), lo, hi

    def draw(
        self, start: int, stop: int,
        draw_block: Callable[[np.random.Generator, int], tuple[np.ndarray, ...]],
    ) -> tuple[np.ndarray, ...]:
        """The arrays ``draw_block(generator, width)`` returns (columns along the first
        axis) for columns ``[start, stop)``, ``start < stop``: blocks concatenated, then cut
        to the range."""
        parts = [draw_block(gen, hi - lo) for gen, lo, hi in self.blocks(start, stop)]
        first = (start // BLOCK_COLUMNS) * BLOCK_COLUMNS
        cut = slice(start - first, stop - first)
        return tuple(np.concatenate(arrays)[cut] if len(arrays) > 1 else arrays[0][cut]
                     for arrays in zip(*parts, strict=True))
