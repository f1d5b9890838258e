"""Sketching operators against one read of the matrix and against the peer a user would use.

For a tall dense matrix A (2^17 x 256, float64) and a sparse one (CSR, 1% dense), each
family's time to sketch the rows to d = 1024, as ratios to ``A.sum(axis=0)`` (one read of
A: the memory-bandwidth floor) and to its peer, measured in the same run:

- CountSketch: ``scipy.linalg.clarkson_woodruff_transform`` (draws and applies each call)
- SRHT: a randomized trigonometric transform with ``scipy.fft.dct`` (signs, DCT-II, sample)
- Gaussian: NumPy ``standard_normal`` + matmul
- SparseSign (nnz=8): against our CountSketch
- RowSampling: ``numpy.take``

"apply" times a prebuilt operator (the random data drawn once); "build+apply" includes
drawing it, as a peer that draws inside the call does. Every timing (the reads included) is
the best of ``--repeats`` rounds in which all the functions take turns, each turn after a
pause (the idle threads of the library that ran before spin for about 0.1 s and would steal
the cores), so that a change of machine load hits every ratio alike. The load average is
printed; figures are only meaningful when it is well below the number of cores. Run:
``python benchmarks/bench_sketch.py`` (``--quick`` for a small smoke size, ``--backend torch
--device cuda`` or ``--backend cupy`` for GPU arrays; the peers stay NumPy/SciPy on the CPU,
so GPU ratios say what moving buys).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import scipy.fft
import scipy.linalg
import scipy.sparse

import sketchlinalg as sl

# Seconds of pause before each timed turn (OpenBLAS's idle threads spin ~0.1 s).
PAUSE = 0.3


def best_times(fns: dict[str, Callable[[], object]], repeats: int,
               sync: Callable[[], None]) -> dict[str, float]:
    """Best wall time of each function over ``repeats`` rounds, the functions taking turns
    (one untimed call each first); each turn starts with a pause."""
    for fn in fns.values():
        fn()
        sync()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(PAUSE)
            t0 = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def dct_sketch(A: np.ndarray, d: int, rng: np.random.Generator) -> np.ndarray:
    m = A.shape[0]
    signs = rng.choice(np.array([-1.0, 1.0]), size=m)
    rows = rng.choice(m, size=d, replace=False)
    return np.sqrt(m / d) * scipy.fft.dct(A * signs[:, None], type=2, norm="ortho", axis=0)[rows]


def run(m: int, n: int, d: int, repeats: int, backend: str, device: str) -> None:
    rng = np.random.default_rng(0)
    A = rng.standard_normal((m, n))
    Asp = scipy.sparse.random_array((m, n), density=0.01, format="csr", rng=rng)
    sync: Callable[[], None] = lambda: None  # noqa: E731
    X = A
    if backend == "torch":
        import torch

        X = torch.as_tensor(A, device=device)
        if device == "cuda":
            sync = torch.cuda.synchronize
    elif backend == "cupy":
        import cupy

        X = cupy.asarray(A)
        sync = cupy.cuda.Device().synchronize
    ops = {k: sl.sketch(k, d, m, rng=1) for k in sl.KINDS}
    ops["sparse_sign"] = sl.SparseSign(d, m, nnz=8, rng=1)

    peers: dict[str, tuple[str, Callable[[], object]]] = {
        "countsketch": ("scipy cwt", lambda: scipy.linalg.clarkson_woodruff_transform(A, d, rng=2)),
        "srht": ("scipy.fft DCT", lambda: dct_sketch(A, d, np.random.default_rng(2))),
        "gaussian": ("numpy draw+matmul",
                     lambda: np.random.default_rng(2).standard_normal((d, m)) @ A),
        "sampling": ("numpy take", lambda: np.take(A, ops["sampling"].rows, axis=0)),
    }
    opts = {k: ({"nnz": 8} if k == "sparse_sign" else {}) for k in ops}
    fns: dict[str, Callable[[], object]] = {"read": lambda: X.sum(0)}
    for kind, S in ops.items():
        fns[f"apply {kind}"] = lambda S=S: S @ X
        fns[f"build+apply {kind}"] = lambda k=kind: sl.sketch(k, d, m, rng=3, **opts[k]) @ X
    for kind, (_, f) in peers.items():
        fns[f"peer {kind}"] = f
    load = os.getloadavg()[0]
    t = best_times(fns, repeats, sync)
    read = t["read"]
    where = f"torch/{device}" if backend == "torch" else backend
    print(f"\ndense A: {m} x {n} float64 ({where}), d = {d}; one read = "
          f"{read * 1e3:.2f} ms; best of {repeats} interleaved rounds, {PAUSE} s pauses; "
          f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"{'family':<12} {'apply ms':>9} {'/read':>7} {'build+apply ms':>15} {'peer':<18}"
          f" {'peer ms':>9} {'apply/peer':>11} {'b+a/peer':>9}")
    for kind in ops:
        ta, tb = t[f"apply {kind}"], t[f"build+apply {kind}"]
        if kind in peers:
            pname, pt = peers[kind][0], t[f"peer {kind}"]
        else:
            pname, pt = "our countsketch", t["apply countsketch"]
        print(f"{kind:<12} {ta * 1e3:9.2f} {ta / read:7.2f} {tb * 1e3:15.2f} {pname:<18}"
              f" {pt * 1e3:9.2f} {ta / pt:11.2f} {tb / pt:9.2f}")

    if backend != "numpy":
        return
    sparse_peers = {
        "countsketch": lambda: scipy.linalg.clarkson_woodruff_transform(Asp, d, rng=2),
        "gaussian": lambda: (Asp.T @ np.random.default_rng(2).standard_normal((d, m)).T).T,
        "srht": lambda: dct_sketch(Asp.toarray(), d, np.random.default_rng(2)),
        "sampling": lambda: Asp[ops["sampling"].rows].toarray(),
    }
    fns = {"read": lambda: Asp.sum(axis=0)}
    fns.update({f"apply {kind}": (lambda S=S: S @ Asp) for kind, S in ops.items()})
    fns.update({f"peer {kind}": f for kind, f in sparse_peers.items()})
    t = best_times(fns, repeats, lambda: None)
    read_sp = t["read"]
    print(f"\nsparse A: {m} x {n}, CSR, nnz = {Asp.nnz}; one read = {read_sp * 1e3:.2f} ms")
    print(f"{'family':<12} {'apply ms':>9} {'/read':>7} {'peer ms':>9} {'apply/peer':>11}")
    for kind in ops:
        ta = t[f"apply {kind}"]
        pt = t[f"peer {kind}"] if kind in sparse_peers else t["apply countsketch"]
        print(f"{kind:<12} {ta * 1e3:9.2f} {ta / read_sp:7.2f} {pt * 1e3:9.2f} {ta / pt:11.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small smoke size")
    p.add_argument("--backend", choices=["numpy", "torch", "cupy"], default="numpy")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if args.quick:
        run(1 << 12, 32, 128, 2, args.backend, args.device)
    else:
        run(1 << 17, 256, 1024, args.repeats, args.backend, args.device)


if __name__ == "__main__":
    main()
