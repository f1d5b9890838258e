"""Layer helpers, one file per module type, and the registry that maps a module type to
its helper. See :mod:`seng.layers.base` for how a helper plugs in."""

from __future__ import annotations

from torch import nn

from .attention import MultiheadAttentionHelper
from .base import LayerHelper, WeightBiasHelper
from .batchnorm import BatchNormHelper
from .conv import ConvHelper
from .conv_transpose import ConvTransposeHelper
from .embedding import EmbeddingHelper
from .groupnorm import GroupNormHelper
from .layernorm import LayerNormHelper
from .linear import LinearHelper
from .recurrent import RecurrentHelper

#: Module type -> helper class (subclasses match through :func:`helper_for`).
HELPERS: dict[type[nn.Module], type[LayerHelper]] = {}

#: Methods of a supported type that its helper's capture relies on: a subclass that
#: overrides one of them computes something else, so it is not matched.
_FORWARD_METHODS = ("forward", "_conv_forward")


def register(helper: type[LayerHelper]) -> type[LayerHelper]:
    """Register ``helper`` for each of its ``module_types`` (usable as a class decorator)."""
    for t in helper.module_types:
        HELPERS[t] = helper
    return helper


def helper_for(module: nn.Module,
               exact_params: tuple[str, ...] | None = None) -> LayerHelper | None:
    """A helper for ``module`` (``exact_params``: see :class:`LayerHelper`), or None when it
    is not supported (see :func:`unsupported_reason`)."""
    base, reason = match(type(module))
    if reason or HELPERS[base].refuses(module):
        return None
    return HELPERS[base](module, exact_params)


def unsupported_reason(module: nn.Module) -> str:
    """Why ``module`` has no helper: its type (see :func:`match`), or this instance (see
    :meth:`LayerHelper.refuses`); "" when it has one."""
    base, reason = match(type(module))
    return reason or HELPERS[base].refuses(module)


def match(cls: type[nn.Module]) -> tuple[type[nn.Module] | None, str]:
    """``(registered base type, "")`` when ``cls`` is a registered type or a subclass of one
    that keeps its forward (``nn.MultiheadAttention``'s ``out_proj``, a
    ``NonDynamicallyQuantizableLinear``, is such a ``Linear``); otherwise ``(base or None,
    why not)``."""
    for base in cls.__mro__:
        if base in HELPERS:
            for name in _FORWARD_METHODS:
                if getattr(cls, name, None) is not getattr(base, name, None):
                    return base, (f"{cls.__name__} subclasses nn.{base.__name__} with its own "
                                  f"{name}")
            return base, ""
    return None, f"no SENG helper for {cls.__name__}"


for _helper in (LinearHelper, ConvHelper, ConvTransposeHelper, BatchNormHelper, LayerNormHelper,
                GroupNormHelper, EmbeddingHelper, MultiheadAttentionHelper, RecurrentHelper):
    register(_helper)

__all__ = ["HELPERS", "BatchNormHelper", "ConvHelper", "ConvTransposeHelper", "EmbeddingHelper",
           "GroupNormHelper", "LayerHelper", "LayerNormHelper", "LinearHelper",
           "MultiheadAttentionHelper", "RecurrentHelper", "WeightBiasHelper",
           "helper_for", "match", "register", "unsupported_reason"]
