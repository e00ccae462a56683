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
    # the decoding buffers the reads left are this process's: a task carries the reader without them
    import pickle

    files = pickle.loads(pickle.dumps(arr.files))
    assert "_local" in arr.files.__dict__ and "_local" not in files.__dict__
    np.testing.assert_array_equal(files.read(slice(5, 50), slice(3, 29)), G[5:50, 3:29])
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


def test_whole_chunks_written_as_zarr_writes_them(tmp_path, rng):
    """write_whole_chunk: the chunk file of a GRM store's K (float64, CRC32C only) and N (int32,
    zstd + CRC32C) byte for byte as Zarr writes the same block, from C- and F-ordered blocks;
    anything else (an edge chunk, part of a chunk, other codecs) left to Zarr, nothing written."""
    from zarr.codecs import BloscCodec

    from bigmm.chunk_files import write_whole_chunk
    from bigmm.grm import create_grm_store
    from bigmm.store import writable

    path = tmp_path / "g.zarr"
    group = create_grm_store(path, 10, 4, {}, counts=True)
    K = rng.standard_normal((4, 4))
    N = rng.integers(0, 1000, (4, 4)).astype(np.int32)
    for name, block in (("K", K), ("N", N)):
        arr = group[name]
        assert write_whole_chunk(arr, slice(4, 8), slice(0, 4), block)
        assert not write_whole_chunk(arr, slice(0, 4), slice(8, 12), block[:, :2])  # an edge chunk
        assert not write_whole_chunk(arr, slice(0, 2), slice(0, 4), block[:2])  # part of a chunk
        writable(arr)[0:4, 4:8] = block  # Zarr's own write of the same block
        d = path / name / "c"
        assert (d / "1" / "0").read_bytes() == (d / "0" / "1").read_bytes()
        back = zarr.open_group(path, mode="r")[name]
        np.testing.assert_array_equal(back[4:8, 0:4], block)
        assert write_whole_chunk(arr, slice(4, 8), slice(4, 8), np.asfortranarray(block))  # F-ordered
        np.testing.assert_array_equal(zarr.open_group(path, mode="r")[name][4:8, 4:8], block)
    assert sorted(p.name for p in (path / "K" / "c" / "0").iterdir()) == ["1"]  # Zarr's write alone
    assert sorted(p.name for p in (path / "K" / "c" / "1").iterdir()) == ["0", "1"]
    assert not list(path.rglob("*.partial"))  # the temporary files renamed into place
    a = zarr.create_array(tmp_path / "blosc.zarr", shape=(8, 8), chunks=(4, 4), dtype="float64",
                          compressors=[BloscCodec()])
    assert not write_whole_chunk(a, slice(0, 4), slice(0, 4), K)
    assert not (tmp_path / "blosc.zarr" / "c").exists()
