"""Layer helpers, one file per module type, and the registry that maps a module type to
its helper. See :mod:`seng.layers.base` for how a helper plugs in."""

from __future__ import annotations

from torch import nn

from .base import LayerHelper, WeightBiasHelper
from .batchnorm import BatchNormHelper
from .conv import ConvHelper
from .embedding import EmbeddingHelper
from .groupnorm import GroupNormHelper
from .layernorm import LayerNormHelper
from .linear import LinearHelper

#: Exact module type -> helper class.
HELPERS: dict[type[nn.Module], type[LayerHelper]] = {}


def register(helper: type[LayerHelper]) -> type[LayerHelper]:
    """Register ``helper`` for each of its ``module_types`` (usable as a class decorator)."""
    for t in helper.module_types:
        HELPERS[t] = helper
    return helper


def helper_for(module: nn.Module) -> LayerHelper | None:
    """A helper for ``module``, or None when its exact type is not supported."""
    cls = HELPERS.get(type(module))
    return None if cls is None else cls(module)


for _helper in (LinearHelper, ConvHelper, BatchNormHelper, LayerNormHelper, GroupNormHelper,
                EmbeddingHelper):
    register(_helper)

__all__ = ["HELPERS", "BatchNormHelper", "ConvHelper", "EmbeddingHelper", "GroupNormHelper",
           "LayerHelper", "LayerNormHelper", "LinearHelper", "WeightBiasHelper", "helper_for",
           "register"]
