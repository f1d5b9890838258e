"""One property suite that every sketch family goes through.

Oracles: the dense matrix ``S.to_dense()`` (and, for SRHT, SciPy's Hadamard matrix);
expectations from the theory, asserted over many fixed seeds against bounds derived from the
variance of the estimate.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse
from hypothesis import given
from hypothesis import strategies as st

import sketchlinalg as sl
from helpers import assert_close, orthonormal, tensor_sketch_variance

KINDS = list(sl.KINDS)
# TensorSketch is not built by sl.sketch (it needs the factor split m = m1 * m2) but goes
# through the same properties, with m split as evenly as it divides (m prime: (1, m)).
FAMILIES = [*KINDS, "tensorsketch"]
DTYPES = [np.float32, np.float64]


def even_split(m: int) -> tuple[int, int]:
    m1 = max(q for q in range(1, int(np.sqrt(m)) + 1) if m % q == 0)
    return m1, m // m1


def make(kind: str, d: int, m: int, rng=0) -> sl.SketchingOperator:
    if kind == "tensorsketch":
        return sl.TensorSketch(d, even_split(m), rng=rng)
    return sl.sketch(kind, d, m, rng=rng, **({"nnz": min(4, d)} if kind == "sparse_sign" else {}))


def tol_factor(m: int) -> float:
    # An inner product of length m accumulates ~sqrt(m) rounding errors of size eps * |terms|;
    # 10 * sqrt(m) covers it for every summation order (blocked GEMM, FWHT factors).
    return 10 * np.sqrt(m)


# -- shapes, backends, dtypes, agreement with the dense matrix --------------------------------
@pytest.mark.parametrize("kind", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_apply_matches_dense(kind, dtype, backend):
    d, m, n = 24, 300, 5
    S = make(kind, d, m, rng=1)
    A_np = np.random.default_rng(2).standard_normal((m, n))
    A = backend.asarray(A_np, dtype)
    Y = S @ A
    assert type(Y) is type(A) and tuple(Y.shape) == (d, n) and Y.dtype == A.dtype
    assert str(getattr(Y, "device", "cpu")) == str(getattr(A, "device", "cpu"))
    dense = S.to_dense(like=A)
    assert tuple(dense.shape) == (d, m) and dense.dtype == A.dtype
    assert_close(Y, S.to_dense() @ A_np, factor=tol_factor(m), dtype=dtype,
                 scale=float(np.abs(S.to_dense()).sum(axis=1).max() * np.abs(A_np).max()))
    # vectors, the column sketch B @ S.T, and the adjoint S.T @ Y
    assert_close(S @ A[:, 0], S.to_dense() @ A_np[:, 0], factor=tol_factor(m), dtype=dtype,
                 scale=float(np.abs(S.to_dense()).sum(axis=1).max() * np.abs(A_np).max()))
    B = A.T
    col = B @ S.T if backend.defers_matmul else (S @ B.T).T
    assert_close(col, (S.to_dense() @ A_np).T, factor=tol_factor(m), dtype=dtype,
                 scale=float(np.abs(S.to_dense()).sum(axis=1).max() * np.abs(A_np).max()))
    Z_np = np.random.default_rng(3).standard_normal((d, n))
    back = S.T @ backend.asarray(Z_np, dtype)
    assert tuple(back.shape) == (m, n) and back.dtype == A.dtype
    assert_close(back, S.to_dense().T @ Z_np, factor=tol_factor(d), dtype=dtype,
                 scale=float(np.abs(S.to_dense()).sum(axis=0).max() * np.abs(Z_np).max()))


@pytest.mark.parametrize("kind", FAMILIES)
def test_adjoint_and_linearity(kind):
    d, m = 16, 200
    S = make(kind, d, m, rng=4)
    rng = np.random.default_rng(5)
    x, x2, y = rng.standard_normal(m), rng.standard_normal(m), rng.standard_normal(d)
    lhs, rhs = float((S @ x) @ y), float(x @ (S.T @ y))
    assert abs(lhs - rhs) <= tol_factor(m) * np.finfo(float).eps * np.abs(S.to_dense()).sum() * 10
    assert_close(S @ (2.0 * x - 3.0 * x2), 2.0 * (S @ x) - 3.0 * (S @ x2), factor=tol_factor(m))
    assert S.T.shape == (m, d) and S.T.T is S


@given(st.sampled_from(FAMILIES), st.integers(1, 40), st.integers(0, 60), st.integers(1, 4),
       st.integers(0, 2**32 - 1))
def test_shapes_any_size(kind, d, extra, n, seed):
    m = d + extra
    S = make(kind, d, m, rng=seed)
    A = np.random.default_rng(seed).standard_normal((m, n))
    assert (S @ A).shape == (d, n) and (S @ A[:, 0]).shape == (d,)
    assert (S.T @ (S @ A)).shape == (m, n)
    assert_close(S @ A, S.to_dense() @ A, factor=tol_factor(m),
                 scale=float(np.abs(S.to_dense()).sum(axis=1).max() * np.abs(A).max()))


def test_srht_matches_scipy_hadamard():
    m, d = 1000, 50
    S = sl.SRHT(d, m, rng=7)
    H = scipy.linalg.hadamard(S.m_pad) / np.sqrt(S.m_pad)
    oracle = np.sqrt(S.m_pad / d) * H[S.rows][:, :m] * S.signs
    assert_close(S.to_dense(), oracle, factor=tol_factor(m))


@pytest.mark.parametrize("kind", FAMILIES)
def test_half_precision_computed_in_float32(kind):
    torch = pytest.importorskip("torch")
    S = make(kind, 8, 64, rng=0)
    A = np.random.default_rng(0).standard_normal((64, 3))
    for half in (torch.float16, torch.bfloat16):
        Y = S @ torch.as_tensor(A, dtype=half)
        assert Y.dtype == half
        exact = S.to_dense() @ torch.as_tensor(A, dtype=half).double().numpy()
        # one rounding of the float32 result to the half format dominates
        assert_close(Y, exact, factor=4.0, dtype=half)
    assert (S @ A.astype(np.float16)).dtype == np.float16


@pytest.mark.parametrize("kind", FAMILIES)
def test_scipy_sparse_input(kind):
    m, n, d = 500, 6, 20
    A = scipy.sparse.random_array((m, n), density=0.1, format="csr", rng=1)
    S = make(kind, d, m, rng=2)
    Y = S @ A
    assert isinstance(Y, np.ndarray) and Y.shape == (d, n)
    assert_close(Y, S.to_dense() @ A.toarray(), factor=tol_factor(m))


@pytest.mark.parametrize("kind", FAMILIES)
def test_scipy_sparse_on_either_side(kind):
    # B @ S.T with a sparse B (n, m) and Y @ S with a sparse Y (n, d): dense NumPy, as S @ A.
    m, n, d = 300, 7, 16
    S = make(kind, d, m, rng=3)
    dense = S.to_dense()
    B = scipy.sparse.random_array((n, m), density=0.1, format="csr", rng=4)
    scale = float(np.abs(dense).sum(axis=1).max() * np.abs(B.toarray()).max())
    for Bs in (B, scipy.sparse.csr_matrix(B), B.tocsc(), B.astype(np.float32)):
        Z = Bs @ S.T
        assert isinstance(Z, np.ndarray) and Z.shape == (n, d) and Z.dtype == Bs.dtype
        assert_close(Z, B.toarray() @ dense.T, factor=tol_factor(m), dtype=Bs.dtype,
                     scale=scale)
    Y = scipy.sparse.random_array((n, d), density=0.3, format="csr", rng=5)
    W = Y @ S
    assert isinstance(W, np.ndarray) and W.shape == (n, m)
    assert_close(W, Y.toarray() @ dense, factor=tol_factor(d),
                 scale=float(np.abs(dense).sum(axis=0).max() * np.abs(Y.toarray()).max()))
    with pytest.raises(ValueError, match="shape mismatch: B has shape"):
        scipy.sparse.csr_array(np.ones((2, m + 1))) @ S.T
    with pytest.raises(TypeError, match="B must have a real floating dtype"):
        scipy.sparse.csr_array(np.ones((2, m), dtype=np.int64)) @ S.T


@pytest.mark.parametrize("kind", FAMILIES)
def test_empty_and_zero_column_inputs(kind, backend):
    # Regression: SRHT raised ZeroDivisionError on S @ np.zeros((m, 0)).
    d, m = 8, 50
    S = make(kind, d, m, rng=6)
    for dtype in DTYPES:
        cases = [(S @ backend.asarray(np.zeros((m, 0)), dtype), (d, 0)),
                 (S.T @ backend.asarray(np.zeros((d, 0)), dtype), (m, 0))]
        if backend.defers_matmul:
            cases += [(backend.asarray(np.zeros((0, m)), dtype) @ S.T, (0, d)),
                      (backend.asarray(np.zeros((0, d)), dtype) @ S, (0, m))]
        like = backend.asarray(np.zeros(1), dtype)
        for Y, shape in cases:
            assert type(Y) is type(like) and tuple(Y.shape) == shape and Y.dtype == like.dtype
    Y = S @ scipy.sparse.csr_array((m, 0))
    assert isinstance(Y, np.ndarray) and Y.shape == (d, 0)
    assert (scipy.sparse.csr_array((0, m)) @ S.T).shape == (0, d)


@pytest.mark.parametrize("kind", FAMILIES)
def test_to_dense_dtype_rule(kind, backend):
    # One rule for every family: like=None gives NumPy float64; a floating like gives its
    # backend and dtype (half precision computed in float32); any other like is a TypeError
    # naming it. Regression: GaussianSketch.to_dense(like=<int array>) returned an int matrix.
    S = make(kind, 6, 40, rng=7)
    ref = S.to_dense()
    assert isinstance(ref, np.ndarray) and ref.dtype == np.float64 and ref.shape == (6, 40)
    for dtype in (np.float16, np.float32, np.float64):
        like = backend.asarray(np.zeros(2), dtype)
        D = S.to_dense(like=like)
        assert type(D) is type(like) and D.dtype == like.dtype and tuple(D.shape) == (6, 40)
        assert_close(D, ref, factor=tol_factor(40), dtype=dtype)
        assert_close(S.T.to_dense(like=like), ref.T, factor=tol_factor(40), dtype=dtype)
    for bad in (np.zeros(2, dtype=np.int64), np.zeros(2, dtype=bool),
                np.zeros(2, dtype=np.complex128)):
        with pytest.raises(TypeError, match="like must have a real floating dtype"):
            S.to_dense(like=backend.asarray(bad))
    with pytest.raises(TypeError, match="like must be a NumPy, PyTorch or CuPy array"):
        S.to_dense(like=[0.0])


# -- isometry: E[S^T S] = I and E ||S x||^2 = ||x||^2 ----------------------------------------
@pytest.mark.parametrize("kind", FAMILIES)
def test_isometry_in_expectation(kind):
    d, m, trials = 4, 16, 3000
    mean = np.zeros((m, m))
    sq = np.zeros((m, m))
    for seed in range(trials):
        D = make(kind, d, m, rng=seed).to_dense()
        G = D.T @ D
        mean += G
        sq += G * G
    mean /= trials
    se = np.sqrt(np.maximum(sq / trials - mean**2, 0) / trials)
    # Entries are means of independent trials: within 5 standard errors of I (exact zeros of
    # a family, e.g. off-diagonals that are always 0, have se = 0 and must match exactly).
    assert np.all(np.abs(mean - np.eye(m)) <= 5 * se + 1e-12), np.abs(mean - np.eye(m)).max()


@pytest.mark.parametrize("kind", FAMILIES)
def test_norm_preserved_in_mean(kind):
    d, m, trials = 32, 512, 400
    # x from a seed outside range(trials): a sketch drawn from x's own seed is correlated with it
    x = np.random.default_rng(10**6).standard_normal(m)
    x /= np.linalg.norm(x)
    ratios = np.array([np.linalg.norm(make(kind, d, m, rng=s) @ x) ** 2 for s in range(trials)])
    se = ratios.std(ddof=1) / np.sqrt(trials)
    assert abs(ratios.mean() - 1) <= 5 * se
    if kind == "gaussian":  # ||Sx||^2 ~ chi^2_d / d: variance 2/d
        assert abs(ratios.var(ddof=1) - 2 / d) <= 5 * (2 / d) * np.sqrt(2 / trials) * 2
    if kind == "countsketch":  # variance (2/d)(1 - sum x^4)
        want = 2 / d * (1 - np.sum(x**4))
        assert abs(ratios.var(ddof=1) - want) <= 5 * want * np.sqrt(2 / trials) * 2
    if kind == "tensorsketch":  # the exact formula (tests/test_tensor_sketch.py)
        X = x.reshape(even_split(m))
        want = tensor_sketch_variance(X, X, d)
        assert abs(ratios.var(ddof=1) - want) <= 5 * want * np.sqrt(2 / trials) * 2


# -- subspace embedding --------------------------------------------------------------------
def frob_distortion(S, U) -> float:
    SU = S @ U
    return float(np.linalg.norm(SU.T @ SU - np.eye(U.shape[1]), "fro") ** 2)


@pytest.mark.parametrize("kind", ["gaussian", "countsketch", "sparse_sign", "srht"])
@pytest.mark.parametrize("coherent", [False, True])
def test_embedding_second_moment_bound(kind, coherent):
    """E ||U^T S^T S U - I||_F^2 <= (n^2 + n)/d for orthonormal U: equality for Gaussian,
    (n^2 + n - 2 sum ||u_j||^4)/d for CountSketch, an upper bound for sparse sign and SRHT,
    for every U (coherent or not)."""
    m, n, d, trials = 512, 4, 64, 300
    U = np.eye(m)[:, :n] if coherent else orthonormal(m, n, rng=10**6)
    vals = np.array([frob_distortion(make(kind, d, m, rng=s), U) for s in range(trials)])
    mean, se = vals.mean(), vals.std(ddof=1) / np.sqrt(trials)
    bound = (n * n + n) / d
    if kind == "gaussian":
        assert abs(mean - bound) <= 5 * se
    elif kind == "countsketch":
        exact = (n * n + n - 2 * np.sum(np.sum(U**2, axis=1) ** 2)) / d
        assert abs(mean - exact) <= 5 * se + 1e-12
    else:
        assert mean <= bound + 5 * se


def test_sampling_second_moment_exact_and_coherence_failure():
    """Uniform sampling without replacement: E = (m-d)/(d(m-1)) (m sum ||u_i||^4 - n);
    small for incoherent U, of order m n / d for the identity's columns."""
    m, n, d, trials = 512, 4, 64, 400
    for U in (orthonormal(m, n, rng=10**6), np.eye(m)[:, :n]):
        vals = np.array([frob_distortion(sl.RowSampling(d, m, rng=s), U) for s in range(trials)])
        want = (m - d) / (d * (m - 1)) * (m * np.sum(np.sum(U**2, axis=1) ** 2) - n)
        assert abs(vals.mean() - want) <= 5 * vals.std(ddof=1) / np.sqrt(trials)


