"""The ``sketch`` argument of the routines and drivers: a family name, an operator, or a
factory. One place checks it and turns it into an operator of the shape a routine needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import KINDS, SketchingOperator, sketch

#: What a routine's ``sketch`` argument may be: a family name of :data:`KINDS`, a
#: :class:`SketchingOperator` of the right shape, or a factory called as
#: ``factory(d, m, rng=generator)`` that returns one (a class such as ``SparseSign``, or
#: ``functools.partial(SparseSign, nnz=4)``).
SketchSpec = str | SketchingOperator | Callable[..., SketchingOperator]


def check_spec(spec: Any, name: str = "sketch") -> Any:
    """Reject a ``sketch`` argument that is neither a known family name, an operator nor a
    callable (``TypeError``; an unknown name is a ``ValueError``)."""
    if isinstance(spec, str):
        if spec not in KINDS:
            raise ValueError(f"unknown {name} kind {spec!r}; valid kinds: {', '.join(KINDS)}")
        return spec
    if isinstance(spec, SketchingOperator) or callable(spec):
        return spec
    raise TypeError(
        f"{name} must be a family name ({', '.join(KINDS)}), a SketchingOperator or a factory "
        f"called as factory(d, m, rng=...), got {type(spec).__name__}"
    )


def build_operator(spec: Any, d: int, m: int, rng: np.random.Generator, *,
                   name: str = "sketch", role: str = "") -> SketchingOperator:
    """The operator of shape ``(d, m)`` that ``spec`` (already checked) stands for:
    ``sketch(spec, d, m, rng)`` for a name, ``spec(d, m, rng=rng)`` for a factory, the instance
    itself otherwise. ``role`` says in an error what ``d`` and ``m`` are."""
    if isinstance(spec, str):
        return sketch(spec, d, m, rng=rng)
    S = spec if isinstance(spec, SketchingOperator) else spec(d, m, rng=rng)
    if not isinstance(S, SketchingOperator):
        raise TypeError(f"{name}(d, m, rng=...) must return a SketchingOperator, got "
                        f"{type(S).__name__}")
    if tuple(S.shape) != (d, m):
        where = f" ({role})" if role else ""
        raise ValueError(f"{name} has shape {tuple(S.shape)} but this call needs a sketch of "
                         f"shape {(d, m)}{where}")
    return S


def describe(spec: Any, S: SketchingOperator) -> str:
    """A short label for reports: ``"kind(d)"`` for a name, the operator's repr otherwise."""
    return f"{spec}({S.shape[0]})" if isinstance(spec, str) else repr(S)
