"""SENG step time and memory against SGD on the same model, in one run.

A small ResNet-style CNN (stem, three residual stages of 16/32/64 channels with BatchNorm,
global average pooling, a Linear head; about 78k parameters) on random 32 x 32 RGB inputs,
batch 128, float32, CPU. Every optimizer step is ``zero_grad, forward, cross-entropy,
backward, [pre.step()], opt.step()`` with ``torch.optim.SGD`` (momentum 0.9):

- SGD step: plain SGD.
- SENG curvature step: a step that refreshes the curvature (captures, per-sample gradients,
  Gram, Cholesky) and preconditions.
- SENG plain step: a step between refreshes (preconditions with the stored curvature).
- SENG amortized: a window of ``update_freq = 10`` consecutive steps (one refresh), per step.

Times are the best of several repeats after a warm-up, by the wall clock and by the
process CPU time (one thread by default: the CPU time is then the step's work, and it is
much less disturbed than the wall clock when other processes share the machine).

Peak memory is measured in a fresh subprocess per optimizer (Linux): the peak resident set
size (``VmHWM``, reset through ``/proc/self/clear_refs`` just before the first step, once
model, data, optimizer and preconditioner are built) minus the resident size at that
point, over ten training steps (one curvature refresh); ``MALLOC_MMAP_THRESHOLD_`` is fixed
so that glibc returns freed tensors to the system and the RSS follows the live tensors.

Targets: amortized <= 1.25 x SGD, curvature step <= 3 x SGD, extra memory <= 25% over SGD's.

On ``--device cuda`` the clock synchronizes the device around each step, no CPU time is
reported, and the memory is the peak of ``torch.cuda.max_memory_allocated`` over ten steps
above what was allocated before them (the caching allocator's own count, so exact and in
process).

Run: ``python benchmarks/bench_seng.py`` (``--quick``: batch 32, fewer repeats;
``--sketch auto`` to let the cost model pick routes; ``--profile`` prints the top ops of a
curvature step).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from seng import SENGPreconditioner

DEVICE = torch.device("cpu")  # set by --device


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.short(x))


def resnet() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def setup(batch: int, seng: bool, update_freq: int, sketch: str | None,
          curvature_batch: int | None = None):
    torch.manual_seed(0)
    model = resnet().to(DEVICE)
    x = torch.randn(batch, 3, 32, 32).to(DEVICE)
    y = torch.randint(0, 10, (batch,)).to(DEVICE)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    pre = SENGPreconditioner(model, update_freq=update_freq, sketch=sketch,
                             curvature_batch=curvature_batch) if seng else None

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if pre is not None:
            pre.step()
        opt.step()

    return model, pre, step


def timed(step, n: int, clock) -> list[float]:
    out = []
    for _ in range(n):
        t0 = clock()
        step()
        out.append(clock() - t0)
    return out


def measure_times(batch: int, repeats: int, sketch: str | None, clock) -> dict[str, float]:
    _, _, sgd = setup(batch, False, 1, sketch)
    _, _, curv = setup(batch, True, 1, sketch)
    _, pre, amort = setup(batch, True, 10, sketch)
    timed(sgd, 2, clock)
    timed(curv, 2, clock)
    timed(amort, 10, clock)  # one full window of warm-up
    best = {"sgd": float("inf"), "curvature": float("inf"), "plain": float("inf"),
            "amortized": float("inf")}
    # Interleave the configurations so that load from other processes hits all alike.
    for _ in range(repeats):
        best["sgd"] = min(best["sgd"], min(timed(sgd, 2, clock)))
        best["curvature"] = min(best["curvature"], min(timed(curv, 2, clock)))
        window = timed(amort, 10, clock)
        best["plain"] = min(best["plain"], min(window[1:]))
        best["amortized"] = min(best["amortized"], sum(window) / len(window))
    best["report"] = pre.report()  # type: ignore[assignment]
    return best


def cuda_clock() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def cuda_memory(batch: int, which: str, sketch: str | None,
                curvature_batch: int | None) -> tuple[float, int]:
    """Peak CUDA allocation (bytes) of ten training steps above the allocation before them,
    after two warm-up steps of a throwaway copy, and the stored curvature's bytes."""
    _, _, step = setup(batch, which == "seng", 10, sketch, curvature_batch)
    step()
    step()
    del step
    gc.collect()
    torch.cuda.empty_cache()
    _, pre, step = setup(batch, which == "seng", 10, sketch, curvature_batch)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    for _ in range(10):
        step()
    torch.cuda.synchronize()
    held = 0 if pre is None else sum(r["memory_bytes"] for r in pre.layer_info())
    return float(torch.cuda.max_memory_allocated() - base), held


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def measure_memory(batch: int, which: str, sketch: str | None, warm: bool,
                   curvature_batch: int | None = None) -> tuple[float, int]:
    """Peak RSS growth (bytes) of ten training steps, in this process, and the bytes of the
    stored curvature after them. ``warm``: after two steps of a throwaway copy, so that the
    one-time costs of the process (library code paged in on the first call of a kernel,
    allocator pools of MKL) are in the baseline rather than in the growth."""
    if warm:
        _, _, step = setup(batch, which == "seng", 10, sketch, curvature_batch)
        step()
        step()
        del step
        gc.collect()
    _, pre, step = setup(batch, which == "seng", 10, sketch, curvature_batch)
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    base = rss_kib("VmRSS")
    for _ in range(10):
        step()
    held = 0 if pre is None else sum(r["memory_bytes"] for r in pre.layer_info())
    return (rss_kib("VmHWM") - base) * 1024.0, held


