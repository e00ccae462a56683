"""GRM block tasks: K and the per-pair call counts N equal a dense reference with and without
missing calls, and a block task decodes each store chunk of samples once per variant chunk."""

import numpy as np
import pytest
import zarr
from conftest import random_genotypes
from reference import grm_reference

import bigmm
from bigmm.grm import grm_block


class CountingReader:
    """A Zarr genotype array that records the sample rows of every read (a read decodes the
    whole sample chunks it touches)."""

    def __init__(self, arr):
        self.arr, self.shape, self.chunks, self.reads = arr, arr.shape, arr.chunks, []

    def __getitem__(self, sel):
        self.reads.append(sel[0])
        return self.arr[sel]


def _counts_reference(G, keep):
    """N_jk: kept variants called in both samples j and k (integer products, exact)."""
    C = (G[:, keep] >= 0).astype(np.int64)
    return C @ C.T


@pytest.mark.parametrize("missing", [0.0, 0.05, "first chunk only"])
def test_blocks_within_store_chunks_equal_dense_k_and_counts(tmp_path, rng, missing):
    # 90 samples in chunks of 64: blocks of 30 share chunk 0 (blocks 0, 1) or straddle both (block 2);
    # variant chunks of 50: with "first chunk only", the second and third have no missing call, nor
    # has block 0 (rows 0-29) in the first, so its off-diagonal blocks have missing calls on one side
    G = random_genotypes(rng, 90, 130, missing=0.05 if missing else 0.0)
    if missing == "first chunk only":
        G[:, 50:] = np.abs(G[:, 50:])
        G[:30] = np.abs(G[:30])
    arr = zarr.create_array(str(tmp_path / "g.zarr"), shape=G.shape, dtype="int8", chunks=(64, 50))
    arr[...] = G
    std = bigmm.standardization(bigmm.variant_stats(G), "gcta")
    K, N = bigmm.grm(arr, std, block_size=30, counts=True)
    # float64 products over 3 variant chunks: round-off ~1e-15 relative; 1e-10 is ample
    np.testing.assert_allclose(K, grm_reference(G, "gcta"), rtol=0, atol=1e-10)
    np.testing.assert_array_equal(N, _counts_reference(G, std.keep))
    if missing:
        assert N.min() < std.n_kept
    else:
        assert np.all(N == std.n_kept)


@pytest.mark.parametrize("rows_j", [slice(30, 60), slice(60, 90)])
def test_an_off_diagonal_block_decodes_each_sample_chunk_once(tmp_path, rng, rows_j):
    G = random_genotypes(rng, 90, 100, missing=0.02)
    arr = zarr.create_array(str(tmp_path / "g.zarr"), shape=G.shape, dtype="int8", chunks=(64, 50))
    arr[...] = G
    std = bigmm.standardization(bigmm.variant_stats(G), "gcta")
    reader = CountingReader(arr)
    rows_i = slice(0, 30)
    K, N = grm_block(reader, std.center, std.scale, rows_i, rows_j, 50, std.n_kept, counts=True)

    def chunks(r):
        return set(range(r.start // 64, (r.stop - 1) // 64 + 1))

    decoded = sum(len(chunks(r)) for r in reader.reads)
    assert decoded == 2 * len(chunks(rows_i) | chunks(rows_j))  # two variant chunks
    ref = grm_reference(G, "gcta")
    np.testing.assert_allclose(K, ref[rows_i, rows_j], rtol=0, atol=1e-10)
    np.testing.assert_array_equal(N, _counts_reference(G, std.keep)[rows_i, rows_j])