def test_gaussian_singular_value_envelope():
    """sigma(SU) in 1 +- (sqrt(n/d) + t/sqrt(d)) w.p. >= 1 - 2 exp(-t^2/2) (Davidson-Szarek)."""
    m, n, d, t, trials = 400, 10, 200, 4.0, 50
    U = orthonormal(m, n, rng=10**6)
    width = np.sqrt(n / d) + t / np.sqrt(d)
    # 50 trials at failure probability 2 exp(-8) = 6.7e-4 each: a miss would be a real bug.
    for s in range(trials):
        sv = np.linalg.svd(sl.GaussianSketch(d, m, rng=s) @ U, compute_uv=False)
        assert 1 - width <= sv.min() and sv.max() <= 1 + width


def test_coherent_input_breaks_sampling_not_srht():
    m, n, d, trials = 1024, 8, 256, 40
    U = np.eye(m)[:, :n]
    smin_sampling = [np.linalg.svd(sl.RowSampling(d, m, rng=s) @ U, compute_uv=False).min()
                     for s in range(trials)]
    smin_srht = [np.linalg.svd(sl.SRHT(d, m, rng=s) @ U, compute_uv=False).min()
                 for s in range(trials)]
    # Sampling keeps all n rows with probability C(m-n, d-n)/C(m, d) ~ (d/m)^n = 1.5e-5:
    # sigma_min is 0 in (essentially) every trial.
    assert np.mean(np.array(smin_sampling) == 0.0) >= 0.95
    # SRHT: by Markov on E||M||_F^2 <= (n^2+n)/d = 0.28, ||M||_2 <= 0.75 w.p. >= 0.5 in each
    # trial, hence sigma_min >= 0.5; check the median trial.
    assert np.median(smin_srht) >= 0.5