def memory_in_subprocess(batch: int, which: str, sketch: str | None, threads: int,
                         warm: bool, curvature_batch: int | None) -> tuple[float, int]:
    """:func:`measure_memory` in a fresh process (the median of three processes)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, __file__, "--memory-child", which, "--batch", str(batch),
           "--threads", str(threads)] + (["--memory-warm"] if warm else [])
    if sketch is not None:
        cmd += ["--sketch", sketch]
    if curvature_batch is not None:
        cmd += ["--curvature-batch", str(curvature_batch)]
    runs = [json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True,
                                      text=True).stdout.strip().splitlines()[-1])
            for _ in range(3)]
    runs.sort(key=lambda r: r["bytes"])
    return runs[1]["bytes"], runs[1]["held"]


def profile(batch: int, sketch: str | None) -> None:
    _, _, curv = setup(batch, True, 1, sketch)
    timed(curv, 2, time.perf_counter)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        curv()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


ROWS = [("SGD step", "sgd", ""), ("SENG curvature step", "curvature", "<= 3"),
        ("SENG plain step", "plain", ""), ("SENG amortized (freq 10)", "amortized", "<= 1.25")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 32, 2 repeats")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    # One thread by default: on a shared machine OpenMP barriers of oversubscribed threads
    # make step times erratic (several-fold), which would swamp the ratios.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sketch", default=None, help="SENG sketch option (None: exact)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--memory-only", action="store_true", help="skip the step times")
    parser.add_argument("--curvature-batch", type=int, default=None,
                        help="SENG curvature_batch, for the memory only (None: the batch)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--memory-child", choices=["sgd", "seng"], help=argparse.SUPPRESS)
    parser.add_argument("--memory-warm", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    batch = args.batch or (32 if args.quick else 128)
    repeats = 2 if args.quick else args.repeats
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda":
        main_cuda(args, batch, repeats)
        return
    if args.memory_child:
        peak, held = measure_memory(batch, args.memory_child, args.sketch, args.memory_warm,
                                    args.curvature_batch)
        print(json.dumps({"bytes": peak, "held": held}))
        return
    if args.profile:
        profile(batch, args.sketch)
        return

    mem = {(w, warm): memory_in_subprocess(batch, w, args.sketch, args.threads, warm,
                                           args.curvature_batch)
           for w in ("sgd", "seng") for warm in (False, True)}
    params = sum(p.numel() for p in resnet().parameters())
    print(f"ResNet-style CNN ({params} parameters), batch {batch}, 32x32, float32, CPU, "
          f"{args.threads} threads, sketch={args.sketch}, curvature_batch (memory only) "
          f"{args.curvature_batch}; best of {repeats}")
    for warm, when in ((False, "cold process"), (True, "after a warm-up")):
        sgd, (seng, held) = mem["sgd", warm][0], mem["seng", warm]
        print(f"peak memory growth ({when}, median of 3): SGD {sgd / 2**20:.1f} MiB, SENG "
              f"{seng / 2**20:.1f} MiB: SENG uses {100 * (seng / sgd - 1):+.1f}% (target <= "
              f"+25%), of which the stored curvature (U and Gram) {100 * held / sgd:.1f}%")
    if args.memory_only:
        return
    # Wall time, and the process CPU time, which with one thread is the step's work and
    # is far less disturbed by other processes on a shared machine than the wall clock.
    wall = measure_times(batch, repeats, args.sketch, time.perf_counter)
    cpu = measure_times(batch, repeats, args.sketch, time.process_time)
    print(f"{'':<28}{'wall ms':>10}{'x SGD':>8}{'CPU ms':>10}{'x SGD':>8}   target")
    for name, key, target in ROWS:
        print(f"{name:<28}{wall[key] * 1e3:>10.1f}{wall[key] / wall['sgd']:>8.2f}"
              f"{cpu[key] * 1e3:>10.1f}{cpu[key] / cpu['sgd']:>8.2f}   {target}")
    print(cpu["report"])



def main_cuda(args: argparse.Namespace, batch: int, repeats: int) -> None:
    sgd, _ = cuda_memory(batch, "sgd", args.sketch, args.curvature_batch)
    seng, held = cuda_memory(batch, "seng", args.sketch, args.curvature_batch)
    params = sum(p.numel() for p in resnet().parameters())
    print(f"ResNet-style CNN ({params} parameters), batch {batch}, 32x32, float32, "
          f"{torch.cuda.get_device_name()}, sketch={args.sketch}; best of {repeats}")
    print(f"peak CUDA memory growth over ten steps: SGD {sgd / 2**20:.1f} MiB, SENG "
          f"{seng / 2**20:.1f} MiB: SENG uses {100 * (seng / sgd - 1):+.1f}% (target <= +25%), "
          f"of which the stored curvature (U and Gram) {100 * held / sgd:.1f}%")
    wall = measure_times(batch, repeats, args.sketch, cuda_clock)
    print(f"{'':<28}{'wall ms':>10}{'x SGD':>8}   target")
    for name, key, target in ROWS:
        print(f"{name:<28}{wall[key] * 1e3:>10.2f}{wall[key] / wall['sgd']:>8.2f}   {target}")
    print(wall["report"])


if __name__ == "__main__":
    main()
