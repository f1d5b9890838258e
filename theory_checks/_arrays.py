"""The array backend a check computes with: data drawn on the host (NumPy), moved once."""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from sketchlinalg import backend

from ._config import Config


class Arrays:
    """Array namespace ``xp`` of the configured backend and device, with host transfers.

    Random data is always drawn with NumPy on the host and copied over, so one seed gives
    the same numbers on every backend (up to the rounding of the backend's arithmetic).
    """

    def __init__(self, config: Config) -> None:
        self.backend = config.backend
        self.device = config.device
        if config.backend == "numpy":
            like: Any = np.zeros(0)
        elif config.backend == "torch":
            try:
                import torch
            except ImportError:
                raise ValueError("backend 'torch' requested but torch is not installed") from None

            if config.device == "cuda" and not torch.cuda.is_available():
                raise ValueError("device 'cuda' requested but torch sees no CUDA device")
            like = torch.zeros(0, dtype=torch.float64, device=config.device)
        else:
            try:
                import cupy
            except ImportError:
                raise ValueError("backend 'cupy' requested but CuPy is not installed") from None
            like = cupy.zeros(0)
        self.like = like
        self.xp = backend.namespace(like)

    def asarray(self, x: Any) -> Any:
        """A float64 copy of host data ``x`` on the backend and device."""
        return backend.from_host(np.asarray(x, dtype=np.float64), like=self.like,
                                  dtype=self.xp.float64)

    @staticmethod
    def host(x: Any) -> np.ndarray:
        """A NumPy copy."""
        return backend.to_host(x)

    @staticmethod
    def item(x: Any) -> float:
        """A Python float from a 0-d array of any backend."""
        return float(backend.to_host(x))


def eye_like(x: Any, n: int) -> Any:
    """The ``n x n`` identity in the namespace, dtype and device of ``x``."""
    return backend.namespace(x).eye(n, dtype=x.dtype, device=array_api_compat.device(x))


def zeros_like_vector(x: Any, n: int) -> Any:
    """A zero vector of length ``n`` in the namespace, dtype and device of ``x``."""
    return backend.namespace(x).zeros(n, dtype=x.dtype, device=array_api_compat.device(x))
