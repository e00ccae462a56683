"""Reading a cohort store's genotypes straight from its chunk files, and writing whole chunks of
bigmm's own arrays straight to theirs (:func:`write_whole_chunk`).

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

import os
from pathlib import Path

import numpy as np

from .codecs import TwoBitCodec, packed_rows, unpack_2bit, unpack_rows


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

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_local", None)  # the decoding buffers of this process's threads
        return state

    def _scratch(self, name: str, size: int) -> np.ndarray:
        """A uint8 buffer of ``size`` bytes of this thread, kept for the next chunk: each chunk's
        file bytes, zstd output and decoded rows land in memory the process has already touched
        (new memory per chunk was 0.15-0.2 s of a GRM block task's 25 chunks at n = 10,000, where
        Dask's workers hand freed memory back to the system at once)."""
        import threading

        local = self.__dict__.get("_local")
        if local is None:
            local = self.__dict__.setdefault("_local", threading.local())
        bufs = getattr(local, "bufs", None)
        if bufs is None:
            bufs = local.bufs = {}
        buf = bufs.get(name)
        if buf is None or buf.size < size:
            buf = bufs[name] = np.empty(size, dtype=np.uint8)
        return buf[:size]

    def chunk(self, i: int, j: int, out: np.ndarray | None = None, rows: tuple[int, int] | None = None) -> np.ndarray:
        """The int8 codes of chunk (i, j) at the chunk's full shape (an edge chunk padded);
        decoded into ``out`` when given (the 2-bit layout, a block of the chunk's full shape).
        ``rows``: only the chunk's rows ``lo`` to ``hi`` (the 2-bit layout decodes only the
        planes that hold them, :func:`~bigmm.codecs.unpack_rows`)."""
        return self._decode(i, j, out, rows, scratch=False)

    def _body(self, i: int, j: int) -> np.ndarray:
        """The compressed bytes of chunk (i, j), its CRC32C trailer checked (this thread's buffer)."""
        import google_crc32c

        with open(self.root / self._keys.encode_chunk_key((i, j)), "rb", buffering=0) as fh:
            size = os.fstat(fh.fileno()).st_size
            data = self._scratch("file", size)
            got = 0
            while got < size:
                n = fh.readinto(memoryview(data[got:]))
                if not n:
                    raise ValueError(f"chunk ({i}, {j}): file ended after {got} of {size} bytes")
                got += n
        body = data[:-4].view()
        body.flags.writeable = False  # google_crc32c takes read-only buffers
        if size < 4 or np.uint32(google_crc32c.value(body)).tobytes() != data[-4:].tobytes():
            raise ValueError(f"chunk ({i}, {j}): stored and computed CRC32C checksums do not match")
        return body

    def packed(self, i: int, j: int) -> np.ndarray:
        """The packed 2-bit block of chunk (i, j) (:mod:`bigmm.codecs`; ``ceil(rows / 4) x cols``
        uint8 at the chunk's full shape), this thread's buffer, valid until its next chunk."""
        import numcodecs

        if not self.two_bit:
            raise ValueError("packed: the array is not in the 2-bit layout")
        rc, cc = self.chunks
        q = packed_rows(rc)
        return numcodecs.Zstd().decode(self._body(i, j), out=self._scratch("packed", q * cc)).reshape(q, cc)

    def _decode(self, i: int, j: int, out, rows, scratch: bool) -> np.ndarray:
        """:meth:`chunk`; with ``scratch`` the rows returned (``rows`` given, ``out`` not) are
        this thread's buffer, valid until its next chunk."""
        import numcodecs

        rc, cc = self.chunks
        if not self.two_bit:
            codes = np.frombuffer(numcodecs.Zstd().decode(self._body(i, j)), dtype=np.int8).reshape(rc, cc)
            return codes if rows is None else codes[rows[0]:rows[1]]
        packed = self.packed(i, j)
        if rows is None:
            return unpack_2bit(packed, rc, out=out)
        lo, hi = rows
        q = packed.shape[0]
        planes = None if not scratch else self._scratch("planes", (-(-hi // q) - lo // q) * q * cc)
        return unpack_rows(packed, rc, lo, hi, out=planes)

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
                    part = self._decode(i, j, None, (a - i * rc, b - i * rc), scratch=True)
                    dst[...] = part[:, u - j * cc:v - j * cc]
        return out


def _direct_codecs(arr):
    """``(zstd level or None)`` where ``arr`` is a local Zarr v3 array whose chunks are its C-ordered
    little-endian bytes, optionally zstd (without its frame checksum), then a CRC32C trailer (the
    arrays bigmm writes: :data:`bigmm.store.CODECS`, :data:`bigmm.store.CHECKSUM_ONLY`); else False."""
    try:
        from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec
        from zarr.storage import LocalStore

        meta = arr.metadata
        codecs = tuple(meta.codecs)
        if (meta.zarr_format != 3 or not isinstance(arr.store, LocalStore) or np.dtype(arr.dtype).byteorder == ">"
                or not codecs or not isinstance(codecs[0], BytesCodec) or not isinstance(codecs[-1], Crc32cCodec)
                or getattr(getattr(codecs[0], "endian", None), "value", None) not in (None, "little")
                or getattr(meta, "order", None) not in (None, "C")):
            return False
        middle = codecs[1:-1]
        if not middle:
            return None
        if len(middle) == 1 and isinstance(middle[0], ZstdCodec) and not middle[0].checksum:
            return int(middle[0].level)
        return False
    except Exception:  # noqa: BLE001 - anything unexpected: Zarr writes it
        return False


def chunk_file(arr, idx: tuple[int, ...]) -> Path | None:
    """The file of chunk ``idx`` of ``arr`` (a Zarr array in a local store), or None for an array
    of another store."""
    root = getattr(arr.store, "root", None)
    if root is None:
        return None
    return Path(root) / arr.path / arr.metadata.chunk_key_encoding.encode_chunk_key(idx)


def write_whole_chunk(arr, rows: slice, cols: slice, block: np.ndarray) -> bool:
    """``arr[rows, cols] = block`` written straight to the chunk's file where the region is exactly
    one whole chunk of a 2-D array with bigmm's codecs (:func:`_direct_codecs`): the bytes Zarr
    would write (the block C-ordered, zstd where the array has it, the CRC32C of what precedes),
    through a temporary file renamed into place as Zarr does, without Zarr's copies of the block
    (into its chunk buffer, and again to append the checksum). Returns False, writing nothing,
    for any other region or array: the caller writes it through Zarr.

    Measured on a 5,000 x 5,000 float64 block of a GRM (200 MB): 0.085-0.25 s against 0.27 s
    through Zarr for the block C-ordered and 0.5-1.2 s for it F-ordered (docs/performance.md)."""
    import uuid

    import google_crc32c

    level = _direct_codecs(arr)
    if level is False or arr.ndim != 2 or block.shape != tuple(arr.chunks):
        return False
    (rc, cc), shape = arr.chunks, arr.shape
    r0, r1, rs = rows.indices(shape[0])
    c0, c1, cs = cols.indices(shape[1])
    if rs != 1 or cs != 1 or r0 % rc or c0 % cc or r1 - r0 != rc or c1 - c0 != cc:
        return False
    data = np.ascontiguousarray(block, dtype=np.dtype(arr.dtype).newbyteorder("<"))
    raw = data.reshape(-1).view(np.uint8)
    if level is not None:
        import numcodecs

        raw = np.frombuffer(numcodecs.Zstd(level=level).encode(raw), dtype=np.uint8)
    ro = raw.view()
    ro.flags.writeable = False  # google_crc32c takes read-only buffers
    crc = np.uint32(google_crc32c.value(ro)).tobytes()
    path = chunk_file(arr, (r0 // rc, c0 // cc))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "wb") as fh:
            fh.write(memoryview(raw))
            fh.write(crc)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True
