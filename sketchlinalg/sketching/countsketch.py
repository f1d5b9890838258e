"""CountSketch (Clarkson-Woodruff transform)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .._rng import RNGLike
from ._sparse import SparseSketchingOperator
from ._stream import ColumnStream


def _countsketch_columns(d: int, gen: np.random.Generator,
                         width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and sign of ``width`` columns."""
    return gen.integers(0, d, size=width), gen.choice(np.array([-1.0, 1.0]), size=width)


class CountSketch(SparseSketchingOperator):
    r"""CountSketch: column :math:`j` of :math:`S \in \mathbb{R}^{d \times m}` has a single
    nonzero :math:`s_j \in \{\pm 1\}` in row :math:`h(j)`, with :math:`h` uniform on
    :math:`\{0, \dots, d-1\}` and :math:`s` Rademacher, all independent.

    :math:`E[S^T S] = I_m`; for an orthonormal :math:`U \in \mathbb{R}^{m \times n}`,
    :math:`E\|U^T S^T S U - I\|_F^2 = (n^2 + n - 2\sum_j \|u_j\|^4)/d` (Clarkson and Woodruff
    2013; Nelson and Nguyen 2013). Applying it costs one pass over the input, :math:`O(mn)`,
    as a sparse product.

    Parameters
    ----------
    d, m : int
        Output and input dimensions, ``1 <= d <= m``.
    rng : int, numpy.random.Generator, numpy.random.SeedSequence or None
        Source of randomness (SPEC 7).
    """

    @staticmethod
    def apply_flops(d: int, m: int, **options: Any) -> float:
        return 2.0 * m  # one signed add per input entry

    def __init__(self, d: int, m: int, rng: RNGLike = 0) -> None:
        super().__init__(d, m, rng)
        self._stream = ColumnStream.from_rng(self._rng, m)

    def _columns(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows, signs = self._stream.draw(start, stop,
                                        functools.partial(_countsketch_columns, self.shape[0]))
        return rows, np.arange(start, stop), signs
