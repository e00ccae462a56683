"""Blocked GRM: equals X Xᵀ / p of a dense reference, on every scheduler; GCTA export round-trips."""

import numpy as np
import pytest
import zarr
from conftest import random_genotypes
from reference import grm_reference

import bigmm
from bigmm.grm import create_grm_store, grm_complete


@pytest.fixture
def cohort(tmp_path, rng):
    G = random_genotypes(rng, 131, 257, missing=0.03)
    G[:, 7] = -1  # all missing: dropped
    store = bigmm.create_store(tmp_path / "g.zarr", G, chunks=(40, 60))  # neither divides n or p
    return G, store


@pytest.mark.parametrize("kind", ["gcta", "center"])
def test_grm_equals_dense_reference(cohort, kind):
    # float64 products summed over 5 variant chunks: round-off ~1e-14 relative; 1e-10 is ample
    G, store = cohort
    std = bigmm.standardization(bigmm.variant_stats(store.to_dask()), kind)
    K = bigmm.grm(store.genotypes, std, block_size=40)
    np.testing.assert_allclose(K, grm_reference(G, kind), rtol=0, atol=1e-10)
    np.testing.assert_array_equal(K, K.T)


def test_grm_to_zarr_and_resume(cohort, tmp_path):
    G, store = cohort
    std = bigmm.standardization(bigmm.variant_stats(store.to_dask()), "gcta")
    path = tmp_path / "K.zarr"
    group = create_grm_store(path, store.n_samples, 40, {"n_variants": std.n_kept})
    # pretend block (0, 2) was committed by an earlier, interrupted run: it must be skipped
    sentinel = np.full((40, 40), 7.0)
    group["K"][0:40, 80:120] = sentinel
    group["K"][80:120, 0:40] = sentinel.T
    group["done"][0, 2] = 1
    bigmm.grm(store.genotypes, std, block_size=40, out=path)
    K = zarr.open_group(path, mode="r")["K"][...]
    assert grm_complete(zarr.open_group(path, mode="r"))
    np.testing.assert_array_equal(K[0:40, 80:120], sentinel)  # not recomputed
    ref = grm_reference(G, "gcta")
    mask = np.ones_like(ref, dtype=bool)
    mask[0:40, 80:120] = False
    mask[80:120, 0:40] = False
    np.testing.assert_allclose(K[mask], ref[mask], rtol=0, atol=1e-10)
    # a full run on a fresh store equals the reference everywhere
    create_grm_store(path, store.n_samples, 40, {})
    bigmm.grm(store.genotypes, std, block_size=40, out=path)
    np.testing.assert_allclose(zarr.open_group(path, mode="r")["K"][...], ref, rtol=0, atol=1e-10)


def _read_gcta_independently(prefix, n):
    """GCTA layout: lower triangle incl. diagonal, row-major, float32 little-endian."""
    vals = np.fromfile(str(prefix) + ".grm.bin", dtype="<f4")
    counts = np.fromfile(str(prefix) + ".grm.N.bin", dtype="<f4")
    assert vals.size == n * (n + 1) // 2
    K = np.zeros((n, n))
    pos = 0
    for i in range(n):
        K[i, : i + 1] = vals[pos:pos + i + 1]
        K[: i + 1, i] = vals[pos:pos + i + 1]
        pos += i + 1
    ids = [tuple(line.split("\t")) for line in open(str(prefix) + ".grm.id").read().splitlines()]
    return K, counts, ids


def test_gcta_export_roundtrip(cohort, tmp_path):
    G, store = cohort
    std = bigmm.standardization(bigmm.variant_stats(store.to_dask()), "gcta")
    K = bigmm.grm(store.genotypes, std)
    ids = store.sample_ids()
    bigmm.write_gcta_grm(tmp_path / "out" / "grm", K, ids, std.n_kept, rows_per_block=17)
    K2, counts, ids2 = _read_gcta_independently(tmp_path / "out" / "grm", store.n_samples)
    # float32 storage: relative rounding 2^-24 ≈ 6e-8 of entries of size ≤ ~2
    np.testing.assert_allclose(K2, K, rtol=0, atol=2e-7)
    assert np.all(counts == std.n_kept)
    assert ids2 == ids
    ids3, K3, N3 = bigmm.read_gcta_grm(tmp_path / "out" / "grm")
    assert ids3 == ids
    np.testing.assert_array_equal(K3, K2)


@pytest.mark.distributed
def test_grm_on_local_cluster_equals_single_threaded(cohort, tmp_path):
    from conftest import local_cluster
    from distributed import Client

    G, store = cohort
    std = bigmm.standardization(bigmm.variant_stats(store.to_dask()), "gcta")
    K_sync = bigmm.grm(store.genotypes, std, block_size=40)  # threaded scheduler, no cluster
    import dask

    with dask.config.set(scheduler="sync"):
        K_single = bigmm.grm(store.genotypes, std, block_size=40)
    path = tmp_path / "K.zarr"
    create_grm_store(path, store.n_samples, 40, {})
    with local_cluster(2, 1) as cluster, Client(cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        bigmm.grm(store.genotypes, std, block_size=40, out=path)
    K_dist = zarr.open_group(path, mode="r")["K"][...]
    # the same block tasks in the same order of variant chunks: equal up to BLAS summation order
    np.testing.assert_allclose(K_dist, K_single, rtol=0, atol=1e-13)
    np.testing.assert_allclose(K_sync, K_single, rtol=0, atol=1e-13)


def _started(i):
    import time

    time.sleep(0.05)
    return i, time.monotonic()


@pytest.mark.distributed
@pytest.mark.parametrize("by_address", [False, True])
def test_tasks_with_costs_start_longest_first(by_address):
    # one worker thread runs the tasks one at a time: they start in decreasing cost (ties in list
    # order), as the GRM's off-diagonal blocks start before its diagonal ones; results in list
    # order. A client of the local cluster itself sends one task per thread at a time; a client
    # by address (the cluster unknown to it, as an outside scheduler's) sends them all at once
    import dask
    from conftest import local_cluster
    from distributed import Client

    from bigmm.tasks import _fixed_local, run_tasks

    costs = [1.0, 2.0, 1.0, 3.0, 2.0]
    with local_cluster(1, 1) as cluster, Client(cluster.scheduler_address if by_address else cluster) as client:
        assert _fixed_local(client) is not by_address
        out = run_tasks([dask.delayed(_started, pure=False)(i) for i in range(5)], "order", costs=costs)
    assert [i for i, _ in out] == list(range(5))
    assert [i for i, _ in sorted(out, key=lambda r: r[1])] == [3, 1, 4, 0, 2]
