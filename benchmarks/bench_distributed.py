"""Distributed SENG on gloo/CPU: bytes communicated per step and step time, against DDP-SGD.

    python benchmarks/bench_distributed.py [--quick]

Method. Bytes: every collective ``DistributedSENGPreconditioner`` issues is logged with its
payload (``comm_log``: an all-reduce's buffer, an all-gather's local contribution); DDP's
are counted by a communication hook that records each gradient bucket it all-reduces.
"Wire bytes" apply the ring model (all-reduce ``2 (W-1)/W B``, all-gather ``(W-1) B`` sent
per rank). Times: best over repeats of the mean step time (forward, backward, reduction,
SGD update) after a warm-up, with 1 and 2 processes (one thread each) on this machine.
The scaling projection for ResNet-50 is printed from the model in ``docs/distributed.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from seng.distributed import DistributedSENGPreconditioner

SKETCH_SIZE = 256  # coordinates per layer (s)

METHODS = ("ddp-sgd", "seng-local", "seng-global", "seng-global-sketch",
           "seng-global-sharded", "seng-global-auto")


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(),
        nn.Linear(32 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, 10))


def wire_bytes(op: str, nbytes: int, world: int) -> float:
    if world == 1:
        return 0.0
    if op == "all_reduce":
        return 2.0 * (world - 1) / world * nbytes
    if op == "all_gather":
        return (world - 1) * nbytes
    return float(nbytes)  # broadcast (construction only)


def run_method(method: str, rank: int, world: int, batch: int, steps: int, repeats: int,
               update_freq: int) -> dict:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    log: list[tuple[str, int]] = []
    if method == "ddp-sgd":
        net = nn.parallel.DistributedDataParallel(model)

        def hook(state, bucket):
            buf = bucket.buffer()
            log.append(("all_reduce", buf.numel() * buf.element_size()))
            fut = dist.all_reduce(buf, async_op=True).get_future()
            return fut.then(lambda f: f.value()[0].div_(world))

        net.register_comm_hook(None, hook)
        pre = None
    else:
        net = model
        mode = "local" if method == "seng-local" else "global"
        sketch = {}
        if method in ("seng-global-sketch", "seng-global-sharded", "seng-global-auto"):
            sketch = {"sketch": "countsketch", "sketch_size": SKETCH_SIZE}
        if method in ("seng-global-sharded", "seng-global-auto"):
            sketch["factors"] = method.rsplit("-", 1)[1]
        pre = DistributedSENGPreconditioner(model, damping=1.0, update_freq=update_freq,
                                            mode=mode, **sketch)
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(batch, 3, 16, 16, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    per_step: list[tuple[bool, list[tuple[str, int]]]] = []

    def one_step(k: int) -> None:
        log.clear()
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        if pre is not None:
            before = pre.counters["curvature_updates"]
            pre.step()
            per_step.append((pre.counters["curvature_updates"] > before, list(pre.comm_log)))
        else:
            per_step.append((False, list(log)))
        opt.step()

    for k in range(update_freq):  # warm-up, one curvature step included
        one_step(k)
    times = []
    for _ in range(repeats):
        per_step.clear()
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        for k in range(steps):
            one_step(k)
        times.append((time.perf_counter() - t0) / steps)
    curv = [s for r, s in per_step if r]
    plain = [s for r, s in per_step if not r]
    nbytes = lambda steps_: statistics.mean(sum(b for _, b in s) for s in steps_) if steps_ else 0  # noqa: E731
    wire = lambda steps_: statistics.mean(  # noqa: E731
        sum(wire_bytes(op, b, world) for op, b in s) for s in steps_) if steps_ else 0
    gather = {}
    if pre is not None and curv:
        gather = {"gather_bytes": sum(b for op, b in curv[0] if op == "all_gather"),
                  "gathers": sum(op == "all_gather" for op, _ in curv[0])}
    return {"time": min(times), "bytes_plain": nbytes(plain), "bytes_curv": nbytes(curv),
            "bytes_mean": nbytes([s for _, s in per_step]),
            "wire_plain": wire(plain), "wire_curv": wire(curv),
            "params": sum(p.numel() for p in model.parameters()),
            "layers": 0 if pre is None else len(pre.layer_info()), **gather}


def worker(rank: int, world: int, init: str, out: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    try:
        res = {m: run_method(m, rank, world, args.batch, args.steps, args.repeats,
                             args.update_freq) for m in METHODS}
        if rank == 0:
            torch.save(res, out)
    finally:
        dist.destroy_process_group()


def measure(world: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "res.pt")
        mp.spawn(worker, args=(world, f"file://{tmp}/rdv", out, args), nprocs=world)
        return torch.load(out, weights_only=False)


# -- projection (docs/distributed.md) ----------------------------------------------------------
def allreduce_time(nbytes: float, world: int, bandwidth: float, latency: float) -> float:
    """Ring all-reduce: ``2 (W-1)/W B / bandwidth + 2 (W-1) latency``."""
    return 2 * (world - 1) / world * nbytes / bandwidth + 2 * (world - 1) * latency


def allgather_time(nbytes_per_rank: float, world: int, bandwidth: float, latency: float) -> float:
    """Ring all-gather: ``(W-1) B / bandwidth + (W-1) latency``."""
    return (world - 1) * nbytes_per_rank / bandwidth + (world - 1) * latency


def projection() -> list[tuple]:
    """Rows ``(W, GB/s, all-reduce ms, extra ms of global sharded, extra ms of global
    replicated, efficiency of DDP-SGD, local, global sharded, global replicated)``;
    efficiency is the time per step of one GPU alone over that of W GPUs on W times the
    work (weak scaling)."""
    # Assumptions, stated in docs/distributed.md.
    params = 25.6e6           # ResNet-50 parameters, fp32 gradients
    grad_bytes = 4 * params
    layers = 54               # conv + fc layers (batchnorm blocks ignored)
    n, s = 64, 16384          # samples per GPU, sketch coordinates per layer (s = 128^2)
    t_sgd = 0.050             # forward + backward + update, ResNet-50 at 64 images (A100 TF32)
    seng_overhead = 0.40      # SENG compute per step relative to t_sgd (curvature amortized)
    update_freq = 10
    flops32, flops64 = 19.5e12, 9.7e12  # A100 fp32 (Gram, products), fp64 (Cholesky)
    bw_intra, bw_inter = 150e9, 12.5e9  # NVLink ring bandwidth, 100 Gb/s InfiniBand per GPU
    lat = 5e-6
    t_seng = t_sgd * (1 + seng_overhead)
    rows = []
    for world in (8, 64, 256):
        bw = bw_intra if world <= 8 else bw_inter
        N = n * world
        ar = allreduce_time(grad_bytes, world, bw, lat)  # no overlap with backward
        # global-batch curvature beyond one GPU's: Gram rows and Cholesky of N x N per layer
        gram = layers * (2 * (N**2 - n**2) * s / flops32 + (N**3 - n**3) / 3 / flops64)
        # sharded: one sketch all-gather per layer on curvature steps; every step one
        # all-gather of U_r^T g (n numbers per layer) and one all-reduce of U alpha; the
        # products touch the n local samples only (as on one GPU)
        sharded = ((allgather_time(n * s * 4, world, bw, lat) * layers + gram) / update_freq
                   + allgather_time(n * 4 * layers, world, bw, lat) + ar)
        # replicated: gather compact exact per-sample gradients (<= n * 4 * params bytes
        # per rank) on curvature steps; U^T g and U alpha over N samples every step
        replicated = ((allgather_time(n * grad_bytes, world, bw, lat) + gram) / update_freq
                      + 4 * (N - n) * params / flops32)
        rows.append((world, bw / 1e9, ar * 1e3, sharded * 1e3, replicated * 1e3,
                     t_sgd / (t_sgd + ar), t_seng / (t_seng + ar),
                     t_seng / (t_seng + ar + sharded), t_seng / (t_seng + ar + replicated)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    args = parser.parse_args()
    args.batch = 16 if args.quick else 64
    args.steps = 10 if args.quick else 20
    args.repeats = 2 if args.quick else 3
    args.update_freq = 5 if args.quick else 10
    results = {w: measure(w, args) for w in (1, 2)}
    p = results[1]["ddp-sgd"]["params"]
    print(f"model: small CNN, {p} parameters ({4 * p} gradient bytes); {args.batch} samples "
          f"per process; update_freq={args.update_freq}; gloo on CPU, 1 thread per process")
    print(f"\n{'method':<20} {'bytes/step':>12} {'curv. step':>12} {'mean/step':>11} "
          f"{'vs DDP':>8} {'wire/step':>11} {'gathered':>10} {'t(1) ms':>8} {'t(2) ms':>8} "
          f"{'t2/t2 DDP':>9}")
    ddp2 = results[2]["ddp-sgd"]
    for m in METHODS:
        r1, r2 = results[1][m], results[2][m]
        plain = r2["bytes_plain"]
        print(f"{m:<20} {plain:>12.0f} {r2['bytes_curv'] or plain:>12.0f} "
              f"{r2['bytes_mean']:>11.0f} {r2['bytes_mean'] / ddp2['bytes_mean']:>8.5f} "
              f"{r2['wire_plain']:>11.0f} "
              f"{r2.get('gather_bytes', 0):>10} {1e3 * r1['time']:>8.2f} "
              f"{1e3 * r2['time']:>8.2f} {r2['time'] / ddp2['time']:>9.2f}")
    layers = results[2]["seng-global"]["layers"]
    target = args.batch * SKETCH_SIZE * 4
    print(f"\ngathered on a curvature step by one rank (s={SKETCH_SIZE}, {layers} layers; "
          f"target n*s*4 = {target} bytes per layer, {target * layers} in all):")
    for m in ("seng-global", "seng-global-sketch", "seng-global-sharded", "seng-global-auto"):
        got = results[2][m]["gather_bytes"]
        print(f"  {m:<20} {got:>9} bytes in {results[2][m]['gathers']} all-gathers: "
              f"{'met' if got <= target * layers else 'MISSED'}")
    print("\nProjection, ResNet-50, 64 images per GPU (assumptions in docs/distributed.md):")
    print(f"{'GPUs':>5} {'GB/s':>6} {'allreduce ms':>13} {'+sharded ms':>12} "
          f"{'+replicated ms':>15} {'eff DDP-SGD':>12} {'eff local':>10} "
          f"{'eff sharded':>12} {'eff replicated':>15}")
    for w, bw, ar, ga, gi, e0, e1, e2, e3 in projection():
        print(f"{w:>5} {bw:>6.1f} {ar:>13.2f} {ga:>12.1f} {gi:>15.1f} {e0:>12.3f} "
              f"{e1:>10.3f} {e2:>12.3f} {e3:>15.3f}")


if __name__ == "__main__":
    main()
