"""The 2-bit genotype codec of bigmm's cohort stores: a Zarr v3 array-to-bytes codec ``bigmm.2bit``.

A cohort store's genotype array is logically int8 (allele counts 0, 1, 2; -1 missing), whatever its
layout. In the ``2bit`` layout (:data:`bigmm.store.LAYOUTS`) its serializer is :class:`TwoBitCodec`,
which stores four genotypes per byte before the compressor (zstd level 1) and the CRC32C checksum;
every reader (``arr[...]``, Dask, the chunk checks) still gets int8 codes, decoded by the codec.

Packing (per chunk, the chunk's full shape as Zarr hands it over: an edge chunk arrives padded with
the fill value): the chunk is seen as ``R`` rows (samples, axis 0) by ``C`` columns (the other axes
flattened), ``q = ceil(R / 4)``. Byte ``[i, j]`` of the ``q x C`` packed block holds rows ``i``,
``i + q``, ``i + 2q`` and ``i + 3q`` of column ``j`` in bits 0-1, 2-3, 4-5 and 6-7. The 2-bit field
of a genotype ``g`` (0, 1, 2, or -1 missing) is ``(g - 1) mod 4``: 3, 0, 1 for allele counts 0, 1,
2 and 2 for a missing call (and for the padding rows past ``R``), so that ``g`` is the field read as
a signed 2-bit number, plus 1. Decoding a plane is then a few vectorised operations on 64-bit
words with no branch on missing calls (:func:`unpack_2bit`), writing four contiguous row blocks:
about half a nanosecond per genotype, after the compressor has worked on a quarter of the bytes of int8 (``docs/performance.md``,
"Store layout"). PLINK's .bed packs four consecutive samples per byte with another code: the planes
here are chosen because they decode without a gather, the code because it decodes without a
comparison.

The codec is registered with Zarr when :mod:`bigmm` (or this module) is imported, and through the
``zarr.codecs`` entry point of the installed package, so a plain ``zarr.open_array`` of a bigmm store
finds it wherever bigmm is installed (Dask workers included). Where bigmm is not installed, Zarr cannot
read such an array; bigmm itself names an unknown codec of a store it is asked to open
(:func:`bigmm.store.open_store`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.registry import register_codec

if TYPE_CHECKING:
    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

#: the name of the codec in a store's metadata (``zarr.json``, ``codecs``)
TWO_BIT = "bigmm.2bit"
#: the 2-bit field of a missing call (and of padding rows): -1 - 1 mod 4
MISSING_CODE = 2


def packed_rows(rows: int) -> int:
    """Rows of the packed block of a chunk of ``rows`` rows: ``ceil(rows / 4)``."""
    return -(-rows // 4)


def pack_2bit(codes: np.ndarray) -> np.ndarray:
    """int8 genotype codes (``R x C``: 0, 1, 2; -1 missing) -> the ``ceil(R/4) x C`` packed uint8
    block of :mod:`bigmm.codecs` (planes of rows ``i, i + q, i + 2q, i + 3q``; fields ``(g - 1) mod 4``).

    Raises ``ValueError`` for any other value: an allele count of 3 or more cannot be stored in
    this layout (it would read back as missing or as another count).
    """
    g = np.asarray(codes)
    if g.dtype != np.int8:
        raise ValueError(f"the 2-bit genotype codec stores int8 allele counts, got dtype {g.dtype}")
    r, c = g.shape
    u = g.view(np.uint8)
    bad = (u > 2) & (u != 0xFF)
    if bad.any():
        i, j = (int(x[0]) for x in np.nonzero(bad))
        raise ValueError(f"the 2-bit genotype codec stores allele counts 0, 1, 2 and -1 (missing); found "
                         f"{int(g[i, j])} at row {i}, column {j} of a chunk")
    q = packed_rows(r)
    planes = np.full((4 * q, c), MISSING_CODE, dtype=np.uint8)
    np.subtract(u, np.uint8(1), out=planes[:r])  # g - 1 (mod 256): 0xFF, 0, 1 and 0xFE for -1
    planes &= 3                                  # mod 4: 3, 0, 1 for 0, 1, 2 and 2 for missing
    planes = planes.reshape(4, q, c)
    out = planes[3] << 6
    out |= planes[2] << 4
    out |= planes[1] << 2
    out |= planes[0]
    return out


#: packed rows unpacked at a time by the 64-bit path of :func:`unpack_2bit` (so that its
#: intermediate stays in cache)
UNPACK_ROWS = 256
_LOW2 = np.uint64(0x0303030303030303)
_ONES = np.uint64(0x0101010101010101)
_TOP6 = np.uint64(0xFC)


def unpack_2bit(packed: np.ndarray, rows: int, out: np.ndarray | None = None) -> np.ndarray:
    """The int8 codes (``rows x C``) of a packed block (:func:`pack_2bit`), -1 for missing: each
    field read as a signed 2-bit number, plus 1. ``out``: a C-contiguous int8 ``4q x C`` block to
    decode into (``rows`` = 4q), instead of a new array.

    When C is a multiple of 8 (every chunk width a store is made with), eight genotypes are
    decoded at a time in 64-bit words, with no carry between the bytes of a word: the field
    ``f`` (shifted down and masked), ``v = (f + 1) & 3`` (1, 2, 3, 0 for fields 0-3), and 3 made
    -1 by or-ing ``0xFC`` into the bytes whose two low bits are both set. Otherwise each plane
    is shifted into the top bits of an int8, shifted back arithmetically and incremented.
    Measured on an 8192 x 2048 chunk: 0.47-0.49 against 0.66-1.0 ns per genotype.
    """
    packed = np.asarray(packed, dtype=np.uint8)
    q, c = packed.shape
    if q != packed_rows(rows):
        raise ValueError(f"a packed block of {q} rows holds {4 * q - 3}-{4 * q} rows, not {rows}")
    if out is None:
        out = np.empty((4 * q, c), dtype=np.uint8)
    else:
        if out.shape != (4 * q, c) or out.dtype != np.int8 or not out.flags.c_contiguous:
            raise ValueError(f"unpack_2bit: out must be a C-contiguous int8 array of shape {(4 * q, c)}")
        out = out.view(np.uint8)
    return _unpack_planes(packed, 0, 4, out)[:rows]


def unpack_rows(packed: np.ndarray, rows: int, lo: int, hi: int, out: np.ndarray | None = None) -> np.ndarray:
    """Rows ``lo`` to ``hi`` of the int8 codes of a packed block of ``rows`` rows (:func:`unpack_2bit`),
    decoding only the planes that hold them: plane k is rows ``kq`` to ``(k + 1)q``, so the 1,808
    rows a cohort of 10,000 has in its last chunk of 8,192 are one plane, a quarter of the work.
    ``out``: a buffer of ``(k1 - k0)q x C`` bytes for the planes (k0 to k1) decoded, instead of a
    new array; the rows returned are a view of it."""
    packed = np.asarray(packed, dtype=np.uint8)
    q, c = packed.shape
    if q != packed_rows(rows) or not 0 <= lo < hi <= rows:
        raise ValueError(f"rows {lo}:{hi} of a packed block of {q} rows ({rows} rows)")
    k0, k1 = lo // q, -(-hi // q)
    out = np.empty(((k1 - k0) * q, c), dtype=np.uint8) if out is None else out.reshape(-1).view(np.uint8).reshape(-1, c)
    return _unpack_planes(packed, k0, k1, out)[lo - k0 * q:hi - k0 * q]


def _unpack_planes(packed: np.ndarray, k0: int, k1: int, out: np.ndarray) -> np.ndarray:
    """Planes ``k0`` to ``k1`` of a packed ``q x C`` block decoded into ``out`` (uint8, C-contiguous,
    ``(k1 - k0)q x C``); returns ``out`` viewed as int8 (:func:`unpack_2bit`)."""
    q, c = packed.shape
    if c % 8 == 0 and packed.flags.c_contiguous and q:
        words = packed.view(np.uint64)
        dst = out.view(np.uint64)
        tmp = np.empty((min(UNPACK_ROWS, q), c // 8), dtype=np.uint64)
        for r in range(0, q, UNPACK_ROWS):
            src = words[r:r + UNPACK_ROWS]
            t = tmp[: src.shape[0]]
            for k in range(k0, k1):
                v = dst[(k - k0) * q + r:(k - k0) * q + r + src.shape[0]]
                np.right_shift(src, np.uint64(2 * k), out=v)
                np.bitwise_and(v, _LOW2, out=v)
                np.add(v, _ONES, out=v)
                np.bitwise_and(v, _LOW2, out=v)
                np.right_shift(v, np.uint64(1), out=t)
                np.bitwise_and(t, v, out=t)
                np.bitwise_and(t, _ONES, out=t)
                np.multiply(t, _TOP6, out=t)
                np.bitwise_or(v, t, out=v)
        return out.view(np.int8)
    for k in range(k0, k1):
        np.left_shift(packed, 6 - 2 * k, out=out[(k - k0) * q:(k - k0 + 1) * q])
    codes = out.view(np.int8)
    np.right_shift(codes, 6, out=codes)
    np.add(codes, np.int8(1), out=codes)
    return codes


def _count_tables() -> np.ndarray:
    """``tables[v][byte]``: over the fields of planes 0 to v - 1 of a packed byte, the calls of
    allele count 1, of count 2 and the missing calls, in 16-bit lanes 0, 1 and 2 of a uint64."""
    tables = np.zeros((5, 256), dtype=np.uint64)
    lane = {0: 1, 1: 1 << 16, MISSING_CODE: 1 << 32, 3: 0}  # field (g - 1) mod 4: counts 1, 2, missing, 0
    for v in range(5):
        for byte in range(256):
            tables[v, byte] = sum(lane[(byte >> (2 * k)) & 3] for k in range(v))
    return tables


_COUNTS = _count_tables()
#: packed rows looked up at a time by :func:`packed_counts` (their indices and counts stay in
#: cache): 0.24 ns per genotype of an 8192 x 2048 chunk, against 0.27 for 8 or 32 rows and 0.43
#: for 128 (in a process that hands freed memory back at once, as a Dask worker does)
COUNT_ROWS = 16
#: packed rows whose counts the 16-bit lanes hold (4 fields a byte): then the lanes are emptied
_LANE_ROWS = 16383


def packed_counts(packed: np.ndarray, rows: int) -> np.ndarray:
    """Per column of a packed block (:func:`pack_2bit`), over its first ``rows`` rows: the called
    genotypes, the sum of the allele counts and the sum of their squares (int64, 3 x C), as
    :func:`bigmm.genotypes.variant_stats` counts them, without decoding the genotypes.

    Each byte is looked up in a table of its counts (:func:`_count_tables`) and the counts summed
    in 16-bit lanes of a uint64 (0.24 ns per genotype on an 8192 x 2048 chunk, against 0.89 to
    decode it into int8 and sum those). Rows past ``rows`` (the padding of a chunk whose rows are
    not a multiple of 4, or the rows of an edge chunk past the array's end) are left out whatever
    they hold: the bytes that hold a row past the end count only their planes below it.
    """
    packed = np.asarray(packed, dtype=np.uint8)
    q, c = packed.shape
    if not 0 < rows <= 4 * q:
        raise ValueError(f"rows {rows} of a packed block of {q} rows")
    k = (rows - 1) // q  # the plane of the last row: planes 0..k hold rows in bytes [0, r1)
    r1 = rows - k * q
    sums = np.zeros((3, c), dtype=np.int64)
    # the lookups' indices, values and sums in buffers of their own: np.take converts uint8
    # indices into a new intp array at each call, and with mode "raise" writes into a new array
    # before ``out``: new memory each time in a Dask worker (which hands freed memory back at
    # once): 3x slower
    idx = np.empty((min(COUNT_ROWS, q), c), dtype=np.intp)
    buf = np.empty(idx.shape, dtype=np.uint64)
    block = np.empty(c, dtype=np.uint64)
    lanes = np.zeros(c, dtype=np.uint64)
    filled = 0
    for lo, hi, planes in ((0, r1, k + 1), (r1, q, k)):
        for r in range(lo, hi, COUNT_ROWS) if planes else ():
            part = packed[r:min(hi, r + COUNT_ROWS)]
            m = part.shape[0]
            if filled + m > _LANE_ROWS:
                _empty_lanes(lanes, sums)
                filled = 0
            np.copyto(idx[:m], part, casting="safe")
            np.take(_COUNTS[planes], idx[:m], out=buf[:m], mode="clip")  # ("raise" buffers out)
            lanes += np.add.reduce(buf[:m], axis=0, out=block)
            filled += m
    _empty_lanes(lanes, sums)
    ones, twos, missing = sums
    return np.stack([rows - missing, ones + 2 * twos, ones + 4 * twos])


def _empty_lanes(lanes: np.ndarray, sums: np.ndarray) -> None:
    for i in range(3):
        sums[i] += ((lanes >> np.uint64(16 * i)) & np.uint64(0xFFFF)).astype(np.int64)
    lanes[...] = 0


@dataclass(frozen=True)
class TwoBitCodec(ArrayBytesCodec):
    """Zarr v3 array-to-bytes codec ``bigmm.2bit``: int8 genotype codes (0, 1, 2, -1 missing),
    four per byte (:func:`pack_2bit`). Takes no configuration."""

    is_fixed_size = True

    @classmethod
    def from_dict(cls, data):
        config = data.get("configuration") if isinstance(data, dict) else None
        if data.get("name") != TWO_BIT or config:
            raise ValueError(f"codec {data!r} is not the {TWO_BIT} codec this bigmm knows (it takes no "
                             f"configuration); the store was written by another version of bigmm: "
                             f"install that version, or one that reads it")
        return cls()

    def to_dict(self):
        return {"name": TWO_BIT}

    def validate(self, *, shape, dtype, chunk_grid) -> None:
        if dtype.to_native_dtype() != np.dtype(np.int8):
            raise ValueError(f"the {TWO_BIT} codec stores int8 genotype codes, not {dtype}")
        if len(shape) < 1:
            raise ValueError(f"the {TWO_BIT} codec needs an array of at least one dimension")

    @staticmethod
    def _rows_cols(shape) -> tuple[int, int]:
        return int(shape[0]), int(np.prod(shape[1:], dtype=np.int64))

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        r, c = self._rows_cols(chunk_spec.shape)
        raw = chunk_bytes.as_numpy_array()
        if raw.size != packed_rows(r) * c:
            raise ValueError(f"a {TWO_BIT} chunk of shape {chunk_spec.shape} has {packed_rows(r) * c} "
                             f"bytes, found {raw.size}")
        codes = unpack_2bit(raw.view(np.uint8).reshape(packed_rows(r), c), r)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(codes.reshape(chunk_spec.shape))

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return self._decode_sync(chunk_bytes, chunk_spec)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        g = np.ascontiguousarray(chunk_array.as_numpy_array())
        packed = pack_2bit(g.reshape(self._rows_cols(g.shape)))
        return chunk_spec.prototype.buffer.from_array_like(packed.reshape(-1))

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return self._encode_sync(chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        r, c = self._rows_cols(chunk_spec.shape)
        return packed_rows(r) * c


register_codec(TWO_BIT, TwoBitCodec)
