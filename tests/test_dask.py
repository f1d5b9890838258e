"""Dask arrays: sketches and drivers (the single-pass rsvd included) on a
``dask.distributed`` LocalCluster of worker processes, against the NumPy results for the same
seed, with laziness and the passes over ``A`` counted by a reader that logs every chunk it
serves (a file, shared by the processes)."""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import sketchlinalg as sl  # noqa: E402
from helpers import assert_close, matrix_with_spectrum, orthonormal  # noqa: E402

FAMILIES = ["gaussian", "countsketch", "sparse_sign", "sampling"]


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  memory_limit="400MiB", dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as c:
        yield c


class LoggedChunks:
    """An on-disk matrix (NumPy memmap) that appends the first row of every block it serves
    to a log file: the number of lines per block is the number of reads."""

    def __init__(self, path: Path, log: Path) -> None:
        self.path, self.log = str(path), str(log)
        head = np.load(self.path, mmap_mode="r")
        self.shape, self.dtype, self.ndim = head.shape, head.dtype, head.ndim

    def __getitem__(self, key):
        block = np.array(np.load(self.path, mmap_mode="r")[key])
        if block.size:  # Dask probes the dtype with an empty slice: not a read
            with open(self.log, "a") as f:
                f.write(f"{key[0].start}\n")
        return block

    def reads(self) -> dict[int, int]:
        lines = Path(self.log).read_text().split() if Path(self.log).exists() else []
        return {int(s): lines.count(s) for s in set(lines)}


def logged(tmp_path: Path, A: np.ndarray, rows: int) -> tuple[LoggedChunks, object]:
    np.save(tmp_path / "A.npy", A)
    src = LoggedChunks(tmp_path / "A.npy", tmp_path / "reads.log")
    return src, da.from_array(src, chunks=(rows, A.shape[1]))


def make(kind: str, d: int, m: int, rng=0, blocks=None):
    if kind == "block_srht":
        return sl.BlockSRHT(d, m, blocks=blocks, rng=rng)
    return sl.sketch(kind, d, m, rng=rng)


# -- sketches ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [*FAMILIES, "block_srht"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sketch_equals_numpy_for_the_seed(client, kind, dtype):
    m, n, d = 9000, 6, 40  # 9000 rows: the Gaussian's columns span three 4096-column blocks
    A = np.random.default_rng(1).standard_normal((m, n)).astype(dtype)
    Ad = da.from_array(A, chunks=(2500, n))
    S = make(kind, d, m, rng=7, blocks=Ad.chunks[0])
    want = make(kind, d, m, rng=7, blocks=Ad.chunks[0]) @ A
    got = S @ Ad
    assert isinstance(got, da.Array) and got.dtype == dtype
    factor = 10 * np.sqrt(m)  # sums of m terms, in another order
    assert_close(got.compute(), want, factor=factor)
    assert_close((S @ Ad[:, 2]).compute(), want[:, 2], factor=factor)
    # B @ S.T for B chunked by columns
    Bd = da.from_array(np.ascontiguousarray(A.T), chunks=(n, 2500))
    assert_close((Bd @ S.T).compute(), want.T, factor=factor)


def test_sketch_is_lazy_and_reads_each_chunk_once(client, tmp_path):
    A = np.random.default_rng(2).standard_normal((5000, 8))
    src, Ad = logged(tmp_path, A, 1200)
    S = sl.SparseSign(64, 5000, rng=3)
    Y = S @ Ad
    assert src.reads() == {}  # nothing computed yet
    out = Y.compute()
    assert src.reads() == {start: 1 for start in range(0, 5000, 1200)}
    assert_close(out, sl.SparseSign(64, 5000, rng=3) @ A, factor=10 * np.sqrt(5000))


def test_operator_pickles_without_its_columns():
    # A task carries the operator: the d x m data is redrawn there, not shipped.
    S = sl.GaussianSketch(50, 200_000, rng=0)
    S @ np.ones((200_000, 1))  # materializes the 80 MB matrix here
    assert len(pickle.dumps(S)) < 10_000
    T = pickle.loads(pickle.dumps(S))
    assert np.array_equal(T.host_columns(4000, 9000), S.matrix[:, 4000:9000])


# -- drivers -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tall():
    return matrix_with_spectrum(3000, 60, 0.7 ** np.arange(60), rng=4)


@pytest.mark.parametrize("kind", ["gaussian", "sparse_sign", "srht"])
def test_rsvd_matches_numpy_in_2q_plus_2_passes(client, tmp_path, tall, kind):
    src, Ad = logged(tmp_path, tall, 700)
    q = 1
    U, s, Vh = sl.rsvd(Ad, 8, power_iters=q, sketch=kind, rng=5)
    assert isinstance(U, da.Array)
    U = U.compute()
    assert set(src.reads().values()) == {2 * q + 2}
    Un, sn, Vhn = sl.rsvd(tall, 8, power_iters=q, sketch=kind, rng=5)
    # Same test matrix: the same subspace to rounding (factor: cond of the sample ~ 0.7^-18).
    assert_close(s, sn, factor=1e3)
    assert_close((U * s) @ Vh, (Un * sn) @ Vhn, factor=1e3)
    assert_close(U.T @ U, np.eye(8), factor=100)


