"""Validation of the preconditioner's hyperparameters (clear errors naming the argument)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import sketchlinalg as sl

#: Route names accepted for a layer: exact, a cost-model choice, a sketchlinalg family, or
#: the low-rank truncation of per-sample gradients.


def check_damping(damping: Any) -> Any:
    if callable(damping):
        return damping
    if not _is_real(damping) or not math.isfinite(damping) or damping <= 0:
        raise ValueError(f"Invalid damping value: {damping} (must be a finite number > 0 "
                         "or a callable step -> damping)")
    return float(damping)


#: ``"absolute"``: the paper's; the others damp each layer relative to its curvature's
#: scale, ``tr(U^T U) / N`` (``"relative"``) or the largest eigenvalue of ``U^T U``
#: (``"spectral"``), and normalize the direction to the identity off the span of ``U``.
DAMPING_RULES = ("absolute", "relative", "spectral")


def check_damping_rule(rule: Any) -> str:
    if rule not in DAMPING_RULES:
        raise ValueError(f"Invalid damping_rule value: {rule!r} (valid: "
                         f"{', '.join(map(repr, DAMPING_RULES))})")
    return rule


def damping_at(damping: Any, step: int) -> float:
    value = damping(step) if callable(damping) else damping
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"Invalid damping value: {value} returned by damping({step}) "
                         "(must be a finite number > 0)")
    return float(value)


def check_update_freq(update_freq: Any) -> Any:
    if callable(update_freq):
        return update_freq
    if not _is_int(update_freq) or update_freq < 1:
        raise ValueError(f"Invalid update_freq value: {update_freq} (must be an int >= 1 "
                         "or a callable step -> int)")
    return int(update_freq)


def update_freq_at(update_freq: Any, step: int) -> int:
    value = update_freq(step) if callable(update_freq) else update_freq
    if not _is_int(value) or value < 1:
        raise ValueError(f"Invalid update_freq value: {value} returned by update_freq({step}) "
                         "(must be an int >= 1)")
    return int(value)


def check_sketch(sketch: Any) -> str | None:
    if sketch is None:
        return None
    if not isinstance(sketch, str) or sketch not in ("auto", *sl.KINDS):
        raise ValueError(f"Invalid sketch value: {sketch!r} (valid: None, 'auto', "
                         f"{', '.join(repr(k) for k in sl.KINDS)})")
    return sketch


def check_positive_int(value: Any, name: str, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if not _is_int(value) or value < 1:
        raise ValueError(f"Invalid {name} value: {value} (must be an int >= 1"
                         f"{' or None' if allow_none else ''})")
    return int(value)


def check_positive_float(value: Any, name: str, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"Invalid {name} value: {value} (must be a finite number > 0"
                         f"{' or None' if allow_none else ''})")
    return float(value)


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(
        x, (bool, np.bool_))


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))
