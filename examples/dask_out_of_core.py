"""Sketch and factorize a matrix on disk that is larger than the memory of the workers.

A ``m x n`` float64 matrix is written to a ``.npy`` file row block by row block (never held
whole), then read by a ``dask.distributed`` LocalCluster of worker processes, each with a
memory limit below the matrix size. The reader logs every chunk it serves, so the passes over
the data are counted, not assumed::

    python examples/dask_out_of_core.py                      # 768 MiB on 2 workers x 300 MiB
    python examples/dask_out_of_core.py --rows 131072 --cols 128 --memory-limit 200MiB

Prints: a sparse sign sketch of ``A`` (one pass, with a progress bar), a rank-10 ``rsvd``
(2q + 2 passes) and its single-pass form (one pass), ``ridge`` by sketch-and-solve (one
pass), the reads of every chunk after each, and the peak resident memory of each worker
process.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import dask.array as da
import numpy as np
from distributed import Client, LocalCluster, progress

import sketchlinalg as sl


def peak_resident_kib() -> int:
    """Peak resident memory of this process since it started (Linux's VmHWM; ``ru_maxrss``
    would include the parent's peak at fork, which exec keeps)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


class DiskRows:
    """The C-ordered ``.npy`` matrix, read by each task with a seek and one read (a
    ``numpy.memmap`` given to ``da.from_array`` would be pickled whole into the graph, and
    its mapped pages count in the workers' resident memory); every block read is logged."""

    def __init__(self, path: Path, log: Path) -> None:
        self.path, self.log = str(path), str(log)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            self.shape, _, self.dtype = read_header(f)
            self.offset = f.tell()
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        rows, cols = key
        a, b, _ = rows.indices(self.shape[0])
        n = self.shape[1]
        if b <= a:  # Dask probes the dtype with an empty slice: not a read
            return np.empty((0, n), dtype=self.dtype)[:, cols]
        with open(self.path, "rb") as f:
            f.seek(self.offset + a * n * self.dtype.itemsize)
            block = np.fromfile(f, dtype=self.dtype, count=(b - a) * n)
        with open(self.log, "a") as f:
            f.write(f"{a}\n")
        return block.reshape(b - a, n)[:, cols]

    def reads(self) -> str:
        """How many chunks were read how many times, e.g. ``{1: 24}``; then reset."""
        counts = Counter(Path(self.log).read_text().split())
        Path(self.log).write_text("")
        return str(dict(Counter(counts.values())))


def write_matrix(path: Path, m: int, n: int, rows: int) -> None:
    """Rank-20 signal (singular values ~ 0.8^j) plus 1e-3 noise, ``rows`` rows at a time."""
    rng = np.random.default_rng(0)
    V = np.linalg.qr(rng.standard_normal((n, 20)))[0] * 0.8 ** np.arange(20)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(m, n))
    for a in range(0, m, rows):
        b = min(a + rows, m)
        out[a:b] = rng.standard_normal((b - a, 20)) @ V.T + 1e-3 * rng.standard_normal((b - a, n))
    out.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3 << 17)
    parser.add_argument("--cols", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=8192, help="rows per chunk")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="300MiB", help="per worker")
    args = parser.parse_args()
    m, n = args.rows, args.cols

    with tempfile.TemporaryDirectory() as tmp:
        write_matrix(Path(tmp) / "A.npy", m, n, args.chunk)
        src = DiskRows(Path(tmp) / "A.npy", Path(tmp) / "reads.log")
        A = da.from_array(src, chunks=(args.chunk, n))
        print(f"A: {m} x {n} float64, {m * n * 8 / 2**20:.0f} MiB on disk in {A.numblocks[0]} "
              f"chunks; {args.workers} workers x {args.memory_limit}")
        with LocalCluster(n_workers=args.workers, threads_per_worker=1,
                          memory_limit=args.memory_limit, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            S = sl.SparseSign(4 * n, m, rng=0)
            SA = (S @ A).persist()  # lazy until here; persist starts the pass
            progress(SA)
            SA = SA.compute()
            print(f"\nS @ A: shape {SA.shape}, |S A|_F = {np.linalg.norm(SA):.4g}; chunk reads "
                  f"{{times read: chunks}}: {src.reads()}")

            U, s, _ = sl.rsvd(A, 10, power_iters=2, rng=0)
            print(f"rsvd: s[:5] = {np.array2string(s[:5], precision=4)}, U {U.shape} (dask); "
                  f"chunk reads: {src.reads()}")
            U, s, _ = sl.rsvd(A, 10, single_pass=True, rng=0)
            print(f"rsvd, single pass: s[:5] = {np.array2string(s[:5], precision=4)}; "
                  f"chunk reads: {src.reads()}")

            b = (A @ np.ones(n)).compute()  # a consistent right-hand side (one pass)
            src.reads()
            x, info = sl.ridge(A, b, 0.0, method="sketch_solve", rng=0, return_info=True)
            print(f"ridge sketch_solve: |x - 1|_max = {np.abs(x - 1).max():.2e}, passes "
                  f"{info['passes']} (with the reported residual); chunk reads: {src.reads()}")

            peaks = client.run(peak_resident_kib)
            print("peak resident memory per worker: "
                  + ", ".join(f"{v / 2**10:.0f} MiB" for v in peaks.values()))


if __name__ == "__main__":
    main()
