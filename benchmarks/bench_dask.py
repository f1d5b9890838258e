"""sketchlinalg on Dask arrays, against Dask's own randomized SVD and least squares, on a
matrix stored on disk (a NumPy ``.npy`` file read by row chunks) and a ``dask.distributed``
LocalCluster of worker processes with a memory limit each.

Prints, in one run:

1. one read of the data (``A.sum()``): seconds and GB/s, the unit of every other time;
2. ``S @ A`` for each sketch family (one pass): seconds, ratio to one read;
3. ``rsvd`` with q = 0, 1, 2 power iterations and in one pass (``single_pass=True``)
   against ``dask.array.linalg.svd_compressed`` at equal rank, oversampling and power
   iterations (``iterator="QR"``, re-orthonormalized like ours, and at q = 2 its default
   ``"power"``): seconds, ratio, passes over A (reads of A's chunks, counted by the
   reader, over the number of chunks), relative Frobenius error ``|A - U S V^T|_F / |A|_F``;
4. ``ridge`` (sketch-and-solve, sketch-and-precondition, direct) against
   ``dask.array.linalg.lstsq`` on ``b = A x_true + noise`` (LSQR tolerance 1e-10): seconds,
   ratio, passes over A, relative error to lstsq's solution;
5. the peak resident memory of each worker process against its limit and the matrix size.

Each timed call runs after a pause; best of ``--repeats``. The matrix is a rank-``r``
signal plus noise, written chunk by chunk (the writer never holds it whole).

    python benchmarks/bench_dask.py --quick        # 65536 x 128 (64 MiB), seconds
    python benchmarks/bench_dask.py                # 393216 x 256 (768 MiB), 2 workers x 300 MiB
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
from distributed import Client, LocalCluster

import sketchlinalg as sl

PAUSE = 0.5


def peak_resident_kib() -> int:
    """Peak resident memory of this process since it started (Linux's VmHWM; ``ru_maxrss``
    would include the parent's peak at fork, which exec keeps)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


class DiskRows:
    """A C-ordered ``.npy`` matrix on disk whose row blocks are read by each task with a seek
    and one read (a ``numpy.memmap`` given to ``da.from_array`` would be pickled whole into
    the graph, and its mapped pages count in the workers' resident memory)."""

    def __init__(self, path: str, log: str | None = None) -> None:
        self.path, self.log = path, log
        with open(path, "rb") as f:
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
        with open(self.path, "rb") as f:
            f.seek(self.offset + a * n * self.dtype.itemsize)
            block = np.fromfile(f, dtype=self.dtype, count=max(b - a, 0) * n)
        if self.log is not None and b > a:  # one line per block read (Dask probes with empty)
            with open(self.log, "a") as f:
                f.write(f"{a}\n")
        return block.reshape(-1, n)[:, cols]

    def reads(self) -> int:
        """Blocks read so far (0 without a log)."""
        if self.log is None or not Path(self.log).exists():
            return 0
        return len(Path(self.log).read_text().split())


def write_matrix(path: Path, m: int, n: int, rank: int, rows: int, seed: int = 0) -> None:
    """``A = G diag(s) V^T + 1e-3 N`` (``G``, ``N`` standard Gaussian, ``s_j = 0.8^j``),
    written ``rows`` rows at a time."""
    rng = np.random.default_rng(seed)
    V = np.linalg.qr(rng.standard_normal((n, rank)))[0]
    core = 0.8 ** np.arange(rank) * V  # n x rank, scaled columns
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(m, n))
    for a in range(0, m, rows):
        b = min(a + rows, m)
        out[a:b] = rng.standard_normal((b - a, rank)) @ core.T
        out[a:b] += 1e-3 * rng.standard_normal((b - a, n))
    out.flush()
    del out