def test_countsketch_collisions_birthday_rate():
    """Identity columns collide when h(j) = h(k): P(any collision) = 1 - prod_{i<n} (1 - i/d),
    E[#colliding pairs] = C(n, 2)/d."""
    m, n, d, trials = 2048, 12, 128, 2000
    any_hit, pairs = [], []
    for s in range(trials):
        h = sl.CountSketch(d, m, rng=s).rows[:n]
        counts = np.bincount(h, minlength=d)
        pairs.append(np.sum(counts * (counts - 1) // 2))
        any_hit.append(counts.max() > 1)
    p = 1 - np.prod(1 - np.arange(n) / d)
    assert abs(np.mean(any_hit) - p) <= 5 * np.sqrt(p * (1 - p) / trials)
    pairs = np.array(pairs)
    assert abs(pairs.mean() - n * (n - 1) / 2 / d) <= 5 * pairs.std(ddof=1) / np.sqrt(trials)


@pytest.mark.parametrize("nnz", [1, 3, 8])
def test_sparse_sign_structure(nnz):
    d, m = 16, 400
    D = sl.SparseSign(d, m, nnz=nnz, rng=0).to_dense()
    nz = D != 0
    assert np.all(nz.sum(axis=0) == nnz)  # distinct rows per column
    assert np.allclose(np.abs(D[nz]), 1 / np.sqrt(nnz))


def test_sparse_sign_rows_uniform():
    # Floyd's sampling: every row is in a column's support with probability nnz/d.
    d, m, nnz = 10, 20000, 3
    rows = sl.SparseSign(d, m, nnz=nnz, rng=1).rows
    freq = np.bincount(rows, minlength=d) / m
    assert np.all(np.abs(freq - nnz / d) <= 5 * np.sqrt(nnz / d * (1 - nnz / d) / m))


# -- seeds -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", FAMILIES)
def test_same_seed_same_operator_on_every_backend(kind, backend):
    S1, S2 = make(kind, 12, 100, rng=42), make(kind, 12, 100, rng=42)
    like = backend.asarray(np.zeros(1), np.float64)
    ref = S1.to_dense()
    other = backend.to_numpy(S2.to_dense(like=like))
    # Same random data; the dense matrix is computed by each backend (SRHT with GEMMs).
    assert_close(other, ref, factor=tol_factor(100), dtype=np.float64)
    assert np.array_equal(backend.to_numpy(S2 @ backend.asarray(np.eye(100)[:, :3])) != 0,
                          ref[:, :3] != 0)


@pytest.mark.parametrize("kind", FAMILIES)
def test_rng_conventions(kind):
    same = [make(kind, 8, 64, rng=r).to_dense() for r in
            (5, np.random.SeedSequence(5), np.random.default_rng(5))]
    assert np.array_equal(same[0], same[1]) and np.array_equal(same[0], same[2])
    assert not np.array_equal(same[0], make(kind, 8, 64, rng=6).to_dense())
    g = np.random.default_rng(0)  # a Generator is advanced: two draws differ
    assert not np.array_equal(make(kind, 8, 64, rng=g).to_dense(),
                              make(kind, 8, 64, rng=g).to_dense())
    make(kind, 8, 64, rng=None)


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", FAMILIES)
def test_bad_input(kind):
    with pytest.raises(ValueError, match="d must be <= m"):
        make(kind, 10, 5)
    with pytest.raises(ValueError, match="d must be >= 1"):
        make(kind, 0, 5)
    with pytest.raises(TypeError, match="d must be an int"):
        make(kind, 2.0, 5)
    S = make(kind, 4, 10)
    with pytest.raises(ValueError, match="shape mismatch: A has 9 rows"):
        S @ np.ones((9, 2))
    with pytest.raises(ValueError, match="shape mismatch: Y has 5 rows"):
        S.T @ np.ones((5, 2))
    with pytest.raises(ValueError, match="shape mismatch"):
        np.ones((2, 9)) @ S.T
    with pytest.raises(TypeError, match="A must have a real floating dtype"):
        S @ np.ones((10, 2), dtype=np.int64)
    with pytest.raises(TypeError, match="A must have a real floating dtype"):
        S @ np.ones((10, 2), dtype=np.complex128)
    with pytest.raises(TypeError, match="A must be a NumPy, PyTorch or CuPy array"):
        S @ [[1.0]] * 10  # a list is not an array
    with pytest.raises(ValueError, match="A must be 1-D or 2-D"):
        S @ np.ones((10, 2, 2))
    with pytest.raises(TypeError, match="rng must be an int"):
        make(kind, 4, 10, rng=1.5)
    with pytest.raises(TypeError, match="rng must be an int"):
        make(kind, 4, 10, rng=np.random.RandomState(0))
    with pytest.raises(ValueError, match="rng must be a non-negative seed"):
        make(kind, 4, 10, rng=-1)


def test_bad_kind_and_nnz():
    with pytest.raises(ValueError, match="unknown sketch kind 'hadamard'; valid kinds"):
        sl.sketch("hadamard", 2, 4)
    with pytest.raises(TypeError, match="kind must be a str"):
        sl.sketch(3, 2, 4)
    with pytest.raises(ValueError, match="nnz must be <= d"):
        sl.SparseSign(4, 10, nnz=5)
    with pytest.raises(ValueError, match="nnz must be >= 1"):
        sl.SparseSign(4, 10, nnz=0)


@pytest.mark.parametrize("kind", ["countsketch", "sparse_sign", "tensorsketch"])
def test_multithreaded_sparse_product(kind):
    # Above _BlockedSparse.MIN_WORK entries the product is split over cores: same result.
    m, n, d = 1 << 15, 40, 64
    S = make(kind, d, m, rng=8)
    A = np.random.default_rng(9).standard_normal((m, n))
    Y = np.random.default_rng(10).standard_normal((d, m // d * 2))
    assert A.size >= 1 << 20
    dense = S.to_dense()
    assert_close(S @ A, dense @ A, factor=tol_factor(m),
                 scale=float(np.abs(dense).sum(axis=1).max() * np.abs(A).max()))
    assert_close(S.T @ Y, dense.T @ Y, factor=tol_factor(d),
                 scale=float(np.abs(dense).sum(axis=0).max() * np.abs(Y).max()))
