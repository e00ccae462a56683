"""A variant whose calls are all heterozygous (sample SD 0), a non-finite standardization, and a
GRM block equal to the Zarr fill value: dropped and counted, refused by name, and written."""

import dataclasses
import os

import numpy as np
import pytest
import zarr
from conftest import random_genotypes

import bigmm
from bigmm.grm import _write_block, create_grm_store, grm_complete
from bigmm.store import verify_chunks, writable


@pytest.fixture
def genotypes(rng):
    G = random_genotypes(rng, 60, 90, missing=0.02)
    G[:, 3] = 1  # every call heterozygous ...
    G[:5, 3] = -1  # ... with some missing calls: f = 0.5, sample SD 0
    G[:, 4] = 0  # monomorphic
    return G


@pytest.mark.parametrize("kind", ["gcta", "center", "sample_sd"])
def test_all_heterozygous_variant_dropped_and_counted(genotypes, kind):
    std = bigmm.standardization(bigmm.variant_stats(genotypes), kind)
    assert std.dropped["all_heterozygous"] == 1 and std.dropped["monomorphic"] == 1
    assert not std.keep[3] and std.scale[3] == 0.0
    assert std.n_kept == 88
    assert np.isfinite(std.scale).all() and np.isfinite(std.trace_K)
    K = bigmm.grm(genotypes, std)
    assert np.isfinite(K).all()


def test_non_finite_standardization_refused_by_grm_and_passes(genotypes):
    std = bigmm.standardization(bigmm.variant_stats(genotypes), "sample_sd")
    # what an older bigmm saved for an all-heterozygous variant under sample_sd: scale 1/0
    scale = std.scale.copy()
    scale[3] = np.inf
    bad = dataclasses.replace(std, scale=scale)
    with pytest.raises(bigmm.InputError, match=r"non-finite centre or scale for 1 variant.*index 3.*sample SD 0"):
        bigmm.grm(genotypes, bad)
    with pytest.raises(bigmm.InputError, match=r"non-finite centre or scale"):
        bigmm.GrmOperator(genotypes, bad)


def test_grm_block_equal_to_fill_value_is_written(tmp_path):
    # the GRM store's K has fill_value NaN: an all-NaN block would be dropped by a re-opened
    # array at Zarr's default write_empty_chunks=False, and read back as a "missing chunk"
    path = tmp_path / "K.zarr"
    create_grm_store(path, 6, 3, {}, counts=True)
    for I, J in ((0, 0), (0, 1), (1, 1)):
        rows_i, rows_j = slice(3 * I, 3 * I + 3), slice(3 * J, 3 * J + 3)
        _write_block(str(path), I, J, rows_i, rows_j,
                     {"K": np.full((3, 3), np.nan), "N": np.full((3, 3), -1, dtype=np.int32)})
    group = zarr.open_group(path, mode="r")
    assert grm_complete(group)
    for name in ("K", "N"):
        verify_chunks(group[name], name)  # raises if a chunk file is missing
        assert len(os.listdir(path / name / "c" / "0")) == 2


def test_writable_reopened_array_writes_fill_valued_chunks(tmp_path):
    g = zarr.open_group(tmp_path / "a.zarr", mode="w")
    bigmm.store.new_array(g, "x", shape=(4,), dtype="float64", chunks=(2,), fill_value=0.0)
    arr = zarr.open_group(tmp_path / "a.zarr", mode="r+")["x"]
    assert arr.config.write_empty_chunks is False  # Zarr's default: the setting is not stored
    writable(arr)[...] = 0.0
    assert sorted(os.listdir(tmp_path / "a.zarr" / "x" / "c")) == ["0", "1"]
