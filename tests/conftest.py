"""Shared fixtures: one ``xp`` fixture over every installed backend and device, and a
deterministic hypothesis profile for CI."""

from __future__ import annotations

import importlib.util
import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _cuda_torch() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def _cupy() -> bool:
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


HAS_TORCH = importlib.util.find_spec("torch") is not None
BACKENDS = [
    pytest.param("numpy", id="numpy"),
    pytest.param("torch-cpu", id="torch-cpu",
                 marks=pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")),
    pytest.param("torch-cuda", id="torch-cuda",
                 marks=[pytest.mark.gpu,
                        pytest.mark.skipif(not _cuda_torch(), reason="no CUDA device")]),
    pytest.param("cupy", id="cupy",
                 marks=[pytest.mark.gpu, pytest.mark.skipif(not _cupy(), reason="no CuPy/GPU")]),
]


class Backend:
    """A backend and device: ``asarray`` converts NumPy test data, ``to_numpy`` converts back."""

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "numpy":
            import numpy

            self.xp = numpy
        elif name.startswith("torch"):
            import torch

            self.xp = torch
            self.device = "cuda" if name == "torch-cuda" else "cpu"
        else:
            import cupy

            self.xp = cupy

    def asarray(self, x, dtype=None):
        import numpy as np

        x = np.asarray(x)
        if self.name == "numpy":
            return x if dtype is None else x.astype(dtype)
        if self.name.startswith("torch"):
            import torch

            t = torch.as_tensor(x, device=self.device)
            return t if dtype is None else t.to(getattr(torch, np.dtype(dtype).name))
        y = self.xp.asarray(x)
        return y if dtype is None else y.astype(dtype)

    def to_numpy(self, x):
        from sketchlinalg.backend import to_host

        return to_host(x)

    def __repr__(self) -> str:
        return self.name


@pytest.fixture(params=BACKENDS)
def backend(request) -> Backend:
    return Backend(request.param)


@pytest.fixture
def float64():
    """torch's default dtype float64 for the test (the exactness oracles compare at float64
    rounding); restored afterwards."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
