"""TensorSketch: a CountSketch of Kronecker products, applied from their factors by FFTs."""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import numpy as np

from .. import backend
from .._rng import RNGLike
from .._validation import check_dense, check_int
from ._sparse import SparseSketchingOperator


def _check_factors(factors: Any) -> tuple[int, int]:
    if isinstance(factors, (str, bytes)) or not hasattr(factors, "__len__") or len(factors) != 2:
        raise TypeError(f"factors must be a pair of ints (m1, m2), got {factors!r}")
    return (check_int(factors[0], "factors[0]", minimum=1),
            check_int(factors[1], "factors[1]", minimum=1))


class TensorSketch(SparseSketchingOperator):
    r"""Degree-2 TensorSketch (Pham and Pagh 2013; Avron, Nguyen and Woodruff 2014; Ahle et
    al. 2020) of shape ``(d, m1 * m2)``: a CountSketch of vectors of length ``m1 m2`` whose
    hash and sign come from two independent CountSketches of the factors.

    With :math:`h_1: [m_1] \to [d]`, :math:`h_2: [m_2] \to [d]` uniform and
    :math:`s_1, s_2` Rademacher, all independent, column :math:`(i, j)` (index
    :math:`i m_2 + j`, the order of ``numpy.kron``: :math:`(x \otimes y)_{i m_2 + j} = x_i
    y_j`) has the single nonzero :math:`s_1(i) s_2(j)` in row
    :math:`(h_1(i) + h_2(j)) \bmod d`. For a matrix :math:`W \in \mathbb{R}^{m_1 \times m_2}`
    this order is the row-major ``W.reshape(-1)``, so :math:`S\,\mathrm{vec}(g a^T) =
    S (g \otimes a)`. On a Kronecker product the sketch is the circular convolution of the
    factors' CountSketches :math:`C_1 x` and :math:`C_2 y`,

    .. math:: S (x \otimes y) = \mathcal{F}^{-1}\big(\mathcal{F}(C_1 x) \odot
              \mathcal{F}(C_2 y)\big),

    which :meth:`sketch_factors` computes in :math:`O(m_1 + m_2 + d \log d)` per pair without
    forming :math:`x \otimes y`; ``S @ A`` on a dense ``(m1 m2, n)`` matrix is the sparse
    CountSketch product, :math:`O(m_1 m_2 n)`.

    :math:`E[S^T S] = I` (every column has one :math:`\pm 1`; two distinct columns share a
    sign product of mean zero). The hash :math:`h_1(i) + h_2(j)` is only pairwise
    independent over columns, so the variance of :math:`\langle Sx, Sy \rangle` exceeds that
    of a fully random CountSketch. Exactly, with :math:`X, Y` the :math:`m_1 \times m_2`
    reshapes of :math:`x, y`, :math:`P = X^T Y`, :math:`Q = X Y^T` and
    :math:`c = \gcd(2, d)`:

    .. math:: \operatorname{Var}\langle Sx, Sy\rangle
        = \frac1d \Big[\sum_{j \ne l} (P_{jl}^2 + P_{jl} P_{lj})
                     + \sum_{i \ne k} (Q_{ik}^2 + Q_{ik} Q_{ki})
                     + \sum_{i \ne k,\, j \ne l} (X_{ij}^2 Y_{kl}^2 + X_{ij} Y_{ij} X_{kl} Y_{kl})
                \Big]
          + \frac{c}{d^2} \sum_{i \ne k,\, j \ne l}
            (X_{ij} X_{il} Y_{kj} Y_{kl} + X_{ij} X_{kj} Y_{il} Y_{kl}),

    (derived from the pairings of the four signs; ``tests/test_tensor_sketch.py`` checks it
    against the exact expectation over all hashes and signs of small operators). For
    rank-one inputs :math:`x = a \otimes b`, :math:`y = c \otimes e` its leading terms are

    .. math:: \frac1d \big(\|x\|^2 \|y\|^2 + 3 \langle x, y\rangle^2
              + \langle a, c\rangle^2 \|b\|^2 \|e\|^2
              + \langle b, e\rangle^2 \|a\|^2 \|c\|^2\big),

    against :math:`(\|x\|^2 \|y\|^2 + \langle x, y\rangle^2) / d` for a fully random
    CountSketch of ``x`` (the same for orthogonal factors, three times larger for
    :math:`\|Sx\|^2`; Pham and Pagh 2013 and Avron et al. 2014 bound it).

    It is not one of the :data:`~sketchlinalg.KINDS` built as ``sketch(kind, d, m)``: it
    needs the split ``m = m1 * m2``, and on a vector without that structure it is a
    CountSketch with a less independent hash.

    Parameters
    ----------
    d : int
        Output dimension, ``1 <= d <= m1 * m2``.
    factors : pair of int
        ``(m1, m2)``, the lengths of the two factors.
    rng : int, numpy.random.Generator, numpy.random.SeedSequence or None
        Source of randomness (SPEC 7): ``h1, h2, s1, s2`` are drawn on the host in that
        order, so one seed gives the same operator on every backend.
    """

    def __init__(self, d: int, factors: tuple[int, int], rng: RNGLike = 0) -> None:
        m1, m2 = _check_factors(factors)
        super().__init__(d, m1 * m2, rng)
        self.factors = (m1, m2)
        d = self.shape[0]
        self.hashes = (self._rng.integers(0, d, size=m1), self._rng.integers(0, d, size=m2))
        self.signs = (self._rng.choice(np.array([-1.0, 1.0]), size=m1),
                      self._rng.choice(np.array([-1.0, 1.0]), size=m2))
        # These m1 + m2 draws are the whole operator: the COO triplets of the dense view
        # (any range of columns, for a Dask task too) are derived from them.

    @staticmethod
    def apply_flops(d: int, m: int, **options: Any) -> float:
        return 2.0 * m  # S @ A: one signed add per input entry, as a CountSketch

    @staticmethod
    def factor_flops(d: int, m1: int, m2: int, pairs: int = 1) -> float:
        """Flops of one :meth:`sketch_factors` output from ``pairs`` Kronecker pairs: the two
        factor CountSketches and real FFTs of each pair and a complex product-sum, then one
        inverse FFT (a real FFT of length ``d`` counted as ``2.5 d log2 d``)."""
        fft = 2.5 * d * math.log2(max(d, 2))
        return pairs * (2.0 * (m1 + m2) + 2.0 * fft + 8.0 * (d // 2 + 1)) + fft

    def _columns(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cols = np.arange(start, stop)
        i, j = np.divmod(cols, self.factors[1])
        rows = (self.hashes[0][i] + self.hashes[1][j]) % self.shape[0]
        return rows, cols, self.signs[0][i] * self.signs[1][j]

    def _factor_sketch(self, k: int, X: Any) -> Any:
        """``C_k X`` along the last axis of ``X`` (shape ``(..., m_k)``): ``(..., d)``."""
        d, m = self.shape[0], self.factors[k]
        C = self._on(f"C{k}", X, X.dtype, lambda: backend.sparse_from_coo(
            self.hashes[k], np.arange(m), self.signs[k], (d, m), X, X.dtype))
        xp = backend.namespace(X)
        flat = xp.reshape(X, (-1, m))
        return xp.reshape((C @ flat.T).T, (*X.shape[:-1], d))

    def sketch_factors(self, X: Any, Y: Any) -> Any:
        r"""``sum_t S (x_t (x) y_t)`` from the factors, never forming the products.

        For ``X`` of shape ``(..., T, m1)`` and ``Y`` of shape ``(..., T, m2)`` (the same
        leading shape), the result has shape ``(..., d)``: entry ``[..., :]`` is
        :math:`\sum_t S (x_t \otimes y_t) = S\,\mathrm{vec}(X^T Y)`, the sketch of a sum of
        rank-one matrices (a Khatri-Rao product summed over ``T``, e.g. a per-sample gradient
        :math:`\sum_t g_t a_t^T` of a layer applied at ``T`` positions). 1-D ``X`` and
        ``Y`` are one pair: the result is :math:`S (x \otimes y)`, shape ``(d,)``.

        Costs :math:`O(m_1 + m_2 + d \log d)` per pair (:meth:`factor_flops`): each factor is
        CountSketched, both are transformed by real FFTs, multiplied and summed over ``T`` in
        the frequency domain, and one inverse FFT per output gives the circular convolution.
        Runs on any backend whose namespace has the array API's ``fft`` extension (NumPy,
        PyTorch, CuPy, JAX, array-api-strict); float16 and bfloat16 are computed in float32.

        Raises
        ------
        TypeError
            For non-arrays, non-floating dtypes, arrays of different backends, or a backend
            without an FFT.
        ValueError
            For a trailing axis that is not ``m1`` (``X``) or ``m2`` (``Y``), or leading
            shapes that differ.
        """
        check_dense(X, "X", ndim=tuple(range(1, 33)))
        check_dense(Y, "Y", ndim=tuple(range(1, 33)))
        if backend.backend_name(X) != backend.backend_name(Y):
            raise TypeError(f"X and Y must be arrays of one backend, got "
                            f"{backend.backend_name(X)} and {backend.backend_name(Y)}")
        xp = backend.namespace(X, Y)
        m1, m2 = self.factors
        for name, A, m, k in (("X", X, m1, 1), ("Y", Y, m2, 2)):
            if A.shape[-1] != m:
                raise ValueError(f"shape mismatch: {name} has {A.shape[-1]} entries along its "
                                 f"last axis but factor {k} of the operator has m{k}={m} "
                                 f"(factors {self.factors}, {name} shape {tuple(A.shape)})")
        if tuple(X.shape[:-1]) != tuple(Y.shape[:-1]):
            raise ValueError(f"X and Y must have the same leading shape (pairs), got "
                             f"X {tuple(X.shape)} and Y {tuple(Y.shape)}")
        fft = getattr(xp, "fft", None)
        if fft is None:
            raise TypeError(f"X's backend ({backend.backend_name(X)}) has no FFT (the array "
                            f"API's fft extension), which sketch_factors needs")
        prec = backend.precision(xp, X.dtype, Y.dtype, name="X")
        single = X.ndim == 1
        Xw, Yw = prec.compute(X), prec.compute(Y)
        if single:
            Xw, Yw = xp.expand_dims(Xw, axis=0), xp.expand_dims(Yw, axis=0)
        d = self.shape[0]
        if math.prod(Xw.shape[:-1]) == 0:  # no pairs: a zero sketch per output
            return xp.zeros((*Xw.shape[:-2], d), dtype=prec.out,
                            device=array_api_compat.device(X))
        spectrum = fft.rfft(self._factor_sketch(0, Xw), n=d, axis=-1) * fft.rfft(
            self._factor_sketch(1, Yw), n=d, axis=-1)
        out = fft.irfft(xp.sum(spectrum, axis=-2), n=d, axis=-1)
        return prec.result(out)

    def __repr__(self) -> str:
        return f"TensorSketch(d={self.shape[0]}, factors={self.factors})"
