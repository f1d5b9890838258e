"""``nn.MultiheadAttention``: packed or separate input projections, biases, ``bias_k``/
``bias_v``, ``add_zero_attn``, masks, ``is_causal``, attention dropout, ``batch_first`` either
way; ``out_proj`` belongs to the same block (the module uses it without calling it)."""

from __future__ import annotations

from itertools import pairwise
from operator import attrgetter
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..persample import KroneckerFactors
from .base import LayerHelper

_FORWARD_ARGS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
                 "average_attn_weights", "is_causal")
_FORWARD_DEFAULTS = {"key_padding_mask": None, "need_weights": True, "attn_mask": None,
                     "average_attn_weights": True, "is_causal": False}
# Columns of the per-row flags in a payload.
_CALL, _N_FULL, _NEED_WEIGHTS, _AVERAGE, _CAUSAL, _MASK_DIMS = range(6)
_PROJ = ("q_proj_weight", "k_proj_weight", "v_proj_weight")


class MultiheadAttentionHelper(LayerHelper):
    r"""Per-sample gradients of every projection of an attention layer as Kronecker factors.

    Each of the four projections is a linear map applied at every position: the query, key
    and value projections ``q = x_q W_q^T + b_q`` (and ``k``, ``v`` alike, ``W_k`` of width
    ``kdim``, ``W_v`` of width ``vdim``) and the output projection ``y = o W_o^T + b_o`` of
    the attention output ``o`` (``out_proj``). So, as for ``nn.Linear``,
    ``grad [W_j, b_j] l_i = G_{ij}^T A_{ij}`` with the projection's inputs (and a one) as the
    rows of ``A_{ij}`` and the gradients of its outputs as the rows of ``G_{ij}``. The
    output gradient of ``out_proj`` is the recorded one; those of ``q``, ``k``, ``v`` and the
    attention output ``o`` come from recomputing the attention, in ``step()``, from the
    recorded inputs: ``F.multi_head_attention_forward`` with identity projections applied to
    leaves ``q, k, v``, backpropagating ``gy W_o`` (and the gradient of the returned attention
    weights, if the loss uses them). ``bias_k``/``bias_v`` are extra key/value rows: their
    gradients are those of ``k``, ``v`` at the appended position.

    The block has one group per projection (q, k, v, out; then ``bias_k``, ``bias_v``), each
    ``embed_dim x (w + 1)`` with ``w`` the widest input (the narrower ones padded with zero
    columns, which stay zero in the direction) and the bias in the last column.

    The keyword arguments of the call (masks, ``need_weights``, ``is_causal``) come from a
    forward pre-hook, and so does the random state, which the recomputation restores so that
    attention dropout draws the same mask; with dropout, the curvature then needs every
    sample of the call (no ``curvature_batch`` smaller than the batch).
    """

    module_types = (nn.MultiheadAttention,)
    layout_from_module = True

    @classmethod
    def block_param_names(cls, module: nn.Module) -> tuple[str, ...]:
        projections = ("in_proj_weight",) if module.in_proj_weight is not None else _PROJ
        optional = ("in_proj_bias", "bias_k", "bias_v", "out_proj.weight", "out_proj.bias")
        return projections + tuple(n for n in optional if attrgetter(n)(module) is not None)

    def __init__(self, module: nn.Module, exact_params: tuple[str, ...] | None = None) -> None:
        super().__init__(module, exact_params)
        m = module
        self.param_names = self.block_param_names(module)
        self.embed = m.embed_dim
        self.in_widths = (m.embed_dim, m.kdim, m.vdim, m.embed_dim)  # q, k, v, out
        self.width = max(self.in_widths) + 1
        self.groups = 4 if m.bias_k is None else 6
        self._pending: tuple[tuple[Any, ...], dict[str, Any], Any, Any] | None = None
        self._calls = 0

    # -- block layout ----------------------------------------------------------------------
    def _slots(self) -> dict[str, tuple[Any, ...]]:
        """Where each parameter sits in the ``(groups, embed_dim, width)`` block."""
        e, last, w = self.embed, self.width - 1, self.in_widths
        every = slice(None)
        return {"in_proj_weight": (slice(0, 3), every, slice(0, e)),
                "q_proj_weight": (0, every, slice(0, w[0])),
                "k_proj_weight": (1, every, slice(0, w[1])),
                "v_proj_weight": (2, every, slice(0, w[2])),
                "in_proj_bias": (slice(0, 3), every, last),
                "out_proj.weight": (3, every, slice(0, e)),
                "out_proj.bias": (3, every, last),
                "bias_k": (4, every, last), "bias_v": (5, every, last)}

    def grads_to_block(self, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        some = next(iter(grads.values()))
        block = some.new_zeros((self.groups, self.embed, self.width))
        slots = self._slots()
        for n, g in grads.items():
            block[slots[n]] = g.reshape(block[slots[n]].shape)
        return block

    def block_to_grads(self, block: torch.Tensor, live: tuple[str, ...]) -> dict[str, torch.Tensor]:
        slots = self._slots()
        return {n: block[slots[n]].reshape(attrgetter(n)(self.module).shape) for n in live}

    # -- capture ---------------------------------------------------------------------------
    def before_forward(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        query = args[0] if args else kwargs["query"]
        cpu = cuda = None
        if self.module.dropout > 0:
            cpu = torch.get_rng_state()
            if query.is_cuda:
                cuda = torch.cuda.get_rng_state(query.device)
        self._pending = (args, kwargs, cpu, cuda)

    def capture_forward(self, inputs: tuple[Any, ...], output: Any) -> tuple[torch.Tensor, ...]:
        if self._pending is None:
            raise RuntimeError("MultiheadAttention: no call recorded by the forward pre-hook")
        args, kwargs, cpu, cuda = self._pending
        self._pending = None
        call = {**_FORWARD_DEFAULTS, **dict(zip(_FORWARD_ARGS, args, strict=False)), **kwargs}
        batched = call["query"].dim() == 3
        q, k, v = (self._samples_first(call[name].detach(), batched)
                   for name in ("query", "key", "value"))
        n = q.shape[0]
        kpm = call["key_padding_mask"]
        kpm = q.new_zeros((n, 0)) if kpm is None else kpm.detach().reshape(n, -1)
        mask = call["attn_mask"]
        mask_dims = 0 if mask is None else mask.dim()
        if mask is None:
            mask = q.new_zeros((n, 0))
        elif mask.dim() == 2:  # one mask for every sample
            mask = mask.detach().expand(n, *mask.shape)
        else:  # (N * heads, L, S)
            mask = mask.detach().reshape(n, -1, *mask.shape[1:])
        flags = torch.tensor([self._calls, n, bool(call["need_weights"]),
                              bool(call["average_attn_weights"]), bool(call["is_causal"]),
                              mask_dims], device=q.device).expand(n, -1)
        self._calls += 1
        cpu = torch.zeros(0, dtype=torch.uint8) if cpu is None else cpu
        cuda = torch.zeros(0, dtype=torch.uint8) if cuda is None else cuda
        return (flags, q, k, v, kpm, mask, cpu.expand(n, -1), cuda.expand(n, -1))

    def _samples_first(self, x: torch.Tensor, batched: bool) -> torch.Tensor:
        if not batched:  # unbatched input: one sample
            return x[None]
        return x if self.module.batch_first else x.transpose(0, 1)

    def hooked_output(self, output: Any) -> tuple[torch.Tensor, ...]:
        out, weights = output
        if weights is not None and weights.requires_grad:
            return out, weights
        return (out,)

    def capture_grad(self, grad_output: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        gy = grad_output[0]
        batched = gy.dim() == 3
        gy = self._samples_first(gy, batched)
        if len(grad_output) == 1:
            return gy, gy.new_zeros((gy.shape[0], 0))
        gw = grad_output[1]  # weights are (N, ...) in either layout
        return gy, gw if batched else gw[None]

    # -- per-sample gradients --------------------------------------------------------------
    def per_sample(
        self, calls: list[tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, torch.Tensor]]],
        live: tuple[str, ...], scale: float,
    ) -> KroneckerFactors:
        factors = []
        for payload, (gy, gw) in calls:
            ids = payload[0][:, _CALL]
            parts = []
            # Rows of one recorded call together (accumulated micro-batches are several).
            for start, stop in _runs(ids):
                rows = slice(start, stop)
                parts.append(self._factors(tuple(t[rows] for t in payload), gy[rows], gw[rows]))
            A = torch.cat([a for a, _ in parts]) if len(parts) > 1 else parts[0][0]
            G = torch.cat([g for _, g in parts]) if len(parts) > 1 else parts[0][1]
            factors.append((A, G))
        A = torch.cat([a for a, _ in factors], dim=2)  # calls: more positions
        G = torch.cat([g for _, g in factors], dim=2)
        return KroneckerFactors(self._live_columns(A, live), G * scale)

    def _factors(self, payload: tuple[torch.Tensor, ...], gy: torch.Tensor, gw: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Kronecker factors ``(A, G)`` of the rows of one recorded call."""
        q, k, v = payload[1:4]
        dq, dk, dv, o = self._recompute(payload, gy, gw)
        n, lq, ls = q.shape[0], q.shape[1], k.shape[1]
        t = max(lq, ls)
        A = q.new_zeros((n, self.groups, t, self.width))
        G = q.new_zeros((n, self.groups, t, self.embed))
        for j, (x, g) in enumerate(((q, dq), (k, dk[:, :ls]), (v, dv[:, :ls]), (o, gy))):
            A[:, j, :x.shape[1], :x.shape[2]] = x
            G[:, j, :g.shape[1]] = g
        if self.groups == 6:  # bias_k, bias_v: the appended key and value row
            G[:, 4, 0], G[:, 5, 0] = dk[:, ls], dv[:, ls]
        A[..., -1] = 1.0  # G is zero past each group's positions
        return A, G

    def _live_columns(self, A: torch.Tensor, live: tuple[str, ...]) -> torch.Tensor:
        """``A`` with the columns of frozen parameters zeroed: their per-sample gradients,
        and so their direction, are zero in the block."""
        weights = (("in_proj_weight", "q_proj_weight"), ("in_proj_weight", "k_proj_weight"),
                   ("in_proj_weight", "v_proj_weight"), ("out_proj.weight",))
        biases = ("in_proj_bias",) * 3 + ("out_proj.bias", "bias_k", "bias_v")
        for j in range(self.groups):
            if j < 4 and not any(n in live for n in weights[j]):
                A[:, j, :, :-1] = 0.0
            if biases[j] not in live:
                A[:, j, :, -1] = 0.0
        return A

    def _recompute(self, payload: tuple[torch.Tensor, ...], gy: torch.Tensor,
                   gw: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Gradients of the projected ``q, k, v`` (``k, v`` with the ``bias_k``/``bias_v`` row)
        and the attention output ``o`` of one call's rows, all ``(n, positions, embed_dim)``."""
        m = self.module
        flags, q, k, v, kpm, mask, cpu, cuda = payload
        n, e = q.shape[0], self.embed
        call = flags[0].tolist()
        if m.dropout > 0 and n != call[_N_FULL]:
            raise ValueError("MultiheadAttention with dropout: the curvature needs every sample "
                             f"of the call to replay its dropout mask, got {n} of "
                             f"{call[_N_FULL]} (curvature_batch smaller than the batch)")
        wq, wk, wv = (m.in_proj_weight.detach().chunk(3) if m.in_proj_weight is not None
                      else (m.q_proj_weight.detach(), m.k_proj_weight.detach(),
                            m.v_proj_weight.detach()))
        bq = bk = bv = None
        if m.in_proj_bias is not None:
            bq, bk, bv = m.in_proj_bias.detach().chunk(3)
        # F's layout: (positions, samples, features).
        qp = F.linear(q.transpose(0, 1), wq.to(q.dtype), _cast(bq, q))
        kp = F.linear(k.transpose(0, 1), wk.to(q.dtype), _cast(bk, q))
        vp = F.linear(v.transpose(0, 1), wv.to(q.dtype), _cast(bv, q))
        kpm = None if kpm.shape[1] == 0 else kpm
        mask = (None if call[_MASK_DIMS] == 0 else mask[0] if call[_MASK_DIMS] == 2
                else mask.reshape(-1, *mask.shape[2:]))
        if m.bias_k is not None:  # appended after the projection, as F does
            kp = torch.cat([kp, m.bias_k.detach().to(q.dtype).expand(1, n, e)])
            vp = torch.cat([vp, m.bias_v.detach().to(q.dtype).expand(1, n, e)])
            mask = None if mask is None else F.pad(mask, (0, 1))
            kpm = None if kpm is None else F.pad(kpm, (0, 1))
        leaves = [t.detach().requires_grad_() for t in (qp, kp, vp)]
        eye = torch.eye(e, dtype=q.dtype, device=q.device)
        devices = [q.device] if cuda.shape[1] else []
        with torch.enable_grad(), torch.random.fork_rng(devices=devices, enabled=m.dropout > 0):
            if m.dropout > 0:
                torch.set_rng_state(cpu[0].cpu().clone())  # its own storage: no offset
                if devices:
                    torch.cuda.set_rng_state(cuda[0].cpu().clone(), q.device)
            o, weights = F.multi_head_attention_forward(
                *leaves, e, m.num_heads, None, None, None, None, m.add_zero_attn, m.dropout,
                eye, None, training=True, key_padding_mask=kpm,
                need_weights=bool(call[_NEED_WEIGHTS]), attn_mask=mask,
                use_separate_proj_weight=True, q_proj_weight=eye, k_proj_weight=eye,
                v_proj_weight=eye, average_attn_weights=bool(call[_AVERAGE]),
                is_causal=bool(call[_CAUSAL]))
            outputs, cotangents = [o], [gy.transpose(0, 1) @ m.out_proj.weight.detach().to(q.dtype)]
            if gw.shape[1]:
                outputs.append(weights)
                cotangents.append(gw)
            grads = torch.autograd.grad(outputs, leaves, cotangents)
        dq, dk, dv = (g.transpose(0, 1) for g in grads)
        return dq, dk, dv, o.detach().transpose(0, 1)


def _cast(b: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if b is None else b.to(like.dtype)


def _runs(ids: torch.Tensor) -> list[tuple[int, int]]:
    """``(start, stop)`` of each run of equal values in ``ids``."""
    cuts = (torch.nonzero(ids[1:] != ids[:-1]).flatten() + 1).tolist()
    bounds = [0, *cuts, ids.shape[0]]
    return list(pairwise(bounds))
