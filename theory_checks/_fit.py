"""Least-squares fits of rates and scaling exponents, with the statistics the PASS rules use."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.stats


@dataclass(frozen=True)
class Fit:
    """The ordinary least-squares line ``y = intercept + slope * x``.

    ``slope_se`` is the usual standard error of the slope (residual variance over
    ``sum (x - mean x)^2``), ``r2`` the coefficient of determination, ``n`` the point count.
    """

    slope: float
    intercept: float
    r2: float
    slope_se: float
    n: int

    def half_width(self, level: float = 0.99) -> float:
        """Half-width of the two-sided ``level`` confidence interval of the slope
        (Student t with ``n - 2`` degrees of freedom)."""
        if self.n <= 2:
            return math.inf
        return float(scipy.stats.t.ppf(0.5 + level / 2, self.n - 2)) * self.slope_se


def line(x: np.ndarray, y: np.ndarray) -> Fit:
    """OLS fit of ``y`` on ``x`` (1-D arrays of equal length >= 2, finite)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"need two equal-length arrays of >= 2 points, got {x.size} and {y.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("cannot fit a line through NaN or Inf values")
    xc = x - x.mean()
    sxx = float(xc @ xc)
    slope = float(xc @ (y - y.mean())) / sxx
    intercept = float(y.mean() - slope * x.mean())
    resid = y - intercept - slope * x
    ss_res = float(resid @ resid)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    se = math.sqrt(ss_res / (x.size - 2) / sxx) if x.size > 2 else math.inf
    return Fit(slope, intercept, r2, se, int(x.size))


def rate(values: np.ndarray, start: int = 0) -> Fit:
    """Log-linear fit ``log values[k] = c + slope * k`` over the steps ``k >= start``;
    ``exp(slope)`` is the per-step factor."""
    v = np.asarray(values, dtype=np.float64)[start:]
    if np.any(v <= 0):
        raise ValueError("a rate needs positive values")
    return line(np.arange(start, start + v.size), np.log(v))


#: A residual's rate is fitted only while ``||r||`` is at least this multiple of float64's
#: rounding of ``f - y`` (about ``eps ||y||``): rounding then moves each ``||r||^2`` by about
#: 2e-6 relative. Fitted down to ``||r||^2 ~ 1e-24 ||r_0||^2`` instead, the last points carried
#: ~5e-4 relative rounding, and NumPy's and torch's GD rates in the NTK check (quick run)
#: differed by 3.4e-6 relative; now by 6e-8.
ROUNDING_MARGIN = 1e6


def above_rounding(r2: np.ndarray, y: np.ndarray) -> int:
    """The number of leading steps to fit: one past the last step whose ``||r||^2`` exceeds
    ``(ROUNDING_MARGIN eps)^2 ||y||^2``."""
    floor = (ROUNDING_MARGIN * np.finfo(np.float64).eps) ** 2 * float(np.sum(np.square(y)))
    above = np.nonzero(np.asarray(r2) > floor)[0]
    if above.size == 0:
        raise ValueError("no step's residual is above the rounding floor: nothing to fit")
    return int(above[-1]) + 1


def exponent(x: np.ndarray, values: np.ndarray) -> Fit:
    """Log-log fit ``log values = c + slope * log x`` (a power law ``values ~ x^slope``)."""
    v = np.asarray(values, dtype=np.float64)
    if np.any(v <= 0) or np.any(np.asarray(x) <= 0):
        raise ValueError("a power-law fit needs positive values")
    return line(np.log(x), np.log(v))


def bounded_slope(window: int) -> float:
    """Largest OLS slope (over ``k = 0..window-1``) of a sequence with values in ``[0, 1]``.

    It is ``sum_{k > kbar} (k - kbar) / sum_k (k - kbar)^2`` (the sequence is 0 below the
    mean step and 1 above), about ``1.5 / window``: a perturbation of ``log values`` bounded
    by ``L`` moves a fitted rate's slope by at most ``L`` times this.
    """
    k = np.arange(window, dtype=np.float64)
    kc = k - k.mean()
    return float(kc[kc > 0].sum() / (kc @ kc))


def mean_ci(samples: np.ndarray, z: float = 3.0) -> tuple[float, float]:
    """Sample mean and ``z`` standard errors of the mean."""
    s = np.asarray(samples, dtype=np.float64).ravel()
    return float(s.mean()), z * float(s.std(ddof=1)) / math.sqrt(s.size)
