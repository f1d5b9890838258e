"""One CPU thread for BLAS and OpenMP (torch's CPU pool) while a check runs.

The checks work on small matrices and networks, where extra threads only add
synchronization: on a busy 2-core machine a 10 x 16384 product or a small network's backward
pass ran tens of times slower with two threads. The limits are restored afterwards.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from typing import Any

NOTE = ("CPU threads: 1 for BLAS and OpenMP while a check runs (threadpoolctl), the fastest "
        "setting for these small problems")


def one_thread(uses_torch: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a check's ``run(config)`` to run with BLAS and OpenMP limited to one thread.

    torch is imported first when the check uses it (``uses_torch`` or a torch backend), so
    that its OpenMP library is loaded when the limit is set. No-op without threadpoolctl.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(config: Any = None) -> Any:
            if importlib.util.find_spec("threadpoolctl") is None:
                return fn(config)
            if uses_torch or getattr(config, "backend", None) == "torch":
                import torch  # noqa: F401  (loads libgomp before the limit is set)
            from threadpoolctl import threadpool_limits

            with threadpool_limits(1):
                return fn(config)

        return wrapper

    return decorate
