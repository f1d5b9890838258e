"""``seng.bench``: an optimizer benchmark on real data (MNIST-1D and digits) comparing SENG
with SGD, Adam, AdamW, Muon and K-FAC under one protocol.

``python -m seng.bench`` (see :mod:`seng.bench.cli`; ``--quick`` for a smoke run) or, from
Python, :func:`run_benchmark`. The protocol is in :mod:`seng.bench.study`, the optimizers
(and the table of SENG variants, :data:`SENG_VARIANTS`) in :mod:`seng.bench.optimizers`, the
problems in :mod:`seng.bench.problems`.
"""

from .benchmark import DEFAULT_OPTIMIZERS, BenchConfig, quick_config, run_benchmark
from .optimizers import SENG_VARIANTS, OptimizerSpec, SENGVariant, all_optimizers
from .problems import PROBLEMS, Problem

__all__ = ["DEFAULT_OPTIMIZERS", "PROBLEMS", "SENG_VARIANTS", "BenchConfig", "OptimizerSpec",
           "Problem", "SENGVariant", "all_optimizers", "quick_config", "run_benchmark"]
