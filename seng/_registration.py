"""Which modules of a model SENG preconditions: helpers matched, parameters owned, routes
and sample dimensions given or inferred, and what is left uncovered and why."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Any

import torch
from torch import nn

from .layer import Layer, Part
from .layers import HELPERS, LayerHelper, WeightBiasHelper, match, unsupported_reason
from .layers.func import FuncFallbackHelper
from .layers.shared import SharedParamHelper
from .routes import Route, check_route


def build_layers(model: nn.Module, routes: Mapping[Any, str] | None, sample_dim: Any,
                 default: str, make: Callable[[str], Route],
                 fallback: str | None) -> list[Layer]:
    """One :class:`~seng.layer.Layer` per module with a helper and parameters of its own
    (a parameter shared by several modules is left out), with its route (``routes``
    override per module or name, else ``default``; ``make`` builds the route object) and
    sample dimension; plus the ``torch.func`` block of the rest when ``fallback`` is set."""
    owners: dict[int, int] = {}
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                owners[id(p)] = owners.get(id(p), 0) + 1
    overrides = check_routes(model, routes)
    dims = sample_dims(model, sample_dim)
    layers = []
    functional = functional_children(model)
    for name, module in model.named_modules():
        if unsupported_reason(module) or id(module) in functional:
            continue
        cls = HELPERS[match(type(module))[0]]
        # attrgetter: a helper may own a child's parameters ("out_proj.weight").
        params = {n: attrgetter(n)(module) for n in cls.block_param_names(module)}
        params = {n: p for n, p in params.items()
                  if isinstance(p, nn.Parameter) and owners[id(p)] == 1}
        if not params:
            continue
        route = make(overrides.get(name, overrides.get(id(module), default)))
        if route.name == "lowrank" and not issubclass(cls, WeightBiasHelper):
            raise ValueError(f"Invalid route value for {name}: 'lowrank' applies to "
                             f"Linear and convolution layers, not {type(module).__name__}")
        # On the exact route a helper may reduce each call in the backward hook.
        helper = cls(module, tuple(params) if route.exact else None)
        dim = module_sample_dim(name, module, helper, dims, sample_dim)
        layers.append(Layer(len(layers), name, module, helper, params, route, dim))
    layers += shared_layers(model, len(layers), dims, sample_dim, make(default), functional)
    if fallback is not None:
        handled = {id(p) for layer in layers for p in layer.params.values()}
        rest = {n: p for n, p in model.named_parameters() if id(p) not in handled}
        if rest:
            helper = FuncFallbackHelper(model, tuple(rest))
            layers.append(Layer(len(layers), "(torch.func)", model, helper, rest,
                                make(default)))
    return layers

def module_sample_dim(name: str, module: nn.Module, helper: LayerHelper,
                      dims: dict[int, int], sample_dim: Any) -> int:
    """The dimension of ``module``'s input holding the samples (see :func:`sample_dims`)."""
    dim = 0 if helper.layout_from_module else dims.get(id(module), 0)
    if dim and not helper.any_sample_dim:
        if isinstance(sample_dim, int):
            return 0  # the module itself fixes its samples first (convolutions)
        raise ValueError(f"Invalid sample_dim for {name!r}: {dim} ({type(module).__name__} "
                         "takes its samples in dimension 0)")
    return dim


def shared_layers(model: nn.Module, start: int, dims: dict[int, int], sample_dim: Any,
                  route: Route, functional: dict[int, str]) -> list[Layer]:
    """One layer per parameter used by several modules that all have a helper taking it in
    the parameter's own layout (see :class:`~seng.layers.shared.SharedParamHelper`); its
    parts record every user's calls."""
    names = {id(p): n for n, p in model.named_parameters()}
    layers: list[Layer] = []
    for pid, uses in parameter_users(model).items():
        if len(uses) < 2 or pid not in names:
            continue
        param = getattr(uses[0][1], uses[0][2])
        if not param.requires_grad or shared_unsupported(uses, param, functional):
            continue
        parts, owners = [], []
        for j, (mname, m, attr) in enumerate(uses):
            helper = HELPERS[match(type(m))[0]](m)
            dim = module_sample_dim(mname, m, helper, dims, sample_dim)
            parts.append(Part(f"{names[pid]}#{j}", helper, {attr: param}, dim))
            owners.append((m, helper, attr))
        helper = SharedParamHelper(param, owners)
        layers.append(Layer(start + len(layers), names[pid], uses[0][1], helper,
                            {"shared": param}, route, parts=parts))
    return layers


def parameter_users(model: nn.Module) -> dict[int, list[tuple[str, nn.Module, str]]]:
    """``{id(parameter): [(module name, module, attribute), ...]}``, each module once."""
    users: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for name, m in model.named_modules():
        for attr, p in m._parameters.items():
            if p is not None:
                users.setdefault(id(p), []).append((name, m, attr))
    return users