def timed(fn, repeats):
    """Best-of-``repeats`` seconds and the last output, each call after a pause."""
    best, out = np.inf, None
    for _ in range(repeats):
        time.sleep(PAUSE)
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def frob_error(A, U, s, Vh):
    """``|A - U diag(s) Vh|_F / |A|_F`` for orthonormal ``U``, ``Vh`` from one Dask pass,
    ``|A|^2 - 2 tr(diag(s) Vh A^T U) + |s|^2`` (``A^T U`` is a reduction: no ``m x n``
    temporary on the workers)."""
    Ud = da.from_array(np.asarray(U), chunks=(A.chunks[0], U.shape[1]))
    AtU, norm2 = dask.compute(A.T @ Ud, (A**2).sum())
    err2 = norm2 - 2 * np.sum(s * np.diag(Vh @ AtU)) + np.sum(s**2)
    return float(np.sqrt(max(err2, 0.0) / norm2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="65536 x 128, one repeat")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="300MiB", help="per worker")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", default=None, help="where the matrix is written (a temp dir)")
    args = parser.parse_args()
    m, n, rows = (1 << 16, 128, 8192) if args.quick else (3 << 17, 256, 8192)
    repeats = 1 if args.quick else args.repeats
    rank, k, p, q = 20, 10, 10, 2

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = str(Path(tmp) / "A.npy")
        write_matrix(Path(path), m, n, rank, rows)
        gib = m * n * 8 / 2**30
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                          memory_limit=args.memory_limit, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            src = DiskRows(path, log=str(Path(tmp) / "reads.log"))
            A = da.from_array(src, chunks=(rows, n))
            print(f"A: {m} x {n} float64 = {gib:.2f} GiB on disk, {A.numblocks[0]} chunks of "
                  f"{rows} rows ({rows * n * 8 / 2**20:.0f} MiB); {args.workers} workers x "
                  f"{args.memory_limit}, 1 thread each")

            t_read, _ = timed(lambda: A.sum().compute(), repeats)
            print(f"\n1. one read (A.sum()): {t_read:.2f} s, {gib * 2**30 / t_read / 1e9:.2f} GB/s")

            print(f"\n2. S @ A, d = {4 * n} (one pass; ratio to one read)")
            for kind in ["gaussian", "countsketch", "sparse_sign", "sampling", "block_srht"]:
                S = (sl.BlockSRHT(4 * n, m, blocks=A.chunks[0], rng=0) if kind == "block_srht"
                     else sl.sketch(kind, 4 * n, m, rng=0))
                t, _ = timed(lambda S=S: (S @ A).compute(), repeats)
                print(f"   {kind:12s} {t:7.2f} s  {t / t_read:5.2f}x one read")

            print(f"\n3. rank {k}, oversample {p} (ratio to ours at q = {q}; time in reads; "
                  f"passes: reads of A's chunks over {A.numblocks[0]})")

            def ours(q_, single):
                U, s_, Vh = sl.rsvd(A, k, p, None if single else q_, rng=0, single_pass=single)
                return U.compute(), s_, Vh

            def theirs(q_, it):
                return dask.compute(*da.linalg.svd_compressed(
                    A, k, iterator=it, n_power_iter=q_, n_oversamples=p, seed=0))

            runs = [("sketchlinalg.rsvd, one pass", lambda: ours(0, True))]
            for q_ in (0, 1, 2):
                runs.append((f"sketchlinalg.rsvd, q = {q_}", lambda q_=q_: ours(q_, False)))
                runs.append((f"svd_compressed (QR), q = {q_}",
                             lambda q_=q_: theirs(q_, "QR")))
            runs.append((f"svd_compressed (power), q = {q}", lambda: theirs(q, "power")))
            rows_out = []
            for name, fn in runs:
                before = src.reads()
                t, (U, s, Vh) = timed(fn, repeats)
                passes = (src.reads() - before) / (repeats * A.numblocks[0])
                rows_out.append((name, t, passes, frob_error(A, U, s, Vh)))
            t_ours = next(t for name, t, *_ in rows_out if name == f"sketchlinalg.rsvd, q = {q}")
            for name, t, passes, err in rows_out:
                print(f"   {name:32s} {t:7.2f} s  {t / t_ours:5.2f}x  {t / t_read:5.2f} reads  "
                      f"{passes:4.1f} passes  error {err:.3e}")

            rng = np.random.default_rng(1)
            x_true = rng.standard_normal(n)
            b = (A @ x_true).compute() + 1e-3 * rng.standard_normal(m)
            bd = da.from_array(b, chunks=rows)
            t_lstsq, x_ref = timed(lambda: da.linalg.lstsq(A, bd[:, None])[0].compute()[:, 0],
                                   repeats)
            print("\n4. least squares, lam = 0 (ratio to dask lstsq; error relative to its x)")
            print(f"   {'dask.array.linalg.lstsq':34s} {t_lstsq:7.2f} s  1.00x  1 pass")
            for method in ["sketch_solve", "sketch_precondition", "direct"]:
                t, (x, info) = timed(lambda method=method: sl.ridge(
                    A, bd, 0.0, method=method, rng=0, tol=1e-10, return_info=True), repeats)
                err = np.linalg.norm(x - x_ref) / np.linalg.norm(x_ref)
                passes = info["passes"] - 1  # without the reported residual's pass
                print(f"   ridge {method:28s} {t:7.2f} s  {t / t_lstsq:5.2f}x  {passes} passes "
                      f"error {err:.1e}")

            peaks = client.run(peak_resident_kib)
            print("\n5. peak resident memory per worker: "
                  + ", ".join(f"{v / 2**10:.0f} MiB" for v in peaks.values())
                  + f" (limit {args.memory_limit}; the matrix is {gib * 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
