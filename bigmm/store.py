"""The Zarr cohort store and atomic commits of everything bigmm writes.

Layout of a cohort store (a Zarr v3 group)::

    store.zarr/
      zarr.json            attributes: format, format_version, bigmm_version,
                           n_samples, n_variants, provenance, complete=True
      genotypes            int8 (n_samples, n_variants), allele count of
                           ``variant_allele1``, -1 for missing; stored in one of
                           :data:`LAYOUTS` (``2bit``: four genotypes per byte, the
                           codec :class:`bigmm.codecs.TwoBitCodec`; ``int8``: a byte
                           each), read back as int8 codes either way
      sample_fid, sample_iid
      variant_chrom, variant_id, variant_pos, variant_allele1, variant_allele2
      bigmm_chunk_digests  an empty group whose attributes record each chunk file's
                           digest, keyed by array and chunk (:func:`record_chunk_digests`)

Every array bigmm writes carries a CRC32C checksum after its compressor and is
written with ``write_empty_chunks=True`` (Zarr stores an all-fill chunk as no file): a flipped byte or a
truncated chunk fails loudly on read, and a missing chunk file means "never
written", not "all fill value". Zarr keeps that setting in the array object, not in the store, so
an array re-opened for writing goes through :func:`writable`.

A checksum proves a chunk intact, not that it is the chunk of its place in its store (two
swapped chunk files, or one copied from another store of the same shape, pass it): every store
bigmm writes records each chunk file's digest by place, checked by :func:`verify_chunk_digests`
before the store is reused or read; :func:`content_fingerprint` digests the stored bytes of any
Zarr store (a user's VCF Zarr too), so that a store rewritten in place is seen.

Stores and stage outputs are committed by :func:`atomic_dir`: written under a
temporary name beside the destination, fsynced, then renamed into place, so an
interrupted write never leaves something that looks complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from ._version import __version__
from .codecs import TWO_BIT, TwoBitCodec
from .errors import InputError, missing_reason
from .files import (SAMPLED_BLOCK_BYTES, SAMPLED_BLOCKS, atomic_dir, atomic_file,  # noqa: F401  (re-exported)
                    atomic_write_text, file_fingerprint, fsync_tree, now_utc, remove_path, resolve_path)

STORE_FORMAT = "bigmm-cohort"
STORE_FORMAT_VERSION = 1
#: the layouts of a store's genotype array: each is read back as int8 codes (0, 1, 2; -1 missing)
LAYOUTS = ("2bit", "int8")
#: the layout of new stores: after zstd-1, 2-bit codes take about 2/3 of the bytes of int8 and
#: decode through Zarr with about 1/1.6 of its CPU time (docs/performance.md, "Store layout")
DEFAULT_LAYOUT = "2bit"
#: the store format version written per layout: a 2-bit store is version 2, so a bigmm that
#: predates the layout refuses it by its version instead of failing on the unknown codec
FORMAT_VERSIONS = {"int8": 1, "2bit": 2}
#: what each layout is, for a person (``bigmm status``, results.json)
LAYOUT_TEXT = {"int8": "int8: one byte per genotype, zstd level 1, CRC32C",
               "2bit": f"2bit: four genotypes per byte ({TWO_BIT} codec), zstd level 1, CRC32C"}
DEFAULT_CHUNKS = (2048, 8192)  # samples x variants: 16 MiB of int8 per chunk
#: the arrays of a cohort store
STORE_ARRAYS = ("genotypes", "sample_fid", "sample_iid", "variant_chrom", "variant_id", "variant_pos",
                "variant_allele1", "variant_allele2")

#: compressor + checksum used for every array bigmm writes
CODECS = (ZstdCodec(level=1), Crc32cCodec())
#: the checksum alone, for arrays of floats that zstd does not shrink: a GRM's K (float64
#: relatedness, ratio 0.96 at zstd level 1) cost 0.28 s of zstd per 5,000 x 5,000 block written
#: (2.06 s for one 10,000 x 10,000 block) for 4% of its size
CHECKSUM_ONLY = (Crc32cCodec(),)
ARRAY_CONFIG = {"write_empty_chunks": True}


def new_array(group: zarr.Group, name: str, *, shape, dtype, chunks=None, data=None,
              fill_value=None, attributes=None, serializer="auto", compressors=CODECS) -> zarr.Array:
    """Create a checksummed array in ``group`` (and fill it from ``data``); ``serializer``: Zarr's
    array-to-bytes codec (default: its own for the dtype); ``compressors``: the bytes-to-bytes
    codecs (default :data:`CODECS`; :data:`CHECKSUM_ONLY` for data that does not compress)."""
    if data is not None:
        data = np.asarray(data)
        shape = data.shape
        if dtype is None:
            dtype = data.dtype
    if chunks is None:
        chunks = shape if all(s > 0 for s in shape) else tuple(max(1, s) for s in shape)
    arr = group.create_array(
        name, shape=shape, dtype=dtype, chunks=chunks, compressors=compressors, serializer=serializer,
        fill_value=fill_value, config=ARRAY_CONFIG, attributes=attributes or {},
    )
    if data is not None and data.size:
        arr[...] = data
    return arr


def check_layout(layout: str) -> str:
    """``layout`` if it is one of :data:`LAYOUTS`, else a clear error."""
    if layout not in LAYOUTS:
        raise InputError(f"store layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    return layout


def new_genotypes(group: zarr.Group, shape: tuple[int, int], chunks: tuple[int, int],
                  layout: str = DEFAULT_LAYOUT) -> zarr.Array:
    """The genotype array of a new cohort store: int8 codes, -1 (missing) as fill value, stored in
    ``layout`` (:data:`LAYOUTS`): ``2bit`` through :class:`bigmm.codecs.TwoBitCodec`, ``int8`` a
    byte each; zstd level 1 and a CRC32C checksum after either."""
    serializer = TwoBitCodec() if check_layout(layout) == "2bit" else "auto"
    return new_array(group, "genotypes", shape=shape, dtype="int8", chunks=chunks, fill_value=-1,
                     serializer=serializer)


def genotype_layout(arr) -> str:
    """The layout (:data:`LAYOUTS`) of a cohort store's genotype array, from its codecs."""
    codecs = getattr(getattr(arr, "metadata", None), "codecs", None) or ()
    return "2bit" if any(isinstance(c, TwoBitCodec) for c in codecs) else "int8"


