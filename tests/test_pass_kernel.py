"""A pass of each kernel (bigmm.passes.KERNELS) equals the dense product K M = X Xᵀ M / p, with X
standardized in the test from its definition (mean imputation: a missing call is 0 after centring),
on random genotypes with missing calls, read from a cohort store."""

import numpy as np
import pytest
from conftest import random_genotypes

import bigmm
from bigmm.passes import KERNELS, _apply_task


def dense_x(G: np.ndarray, kind: str) -> np.ndarray:
    """X of the GCTA or centred standardization, written out: f over the called genotypes,
    x = (g − 2f)/√(2f(1−f)) (gcta) or g − 2f (center), 0 for a missing call and for a variant
    whose calls are all equal (dropped, so p counts the others)."""
    called = G >= 0
    g = np.where(called, G, 0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):  # the dropped variants' NaN columns are zeroed below
        f = g.sum(0) / (2.0 * called.sum(0))
        X = np.where(called, g - 2 * f, 0.0)
        if kind == "gcta":
            X = X / np.sqrt(2 * f * (1 - f))
    varies = np.array([np.unique(G[called[:, j], j]).size > 1 for j in range(G.shape[1])])
    return np.where(varies, X, 0.0), int(varies.sum())


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    G = random_genotypes(np.random.default_rng(7), 90, 70, missing=0.06)
    G[:, 5] = 2  # monomorphic: dropped
    G[:, 9] = -1  # all missing: dropped
    G[:40, 11] = -1  # many missing calls in one variant
    store = bigmm.create_store(tmp_path_factory.mktemp("kernel") / "c.zarr", G, chunks=(32, 16))
    return G, store


def block(rng, n):
    """Random vectors and a constant one (an intercept: its X products cancel to ~0)."""
    return np.column_stack([rng.standard_normal((n, 4)), np.ones(n) / np.sqrt(n)])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("kind", ["gcta", "center"])
def test_pass_equals_dense_product_float64(cohort, rng, kernel, kind):
    G, store = cohort
    std = bigmm.standardization(bigmm.variant_stats(store), kind)
    X, p = dense_x(G, kind)
    assert std.n_kept == p
    M = block(rng, G.shape[0])
    op = bigmm.GrmOperator(store, std, kernel=kernel, n_tasks=3)  # 3 tasks: chunks split between tasks
    KM, diag = op.apply(M, want_diag=True)
    K = X @ X.T / p
    # float64 throughout: round-off of sums of ~n p terms of size ~1, far below 1e-10
    np.testing.assert_allclose(KM, K @ M, rtol=0, atol=1e-10 * np.abs(K @ M).max())
    np.testing.assert_allclose(diag, np.diag(K), rtol=1e-10)
    rows = np.arange(0, G.shape[0], 2)
    KMr, _ = op.restrict(rows).apply(M[rows])
    np.testing.assert_allclose(KMr, K[np.ix_(rows, rows)] @ M[rows], rtol=0,
                               atol=1e-10 * np.abs(K @ M).max())


@pytest.mark.parametrize("kernel", KERNELS)
def test_pass_equals_dense_product_float32_pieces(cohort, rng, kernel):
    # float32 products over pieces of 5 columns (not aligned with the 16-column chunks), float64
    # accumulation across pieces: each entry of a piece's product is a float32 dot product of
    # n = 90 terms of size ~1 (error ~ 1e-7 · √90 · their magnitude), the corrections of the fold
    # kernel are float64; 1e-5 of the largest |K M| is 10x that bound and 10⁴x below what a
    # wrong centring (|2f| ~ 0.5 per entry) or a missing call not imputed would give
    G, store = cohort
    std = bigmm.standardization(bigmm.variant_stats(store), "gcta")
    X, p = dense_x(G, "gcta")
    M = block(rng, G.shape[0])
    p_all = G.shape[1]
    acc, diag = _apply_task(store.genotypes, None, std.center, std.scale, [(0, 16), (16, 32), (32, p_all)], 5,
                            M, np.float32, std.n_kept, True, kernel)
    K = X @ X.T / p
    scale = np.abs(K @ M).max()
    np.testing.assert_allclose(acc, K @ M, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(diag, np.diag(K), rtol=1e-5)


def test_unknown_kernel_refused(cohort):
    G, store = cohort
    std = bigmm.standardization(bigmm.variant_stats(store), "gcta")
    with pytest.raises(bigmm.InputError, match="kernel must be one of standardize, fold, tile, not 'bed'"):
        bigmm.GrmOperator(store, std, kernel="bed")


def test_tile_kernel_blocks_of_rows_and_columns(cohort, rng, monkeypatch):
    # the tile kernel cut finely: pieces of 4 variants (TILE_COLUMNS) and blocks of 7 rows
    # (TILE_BYTES: 7 · 4 float32 values), so that n = 90 is 13 blocks, the last one short, and
    # the 16-column chunks split into 4 pieces; the products are the same sums taken in another
    # order: float64 throughout, the same 1e-10 as above
    import bigmm.passes as passes

    monkeypatch.setattr(passes, "TILE_COLUMNS", 4)
    monkeypatch.setattr(passes, "TILE_BYTES", 7 * 4 * 8)
    G, store = cohort
    std = bigmm.standardization(bigmm.variant_stats(store), "gcta")
    X, p = dense_x(G, "gcta")
    M = block(rng, G.shape[0])
    acc, diag = _apply_task(store.genotypes, None, std.center, std.scale, [(0, 16), (16, 32), (32, G.shape[1])],
                            16, M, np.float64, std.n_kept, True, "tile")
    K = X @ X.T / p
    np.testing.assert_allclose(acc, K @ M, rtol=0, atol=1e-10 * np.abs(K @ M).max())
    np.testing.assert_allclose(diag, np.diag(K), rtol=1e-10)
