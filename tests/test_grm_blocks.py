"""GRM block tasks: K and the per-pair call counts N equal a dense reference with and without
missing calls, and a block task decodes each store chunk of samples once per variant chunk."""

import sys

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


@pytest.mark.parametrize("span", [100, 10**6])
def test_float32_blocks_summed_by_the_blas_equal_dense_k(tmp_path, rng, monkeypatch, span):
    # a block task sums its variant chunks' products in float32 in place (GEMM off the diagonal,
    # SYRK's upper triangle on it, mirrored at the end) over bigmm.grm.F32_SPAN variants before
    # adding them into float64: a span of 100 variants with chunks of 50 adds every 2 chunks (7
    # chunks: the last span is a single chunk), 10**6 once at the end
    monkeypatch.setattr(sys.modules["bigmm.grm"], "F32_SPAN", span)  # (bigmm.grm is the function)
    G = random_genotypes(rng, 90, 340, missing=0.02)
    arr = zarr.create_array(str(tmp_path / "g.zarr"), shape=G.shape, dtype="int8", chunks=(64, 50))
    arr[...] = G
    std = bigmm.standardization(bigmm.variant_stats(G), "gcta")
    ref = grm_reference(G, "gcta")
    for rows_i, rows_j in ((slice(0, 45), slice(0, 45)), (slice(0, 45), slice(45, 90)), (slice(20, 90), slice(20, 90))):
        K32 = grm_block(arr, std.center, std.scale, rows_i, rows_j, 50, std.n_kept, np.float32)
        K64 = grm_block(arr, std.center, std.scale, rows_i, rows_j, 50, std.n_kept, np.float64)
        # float64: round-off of sums of 340 products, ~1e-15; float32: each product and partial sum
        # rounded to 2^-24 relative, |x_ij x_kj| <= ~20 for these MAFs, so |error| <= 340 * 6e-8 * 20 / 340
        # per entry at worst (1.2e-6); a chunk left out or added twice moves entries by ~1/7
        np.testing.assert_allclose(K64, ref[rows_i, rows_j], rtol=0, atol=1e-12)
        np.testing.assert_allclose(K32, ref[rows_i, rows_j], rtol=0, atol=2e-6)
        assert np.abs(K32 - ref[rows_i, rows_j]).max() > 0  # really float32


@pytest.mark.parametrize("n", [1, 127, 128, 129, 300])
def test_square_transposed_in_place(rng, n):
    from bigmm.grm import _transpose_square

    for a in (rng.standard_normal((n, n)), np.asfortranarray(rng.integers(0, 9, (n, n)).astype(np.int32))):
        want = a.T.copy()
        _transpose_square(a)
        np.testing.assert_array_equal(a, want)


@pytest.mark.parametrize("shape", [(4, 4), (4, 3)])  # square: transposed in place; else copied
@pytest.mark.parametrize("order", ["C", "F"])  # F: K's block as the BLAS leaves it; C: N's
def test_off_diagonal_block_written_at_both_places(tmp_path, rng, shape, order):
    from bigmm.grm import _write_pair, create_grm_store

    group = create_grm_store(tmp_path / "g.zarr", 4 + shape[1], 4, {})
    block = np.asarray(rng.standard_normal(shape), order=order)
    want = block.copy()
    rows_i, rows_j = slice(0, 4), slice(4, 4 + shape[1])
    _write_pair(group["K"], rows_i, rows_j, block)
    K = zarr.open_group(tmp_path / "g.zarr", mode="r")["K"]
    np.testing.assert_array_equal(K[rows_i, rows_j], want)
    np.testing.assert_array_equal(K[rows_j, rows_i], want.T)


@pytest.mark.parametrize("n", [1, 127, 128, 129, 600])
def test_upper_triangle_mirrored(rng, n):
    from bigmm.grm import _mirror_upper

    for a in (np.asfortranarray(rng.standard_normal((n, n))), rng.standard_normal((n, n))):
        want = np.triu(a) + np.triu(a, 1).T
        _mirror_upper(a)
        np.testing.assert_array_equal(a, want)


def test_blocks_written_are_synced_in_the_background_and_a_missing_file_is_left_to_the_final_fsync(
        tmp_path, monkeypatch):
    """A finished block's files are fsynced in a thread of their own (_sync_soon) while the worker
    goes on; a file gone by then (the store committed under its final name) is skipped: the
    store's own fsync, before its commit, is what guarantees the files."""
    import os
    import threading

    from bigmm.grm import _sync_files, _sync_soon

    f = tmp_path / "chunk"
    f.write_bytes(b"x" * 100)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    _sync_files([tmp_path / "gone", f])
    assert synced == [str(f)]
    started = []
    monkeypatch.setattr(threading.Thread, "start", lambda self: started.append((self.name, self.daemon)))
    _sync_soon([f])
    assert started == [("grm-block-fsync", True)]
