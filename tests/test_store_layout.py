"""The genotype layouts of a cohort store (bigmm.store.LAYOUTS): the 2-bit codec packs and unpacks
every code, including edge chunks whose rows are not a multiple of 4; both layouts read back the
same int8 codes, so passes, variant statistics and GRMs agree with each other and with dense NumPy;
stores convert both ways, verified; an int8 store made before the 2-bit layout still opens."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import random_genotypes

import bigmm
from bigmm.codecs import pack_2bit, unpack_2bit
from bigmm.passes import KERNELS
from bigmm.store import (LAYOUTS, StoreIntegrityError, array_digests, convert_store, describe_store, open_store,
                         verify_chunk_digests)

DATA = Path(__file__).parent / "data"


def test_packed_byte_layout():
    # the format, written out: rows i, i + q, i + 2q, i + 3q in bits 0-1, 2-3, 4-5, 6-7, each field
    # (g - 1) mod 4; rows 0..3 of one column (q = 1) hold 0, 1, 2, missing -> fields 3, 0, 1, 2
    packed = pack_2bit(np.array([[0], [1], [2], [-1]], dtype=np.int8))
    assert packed.tolist() == [[3 | 0 << 2 | 1 << 4 | 2 << 6]]
    # 5 rows: q = 2, byte 0 holds rows 0, 2, 4 and 6, byte 1 rows 1, 3, 5 and 7; rows 5-7 are
    # padding, stored as missing (field 2)
    g = np.array([[2], [0], [1], [-1], [2]], dtype=np.int8)
    assert pack_2bit(g).tolist() == [[1 | 0 << 2 | 1 << 4 | 2 << 6], [3 | 2 << 2 | 2 << 4 | 2 << 6]]


@pytest.mark.parametrize("cols", [11, 16])  # 16: decoded 8 genotypes to a 64-bit word; 11: plane by plane
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8, 13, 30])
def test_pack_unpack_round_trip(rng, rows, cols):
    g = rng.integers(-1, 3, size=(rows, cols)).astype(np.int8)
    packed = pack_2bit(g)
    assert packed.shape == (-(-rows // 4), cols) and packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack_2bit(packed, rows), g)


def test_unpack_by_words_over_several_row_blocks(rng, monkeypatch):
    # the 64-bit path in blocks of 3 packed rows (UNPACK_ROWS), 10 packed rows: 4 blocks, the last short;
    # every byte value in every column position of a word, and against the plane-by-plane path
    from bigmm import codecs

    monkeypatch.setattr(codecs, "UNPACK_ROWS", 3)
    g = rng.integers(-1, 3, size=(40, 24)).astype(np.int8)
    np.testing.assert_array_equal(unpack_2bit(pack_2bit(g), 40), g)
    every = np.arange(256, dtype=np.uint8).reshape(32, 8)
    by_words = unpack_2bit(np.ascontiguousarray(every), 128)
    by_planes = unpack_2bit(np.asfortranarray(every), 128)  # not C-contiguous: the other path
    np.testing.assert_array_equal(by_words, by_planes)


@pytest.mark.parametrize("cols", [11, 16])
@pytest.mark.parametrize("rows", [5, 13, 16])
def test_unpack_rows_decodes_the_rows_asked(rng, rows, cols):
    # every row range, within one plane, across planes, to the last row; into a new array and
    # into a reused buffer (filled with junk first), by words (16 columns) and plane by plane
    from bigmm.codecs import unpack_rows

    g = rng.integers(-1, 3, size=(rows, cols)).astype(np.int8)
    packed = pack_2bit(g)
    q = packed.shape[0]
    buf = np.full(4 * q * cols, 77, dtype=np.uint8)
    for lo in range(rows):
        for hi in range(lo + 1, rows + 1):
            np.testing.assert_array_equal(unpack_rows(packed, rows, lo, hi), g[lo:hi])
            planes = -(-hi // q) - lo // q
            np.testing.assert_array_equal(unpack_rows(packed, rows, lo, hi, out=buf[:planes * q * cols]), g[lo:hi])
    with pytest.raises(ValueError, match="rows 3:3"):
        unpack_rows(packed, rows, 3, 3)


@pytest.mark.parametrize("cols", [3, 16])
@pytest.mark.parametrize("rows", [5, 13, 30, 70])  # 70: more packed rows than one block of COUNT_ROWS
def test_packed_counts_are_the_counts_of_the_rows_asked(rng, rows, cols, monkeypatch):
    """Counts from the packed bytes (bigmm.codecs.packed_counts) of the first k rows of a packed
    block, for every k, against counts of the int8 codes written here: the rows past k (other
    genotypes here, as an edge chunk's padding may be) are left out, also where a byte holds rows
    on both sides of k."""
    from bigmm import codecs

    monkeypatch.setattr(codecs, "COUNT_ROWS", 4)  # several blocks of rows even for small blocks
    monkeypatch.setattr(codecs, "_LANE_ROWS", 6)  # and the 16-bit lanes emptied between them
    G = random_genotypes(rng, rows, cols, missing=0.2)
    packed = pack_2bit(G)
    for k in range(1, rows + 1):
        called = G[:k] >= 0
        g = np.where(called, G[:k], 0).astype(np.int64)
        want = np.stack([called.sum(0), g.sum(0), (g * g).sum(0)])
        np.testing.assert_array_equal(codecs.packed_counts(packed, k), want, err_msg=f"{k} rows")
    with pytest.raises(ValueError, match="rows"):
        codecs.packed_counts(packed, 4 * packed.shape[0] + 1)


def test_pack_refuses_what_2_bits_cannot_hold():
    g = np.zeros((6, 3), dtype=np.int8)
    g[4, 1] = 3  # would read back as another code
    with pytest.raises(ValueError, match="found 3 at row 4, column 1"):
        pack_2bit(g)
    with pytest.raises(ValueError, match="dtype int16"):
        pack_2bit(g.astype(np.int16))


@pytest.mark.parametrize("shape, chunks", [((37, 23), (10, 7)), ((6, 5), (6, 5)), ((9, 4), (3, 4))])
def test_layouts_read_back_the_codes_written(tmp_path, rng, shape, chunks):
    # chunk rows 10, 6 and 3 are not multiples of 4, and 37 = 3 x 10 + 7 leaves a partial edge chunk
    G = random_genotypes(rng, *shape, missing=0.1)
    for layout in LAYOUTS:
        store = bigmm.create_store(tmp_path / f"{layout}.zarr", G, chunks=chunks, layout=layout)
        assert store.layout == layout
        np.testing.assert_array_equal(store.genotypes[...], G)
        np.testing.assert_array_equal(store.to_dask().compute(), G)
        np.testing.assert_array_equal(store.genotypes[3:5, 1:4], G[3:5, 1:4])  # a part of a chunk
    # a region written into part of a chunk keeps the rest of the chunk
    arr = zarr.open_group(tmp_path / "2bit.zarr", mode="r+")["genotypes"]
    arr[1:3, 0:2] = -1
    G[1:3, 0:2] = -1
    np.testing.assert_array_equal(arr[...], G)


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """One genotype matrix with missing calls in a store of each layout, with chunks of 30 rows
    (not a multiple of 4) over 91 samples (an edge chunk of 1 row) and 16 variants."""
    rng = np.random.default_rng(25)
    G = random_genotypes(rng, 91, 50, missing=0.06)
    G[:40, 11] = -1  # many missing calls in one variant
    d = tmp_path_factory.mktemp("layouts")
    return G, {lay: bigmm.create_store(d / f"{lay}.zarr", G, chunks=(30, 16), layout=lay) for lay in LAYOUTS}


def dense_k(G: np.ndarray) -> np.ndarray:
    """K = X Xᵀ / p with X the GCTA standardization written out (f over called genotypes, a missing
    call 0 after centring); every variant of ``both`` varies."""
    called = G >= 0
    g = np.where(called, G, 0).astype(np.float64)
    f = g.sum(0) / (2.0 * called.sum(0))
    X = np.where(called, (g - 2 * f) / np.sqrt(2 * f * (1 - f)), 0.0)
    return X @ X.T / G.shape[1]


@pytest.mark.parametrize("kernel", KERNELS)
def test_pass_of_each_layout_equals_dense_product(both, rng, kernel):
    G, stores = both
    K = dense_k(G)
    M = rng.standard_normal((G.shape[0], 4))
    out = {}
    for layout, store in stores.items():
        std = bigmm.standardization(bigmm.variant_stats(store), "gcta")
        assert std.n_kept == G.shape[1]
        out[layout] = bigmm.GrmOperator(store, std, kernel=kernel, dtype=np.float32, n_tasks=2).apply(M)[0]
        # float32 products (float64 accumulation across chunks): each entry is a float32 dot product
        # of n = 91 or p = 50 terms of size ~1, error ~1e-7 · √91 of the largest entry; 1e-5 of
        # max |K M| is 10x that and 10⁴x below a centring error or a missing call not imputed
        np.testing.assert_allclose(out[layout], K @ M, rtol=0, atol=1e-5 * np.abs(K @ M).max())
    # the same codes in the same chunks: the same float operations, up to float64 round-off of the sums
    np.testing.assert_allclose(out["2bit"], out["int8"], rtol=0, atol=1e-12 * np.abs(K @ M).max())


def test_variant_stats_and_grm_of_the_layouts_agree(both):
    G, stores = both
    stats = {lay: bigmm.variant_stats(s) for lay, s in stores.items()}
    for field in ("n_called", "allele_sum", "allele_sq_sum"):
        a, b = (np.asarray(getattr(stats[lay], field)) for lay in LAYOUTS)
        np.testing.assert_array_equal(a, b)
    # the store read by column tasks (30-row chunks, an edge chunk of 1 row) and as a Dask array
    # both count exactly what the matrix holds
    called = G >= 0
    g = np.where(called, G, 0).astype(np.int64)
    for st in (stats["2bit"], bigmm.variant_stats(stores["2bit"].to_dask())):
        np.testing.assert_array_equal(np.asarray(st.n_called), called.sum(0))
        np.testing.assert_array_equal(np.asarray(st.allele_sum), g.sum(0))
        np.testing.assert_array_equal(np.asarray(st.allele_sq_sum), (g * g).sum(0))
    grms = {}
    for lay, s in stores.items():
        std = bigmm.standardization(stats[lay], "gcta")
        grms[lay] = np.asarray(bigmm.grm(s.genotypes, std, block_size=40, dtype=np.float64))
    np.testing.assert_array_equal(grms["2bit"], grms["int8"])
    # float64 throughout: round-off of sums of p = 50 terms of size ~1
    np.testing.assert_allclose(grms["2bit"], dense_k(G), rtol=0, atol=1e-12)


def test_2bit_variant_stats_count_each_chunk_from_its_packed_bytes(both, monkeypatch):
    """The variant statistics of a 2-bit store count every chunk from its packed bytes (4 chunks
    of rows, the last of 1 row, x 4 of columns), without decoding it, and count what the matrix holds."""
    from bigmm import codecs

    G, stores = both
    seen = []
    real = codecs.packed_counts
    monkeypatch.setattr(codecs, "packed_counts", lambda packed, rows: seen.append(rows) or real(packed, rows))
    st = bigmm.variant_stats(stores["2bit"])
    assert sorted(seen) == [1] * 4 + [30] * 12
    called = G >= 0
    g = np.where(called, G, 0).astype(np.int64)
    np.testing.assert_array_equal(np.asarray(st.n_called), called.sum(0))
    np.testing.assert_array_equal(np.asarray(st.allele_sum), g.sum(0))
    np.testing.assert_array_equal(np.asarray(st.allele_sq_sum), (g * g).sum(0))


def test_convert_both_ways_is_verified_and_never_replaces(both, tmp_path):
    G, stores = both
    two = stores["2bit"]
    one = convert_store(two.path, tmp_path / "int8.zarr", "int8")
    assert one.layout == "int8" and one.attrs["format_version"] == 1 and two.attrs["format_version"] == 2
    np.testing.assert_array_equal(one.genotypes[...], G)
    assert one.sample_ids() == two.sample_ids()
    for key, vals in two.variant_table().items():
        np.testing.assert_array_equal(one.variant_table()[key], vals)
    assert one.attrs["provenance"]["converted"]["layout_from"] == "2bit"
    back = convert_store(one.path, tmp_path / "back.zarr", "2bit")
    # the same codes in the same chunks encode to the same bytes: every chunk file as the original's
    assert array_digests(back.group["genotypes"]) == array_digests(two.group["genotypes"])
    with pytest.raises(bigmm.InputError, match="already exists: a conversion writes a new store"):
        convert_store(one.path, two.path, "int8")
    with pytest.raises(bigmm.InputError, match="lies inside the store it converts"):
        convert_store(one.path, Path(one.path) / "sub.zarr", "2bit")


def test_convert_checks_every_chunk_read_back(both, tmp_path, monkeypatch):
    G, stores = both
    from bigmm import codecs

    real = codecs.unpack_2bit

    def flipped(packed, rows):  # a decoder that gets one code wrong
        out = real(packed, rows).copy()
        out[0, 0] = 1 - out[0, 0] if out[0, 0] >= 0 else 0
        return out

    monkeypatch.setattr(codecs, "unpack_2bit", flipped)
    with pytest.raises(StoreIntegrityError, match="reads back different genotypes; nothing was written"):
        convert_store(stores["int8"].path, tmp_path / "bad.zarr", "2bit")
    assert not any(tmp_path.iterdir())


def test_2bit_store_reopens_verified_and_damage_is_named(both, tmp_path):
    G, stores = both
    path = tmp_path / "s.zarr"
    shutil.copytree(stores["2bit"].path, path)
    assert verify_chunk_digests(path, "store")
    np.testing.assert_array_equal(open_store(path).genotypes[...], G)
    a, b = path / "genotypes" / "c" / "0" / "0", path / "genotypes" / "c" / "1" / "0"
    ba, bb = a.read_bytes(), b.read_bytes()
    a.write_bytes(bb), b.write_bytes(ba)  # two valid chunks in each other's place
    with pytest.raises(StoreIntegrityError, match="holds the data bigmm wrote for chunk c/1/0"):
        open_store(path)


def test_damaged_chunk_counted_from_its_packed_bytes_is_named(both, tmp_path):
    """The variant statistics read a 2-bit store's chunks as packed bytes (no int8 decoding): a
    chunk whose bytes no longer match its CRC32C is still named, with its file."""
    G, stores = both
    path = tmp_path / "s.zarr"
    shutil.copytree(stores["2bit"].path, path)
    f = path / "genotypes" / "c" / "1" / "2"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(StoreIntegrityError, match=r"chunk \(1, 2\).*c/1/2.*cannot be read"):
        bigmm.variant_stats(open_store(path, verify=False))


def test_int8_store_made_before_the_2bit_layout_opens():
    # tests/data/int8_v1.zarr was written by create_store before the 2-bit layout existed
    # (format_version 1, codecs bytes + zstd + crc32c); its codes, as the script that made it drew
    # them (rng 25: binomial(2, uniform(0.05, 0.5)), 10% missing), are recomputed here
    rng = np.random.default_rng(25)
    f = rng.uniform(0.05, 0.5, size=13)
    G = rng.binomial(2, f, size=(11, 13)).astype(np.int8)
    G[rng.random(G.shape) < 0.1] = -1
    store = open_store(DATA / "int8_v1.zarr")
    assert store.layout == "int8" and store.attrs["format_version"] == 1
    np.testing.assert_array_equal(store.genotypes[...], G)
    assert "layout int8: one byte per genotype" in describe_store(store.path)


def test_unknown_codec_is_named(both, tmp_path):
    path = tmp_path / "s.zarr"
    shutil.copytree(both[1]["2bit"].path, path)
    meta_path = path / "genotypes" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["codecs"][0]["name"] = "bigmm.3bit"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(bigmm.InputError, match="stored with the codec 'bigmm.3bit', which bigmm .* cannot decode"):
        open_store(path)


def test_ingest_and_simulate_write_the_layout_asked(tmp_path):
    c = bigmm.simulate(12, 9, seed=3, genotype_missing=0.1, out_plink=tmp_path / "c",
                       out_zarr=tmp_path / "sim.zarr", chunks=(5, 4))
    stores = {lay: bigmm.ingest_plink(tmp_path / "c", tmp_path / f"{lay}.zarr", chunks=(5, 4), layout=lay)
              for lay in LAYOUTS}
    sim = open_store(tmp_path / "sim.zarr")
    assert sim.layout == "2bit" and stores["int8"].layout == "int8" and stores["2bit"].layout == "2bit"
    for s in stores.values():
        np.testing.assert_array_equal(s.genotypes[...], sim.genotypes[...])
    assert (sim.genotypes[...] < 0).any()
    with pytest.raises(bigmm.InputError, match="store layout 'bed' is not one of 2bit, int8"):
        bigmm.ingest_plink(tmp_path / "c", tmp_path / "x.zarr", layout="bed")
    assert c is not None


def test_cli_convert_config_and_status_name_the_layout(both, tmp_path, capsys):
    from bigmm.pipeline.cli import main
    from bigmm.pipeline.config import parse_config
    from bigmm.pipeline.stages import genotype_store_line

    G, stores = both
    out = tmp_path / "int8.zarr"
    assert main(["convert", str(stores["2bit"].path), "--out", str(out), "--layout", "int8"]) == 0
    assert "layout int8 (from 2bit" in capsys.readouterr().out
    np.testing.assert_array_equal(open_store(out).genotypes[...], G)
    assert main(["convert", str(stores["2bit"].path), "--out", str(out), "--layout", "2bit"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["simulate", "--n", "8", "--p", "5", "--out", str(tmp_path / "s"), "--layout", "int8"]) == 2
    assert "--layout is how a cohort store holds the genotypes: give it with --zarr" in capsys.readouterr().err
    assert not list(tmp_path.glob("s.*"))
    cfg = {"genotypes": {"zarr": str(out)}, "phenotypes": {"file": "p.tsv"}, "output": str(tmp_path / "run")}
    line = genotype_store_line(tmp_path / "run", {"config": cfg})
    assert line.startswith(f"{out}: 91 samples x 50 variants, chunks 30 x 16, layout int8: one byte per genotype")
    ingest = {**cfg, "genotypes": {"plink": str(tmp_path / "c")}}
    assert "genotypes.zarr: not made yet" in genotype_store_line(tmp_path / "run", {"config": ingest})
    assert parse_config({**ingest, "genotypes": {"plink": "c", "layout": "int8"}}).genotypes.layout == "int8"
    with pytest.raises(bigmm.ConfigError, match="layout is for the store that ingest makes from PLINK"):
        parse_config({**cfg, "genotypes": {"zarr": str(out), "layout": "int8"}})
