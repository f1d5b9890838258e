"""Run configuration shared by every check, and the per-check parameter tables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BACKENDS = ("numpy", "torch", "cupy")
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Config:
    """How to run a check.

    Parameters
    ----------
    backend : {"numpy", "torch", "cupy"}
        Array library the NumPy-side checks (ntk, fisher, linalg) compute with. The torch
        checks (stationary, empirical) always use torch; ``device`` places them.
    device : {"cpu", "cuda"}
        Device for torch and CuPy; NumPy is CPU only.
    quick : bool
        Small problem sizes (the test suite's setting); default sizes otherwise.
    seed : int
        Base seed; every random draw of a check derives from it.
    out : path or None
        Folder for the figures (PNG); None draws no figures.
    params : mapping
        Overrides of a check's parameters by name (see each module's ``FULL`` table), for
        experiments and for the tests that feed deliberately broken inputs.
    progress : bool
        Show tqdm progress bars on stderr.
    """

    backend: str = "numpy"
    device: str = "cpu"
    quick: bool = False
    seed: int = 0
    out: Path | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    progress: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.backend == "numpy" and self.device != "cpu":
            raise ValueError("device must be 'cpu' with backend 'numpy' (use torch or cupy "
                             f"for {self.device!r})")
        if self.backend == "cupy" and self.device != "cuda":
            raise ValueError("backend 'cupy' needs device 'cuda'")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        if not isinstance(self.params, Mapping):
            raise TypeError(f"params must be a mapping, got {type(self.params).__name__}")
        if self.out is not None:
            object.__setattr__(self, "out", Path(self.out))


def settings(config: Config, full: Mapping[str, Any], quick: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of one check: ``full`` (or ``full`` updated by ``quick`` when
    ``config.quick``), then ``config.params``. Unknown override names are rejected."""
    if not isinstance(config, Config):
        raise TypeError(f"config must be a theory_checks.Config, got {type(config).__name__}")
    unknown = sorted(set(config.params) - set(full))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(full)}")
    out = dict(full)
    if config.quick:
        out.update(quick)
    out.update(config.params)
    return out
