"""Per-sample gradients of one layer by its SENG helper against ``torch.func`` (the peer).

For each layer (transposed convolution, multi-head attention, LSTM, GRU) both sides get the
same recorded call, the layer's input and the gradient of its output(s), and produce the
dense per-sample gradients ``(N, p)`` of all its parameters: the helper through
``per_sample(...).to_dense()`` (Kronecker factors for the convolution and the attention, the
module's own forward under ``vmap`` for the recurrent layers), ``torch.func`` by ``vmap`` over
the samples of a ``vjp`` of ``functional_call`` of the layer on one sample. The helper's
factors are also timed alone (what a SENG step builds; the dense form is only needed for
small blocks). Float32, CPU, one thread; best of ``--repeats`` interleaved rounds, with a
pause between the two libraries.

    python benchmarks/bench_seng_layers.py            # N = 64
    python benchmarks/bench_seng_layers.py --quick    # N = 16
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from torch import nn
from torch.func import functional_call, vjp, vmap

from seng.layers import helper_for
from seng.persample import DenseGrads

PAUSE_S = 0.5


def torch_func_rows(module, args, kwargs, cotangents, dims):
    """Dense per-sample gradients ``(N, p)`` by torch.func: ``vmap`` over the samples of a
    ``vjp`` of the module called on one (unbatched) sample; ``dims`` says where the samples
    are in each argument and each output."""
    params = {k: v.detach() for k, v in module.named_parameters()}
    arg_dims, out_dims = dims

    def one(xs, cots):
        _, pull = vjp(lambda p: outputs(functional_call(module, p, xs, kwargs)), params)
        return pull(cots)[0]

    per = vmap(one, in_dims=(arg_dims, out_dims))(args, cotangents)
    n = next(iter(per.values())).shape[0]
    return torch.cat([per[k].reshape(n, -1) for k in params], dim=1)


def outputs(out):
    """The differentiable outputs of a call as a tuple."""
    if isinstance(out, torch.Tensor):
        return (out,)
    first, rest = out
    if rest is None:  # attention without weights
        return (first,)
    return (first, *rest) if isinstance(rest, tuple) else (first, rest)


def cases(n):
    """``{name: (module, args, kwargs, (sample dims of args, of outputs))}``."""
    g = torch.Generator().manual_seed(0)
    x_conv = torch.randn(n, 32, 16, 16, generator=g)
    x_attn = torch.randn(n, 32, 128, generator=g)
    x_seq = torch.randn(32, n, 64, generator=g)
    h0 = torch.zeros(2, n, 64)
    return {
        "ConvTranspose2d(32, 16, 4, s=2), 16x16": (
            nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1), (x_conv,), {}, ((0,), (0,))),
        "MultiheadAttention(128, 4), L = 32": (
            nn.MultiheadAttention(128, 4, batch_first=True), (x_attn, x_attn, x_attn),
            {"need_weights": False}, ((0, 0, 0), (0,))),
        "LSTM(64, 64, 2 layers), T = 32": (
            nn.LSTM(64, 64, num_layers=2), (x_seq, (h0, h0.clone())), {},
            ((1, 1), (1, 1, 1))),
        "GRU(64, 64, 2 layers), T = 32": (
            nn.GRU(64, 64, num_layers=2), (x_seq, h0), {}, ((1, 1), (1, 1))),
    }


def record(module, args, kwargs):
    """The helper, one recorded call ``(payload, output gradients)`` as the hooks would
    record it, and the output gradients."""
    helper = helper_for(module)
    g = torch.Generator().manual_seed(1)
    helper.before_forward(args, kwargs)
    out = module(*args, **kwargs)
    grads = tuple(torch.randn(o.shape, generator=g) for o in outputs(out))
    payload = helper.capture_forward(args, out)
    hooked = helper.hooked_output(out)
    recorded = helper.capture_grad(grads if isinstance(hooked, tuple) else grads[0])
    return helper, (payload, recorded), grads


def best_times(fns, repeats):
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(PAUSE_S)  # between the libraries
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 16")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="There is a performance drop")
    torch.set_num_threads(1)
    n = 16 if args.quick else 64
    print(f"per-sample gradients of one layer, N = {n}, float32, 1 thread, best of "
          f"{args.repeats} interleaved rounds")
    print(f"{'layer':40s} {'torch.func':>11s} {'helper dense':>13s} {'ratio':>6s} "
          f"{'helper factors':>15s} {'ratio':>6s}")
    for name, (module, inputs, kwargs, dims) in cases(n).items():
        helper, call, grads = record(module, inputs, kwargs)
        live = helper.param_names
        got = dense(helper.per_sample([call], live, 1.0)).rows
        want = torch_func_rows(module, inputs, kwargs, grads, dims)
        block = torch.stack([helper.grads_to_block(
            {k: want[i, o:o + p.numel()].reshape(p.shape) for k, p, o in _offsets(module)}
        ).reshape(-1) for i in range(n)])
        err = float((got - block).abs().max() / block.abs().max())
        fns = {
            "peer": lambda m=module, a=inputs, k=kwargs, c=grads, d=dims: torch_func_rows(
                m, a, k, c, d),
            "dense": lambda h=helper, c=call, lv=live: dense(h.per_sample([c], lv, 1.0)),
            "factors": lambda h=helper, c=call, lv=live: h.per_sample([c], lv, 1.0),
        }
        t = best_times(fns, args.repeats)
        print(f"{name:40s} {t['peer'] * 1e3:9.1f}ms {t['dense'] * 1e3:11.1f}ms "
              f"{t['dense'] / t['peer']:6.2f} {t['factors'] * 1e3:13.1f}ms "
              f"{t['factors'] / t['peer']:6.2f}   (max rel. difference {err:.1e})")


def dense(rep):
    """The dense form of a representation (recurrent layers produce it directly)."""
    return rep if isinstance(rep, DenseGrads) else rep.to_dense()


def _offsets(module):
    """``(name, parameter, offset)`` of each parameter in torch.func's flat layout."""
    out, offset = [], 0
    for k, p in module.named_parameters():
        out.append((k, p, offset))
        offset += p.numel()
    return out


if __name__ == "__main__":
    main()
