"""Cohort store: PLINK ingest and NumPy creation give back exactly the genotypes, atomically."""

import hashlib
import os

import numpy as np
import pytest
import zarr
from bed_reader import to_bed
from conftest import random_genotypes

import bigmm
from bigmm.errors import InputError
from bigmm.store import StoreIntegrityError


def write_plink(prefix, G, rng):
    """PLINK fileset written by bed-reader's own writer (independent of bigmm's ingest)."""
    n, p = G.shape
    props = {
        "fid": [f"FAM{i}" for i in range(n)], "iid": [f"IND{i}" for i in range(n)],
        "chromosome": ["1"] * (p // 2) + ["2"] * (p - p // 2),
        "sid": [f"rs{j}" for j in range(p)], "bp_position": list(range(100, 100 + 10 * p, 10)),
        "allele_1": ["A"] * p, "allele_2": ["C"] * p,
    }
    val = G.astype(np.float32)
    val[G < 0] = np.nan
    to_bed(str(prefix) + ".bed", val, properties=props)
    return props


def test_ingest_plink_roundtrip(tmp_path, rng):
    G = random_genotypes(rng, 103, 77, missing=0.05)  # n not a multiple of 4 exercises .bed padding
    props = write_plink(tmp_path / "c", G, rng)
    store = bigmm.ingest_plink(tmp_path / "c", tmp_path / "c.zarr", chunks=(32, 20))
    assert store.chunks == (32, 20)
    np.testing.assert_array_equal(store.genotypes[...], G)
    assert store.sample_fid.tolist() == props["fid"]
    assert store.sample_iid.tolist() == props["iid"]
    vt = store.variant_table()
    assert vt["id"].tolist() == props["sid"]
    assert vt["chrom"].tolist() == props["chromosome"]
    assert vt["pos"].tolist() == props["bp_position"]
    assert vt["allele1"].tolist() == ["A"] * 77
    prov = store.attrs["provenance"]
    raw = open(tmp_path / "c.bed", "rb").read()
    assert prov["files"]["bed"]["blake2b"] == hashlib.blake2b(raw, digest_size=16).hexdigest()
    assert prov["files"]["bed"]["size"] == len(raw)
    assert store.attrs["bigmm_version"] == bigmm.__version__


def test_ingest_streams_in_blocks(tmp_path, rng, monkeypatch):
    """With a tiny block budget the store is still exact (row and variant blocking)."""
    G = random_genotypes(rng, 50, 30)
    write_plink(tmp_path / "c", G, rng)
    store = bigmm.ingest_plink(tmp_path / "c", tmp_path / "c.zarr", chunks=(8, 7), max_block_bytes=8 * 7)
    np.testing.assert_array_equal(store.genotypes[...], G)


def test_interrupted_ingest_leaves_nothing(tmp_path, rng, monkeypatch):
    G = random_genotypes(rng, 40, 60)
    write_plink(tmp_path / "c", G, rng)
    import bed_reader

    calls = {"n": 0}
    real_read = bed_reader.open_bed.read

    def failing_read(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real_read(self, *a, **k)

    monkeypatch.setattr(bed_reader.open_bed, "read", failing_read)
    with pytest.raises(KeyboardInterrupt):
        bigmm.ingest_plink(tmp_path / "c", tmp_path / "c.zarr", chunks=(16, 10))
    assert not (tmp_path / "c.zarr").exists()
    assert [p for p in os.listdir(tmp_path) if "zarr" in p] == []


def test_create_store_from_numpy(tmp_path, rng):
    G = random_genotypes(rng, 21, 13)
    store = bigmm.create_store(tmp_path / "s.zarr", G, chunks=(8, 5))
    np.testing.assert_array_equal(store.genotypes[...], G)
    assert store.n_samples == 21 and store.n_variants == 13
    with pytest.raises(InputError, match="already exists"):
        bigmm.create_store(tmp_path / "s.zarr", G)
    with pytest.raises(InputError, match="allele counts"):
        bigmm.create_store(tmp_path / "t.zarr", G + 2)


def test_incomplete_store_is_refused(tmp_path, rng):
    G = random_genotypes(rng, 10, 5)
    bigmm.create_store(tmp_path / "s.zarr", G)
    g = zarr.open_group(tmp_path / "s.zarr", mode="r+")
    g.attrs["complete"] = False
    with pytest.raises(InputError, match="incomplete"):
        bigmm.open_store(tmp_path / "s.zarr")


def test_corrupted_chunk_is_detected(tmp_path, rng):
    """Every array carries a CRC32C: a flipped byte fails loudly instead of reading wrong values."""
    G = random_genotypes(rng, 16, 8)
    store = bigmm.create_store(tmp_path / "s.zarr", G, chunks=(8, 8))
    chunk = tmp_path / "s.zarr" / "genotypes" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    with pytest.raises(StoreIntegrityError, match=r"genotypes: chunk \(0, 0\).*checksum"):
        bigmm.open_store(tmp_path / "s.zarr").genotypes[...]


def test_truncated_and_deleted_chunks_are_detected(tmp_path, rng):
    """A truncated chunk fails its CRC; a deleted one would read as fill values, so
    opening a store lists every chunk file (Zarr writes no file for an all-fill chunk)."""
    G = random_genotypes(rng, 16, 16)
    bigmm.create_store(tmp_path / "s.zarr", G, chunks=(8, 8))
    chunk = tmp_path / "s.zarr" / "genotypes" / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:10])
    store = bigmm.open_store(tmp_path / "s.zarr")
    np.testing.assert_array_equal(store.genotypes[:8, :], G[:8, :])  # other chunks still read
    with pytest.raises(StoreIntegrityError, match=r"genotypes: chunk \(1, 0\).*c/1/0"):
        store.genotypes[4:12, 0:4]
    chunk.unlink()
    with pytest.raises(StoreIntegrityError, match=r"genotypes: chunk \(1, 0\).*missing"):
        bigmm.open_store(tmp_path / "s.zarr")