def shared_unsupported(uses: list[tuple[str, nn.Module, str]], param: nn.Parameter,
                       functional: dict[int, str]) -> str:
    """Why the shared ``param`` cannot form a block ("" when it can)."""
    for name, m, attr in uses:
        why = functional.get(id(m)) or unsupported_reason(m)
        if why:
            return why
        cls = HELPERS[match(type(m))[0]]
        if attr not in cls.block_param_names(m):
            return f"not in the block of {type(m).__name__} {name!r}"
        if not SharedParamHelper.layout_matches(cls(m), attr, param):
            return (f"the block of {type(m).__name__} {name!r} is not laid out as the "
                    "parameter")
    return ""


def uncompiled(model: nn.Module) -> nn.Module:
    """The module that ``torch.compile`` wrapped (``model._orig_mod``), else ``model``: layers
    are named and hooked on it, so that names, and so state_dicts, are the same whether
    the preconditioner was built on the compiled model or the plain one (the hooks of its
    submodules run in both).

    For a compiled model the compile caches are cleared (``torch.compiler.reset()``):
    torch.compile does not guard on module hooks, so code it compiled before the hooks
    existed would never call them and no curvature would be captured.
    """
    if "torch._dynamo" not in sys.modules:  # nothing was compiled (and nothing to import)
        return model
    if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
        torch.compiler.reset()
        while isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
            model = model._orig_mod
    return model


def check_routes(model: nn.Module, routes: Mapping[Any, str] | None) -> dict[Any, str]:
    if routes is None:
        return {}
    if not isinstance(routes, Mapping):
        raise TypeError(f"routes must be a dict {{module or name: route}}, "
                        f"got {type(routes).__name__}")
    modules = dict(model.named_modules())
    ids = {id(m) for m in modules.values()}
    out: dict[Any, str] = {}
    for key, route in routes.items():
        if isinstance(key, str):
            if key not in modules:
                raise ValueError(f"Invalid routes key: no module named {key!r} in model")
            out[key] = check_route(route, key)
        elif isinstance(key, nn.Module) and id(key) in ids:
            out[id(key)] = check_route(route, type(key).__name__)
        else:
            raise ValueError(f"Invalid routes key: {key!r} is not a module of model "
                             "nor a module name")
    return out


def uncovered_parameters(model: nn.Module, layers: list[Layer]) -> dict[str, str]:
    """``{name: why}`` for each trainable parameter of ``model`` outside ``layers``."""
    handled = {id(p) for layer in layers for p in layer.params.values()}
    functional = functional_children(model)
    users = parameter_users(model)
    out = {}
    for n, p in model.named_parameters():  # each parameter once, by its first name
        if not p.requires_grad or id(p) in handled:
            continue
        uses = users[id(p)]
        if len(uses) > 1:
            out[n] = (f"shared by {len(uses)} modules: "
                      f"{shared_unsupported(uses, p, functional) or 'not preconditioned'}")
        else:
            out[n] = (functional.get(id(uses[0][1])) or unsupported_reason(uses[0][1])
                      or "not in its helper's block")
    return out


def sample_dims(model: nn.Module, sample_dim: Any) -> dict[int, int]:
    """``{id(module): dimension of its input holding the samples}`` (absent: 0): given for
    every module (an int), per module or module name (a mapping; the rest inferred), or
    inferred (None): 1 inside ``nn.TransformerEncoderLayer``/``DecoderLayer`` built with
    ``batch_first=False``, the only layout whose sample dimension is certain from the
    module alone."""
    if isinstance(sample_dim, int) and not isinstance(sample_dim, bool):
        if sample_dim < 0:
            raise ValueError(f"Invalid sample_dim value: {sample_dim} (must be an int >= 0, "
                             "a dict {module or name: int >= 0}, or None)")
        return {id(m): sample_dim for m in model.modules()}
    inferred = {}
    for m in model.modules():
        if (isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer))
                and not m.self_attn.batch_first):
            inferred.update((id(sub), 1) for sub in m.modules())
    if sample_dim is None:
        return inferred
    if not isinstance(sample_dim, Mapping):
        raise TypeError(f"sample_dim must be an int, a dict {{module or name: int}} or None, "
                        f"got {type(sample_dim).__name__}")
    modules = dict(model.named_modules())
    for key, dim in sample_dim.items():
        module = modules.get(key) if isinstance(key, str) else key
        if not any(module is m for m in modules.values()):
            raise ValueError(f"Invalid sample_dim key: {key!r} is not a module of model nor a "
                             "module name")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise ValueError(f"Invalid sample_dim value for {key!r}: {dim!r} (must be an "
                             "int >= 0)")
        inferred[id(module)] = dim
    return inferred


def functional_children(model: nn.Module) -> dict[int, str]:
    """``{id(module): why}`` for supported modules whose parent uses their parameters
    without calling them (hooks would never see a call): ``nn.MultiheadAttention``'s
    ``out_proj``."""
    return {id(m.out_proj): "used functionally by nn.MultiheadAttention (its forward is "
            "not called)" for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