@pytest.mark.parametrize("kind", ["gaussian", "sparse_sign", "countsketch"])
def test_rsvd_single_pass_matches_numpy_in_one_pass(client, tmp_path, tall, kind):
    src, Ad = logged(tmp_path, tall, 700)
    U, s, Vh = sl.rsvd(Ad, 8, sketch=kind, rng=5, single_pass=True)
    # The pass runs at the call (the small solve and SVD need W); U stays a lazy Dask
    # array over the persisted range sketch: computing it reads no chunk of A again.
    assert isinstance(U, da.Array) and isinstance(s, np.ndarray) and isinstance(Vh, np.ndarray)
    one_pass = {start: 1 for start in range(0, 3000, 700)}
    assert src.reads() == one_pass
    U = U.compute()
    assert src.reads() == one_pass
    # Same Omega and Psi as in memory (each block draws its columns of Psi from the seed):
    # equal up to the order of the sums and TSQR against Cholesky QR (cond(Y) ~ 0.7^-17).
    Un, sn, Vhn = sl.rsvd(tall, 8, sketch=kind, rng=5, single_pass=True)
    assert_close(s, sn, factor=1e3)
    assert_close((U * s) @ Vh, (Un * sn) @ Vhn, factor=1e3)
    assert_close(U.T @ U, np.eye(8), factor=100)


def test_rsvd_single_pass_srht_is_block_srht_on_the_chunks(client, tmp_path):
    # Psi = BlockSRHT on A's row chunks (the SRHT has no per-block form): another operator
    # than in memory, so the oracle is exactness on a rank-6 matrix, in one pass.
    s_true = np.array([5.0, 4.0, 2.0, 1.0, 0.5, 0.25])
    A = matrix_with_spectrum(2000, 40, s_true, rng=15)
    src, Ad = logged(tmp_path, A, 600)
    U, s, Vh = sl.rsvd(Ad, 6, sketch="srht", rng=3, single_pass=True)
    assert set(src.reads().values()) == {1}
    assert_close(s, s_true, factor=100, scale=5.0)
    assert_close((U.compute() * s) @ Vh, A, factor=1e3, scale=5.0)


def test_range_finder_passes_and_span(client, tmp_path, tall):
    src, Ad = logged(tmp_path, tall, 1000)
    Q = sl.range_finder(Ad, 8, power_iters=2, rng=6).compute()
    assert set(src.reads().values()) == {5}  # 2q + 1
    Qn = sl.range_finder(tall, 8, power_iters=2, rng=6)
    assert_close(Q @ Q.T, Qn @ Qn.T, factor=1e3)


@pytest.fixture(scope="module")
def psd():
    U = orthonormal(800, 800, rng=8)
    return (U * 0.8 ** np.arange(800)) @ U.T


def test_nystrom_one_pass_and_eigh(client, tmp_path, psd):
    A = 0.5 * (psd + psd.T)
    src, Ad = logged(tmp_path, A, 300)
    U, lam = sl.nystrom(Ad, 6, rng=9)
    U = U.compute()
    assert set(src.reads().values()) == {1}
    Un, lamn = sl.nystrom(A, 6, rng=9)
    assert_close(lam, lamn, factor=1e3)
    assert_close((U * lam) @ U.T, (Un * lamn) @ Un.T, factor=1e3)
    w, V = sl.eigh_randomized(Ad, 6, power_iters=1, rng=9)
    wn, Vn = sl.eigh_randomized(A, 6, power_iters=1, rng=9)
    assert set(src.reads().values()) == {1 + 4}  # nystrom's pass, then 2q + 2
    assert_close(w, wn, factor=1e3)
    V = V.compute()
    assert_close((V * w) @ V.T, (Vn * wn) @ Vn.T, factor=1e3)


