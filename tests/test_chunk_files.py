"""bigmm.chunk_files: the genotypes of a store bigmm wrote, decoded from its chunk files without
Zarr, equal what Zarr reads, in both layouts, for any rectangle (edge chunks, chunk rows that are
and are not multiples of 4); a damaged chunk is refused as Zarr refuses it, naming the chunk; an
array with other codecs is left to Zarr."""

import numpy as np
import pytest
import zarr
from conftest import random_genotypes

import bigmm
from bigmm.chunk_files import ChunkFiles
from bigmm.genotypes import BlockReader
from bigmm.store import LAYOUTS, StoreIntegrityError


@pytest.mark.parametrize("chunks", [(12, 8), (10, 7)])  # 12 rows: chunks decoded in place; 10: copied
@pytest.mark.parametrize("layout", LAYOUTS)
def test_chunk_files_read_what_zarr_reads(tmp_path, rng, layout, chunks):
    G = random_genotypes(rng, 53, 30, missing=0.1)
    store = bigmm.create_store(tmp_path / "c.zarr", G, chunks=chunks, layout=layout)
    arr = store.genotypes
    assert isinstance(arr.files, ChunkFiles) and arr.files.two_bit == (layout == "2bit")
    for r0, r1, c0, c1 in [(0, 53, 0, 30), (0, 12, 0, 8), (12, 24, 8, 16), (5, 50, 3, 29), (48, 53, 28, 30),
                           (7, 7, 0, 30), (0, 53, 10, 11)]:
        np.testing.assert_array_equal(arr[r0:r1, c0:c1], G[r0:r1, c0:c1])
        np.testing.assert_array_equal(arr[r0:r1, c0:c1], arr.arr[r0:r1, c0:c1])
    np.testing.assert_array_equal(arr[:, :], G)
    np.testing.assert_array_equal(store.to_dask().compute(), G)
    # a pass task's reads of whole columns into one reused buffer (filled with junk first: every
    # byte of each read must be written), widths in turn wider and narrower than before
    read = BlockReader(arr)
    read.buf = np.full(53 * 30, 77, dtype=np.int8)
    for r0, r1, c0, c1 in [(0, 53, 0, 8), (0, 53, 8, 30), (0, 53, 3, 4), (12, 48, 16, 24), (0, 53, 0, 30)]:
        np.testing.assert_array_equal(read(slice(r0, r1), slice(c0, c1)), G[r0:r1, c0:c1])
    np.testing.assert_array_equal(BlockReader(G)(slice(None), slice(3, 9)), G[:, 3:9])  # a plain slice
    with pytest.raises(ValueError, match="out must be int8 of shape"):
        arr.files.read(slice(0, 53), slice(0, 8), out=np.empty((53, 7), np.int8))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_damaged_chunk_refused_naming_it(tmp_path, rng, layout):
    G = random_genotypes(rng, 24, 16, missing=0.05)
    bigmm.create_store(tmp_path / "c.zarr", G, chunks=(12, 8), layout=layout)
    f = tmp_path / "c.zarr" / "genotypes" / "c" / "1" / "0"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    f.write_bytes(bytes(raw))
    arr = bigmm.open_store(tmp_path / "c.zarr", verify=False).genotypes
    assert arr.files is not None
    np.testing.assert_array_equal(arr[:12, :], G[:12])  # the other chunks still read
    with pytest.raises(StoreIntegrityError, match=r"genotypes: chunk \(1, 0\).*c/1/0"):
        arr[:, :]
    with pytest.raises(StoreIntegrityError, match=r"genotypes: chunk \(1, 0\)"):
        arr[13:14, 2:3]
    with pytest.raises(StoreIntegrityError, match=r"genotypes: chunk \(1, 0\)"):
        BlockReader(arr)(slice(None), slice(0, 8))  # a pass's read into its buffer names the chunk too


def test_other_codecs_are_read_by_zarr(tmp_path, rng):
    from zarr.codecs import BloscCodec

    G = random_genotypes(rng, 20, 10)
    a = zarr.create_array(tmp_path / "blosc.zarr", shape=G.shape, chunks=(8, 4), dtype="int8",
                          compressors=[BloscCodec()])
    a[...] = G
    assert ChunkFiles.of(a) is None
    assert ChunkFiles.of(zarr.create_array(zarr.storage.MemoryStore(), shape=(4, 4), dtype="int8")) is None
    b = zarr.create_array(tmp_path / "v2.zarr", shape=G.shape, chunks=(8, 4), dtype="int8", zarr_format=2)
    assert ChunkFiles.of(b) is None
