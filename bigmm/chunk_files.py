"""Reading a cohort store's genotypes straight from its chunk files.

A pass over X reads every genotype chunk once; through Zarr each read also goes through Zarr's
asynchronous codec pipeline and a copy of every decoded chunk into the array it returns. For the
arrays bigmm itself writes (a local directory store, Zarr v3, int8 codes in either layout: the
``bigmm.2bit`` codec or plain bytes, then zstd, then a CRC32C checksum) :class:`ChunkFiles` does
the same decoding itself, chunk file by chunk file, and writes each chunk's codes straight into the
block it returns: the same bytes, checked the same way (the CRC32C of every chunk), for less work
(measured at n = 100,000: 1.2-1.7 ns per genotype through Zarr, about 1 ns for the file read, the
checksum, zstd and the 2-bit unpacking; docs/performance.md). Any other array (another store, codec
or chunk layout) is read through Zarr, and so is any read that fails here, so that the error is
Zarr's own and names the damaged chunk (:class:`bigmm.store.CheckedArray`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .codecs import TwoBitCodec, packed_rows, unpack_2bit


class ChunkFiles:
    """Decoder of a 2-D int8 genotype array of a local Zarr v3 store written by bigmm.

    Use :meth:`of` (None when the array is not one this class decodes) and :meth:`read`.
    Picklable (it holds paths and numbers), so Dask tasks can carry it.
    """

    def __init__(self, root: Path, chunks: tuple[int, int], shape: tuple[int, int], two_bit: bool, key_encoding):
        self.root = root
        self.chunks = chunks
        self.shape = shape
        self.two_bit = two_bit
        self._keys = key_encoding  # the array's chunk key encoding: chunk (i, j) -> its file's path

    @classmethod
    def of(cls, arr) -> "ChunkFiles | None":
        """The decoder of ``arr`` (a ``zarr.Array``), or None where Zarr must read it."""
        try:
            from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec
            from zarr.storage import LocalStore

            meta = arr.metadata
            if (meta.zarr_format != 3 or not isinstance(arr.store, LocalStore) or arr.ndim != 2
                    or np.dtype(arr.dtype) != np.int8):
                return None
            codecs = tuple(meta.codecs)
            if (len(codecs) != 3 or not isinstance(codecs[0], (TwoBitCodec, BytesCodec))
                    or not isinstance(codecs[1], ZstdCodec) or codecs[1].checksum
                    or not isinstance(codecs[2], Crc32cCodec)):
                return None
            chunks = tuple(int(c) for c in arr.chunks)
            root = Path(arr.store.root) / arr.path
            return cls(root, chunks, tuple(int(s) for s in arr.shape), isinstance(codecs[0], TwoBitCodec),
                       meta.chunk_key_encoding)
        except Exception:  # noqa: BLE001 - anything unexpected: Zarr reads it
            return None

    def chunk(self, i: int, j: int, out: np.ndarray | None = None) -> np.ndarray:
        """The int8 codes of chunk (i, j) at the chunk's full shape (an edge chunk padded);
        decoded into ``out`` when given (the 2-bit layout, a block of the chunk's full shape)."""
        import google_crc32c
        import numcodecs

        rc, cc = self.chunks
        data = (self.root / self._keys.encode_chunk_key((i, j))).read_bytes()
        body = np.frombuffer(data, dtype=np.uint8)[:-4]
        if np.uint32(google_crc32c.value(body)).tobytes() != data[-4:]:
            raise ValueError(f"chunk ({i}, {j}): stored and computed CRC32C checksums do not match")
        raw = numcodecs.Zstd().decode(body)
        if self.two_bit:
            return unpack_2bit(np.frombuffer(raw, dtype=np.uint8).reshape(packed_rows(rc), cc), rc, out=out)
        return np.frombuffer(raw, dtype=np.int8).reshape(rc, cc)

    def read(self, rows: slice, cols: slice, out: np.ndarray | None = None) -> np.ndarray:
        """``arr[rows, cols]`` (slices with step 1) as a new int8 array, or written into ``out``
        (an int8 array of that shape) and returned."""
        r0, r1, rs = rows.indices(self.shape[0])
        c0, c1, cs = cols.indices(self.shape[1])
        if rs != 1 or cs != 1:
            raise ValueError("ChunkFiles reads slices with step 1")
        rc, cc = self.chunks
        shape = (max(0, r1 - r0), max(0, c1 - c0))
        if out is None:
            out = np.empty(shape, dtype=np.int8)
        elif out.shape != shape or out.dtype != np.int8:
            raise ValueError(f"out must be int8 of shape {shape}, not {out.dtype} {out.shape}")
        for i in range(r0 // rc, -(-r1 // rc)) if r1 > r0 else ():
            a, b = max(r0, i * rc), min(r1, (i + 1) * rc)
            for j in range(c0 // cc, -(-c1 // cc)) if c1 > c0 else ():
                u, v = max(c0, j * cc), min(c1, (j + 1) * cc)
                dst = out[a - r0:b - r0, u - c0:v - c0]
                whole = (self.two_bit and a == i * rc and b - a == rc and u == j * cc and v - u == cc
                         and dst.flags.c_contiguous and rc % 4 == 0)
                if whole:
                    self.chunk(i, j, out=dst)
                else:
                    dst[...] = self.chunk(i, j)[a - i * rc:b - i * rc, u - j * cc:v - j * cc]
        return out
