"""Shared fixtures: one ``backend`` fixture over every installed backend and device (NumPy,
PyTorch CPU/CUDA, CuPy, array-api-strict, JAX CPU), and a deterministic hypothesis profile
for CI. array-api-strict and JAX are optional: installed in CI (.ci/run), skipped here when
missing."""

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
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # no accelerator probing when jax is imported


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
HAS_STRICT = importlib.util.find_spec("array_api_strict") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None
BACKENDS = [
    pytest.param("numpy", id="numpy"),
    pytest.param("torch-cpu", id="torch-cpu",
                 marks=pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")),
    pytest.param("torch-cuda", id="torch-cuda",
                 marks=[pytest.mark.gpu,
                        pytest.mark.skipif(not _cuda_torch(), reason="no CUDA device")]),
    pytest.param("cupy", id="cupy",
                 marks=[pytest.mark.gpu, pytest.mark.skipif(not _cupy(), reason="no CuPy/GPU")]),
    # The standard's reference implementation: what it runs, every conforming library runs.
    pytest.param("array-api-strict", id="array-api-strict",
                 marks=pytest.mark.skipif(not HAS_STRICT,
                                          reason="array-api-strict not installed")),
    pytest.param("jax", id="jax",
                 marks=pytest.mark.skipif(not HAS_JAX, reason="jax not installed")),
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
        elif name == "array-api-strict":
            import array_api_strict

            self.xp = array_api_strict
        elif name == "jax":
            import jax

            jax.config.update("jax_enable_x64", True)  # float64, as the other backends
            import jax.numpy

            self.xp = jax.numpy
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
        if self.name in ("array-api-strict", "jax"):
            y = self.xp.asarray(x)
            return y if dtype is None else self.xp.astype(y, self.dtype(dtype))
        y = self.xp.asarray(x)
        return y if dtype is None else y.astype(dtype)

    def halves(self) -> list:
        """The backend's half-precision dtypes (``pytest.skip`` when it has none:
        array-api-strict, as the standard, has no half precision)."""
        if self.name.startswith("torch"):
            return [self.xp.float16, self.xp.bfloat16]
        if self.name == "jax":
            return [self.xp.float16, self.xp.bfloat16]
        if self.name == "array-api-strict":
            pytest.skip("array-api-strict has no half precision (nor has the standard)")
        return [self.xp.float16]

    def cast(self, X, dtype):
        """Host data ``X`` on the backend, rounded to the backend's ``dtype`` (a dtype object
        of the backend, half formats included)."""
        Y = self.asarray(X)
        if self.name.startswith("torch"):
            return Y.to(dtype)
        import array_api_compat

        return array_api_compat.array_namespace(Y).astype(Y, dtype)

    @property
    def defers_matmul(self) -> bool:
        """Whether ``array @ obj`` defers to ``obj.__rmatmul__`` for a non-array ``obj`` (a
        sketch's adjoint). array-api-strict raises instead, as the standard allows; there
        ``B @ S.T`` is written ``(S @ B.T).T``."""
        return self.name != "array-api-strict"

    def dtype(self, dtype):
        """The backend's dtype of a NumPy dtype's name (``pytest.skip`` when it has none:
        array-api-strict has no float16, the standard has none)."""
        import numpy as np

        name = np.dtype(dtype).name
        if self.name == "numpy":
            return np.dtype(name)
        if not hasattr(self.xp, name):
            pytest.skip(f"{self.name} has no {name}")
        return getattr(self.xp, name)

    def has(self, dtype) -> bool:
        """Whether the backend has the dtype named like the NumPy ``dtype``."""
        import numpy as np

        return self.name == "numpy" or hasattr(self.xp, np.dtype(dtype).name)

    def to_numpy(self, x):
        from sketchlinalg.backend import to_host

        return to_host(x)

    def __repr__(self) -> str:
        return self.name


def pytest_collection_modifyitems(config, items):
    """On JAX, tests with a float32/float64 grid run their float32 half only (reported as a
    skip with this reason): eager JAX compiles every operation once per shape and dtype
    (about 20 ms each), which made the JAX leg of the suite several times the NumPy leg.
    float64 on JAX is still exercised by every test without a dtype grid (x64 is on)."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("backend") == "jax" and str(params.get("dtype", "")) in (
                "float64", "<class 'numpy.float64'>"):
            item.add_marker(pytest.mark.skip(
                reason="JAX runs the float32 half of dtype grids (compile time per dtype)"))


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