def describe_store(path: str | os.PathLike) -> str:
    """One line on the cohort store ``path`` for a person (``bigmm status``): its shape, chunks and
    genotype layout (:data:`LAYOUT_TEXT`), read from its metadata only (no chunk is read)."""
    path = Path(path)
    try:
        attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
        meta = json.loads((path / "genotypes" / "zarr.json").read_text())
        names = [c.get("name") for c in meta["codecs"]]
        shape, chunks = meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"]
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as exc:
        return f"{path}: not readable as a cohort store ({exc})"
    if attrs.get("format") != STORE_FORMAT:
        return f"{path}: not a bigmm cohort store"
    layout = "2bit" if TWO_BIT in names else "int8" if names and names[0] == "bytes" else None
    what = LAYOUT_TEXT[layout] if layout else f"codecs {', '.join(map(str, names))} (not a layout this bigmm writes)"
    return (f"{path}: {shape[0]} samples x {shape[1]} variants, chunks {chunks[0]} x {chunks[1]}, layout {what}")


def _check_codecs(path: Path) -> None:
    """Name a codec of the genotype array of store ``path`` that Zarr cannot decode here (a store
    written by a later bigmm), before Zarr fails on it with a bare ``Unknown codec``."""
    from zarr.registry import get_codec_class

    try:
        meta = json.loads((path / "genotypes" / "zarr.json").read_text())
        names = [c["name"] if isinstance(c, dict) else c for c in meta.get("codecs", [])]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return  # not readable as Zarr v3 metadata: the checks that follow say what is wrong
    for name in names:
        try:
            get_codec_class(name)
        except KeyError:
            raise InputError(f"{path}: its genotypes are stored with the codec {name!r}, which bigmm "
                             f"{__version__} cannot decode (it reads the layouts {', '.join(LAYOUTS)}); "
                             f"the store was written by another version of bigmm: open it with that "
                             f"version, or re-create it") from None


def writable(arr: zarr.Array) -> zarr.Array:
    """``arr`` with bigmm's write configuration (:data:`ARRAY_CONFIG`).

    Zarr 3 keeps ``write_empty_chunks`` in the runtime configuration of an array object, not in
    the store's metadata: an array re-opened from its group (as a task that writes a region
    does) is back at Zarr's default ``False``, and a region whose values all equal the fill value
    (an all-NaN GRM block with ``fill_value=nan``) would then be dropped instead of written, to
    read back later as a "missing chunk". Every write into a re-opened array goes through this.
    """
    return arr.with_config(ARRAY_CONFIG)