@pytest.mark.parametrize("method", ["sketch_solve", "sketch_precondition", "direct"])
def test_ridge(client, tmp_path, method):
    rng = np.random.default_rng(10)
    A = matrix_with_spectrum(2000, 30, np.logspace(0, -5, 30), rng=11)
    b = rng.standard_normal(2000)
    src, Ad = logged(tmp_path, A, 450)
    x, info = sl.ridge(Ad, b, 1e-3, method=method, rng=12, return_info=True)
    # info["passes"] counts the products with A, the residual's included: each is one read.
    assert set(src.reads().values()) == {info["passes"]}
    if method == "sketch_solve":
        assert info["passes"] == 2
        assert_close(x, sl.ridge(A, b, 1e-3, method=method, rng=12), factor=1e4)
    else:
        exact = np.linalg.solve(A.T @ A + 1e-3 * np.eye(30), A.T @ b)
        assert_close(x, exact, factor=1e3 * 1e3)  # cond(A_bar) ~ 1e3 (lam = 1e-3)
    if method == "sketch_precondition":
        # the sketch, LSQR's start (A x0, A^T r0), 2 per iteration, the final residual
        assert info["passes"] == 1 + 2 + 2 * info["iterations"] + 1
    if method == "direct":  # auto's pick for a Dask A: TSQR, one pass
        x_auto, auto = sl.ridge(Ad, b, 1e-3, rng=12, return_info=True)
        assert auto["method"] == "direct" and "TSQR" in auto["auto_reason"]
        assert_close(x_auto, x, factor=1)
    if method != "sketch_precondition":  # b as a Dask array: the same answer
        x2 = sl.ridge(Ad, da.from_array(b, chunks=700), 1e-3, method=method, rng=12)
        assert_close(x2, x, factor=100)


def test_sketch_argument_as_operator_or_factory(client):
    A = matrix_with_spectrum(1500, 40, 0.7 ** np.arange(40), rng=13)
    Ad = da.from_array(A, chunks=(400, 40))
    factory = functools.partial(sl.SparseSign, nnz=4)
    _, s, _ = sl.rsvd(Ad, 5, power_iters=1, sketch=factory, rng=1)
    assert_close(s, sl.rsvd(A, 5, power_iters=1, sketch=factory, rng=1)[1], factor=1e3)
    b = np.random.default_rng(14).standard_normal(1500)
    S = sl.CountSketch(160, 1500, rng=2)
    x, info = sl.ridge(Ad, b, 1e-2, method="sketch_solve", sketch=S, return_info=True)
    assert info["sketch"] == repr(S)
    assert_close(x, sl.ridge(A, b, 1e-2, method="sketch_solve", sketch=S), factor=1e4)
    with pytest.raises(ValueError, match="shape"):
        sl.ridge(Ad, b, 1.0, method="sketch_solve", sketch=sl.CountSketch(160, 1499))


# -- bad input -----------------------------------------------------------------------------
def test_bad_input(client):
    Ad = da.from_array(np.ones((100, 4)), chunks=(30, 4))
    with pytest.raises(TypeError, match=r"mixes all m rows.*BlockSRHT"):
        sl.SRHT(8, 100) @ Ad
    with pytest.raises(ValueError, match="row chunks"):
        sl.BlockSRHT(8, 100, blocks=50) @ Ad
    with pytest.raises(ValueError, match="A has 100 rows but the operator needs 101"):
        sl.GaussianSketch(8, 101) @ Ad
    with pytest.raises(TypeError, match="A must have a real floating dtype"):
        sl.GaussianSketch(8, 100) @ da.ones((100, 4), dtype=int, chunks=30)
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        sl.GaussianSketch(8, 100) @ Ad[Ad[:, 0] > 0]
    with pytest.raises(ValueError, match="rank must be <= min"):
        sl.rsvd(Ad, 5)
    with pytest.raises(ValueError, match="must be square"):
        sl.nystrom(Ad, 2)
    with pytest.raises(ValueError, match="A must be 2-D"):
        sl.rsvd(Ad[:, 0], 1)
    bad = Ad.copy()
    bad[57, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        sl.rsvd(bad, 2, sketch="countsketch")
    with pytest.raises(ValueError, match="NaN or Inf"):
        sl.ridge(bad, np.ones(100), 1.0, method="sketch_solve")
    with pytest.raises(ValueError, match="b needs 100 rows"):
        sl.ridge(Ad, np.ones(99), 1.0)
    with pytest.raises(TypeError, match="A must be a Dask array when b is one"):
        sl.ridge(np.ones((100, 4)), da.ones(100, chunks=30), 1.0)
    with pytest.raises(ValueError, match="m >= n"):
        sl.ridge(Ad.T, np.ones(4), 1.0)


def test_rsvd_single_pass_bad_input(client):
    Ad = da.from_array(np.ones((100, 4)), chunks=(30, 4))
    with pytest.raises(ValueError, match="power_iters=2 cannot be combined with single_pass"):
        sl.rsvd(Ad, 2, power_iters=2, single_pass=True)
    with pytest.raises(TypeError, match="sketch must be a family name or a factory"):
        sl.rsvd(Ad, 2, sketch=sl.GaussianSketch(4, 4), single_pass=True)
    with pytest.raises(TypeError, match=r"SRHT mixes all m rows.*BlockSRHT"):
        sl.rsvd(Ad, 2, sketch=sl.SRHT, single_pass=True)  # a factory of SRHTs
    with pytest.raises(ValueError, match="rank must be <= min"):
        sl.rsvd(Ad, 5, single_pass=True)
    bad = Ad.copy()
    bad[57, 2] = np.nan
    with pytest.raises(ValueError, match="A contains NaN or Inf"):
        sl.rsvd(bad, 2, single_pass=True)
