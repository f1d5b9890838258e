r"""The two-layer ReLU network of the NTK analyses (Du et al. 2019; Zhang, Martens and
Grosse 2019), written against the array API so that every backend runs it.

.. math:: u_i(W) = \frac{1}{\sqrt m} \sum_{r=1}^m a_r\, \mathrm{relu}(w_r^T x_i),
          \qquad a_r = \pm 1 \text{ fixed},\ \|x_i\| = 1,

trained in ``W`` (``m x d``) on the squared loss. The Jacobian of ``u`` has rows
:math:`J_i = m^{-1/2} [a_r 1\{w_r^T x_i \ge 0\} x_i^T]_r`, and the Gram
:math:`H = J J^T` has entries :math:`H_{ij} = x_i^T x_j \frac1m \sum_r 1_{ir} 1_{jr}`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._arrays import Arrays


def sphere_data(n: int, d: int, angle: float | None, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    r"""``n`` unit vectors in ``R^d`` (uniform) and labels uniform in [-1, 1].

    With ``angle``, the second point is replaced by a unit vector at exactly that angle
    (radians) from the first: one near-duplicate pair, which isolates a small eigenvalue
    :math:`\lambda_0` of :math:`H^\infty`, roughly proportional to the angle. The same
    ``rng`` state gives the same other points for every ``angle``.
    """
    X = rng.standard_normal((n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = rng.uniform(-1.0, 1.0, n)
    v = rng.standard_normal(d)
    if angle is not None:
        v -= (v @ X[0]) * X[0]
        X[1] = np.cos(angle) * X[0] + np.sin(angle) * v / np.linalg.norm(v)
    return X, y


def ntk_gram(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""The infinite-width Gram and the variance of its one-neuron Monte Carlo terms.

    :math:`H^\infty_{ij} = E_{w \sim N(0, I)}[x_i^T x_j 1\{w^T x_i \ge 0, w^T x_j \ge 0\}]
    = x_i^T x_j (\pi - \arccos x_i^T x_j) / (2\pi)`, and each term of the width-``m``
    average has variance :math:`(x_i^T x_j)^2 p_{ij}(1 - p_{ij})` with
    :math:`p_{ij} = (\pi - \arccos x_i^T x_j)/(2\pi)` (Du et al. 2019, Sec. 3).
    """
    G = np.clip(X @ X.T, -1.0, 1.0)
    p = (np.pi - np.arccos(G)) / (2.0 * np.pi)
    return G * p, G * G * p * (1.0 - p)


class ReLUNet:
    r"""The network on fixed data ``X`` (``n x d``) and output weights ``a`` (``m``)."""

    def __init__(self, arrays: Arrays, X: np.ndarray, a: np.ndarray) -> None:
        self.ar = arrays
        self.xp = arrays.xp
        self.X = arrays.asarray(X)
        self.a = arrays.asarray(a)
        self.n, self.d = X.shape
        self.m = a.shape[0]
        self.scale = 1.0 / math.sqrt(self.m)
        self.XX = self.X @ self.X.T

    def forward(self, W: Any) -> tuple[Any, Any, Any]:
        r"""Outputs ``u`` (n,), activation pattern ``A`` (n x m, 0/1) and pre-activations."""
        xp = self.xp
        P = self.X @ W.T
        A = xp.astype(P >= 0, xp.float64)
        return (xp.where(P >= 0, P, 0.0 * P) @ self.a) * self.scale, A, P

    def gram(self, A: Any) -> Any:
        r""":math:`H = J J^T`, from the activation pattern."""
        return self.XX * (A @ A.T) / self.m

    def jt(self, v: Any, A: Any) -> Any:
        r""":math:`J^T v` reshaped as ``m x d`` (the same shape as ``W``)."""
        return (self.a[:, None] * (A.T @ (v[:, None] * self.X))) * self.scale

    def jacobian(self, A: Any) -> Any:
        r"""The ``n x (m d)`` Jacobian (rows flattened like ``W.reshape(-1)``)."""
        xp = self.xp
        coef = A * self.a[None, :] * self.scale
        return xp.reshape(coef[:, :, None] * self.X[:, None, :], (self.n, self.m * self.d))

    def jv(self, A: Any, dW: Any) -> Any:
        r""":math:`J\, \mathrm{vec}(dW)`."""
        xp = self.xp
        return xp.sum(A * (self.X @ dW.T) * self.a[None, :], axis=1) * self.scale

    def flip_bound(self, P: Any, dW: Any) -> Any:
        r"""Per-sample bound on the linearization error of the step ``W -> W + dW``:

        :math:`|u_i(W + dW) - u_i(W) - J_i\, dW| \le m^{-1/2} \sum_r
        1\{\text{sign of } w_r^T x_i \text{ flips}\}\, |dw_r^T x_i|`, since
        :math:`\mathrm{relu}(z + b) - \mathrm{relu}(z) - 1\{z \ge 0\} b` is 0 when
        ``z`` and ``z + b`` lie on the same side of 0 and at most ``|b|`` otherwise.
        """
        xp = self.xp
        B = self.X @ dW.T
        flip = (P >= 0) != ((P + B) >= 0)
        return xp.sum(xp.where(flip, xp.abs(B), 0.0 * B), axis=1) * self.scale


def init_weights(m: int, d: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    r""":math:`w_r \sim N(0, I_d)` and :math:`a_r` uniform on :math:`\{-1, 1\}` (Du et al.)."""
    return rng.standard_normal((m, d)), rng.choice(np.array([-1.0, 1.0]), size=m)
