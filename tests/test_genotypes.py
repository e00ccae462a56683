"""Variant statistics, filters and the lazy standardized X against an independent NumPy reference."""

import numpy as np
import pytest
from conftest import random_genotypes
from reference import grm_reference, standardize_reference

import bigmm


def test_variant_stats_match_numpy(rng):
    G = random_genotypes(rng, 57, 41, missing=0.1)
    import dask.array as da

    stats = bigmm.variant_stats(da.from_array(G, chunks=(10, 9)))
    called = G >= 0
    np.testing.assert_array_equal(stats.n_called, called.sum(0))
    np.testing.assert_array_equal(stats.allele_sum, np.where(called, G, 0).sum(0))
    np.testing.assert_array_equal(stats.allele_sq_sum, np.where(called, G.astype(int) ** 2, 0).sum(0))
    f = np.array([G[called[:, j], j].mean() / 2 for j in range(41)])
    np.testing.assert_allclose(stats.freq, f, rtol=1e-14)


def test_filters_drop_and_count_each_reason(rng):
    n = 200
    G = random_genotypes(rng, n, 10, missing=0.0, maf=(0.2, 0.5))
    G[:, 0] = -1                                  # all missing
    G[:, 1] = 2                                   # monomorphic
    G[: n // 10 + 1, 2] = -1                      # > 10% missing
    G[:, 3] = 0
    G[:3, 3] = 1                                  # MAF 3/400 < 0.01
    G[:, 4] = 0
    G[:5, 4] = 1
    G[5:7, 4] = -1                                # monomorphic among... no: MAF 5/396 > 0.01, kept
    stats = bigmm.variant_stats(G)
    ids = [f"v{j}" for j in range(10)]
    std = bigmm.standardization(stats, "gcta", min_maf=0.01, max_missing=0.1, variant_ids=ids,
                                include_ids=[i for i in ids if i != "v9"])
    assert std.dropped == {"all_missing": 1, "monomorphic": 1, "all_heterozygous": 0, "max_missing": 1,
                           "min_maf": 1, "not_in_variant_list": 1}
    assert std.keep.tolist() == [False, False, False, False, True, True, True, True, True, False]
    assert np.all(std.scale[~std.keep] == 0)


@pytest.mark.parametrize("kind", ["gcta", "center"])
def test_standardized_view_and_trace(kind, rng):
    import dask.array as da

    G = random_genotypes(rng, 45, 33, missing=0.05)
    G[:, 5] = 1  # monomorphic heterozygous: dropped
    std = bigmm.standardization(bigmm.variant_stats(G), kind)
    X = bigmm.standardized(da.from_array(G, chunks=(16, 10)), std).compute()
    Xref, kept = standardize_reference(G, kind)
    np.testing.assert_allclose(X[:, kept], Xref, rtol=0, atol=1e-12)
    assert np.all(X[:, np.setdiff1d(np.arange(33), kept)] == 0)
    # tr K from the one-pass statistics equals the trace of the dense GRM (float64 round-off)
    K = grm_reference(G, kind)
    assert std.trace_K == pytest.approx(np.trace(K), rel=1e-12)
    assert std.n_kept == len(kept)


def test_chunk_sums_equal_counts_over_several_row_blocks():
    # the per-column sums are taken over blocks of SUM_ROWS rows in int16: a chunk of more than
    # one block, with -1 and other negative missing codes, and a column of 2s (its sum of squares,
    # 4 · SUM_ROWS per block, is the largest an int16 block holds), against counts written out;
    # integers, so exactly equal
    from bigmm.genotypes import SUM_ROWS, _chunk_sums

    rng = np.random.default_rng(11)
    n = 2 * SUM_ROWS + 37
    g = rng.integers(0, 3, size=(n, 5)).astype(np.int8)
    g[rng.random(g.shape) < 0.05] = -1
    g[::97, 1] = -9
    g[:, 2] = 2
    called = g >= 0
    want = np.stack([called.sum(0), np.where(called, g, 0).sum(0), np.where(called, g.astype(int) ** 2, 0).sum(0)])
    np.testing.assert_array_equal(_chunk_sums(g)[0], want)
    np.testing.assert_array_equal(_chunk_sums(g[:, 2:3])[0, :, 0], [n, 2 * n, 4 * n])
