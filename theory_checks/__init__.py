"""theory_checks: numerical checks of the claims of the SENG paper (Yang, Xu, Wen, Chen, Xu,
"Sketchy empirical natural gradient methods for deep learning", J. Sci. Comput. 92, 2022;
arXiv:2006.05924) and of the linear algebra under it.

One module per claim, each with ``run(config) -> Result``:

1. :mod:`theory_checks.ntk`: linear convergence in the neural-tangent-kernel regime;
2. :mod:`theory_checks.stationary`: global convergence to stationary points (torch);
3. :mod:`theory_checks.fisher`: which Fisher (the empirical-Fisher step on squared loss);
4. :mod:`theory_checks.linalg`: Woodbury, sketch distortion, rSVD, convolution Gram,
   distributed directions;
5. :mod:`theory_checks.empirical`: SENG against SGD and Adam on the MNIST-1D CNN of
   :mod:`seng.bench` (torch, ``mnist1d``).

``python -m theory_checks`` runs them all and writes a report.
"""

from __future__ import annotations

import importlib

from ._config import Config
from ._result import Check, Result

CHECKS = ("ntk", "stationary", "fisher", "linalg", "empirical")

__all__ = ["CHECKS", "Check", "Config", "Result", "run_check"]


def run_check(name: str, config: Config | None = None) -> Result:
    """Run the check ``name`` (one of :data:`CHECKS`) and return its :class:`Result`."""
    if name not in CHECKS:
        raise ValueError(f"unknown check {name!r}; valid: {', '.join(CHECKS)}")
    module = importlib.import_module(f"{__name__}.{name}")
    return module.run(Config() if config is None else config)