class StoreIntegrityError(InputError):
    """A chunk of an array bigmm wrote is missing, truncated or corrupted; ``path`` is the
    array's folder (a run reruns the stage that wrote it, when the array is one of its outputs)."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path

    def __reduce__(self):  # raised in Dask workers: the path must survive pickling
        return (type(self), (str(self), self.path))


def _chunk_path(arr: zarr.Array, idx: tuple[int, ...]) -> str:
    return "c/" + "/".join(str(i) for i in idx)


def _array_dir(arr: zarr.Array) -> Path | None:
    root = getattr(arr.store, "root", None)
    if root is None:
        return None
    return Path(root) / arr.path


def verify_chunks(arr: zarr.Array, label: str) -> None:
    """Check that every chunk file of ``arr`` exists (bigmm writes all of them).

    A deleted chunk would otherwise read back as the fill value without any
    error (Zarr writes no file for an all-fill chunk). Only local stores are listed.
    """
    d = _array_dir(arr)
    if d is None or arr.size == 0:
        return
    grid = tuple((s + c - 1) // c for s, c in zip(arr.shape, arr.chunks))
    present = set()
    base = d / "c"
    for dirpath, _dirs, files in os.walk(base):
        rel = os.path.relpath(dirpath, base)
        prefix = () if rel == "." else tuple(int(x) for x in rel.split(os.sep))
        for f in files:
            if f.isdigit():
                present.add(prefix + (int(f),))
    expected = int(np.prod(grid))
    if len(present) < expected:
        for idx in np.ndindex(*grid):
            if idx not in present:
                raise StoreIntegrityError(
                    f"{label}: chunk {idx} (file {d / _chunk_path(arr, idx)}) is missing, "
                    f"{expected - len(present)} of {expected} chunks in all; the store is damaged: "
                    f"re-create it (or rerun the stage that wrote it)", str(d))


#: the record, in a store bigmm writes, of what each stored chunk file holds: the attributes of
#: an empty Zarr group of this name (a node of the hierarchy, so readers list no foreign file)
CHUNK_DIGESTS = "bigmm_chunk_digests"


def _ends_with_crc32c(arr) -> bool:
    codecs = getattr(getattr(arr, "metadata", None), "codecs", None) or ()
    return bool(codecs) and isinstance(codecs[-1], Crc32cCodec)


def _file_digest(path: str, trailer: bool) -> str:
    """What a stored chunk file holds: its size and CRC32C trailer (``trailer``: the array's last
    codec is CRC32C, a checksum of every byte before it, so 4 bytes read stand for the file), or
    else a blake2b hash of its bytes."""
    import hashlib

    with open(path, "rb") as fh:
        if trailer:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, size - 4))
            return f"{size}:{fh.read(4).hex()}"
        h = hashlib.blake2b(digest_size=16)
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
        return h.hexdigest()


def array_digests(arr: zarr.Array) -> dict[str, str]:
    """The digest of each stored chunk file of a local array, keyed by its path in the array's
    folder (``c/0/1``: the chunk's place), from the bytes on disk, never decoded.

    Arrays whose last codec is CRC32C (all of bigmm's) cost one 4-byte read per chunk; others
    (a VCF Zarr store's) one read of their compressed bytes. Metadata and hidden files are left
    out. An empty dict for an array that is not in a local folder.
    """
    d = _array_dir(arr)
    if d is None or not d.is_dir():
        return {}
    trailer = _ends_with_crc32c(arr)
    out = {}
    for dirpath, dirs, files in os.walk(d):
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        rel = os.path.relpath(dirpath, d)
        for f in files:
            if f.startswith(".") or f == "zarr.json":
                continue
            key = f if rel == "." else f"{rel.replace(os.sep, '/')}/{f}"
            out[key] = _file_digest(os.path.join(dirpath, f), trailer)
    return dict(sorted(out.items()))


def _group_arrays(path: Path, names=None) -> dict[str, zarr.Array]:
    import warnings

    g = zarr.open_group(str(path), mode="r")
    if names is None:
        with warnings.catch_warnings():  # a stage stamp file beside the arrays is not Zarr's
            warnings.simplefilter("ignore")
            return dict(sorted(g.arrays()))
    return {n: g[n] for n in names if n in g}


def record_chunk_digests(path: str | os.PathLike, names=None) -> None:
    """Record the digest of every chunk file of the arrays of store ``path`` (default all),
    keyed by array and chunk, in the store (the group :data:`CHUNK_DIGESTS`): what bigmm wrote, for
    :func:`verify_chunk_digests` to check each chunk's place and content against later."""
    path = Path(path)
    arrays = {name: array_digests(a) for name, a in _group_arrays(path, names).items()}
    (path / CHUNK_DIGESTS).mkdir(exist_ok=True)
    atomic_write_text(path / CHUNK_DIGESTS / "zarr.json",
                      json.dumps({"zarr_format": 3, "node_type": "group",
                                  "attributes": {"format": 1, "arrays": arrays}}))


def has_chunk_digests(path: str | os.PathLike) -> bool:
    return (Path(path) / CHUNK_DIGESTS / "zarr.json").is_file()


def verify_chunk_digests(path: str | os.PathLike, label: str | None = None, names=None) -> bool:
    """Check every chunk file of store ``path`` against the digests bigmm recorded when it wrote
    the store (:func:`record_chunk_digests`); False when there is no record (a store made
    before bigmm kept one), True when every chunk is where and what it was.

    A CRC32C checksum proves a chunk intact, not that it is the chunk of this place in this
    store: two swapped chunk files, or a chunk copied from another store of the same shape, pass
    it. This check does not. Raises :class:`StoreIntegrityError` naming the store, the array, the
    chunk file and what happened (moved or swapped: it holds the chunk recorded for another place;
    replaced; missing; not written by bigmm).
    """
    path = Path(path)
    label = label or str(path)
    try:
        record = json.loads((path / CHUNK_DIGESTS / "zarr.json").read_text())["attributes"]["arrays"]
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreIntegrityError(f"{label}: its record of chunk digests {path / CHUNK_DIGESTS} is unreadable "
                                  f"({exc}); the store is damaged: re-create it (or rerun the stage that "
                                  f"wrote it)", str(path)) from None
    arrays = _group_arrays(path, [n for n in record if names is None or n in names])
    for name, want in record.items():
        if names is not None and name not in names:
            continue
        where = path / name
        if name not in arrays:
            raise StoreIntegrityError(f"{label}: array {name} is missing; the store is damaged: re-create it "
                                      f"(or rerun the stage that wrote it)", str(where))
        have = array_digests(arrays[name])
        if have == want:
            continue
        owner = {}
        for key, dig in want.items():
            owner.setdefault(dig, key)
        for key, dig in want.items():
            got = have.get(key)
            if got == dig or got is None or not _decodes(arrays[name], key):
                continue  # a missing or undecodable chunk: verify_chunks and the CRC32C name it when read
            if got in owner:
                what = (f"holds the data bigmm wrote for chunk {owner[got]} (chunk files were swapped or "
                        f"moved)")
            else:
                what = ("is a valid chunk but not the one bigmm wrote there (it was replaced or rewritten, "
                        "e.g. by a chunk copied from another store)")
            raise StoreIntegrityError(f"{label}: chunk file {where / key} {what}; its values are not this "
                                      f"store's: re-create the store (or rerun the stage that wrote it)", str(where))
        extra = sorted(set(have) - set(want))
        if not extra:
            continue
        raise StoreIntegrityError(f"{label}: {where / extra[0]} is not a chunk bigmm wrote ({len(extra)} such "
                                  f"file(s)); re-create the store (or rerun the stage that wrote it)", str(where))
    return True


def _decodes(arr: zarr.Array, key: str) -> bool:
    """Whether chunk file ``key`` (``c/i/j``) of ``arr`` decodes (its CRC32C matches)."""
    idx = [int(x) for x in key.split("/")[1:]] if key.startswith("c/") else None
    if idx is None or len(idx) != arr.ndim:
        return True
    region = tuple(slice(i * c, min(n, (i + 1) * c)) for i, c, n in zip(idx, arr.chunks, arr.shape))
    try:
        arr[region]
    except Exception:  # noqa: BLE001 - any decoding failure
        return False
    return True


def content_fingerprint(path: str | os.PathLike, names) -> dict:
    """One digest of the stored bytes of the arrays ``names`` of the Zarr store ``path``, each
    chunk file's digest (:func:`array_digests`) bound to its array and place, with the files and
    bytes it covers and the seconds it took: a chunk rewritten in place, replaced or moved
    changes it, whoever wrote the store."""
    import hashlib
    import time

    t0 = time.perf_counter()
    path = Path(path)
    h = hashlib.blake2b(digest_size=16)
    files = 0
    size = 0
    for name, arr in _group_arrays(path, names).items():
        h.update(f"{name}:{arr.shape}:{arr.chunks}:{arr.dtype}\n".encode())
        for key, dig in array_digests(arr).items():
            h.update(f"{name}/{key}={dig}\n".encode())
            files += 1
            size += os.stat(path / name / key).st_size
    return {"digest": h.hexdigest(), "files": files, "bytes": size,
            "seconds": round(time.perf_counter() - t0, 3)}


class CheckedArray:
    """A zarr array whose read errors name the array and the damaged chunk.

    Reads go straight to zarr; only when one fails are the chunks it covers
    read one by one to find the culprit (a CRC32C mismatch or a truncated
    file). Picklable, so Dask tasks can carry it.
    """

    def __init__(self, arr: zarr.Array, label: str):
        from .chunk_files import ChunkFiles

        self.arr = arr
        self.label = label
        #: decodes the chunk files itself where bigmm wrote them (:mod:`bigmm.chunk_files`)
        self.files = ChunkFiles.of(arr)

    shape = property(lambda self: self.arr.shape)
    chunks = property(lambda self: self.arr.chunks)
    dtype = property(lambda self: self.arr.dtype)
    ndim = property(lambda self: self.arr.ndim)
    size = property(lambda self: self.arr.size)

    def __len__(self):
        return self.arr.shape[0]

    def __getitem__(self, sel):
        try:
            if (self.files is not None and isinstance(sel, tuple) and len(sel) == 2
                    and all(isinstance(x, slice) and x.step in (None, 1) for x in sel)):
                return self.files.read(*sel)
            return self.arr[sel]
        except Exception as exc:  # noqa: BLE001 - re-raised with the chunk named
            raise self._locate(sel, exc) from exc

    def read_into(self, rows: slice, cols: slice, out: np.ndarray) -> np.ndarray:
        """``self[rows, cols]``, decoded into ``out`` (int8, that shape) where the chunk files are
        read directly (:class:`~bigmm.chunk_files.ChunkFiles`); else a new array from Zarr."""
        if self.files is None or rows.step not in (None, 1) or cols.step not in (None, 1):
            return self[rows, cols]
        try:
            return self.files.read(rows, cols, out=out)
        except Exception as exc:  # noqa: BLE001 - re-raised with the chunk named
            raise self._locate((rows, cols), exc) from exc

    def packed_chunk(self, i: int, j: int) -> np.ndarray | None:
        """The packed 2-bit block of chunk (i, j) (:meth:`bigmm.chunk_files.ChunkFiles.packed`;
        valid until this thread's next chunk), or None where the chunks are not read that way."""
        if self.files is None or not self.files.two_bit:
            return None
        rc, cc = self.chunks
        try:
            return self.files.packed(i, j)
        except Exception as exc:  # noqa: BLE001 - re-raised with the chunk named
            raise self._locate((slice(i * rc, min(self.shape[0], (i + 1) * rc)),
                                slice(j * cc, min(self.shape[1], (j + 1) * cc))), exc) from exc

    def get_orthogonal_selection(self, sel):
        try:
            return self.arr.get_orthogonal_selection(sel)
        except Exception as exc:  # noqa: BLE001
            raise self._locate(tuple(slice(None) for _ in self.shape), exc) from exc

    def _locate(self, sel, exc) -> Exception:
        if not isinstance(sel, tuple):
            sel = (sel,)
        if any(s is Ellipsis for s in sel):
            i = sel.index(Ellipsis)
            sel = sel[:i] + (slice(None),) * (len(self.shape) - len(sel) + 1) + sel[i + 1:]
        sel = sel + (slice(None),) * (len(self.shape) - len(sel))
        ranges = []
        for s, n, c in zip(sel, self.shape, self.chunks):
            if isinstance(s, slice):
                a, b, _ = s.indices(n)
            elif isinstance(s, (int, np.integer)):
                a, b = int(s) % n, int(s) % n + 1
            else:
                idx = np.asarray(s)
                a, b = (int(idx.min()), int(idx.max()) + 1) if idx.size else (0, 0)
            ranges.append(range(a // c, (max(a, b - 1)) // c + 1))
        d = _array_dir(self.arr)
        for idx in np.ndindex(*[len(r) for r in ranges]):
            ci = tuple(r[i] for r, i in zip(ranges, idx))
            region = tuple(slice(i * c, min(n, (i + 1) * c)) for i, c, n in zip(ci, self.chunks, self.shape))
            try:
                self.arr[region]
            except Exception as e2:  # noqa: BLE001
                where = f" (file {d / _chunk_path(self.arr, ci)})" if d is not None else ""
                return StoreIntegrityError(f"{self.label}: chunk {ci}{where} cannot be read: {e2}; "
                                           f"the file is truncated or corrupted: re-create the store "
                                           f"(or rerun the stage that wrote it)", str(d) if d is not None else None)
        return exc


@dataclass(frozen=True)
class CohortStore:
    """A committed cohort store: genotypes plus sample and variant tables."""

    path: Path
    group: zarr.Group

    def __repr__(self) -> str:
        return (f"CohortStore('{self.path}', {self.n_samples} samples x {self.n_variants} variants, "
                f"chunks {self.chunks}, layout {self.layout})")

    @property
    def layout(self) -> str:
        """How the genotypes are stored (:data:`LAYOUTS`); they read back as int8 codes either way."""
        return genotype_layout(self.group["genotypes"])

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    @property
    def genotypes(self) -> CheckedArray:
        """The int8 genotype array (n_samples x n_variants), -1 for missing."""
        return CheckedArray(self.group["genotypes"], f"{self.path}/genotypes")

    @property
    def n_samples(self) -> int:
        return int(self.genotypes.shape[0])

    @property
    def n_variants(self) -> int:
        return int(self.genotypes.shape[1])

    @property
    def chunks(self) -> tuple[int, int]:
        return tuple(self.genotypes.chunks)

    def _read(self, name: str) -> np.ndarray:
        return np.asarray(self.group[name][...])

    @property
    def sample_fid(self) -> np.ndarray:
        return self._read("sample_fid").astype(object)

    @property
    def sample_iid(self) -> np.ndarray:
        return self._read("sample_iid").astype(object)

    def sample_ids(self) -> list[tuple[str, str]]:
        return list(zip(self.sample_fid.tolist(), self.sample_iid.tolist()))

    def variant_table(self) -> dict[str, np.ndarray]:
        return {
            "chrom": self._read("variant_chrom").astype(object),
            "id": self._read("variant_id").astype(object),
            "pos": self._read("variant_pos"),
            "allele1": self._read("variant_allele1").astype(object),
            "allele2": self._read("variant_allele2").astype(object),
        }

    def content_fingerprint(self) -> dict:
        """A digest of the stored bytes of the genotypes and the sample and variant tables
        (:func:`content_fingerprint`; one 4-byte read per chunk file)."""
        return content_fingerprint(self.path, STORE_ARRAYS)

    def to_dask(self):
        """The genotype array as a lazy Dask array with the store's chunks."""
        import dask.array as da

        G = self.genotypes
        return da.from_array(G, chunks=G.chunks, asarray=True, name=f"genotypes-{self.attrs.get('created', '')}-{self.path}")


def check_replaceable_store(path: str | os.PathLike, inputs=()) -> None:
    """Refuse to replace ``path`` unless it is a cohort store bigmm made (its ``zarr.json`` says
    ``format: bigmm-cohort``) that holds none of ``inputs``: replacing removes the whole folder,
    so a folder of the user's (or the .bed an ingest reads) is never taken for a store."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    try:
        attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {}) if path.is_dir() else {}
    except (OSError, ValueError, AttributeError):
        attrs = {}
    if path.is_symlink() or not isinstance(attrs, dict) or attrs.get("format") != STORE_FORMAT:
        raise InputError(f"{path} exists and is not a cohort store bigmm made (no format={STORE_FORMAT!r} in its "
                         f"zarr.json): bigmm replaces only its own stores, never another folder or file; "
                         f"choose another output path")
    root = resolve_path(path)
    for f in inputs:
        where = resolve_path(f)
        if where == root or root in where.parents:
            raise InputError(f"{path} holds {f}, an input of this command: bigmm never replaces its input; "
                             f"choose another output path")


def open_store(path: str | os.PathLike, verify: bool = True) -> CohortStore:
    """Open a committed cohort store, checking that it is complete (every chunk file present)
    and, for a store that records them, that every chunk is the one bigmm wrote at its place
    (:func:`verify_chunk_digests`)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"genotype store {path} {missing_reason(path)}; create it with `bigmm ingest`")
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as exc:  # zarr raises several types for a non-store
        raise InputError(f"{path} is not a Zarr store ({exc})") from None
    attrs = dict(group.attrs)
    if attrs.get("format") != STORE_FORMAT:
        raise InputError(f"{path} is not a bigmm cohort store (no format={STORE_FORMAT!r} attribute)")
    if attrs.get("format_version") not in FORMAT_VERSIONS.values():
        raise InputError(f"{path} has store format version {attrs.get('format_version')}, "
                         f"this bigmm reads versions {sorted(set(FORMAT_VERSIONS.values()))}; re-ingest the genotypes")
    if not attrs.get("complete"):
        raise InputError(f"{path} is incomplete (an interrupted write); re-create it")
    _check_codecs(path)
    missing = [n for n in STORE_ARRAYS if n not in group]
    if missing:
        raise InputError(f"{path} lacks arrays {missing}; re-create it")
    if verify:
        for name in ("genotypes", "sample_fid", "sample_iid", "variant_id"):
            verify_chunks(group[name], f"{path}/{name}")
        verify_chunk_digests(path, f"genotype store {path}")
    return CohortStore(path=path, group=group)


def _check_ids(name: str, values: Sequence, n: int) -> np.ndarray:
    arr = np.asarray([str(v) for v in values], dtype=object)
    if arr.shape != (n,):
        raise InputError(f"{name} has {arr.shape[0]} entries, expected {n}")
    return arr


def write_store_tables(group: zarr.Group, fid, iid, variants: dict) -> None:
    """Write the sample and variant tables of a cohort store."""
    for name, vals in (("sample_fid", fid), ("sample_iid", iid)):
        new_array(group, name, shape=(len(vals),), dtype=str, data=np.asarray(vals, dtype=str))
    for key in ("chrom", "id", "allele1", "allele2"):
        new_array(group, f"variant_{key}", shape=(len(variants[key]),), dtype=str,
                  data=np.asarray(variants[key], dtype=str))
    new_array(group, "variant_pos", shape=(len(variants["pos"]),), dtype="int64",
              data=np.asarray(variants["pos"], dtype=np.int64))


def finish_store(group: zarr.Group, n: int, p: int, provenance: dict) -> None:
    """Mark a written cohort store complete, with the digest of every chunk it holds
    (:func:`record_chunk_digests`) and the format version of its genotypes' layout."""
    record_chunk_digests(group.store.root)
    group.attrs.update({
        "format": STORE_FORMAT,
        "format_version": FORMAT_VERSIONS[genotype_layout(group["genotypes"])],
        "bigmm_version": __version__,
        "n_samples": int(n),
        "n_variants": int(p),
        "created": now_utc(),
        "provenance": provenance,
        "complete": True,
    })


def create_store(path: str | os.PathLike, genotypes: np.ndarray, *, fid=None, iid=None,
                 variants: dict | None = None, chunks: tuple[int, int] = DEFAULT_CHUNKS,
                 overwrite: bool = False, provenance: dict | None = None,
                 layout: str = DEFAULT_LAYOUT) -> CohortStore:
    """Create a cohort store from an in-memory genotype matrix.

    Parameters
    ----------
    genotypes : (n_samples, n_variants) integer array
        Allele counts 0, 1, 2; -1 (or any negative value) for missing.
    fid, iid : sequences of str, optional
        Sample IDs; default ``S1..Sn`` for both.
    variants : dict, optional
        Keys ``chrom, id, pos, allele1, allele2`` (``allele1`` is the counted
        allele); defaults to chromosome 1, IDs ``v1..vp``, alleles A/G.
    layout : {"2bit", "int8"}
        How the genotypes are stored (:data:`LAYOUTS`; they read back as int8 either way).

    Examples
    --------
    >>> import tempfile, numpy as np, bigmm
    >>> d = tempfile.mkdtemp()
    >>> G = np.array([[0, 1, 2], [1, -1, 0]], dtype=np.int8)
    >>> store = bigmm.create_store(f"{d}/c.zarr", G)
    >>> bigmm.open_store(f"{d}/c.zarr").genotypes[...].tolist()
    [[0, 1, 2], [1, -1, 0]]
    """
    G = np.asarray(genotypes)
    if G.ndim != 2:
        raise InputError(f"genotypes must be a 2-D array (samples x variants), got shape {G.shape}")
    if not np.issubdtype(G.dtype, np.integer):
        raise InputError(f"genotypes must be integer allele counts, got dtype {G.dtype}")
    if G.size and (G.max() > 2):
        raise InputError("genotypes must be allele counts 0, 1, 2 (or -1 for missing); found values above 2")
    n, p = G.shape
    fid = _check_ids("fid", fid if fid is not None else [f"S{i + 1}" for i in range(n)], n)
    iid = _check_ids("iid", iid if iid is not None else [f"S{i + 1}" for i in range(n)], n)
    if variants is None:
        variants = {"chrom": ["1"] * p, "id": [f"v{j + 1}" for j in range(p)],
                    "pos": np.arange(1, p + 1), "allele1": ["A"] * p, "allele2": ["G"] * p}
    for key in ("chrom", "id", "pos", "allele1", "allele2"):
        if key not in variants or len(variants[key]) != p:
            raise InputError(f"variants[{key!r}] must have {p} entries")
    chunks = (min(chunks[0], max(n, 1)), min(chunks[1], max(p, 1)))
    check_layout(layout)
    with atomic_dir(Path(path), overwrite=overwrite) as tmp:
        group = zarr.open_group(tmp, mode="w")
        arr = new_genotypes(group, (n, p), chunks, layout)
        Gi = np.where(G < 0, -1, G).astype(np.int8)
        arr[...] = Gi
        write_store_tables(group, fid, iid, variants)
        finish_store(group, n, p, provenance or {"source": "numpy"})
    return open_store(path)


def convert_store(source: str | os.PathLike, out: str | os.PathLike, layout: str) -> CohortStore:
    """A copy of cohort store ``source`` at ``out`` with its genotypes in ``layout`` (:data:`LAYOUTS`).

    The source is opened (and its chunks verified) as any store, copied chunk by chunk (one chunk of
    int8 in memory at a time) with the same chunks, sample and variant tables, and each chunk read
    back from the new store is compared with the source's before the new store is committed
    (:func:`atomic_dir`): a failed conversion leaves nothing at ``out``. ``out`` must not exist (a
    conversion never replaces a store, nor writes into its source). The provenance of the new store
    is the source's, with a record of the conversion.
    """
    src = open_store(source)
    out = Path(out)
    check_layout(layout)
    if out.exists() or out.is_symlink():
        raise InputError(f"{out} already exists: a conversion writes a new store and never replaces one; "
                         f"choose another output path (or remove {out} if it is an old copy)")
    if resolve_path(src.path) in resolve_path(out).parents:
        raise InputError(f"{out} lies inside the store it converts ({src.path}); choose a path outside it")
    n, p = src.n_samples, src.n_variants
    rc, cc = src.chunks
    G = src.genotypes
    with atomic_dir(out) as tmp:
        group = zarr.open_group(tmp, mode="w")
        arr = new_genotypes(group, (n, p), (rc, cc), layout)
        regions = [(slice(i, min(n, i + rc)), slice(j, min(p, j + cc)))
                   for i in range(0, n, rc) for j in range(0, p, cc)]
        back = zarr.open_array(tmp / "genotypes", mode="r")
        for region in regions:
            g = np.asarray(G[region])
            arr[region] = g
            if not np.array_equal(back[region], g):
                raise StoreIntegrityError(f"converting {src.path} to {layout}: the chunk at samples "
                                          f"{region[0].start}-{region[0].stop - 1}, variants "
                                          f"{region[1].start}-{region[1].stop - 1} reads back different "
                                          f"genotypes; nothing was written to {out}")
        variants = src.variant_table()
        write_store_tables(group, src.sample_fid, src.sample_iid, variants)
        provenance = dict(src.attrs.get("provenance") or {})
        provenance["converted"] = {"from": str(resolve_path(src.path)), "layout_from": src.layout,
                                   "layout": layout, "source_created": src.attrs.get("created"),
                                   "converted": now_utc()}
        finish_store(group, n, p, provenance)
    return open_store(out)
