"""The GRM the benchmarks time is the store the grm stage builds: K and GCTA's per-pair call
counts N (scripts/bench/common.py, compute_grm), checked against a dense NumPy reference."""

import sys
from pathlib import Path

import numpy as np
import zarr

import bigmm
from conftest import random_genotypes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "bench"))
import common  # noqa: E402


def test_benchmark_grm_is_the_grm_stage_store(tmp_path, rng):
    G = random_genotypes(rng, 45, 130, missing=0.05)
    G[:, 7] = 1  # a monomorphic variant: not kept (scale 0), so neither in K nor in N
    store = bigmm.create_store(tmp_path / "c.zarr", G, chunks=(16, 32))
    std = bigmm.standardization(bigmm.variant_stats(store.to_dask()), "gcta")
    path = tmp_path / "grm.zarr"
    info = common.compute_grm(store, std, path, 16, np.float64)
    g = zarr.open_group(str(path), mode="r")
    # dense reference, written here: X = (g - c) s with missing calls 0, K = X Xᵀ / p_kept, and N
    # the number of kept variants called in both samples of each pair
    kept = std.scale != 0
    X = np.where(G < 0, 0.0, (G - std.center) * std.scale)[:, kept]
    called = (G >= 0)[:, kept].astype(np.int64)
    # float64 products of 130 terms of size O(1): round-off well under 1e-12
    np.testing.assert_allclose(np.asarray(g["K"][...]), X @ X.T / kept.sum(), rtol=0, atol=1e-12)
    assert np.array_equal(np.asarray(g["N"][...]), called @ called.T)  # counts: exact
    assert info["blocks"] == "6 computed, 0 from checkpoint"  # 3 x 3 blocks, upper triangle
    assert not path.with_name("grm.zarr.partial").exists()  # committed by rename
    assert g.attrs["fingerprint"] == "benchmark"


def test_benchmark_k_only_build_has_the_same_k(tmp_path, rng):
    """--grm-k-only / konly: the earlier build, K alone, for comparison; the same K bit for bit."""
    G = random_genotypes(rng, 30, 70, missing=0.02)
    store = bigmm.create_store(tmp_path / "c.zarr", G, chunks=(16, 32))
    std = bigmm.standardization(bigmm.variant_stats(store.to_dask()), "gcta")
    common.compute_grm(store, std, tmp_path / "a.zarr", 16, np.float32)
    common.compute_grm(store, std, tmp_path / "b.zarr", 16, np.float32, k_only=True)
    a, b = (zarr.open_group(str(tmp_path / f), mode="r") for f in ("a.zarr", "b.zarr"))
    assert np.array_equal(np.asarray(a["K"][...]), np.asarray(b["K"][...]))
    assert "N" not in b


def test_timed_builds_start_from_scratch_outside_the_time(tmp_path, rng):
    """timed_grm removes an earlier repeat's store before the clock starts; compute_grm itself
    refuses a path that holds one (it would resume or time its removal)."""
    import pytest

    G = random_genotypes(rng, 30, 70, missing=0.02)
    store = bigmm.create_store(tmp_path / "c.zarr", G, chunks=(16, 32))
    std = bigmm.standardization(bigmm.variant_stats(store.genotypes), "gcta")
    path = tmp_path / "g.zarr"
    for _ in range(2):
        r = common.timed_grm(store, std, path, 16, np.float32, "grm")
        assert r["result"]["blocks"] == "3 computed, 0 from checkpoint"
    with pytest.raises(RuntimeError, match="clear_grm first"):
        common.compute_grm(store, std, path, 16, np.float32)


def test_arithmetic_alone_runs_one_task_per_block_of_the_stage():
    """bench_pass_floor's "arithmetic alone": the grm stage's blocks (3 x 3 blocks of 20, 20 and 10
    samples: 6 upper-triangle tasks), each summing its variant chunks' products (the last chunk
    narrower) with bigmm.grm.BlockSums, and reporting its own time."""
    import bench_pass_floor

    times = bench_pass_floor.products_alone(50, 130, 20, 32)
    assert len(times) == 6 and all(t > 0 for t in times)
