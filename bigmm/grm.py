"""The genomic relationship matrix K = X Xᵀ / p, blockwise.

Only the upper-triangle sample blocks (I ≤ J) are computed; each block is a
task that streams the variant chunks of sample blocks I and J from the store,
standardizes them in place and accumulates ``X_I X_Jᵀ`` in float64. A task
holds one output block, the block its float32 products are summed in, and two
genotype slabs with the int8 codes they come from, whatever n and p are
(:func:`block_bytes`; ``8 b²`` more with per-pair call counts). Blocks on the
diagonal use the symmetric kernel (``X @ X.T``). A finished block is written
straight to its chunk file (:func:`~bigmm.chunk_files.write_whole_chunk`), an
off-diagonal one also at its transposed place, after transposing its memory in
place (:func:`_write_pair`).

Cost: n² p multiply-adds over all blocks (half of a full GEMM); each genotype
chunk is read ``n / b`` times (a task whose two sample ranges share a store chunk
reads their span once, :func:`_read_pair`). A variant chunk without missing calls
costs the per-pair counts one reduction over its codes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import zarr

from .chunk_files import chunk_file, write_whole_chunk
from .errors import InputError
from .genotypes import LIBRARY_DTYPE, BlockReader, Standardization, blas, check_finite, standardize_block
from .store import CHECKSUM_ONLY, new_array, writable
from .tasks import run_tasks, total_threads

log = logging.getLogger("bigmm")


def _variant_chunk(G) -> int:
    chunks = getattr(G, "chunks", None)
    if chunks is not None and len(chunks) == 2 and isinstance(chunks[1], (int, np.integer)):
        return int(chunks[1])
    return 8192


def _chunks_touched(rows: slice, sample_chunk: int) -> int:
    return (rows.stop - 1) // sample_chunk - rows.start // sample_chunk + 1


def _read_pair(G, rows_i: slice, rows_j: slice, cols: slice, read=None) -> tuple[np.ndarray, np.ndarray]:
    """The codes of sample ranges I and J in variant columns ``cols``, decoding each store chunk once.

    A store decodes whole chunks: where I and J share a chunk of samples (blocks smaller than the
    store's sample chunks, or not aligned with them), one read of the span from I to J decodes
    fewer chunks than two reads, and both ranges are views of it. ``read``: the task's two
    readers (:class:`~bigmm.genotypes.BlockReader`: each decodes into its own buffer, valid until
    its next read), else new arrays.
    """
    read_i, read_j = read if read is not None else ((lambda r, c: np.asarray(G[r, c])),) * 2
    if rows_i == rows_j:
        g = read_i(rows_i, cols)
        return g, g
    chunks = getattr(G, "chunks", None)
    rc = chunks[0] if chunks is not None and len(chunks) == 2 else None
    if isinstance(rc, (int, np.integer)) and rc > 0:
        lo, hi = min(rows_i.start, rows_j.start), max(rows_i.stop, rows_j.stop)
        span = slice(lo, hi)
        if _chunks_touched(span, rc) < _chunks_touched(rows_i, rc) + _chunks_touched(rows_j, rc):
            g = read_i(span, cols)
            return g[rows_i.start - lo:rows_i.stop - lo], g[rows_j.start - lo:rows_j.stop - lo]
    return read_i(rows_i, cols), read_j(rows_j, cols)


#: variants whose products a GRM block sums in its products' precision (float32) before adding
#: them into its float64 block (:func:`grm_block`): the span of the measured float32 error, |ΔK| ≤ 2e-7
F32_SPAN = 8192


#: missing-call density of a chunk below which the pair counts use a sparse product
SPARSE_MISSING = 0.05


def _missing_product(mi: np.ndarray, mj: np.ndarray) -> np.ndarray:
    """``Mᵢ Mⱼᵀ`` of two boolean missing-call indicators (rows x variants), as int32.

    Missing calls are rare (0.2% is typical), so the product is sparse: its cost is the number of
    pairs of missing calls in a column, not ``rows² x variants`` as a dense GEMM would be. Denser
    indicators use a float32 GEMM, exact for counts up to 2²⁴ (a chunk has fewer variants).
    """
    if max(mi.mean(), mj.mean()) < SPARSE_MISSING:
        from scipy import sparse

        a = sparse.csr_matrix(mi, dtype=np.int32)
        b = a if mj is mi else sparse.csr_matrix(mj, dtype=np.int32)
        return (a @ b.T).toarray()
    return np.rint(mi.astype(np.float32) @ mj.astype(np.float32).T).astype(np.int32)


def _count_missing(gi: np.ndarray, gj: np.ndarray, kept: np.ndarray, same: bool, both_missing: np.ndarray,
                   miss_i: np.ndarray, miss_j: np.ndarray) -> None:
    """Add one variant chunk's missing calls of the kept variants to the per-pair counts of a block:
    ``M_I M_Jᵀ`` into ``both_missing``, the row sums of ``M_I`` and ``M_J`` into ``miss_i``, ``miss_j``.

    A chunk without missing calls adds nothing, and finding that out is one reduction over its
    int8 codes (about 20x cheaper than forming the indicators and their row sums; most chunks of a
    well-called cohort have none)."""
    if gi.min() >= 0 and (same or gj.min() >= 0):
        return
    mi = (gi < 0) & kept
    mj = mi if same else (gj < 0) & kept
    ri, rj = mi.sum(axis=1), (mj.sum(axis=1) if not same else None)
    if ri.any() and (same or rj.any()):
        both_missing += _missing_product(mi, mj)
    miss_i += ri
    miss_j += ri if same else rj


class BlockSums:
    """``X_I X_Jᵀ`` of one block of samples, summed in float64 over variant chunks.

    Each chunk's product is computed in the slabs' ``dtype`` (float32 doubles the BLAS rate) and
    summed in place by the BLAS (``C := X_I X_Jᵀ + C``; on the diagonal the upper triangle only, by
    SYRK); a float32 block is added into the float64 one every :data:`F32_SPAN` variants. Adding
    each chunk's product into float64 (and NumPy mirroring each SYRK) was a pass over the b x b
    block per chunk. Memory: :func:`sums_bytes`.
    """

    def __init__(self, ni: int, nj: int, same: bool, dtype=np.float64):
        self.same = same
        self.f64 = np.dtype(dtype) == np.float64
        self.acc = np.zeros((ni, nj), dtype=np.float64, order="F")
        # SYRK leaves the lower triangle as it is: 0
        self.prod = self.acc if self.f64 else np.zeros((ni, nj), dtype=dtype, order="F")
        self.spanned = 0   # variants summed in ``prod`` since it was last added into ``acc``
        self.gemm, self.syrk = blas(dtype, "gemm"), blas(dtype, "syrk")

    def add(self, xi: np.ndarray, xj: np.ndarray | None = None) -> None:
        """Add ``xi xjᵀ`` (``xi xiᵀ`` on the diagonal) of one chunk's standardized slabs, C-ordered
        rows x variants in the sums' dtype."""
        beta = 1.0 if (self.f64 or self.spanned) else 0.0
        if self.same:
            self.prod = self.syrk(1.0, xi.T, beta=beta, c=self.prod, trans=1, overwrite_c=1)
        else:
            self.prod = self.gemm(1.0, xi.T, xj.T, beta=beta, c=self.prod, trans_a=1, overwrite_c=1)
        self.spanned += xi.shape[1]
        if not self.f64 and self.spanned >= F32_SPAN:
            self.acc += self.prod
            self.spanned = 0

    def total(self) -> np.ndarray:
        """The float64 sums (F-ordered; mirrored whole on the diagonal)."""
        if self.f64:
            self.acc = self.prod
        elif self.spanned:
            self.acc += self.prod
            self.spanned = 0
        if self.same:
            _mirror_upper(self.acc)
        return self.acc


def sums_bytes(block: int, itemsize: int) -> int:
    """Memory of one :class:`BlockSums` of a block x block sample block: the float64 block and,
    for products in another precision, the block they are summed in."""
    return (8 + (itemsize if itemsize != 8 else 0)) * block * block


def check_block(acc: np.ndarray, rows_i: slice, rows_j: slice, what: str = "GRM") -> None:
    """Refuse a block with non-finite entries (a non-finite centre or scale of a variant)."""
    if not np.isfinite(acc).all():
        raise InputError(
            f"{what} block rows {rows_i.start}:{rows_i.stop} x {rows_j.start}:{rows_j.stop} has non-finite "
            f"entries: the variant standardization has a non-finite centre or scale; recompute the "
            f"variant statistics")


def grm_block(G, center, scale, rows_i: slice, rows_j: slice, variant_step: int, p_kept: int,
              dtype=np.float64, counts: bool = False):
    """``X_I X_Jᵀ / p`` for sample ranges I and J, streamed over variant chunks.

    Each chunk's product is computed in ``dtype`` (float32 doubles the BLAS
    rate) and accumulated across chunks in float64 (:class:`BlockSums`); the standardized slabs
    reuse two buffers.

    With ``counts``, also returns ``N_IJ``, the number of kept variants called in both samples of
    each pair (int32), from the same reads: ``N_jk = p − m_j − m_k + (M Mᵀ)_jk`` with M the
    missing-call indicator of the kept variants and m its row sums (:func:`_missing_product`).
    """
    ni = rows_i.stop - rows_i.start
    nj = rows_j.stop - rows_j.start
    if counts:
        both_missing = np.zeros((ni, nj), dtype=np.int32)
        miss_i = np.zeros(ni, dtype=np.int64)
        miss_j = np.zeros(nj, dtype=np.int64)
    p = G.shape[1]
    same = rows_i == rows_j
    sums = BlockSums(ni, nj, same, dtype)
    buf_i = np.empty(ni * min(variant_step, p), dtype=dtype)
    buf_j = None if same else np.empty(nj * min(variant_step, p), dtype=dtype)
    read = (BlockReader(G), BlockReader(G))  # each chunk's codes decoded into the same two buffers
    for v0 in range(0, p, variant_step):
        cols = slice(v0, min(p, v0 + variant_step))
        sc = scale[cols]
        if not sc.any():
            continue
        gi, gj = _read_pair(G, rows_i, rows_j, cols, read)
        xi = standardize_block(gi, center[cols], sc, dtype, out=buf_i)
        sums.add(xi, None if same else standardize_block(gj, center[cols], sc, dtype, out=buf_j))
        if counts:
            _count_missing(gi, gj, sc != 0, same, both_missing, miss_i, miss_j)
    acc = sums.total()
    acc /= p_kept
    check_block(acc, rows_i, rows_j)
    if counts:  # N = p − m_I − m_J + M_I M_Jᵀ, in place in the int32 block (no n x n temporaries)
        N = both_missing
        N -= miss_i.astype(np.int32)[:, None]
        N -= miss_j.astype(np.int32)[None, :]
        N += np.int32(p_kept)
        return acc, N
    return acc


#: the side of the square tiles the in-place copies of a block go by (:func:`_mirror_upper`,
#: :func:`_transpose_square`): a tile and its transposed twin stay in cache (5,000 x 5,000
#: float64: mirror 0.04 s against 0.15 s by bands of 1,024 rows; transpose 0.05 s in place
#: against 0.76-1.0 s for a copy into new memory in a task)
TILE = 128


def _tile_pairs(n: int):
    """``(rows, cols)`` of the tiles on and above the diagonal of an n x n array."""
    for i0 in range(0, n, TILE):
        si = slice(i0, min(n, i0 + TILE))
        yield si, si
        for j0 in range(si.stop, n, TILE):
            yield si, slice(j0, min(n, j0 + TILE))


def _mirror_upper(a: np.ndarray) -> None:
    """Copy the upper triangle of a square array onto its lower (SYRK writes one triangle), a tile
    at a time (no n² index arrays)."""
    for si, sj in _tile_pairs(a.shape[0]):
        if si == sj:
            d = a[si, si]
            d[...] = np.triu(d) + np.triu(d, 1).T
        else:
            a[sj, si] = a[si, sj].T


def block_bytes(block: int, variant_chunk: int, itemsize: int = 8, counts: bool = False) -> int:
    """Memory of one GRM block task: the float64 output block, the products' block in ``itemsize``
    (float32: summed there over F32_SPAN variants), two standardized slabs and the int8 codes
    they come from (:class:`~bigmm.genotypes.BlockReader`); with ``counts`` (per-pair call counts,
    :func:`grm_block`) an int32 block and its int32 chunk product.

    >>> block_bytes(2048, 8192, itemsize=4) // 2**20, block_bytes(2048, 8192, 4, counts=True) // 2**20
    (208, 240)
    """
    return (sums_bytes(block, itemsize) + (8 if counts else 0) * block * block
            + 2 * (itemsize + 1) * block * variant_chunk)


def default_block_size(n: int, threads: int, sample_chunk: int | None = None, variant_chunk: int = 8192,
                       memory: int | None = None, itemsize: int = 4, counts: bool = False) -> int:
    """Samples per GRM block: few blocks (each genotype is decoded once per block row and
    column), enough tasks to keep ``threads`` busy, within ``memory`` bytes per task.

    With nb blocks per side there are nb(nb+1)/2 tasks; the diagonal ones cost half
    (symmetric kernel), so nb = ⌈√(2·threads)⌉ balances the work (2 threads: 2 x 2
    blocks, tasks of cost ½, 1, ½).
    """
    nb = max(1, int(np.ceil(np.sqrt(2 * max(threads, 1)))))
    b = -(-n // nb)
    if memory:
        while b > 256 and block_bytes(b, variant_chunk, itemsize, counts) > memory:
            b = -(-b // 2)
    # not rounded to the store's sample chunks: 4096 + 904 for n = 5000 would put two thirds of the
    # work in one task (measured: 87% utilisation); an unaligned block re-decodes one chunk
    return max(1, min(b, n))


def _diagonal_row_major(block: np.ndarray) -> np.ndarray:
    """A diagonal block (symmetric) C-ordered, as a chunk is stored: F-ordered, it is its own
    transpose, a view (Zarr given the F-ordered 5,000 x 5,000 float64 block took 0.5-1.2 s to
    write it, against 0.27 s C-ordered)."""
    if block.flags.f_contiguous and not block.flags.c_contiguous:
        return block.T
    return np.ascontiguousarray(block)


def _transpose_square(a: np.ndarray) -> None:
    """Transpose the square array ``a`` in place, a pair of tiles at a time (no copy of ``a``)."""
    for si, sj in _tile_pairs(a.shape[0]):
        if si == sj:
            d = a[si, si]
            d[...] = d.T.copy()
        else:
            upper = a[si, sj].copy()
            a[si, sj] = a[sj, si].T
            a[sj, si] = upper.T


def _write_pair(arr, rows_i: slice, rows_j: slice, block: np.ndarray) -> None:
    """An off-diagonal block at (I, J) and its transpose at (J, I), each written from C-ordered
    memory (the orientation Zarr stores): of an F-ordered block first its transpose (a view), then,
    where the block is square, the block itself after transposing its memory in place (memory a
    process has not used lately is slow to touch on a virtual machine, :data:`TILE`). Leaves
    ``block`` transposed."""
    if block.flags.f_contiguous and not block.flags.c_contiguous:
        block, rows_i, rows_j = block.T, rows_j, rows_i  # the same memory, C-ordered, at (J, I)
    block = np.ascontiguousarray(block)
    _write(arr, rows_i, rows_j, block)
    if block.shape[0] == block.shape[1]:
        _transpose_square(block)
        _write(arr, rows_j, rows_i, block)
    else:
        _write(arr, rows_j, rows_i, np.ascontiguousarray(block.T))


def _write(arr, rows: slice, cols: slice, block: np.ndarray) -> None:
    if not write_whole_chunk(arr, rows, cols, block):
        arr[rows, cols] = block


def put_block(arr, rows_i: slice, rows_j: slice, block: np.ndarray) -> None:
    """Block (I, J) of a symmetric matrix into ``arr`` (a GRM store's array, or an n x n NumPy
    array), and its transpose at (J, I), each from C-ordered memory (:func:`_diagonal_row_major`,
    :func:`_write_pair`; an off-diagonal ``block`` is left transposed)."""
    if rows_i == rows_j:
        _write(arr, rows_i, rows_j, _diagonal_row_major(block))
    else:
        _write_pair(arr, rows_i, rows_j, block)


def _write_block(out_path: str, I: int, J: int, rows_i: slice, rows_j: slice, blocks: dict) -> tuple:
    group = zarr.open_group(out_path, mode="r+")
    files = []
    for name, block in blocks.items():
        arr = writable(group[name])  # a re-opened array: written even where a block equals the fill value
        put_block(arr, rows_i, rows_j, block)
        files += [chunk_file(arr, c) for c in {(I, J), (J, I)}]
    writable(group["done"])[I, J] = 1
    _sync_soon([f for f in files if f is not None])
    return (I, J)


def _sync_soon(files: list[Path]) -> None:
    """Start writing ``files`` to disk now, in a thread of their own (:func:`_sync_files`), while
    the worker goes on to its next block (the data is the page cache's until then: the store's
    final fsync, before it is committed, waited on all of them at once, 0.36 s at n = 10,000).
    That fsync still runs and guarantees them."""
    import threading

    threading.Thread(target=_sync_files, args=(files,), name="grm-block-fsync", daemon=True).start()


def _sync_files(files: list[Path]) -> None:
    """fsync each of ``files``; one that cannot be opened (the store committed under its final
    name meanwhile) or synced is left to the store's own fsync, which reports an error."""
    for f in files:
        try:
            fd = os.open(f, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass  # the store's own fsync reports it
        finally:
            os.close(fd)


def _block_task(G, center, scale, I, J, rows_i, rows_j, step, p_kept, dtype, out_path, counts):
    block = grm_block(G, center, scale, rows_i, rows_j, step, p_kept, dtype, counts=counts)
    if out_path is None:
        return block
    return _write_block(out_path, I, J, rows_i, rows_j, dict(zip(("K", "N"), block if counts else (block,))))


def _blocks(n: int, b: int) -> list[slice]:
    return [slice(s, min(n, s + b)) for s in range(0, n, b)]


def grm(G, std: Standardization, *, block_size: int | None = None, out: str | Path | None = None,
        dtype=LIBRARY_DTYPE, counts: bool = False):
    """Compute the GRM ``K = X Xᵀ / p`` of all samples of ``G``.

    Parameters
    ----------
    G : array-like (n, p) of int8
        Genotypes (a zarr array of a cohort store, or a NumPy array); -1 missing.
    std : Standardization
        Filters and standardization of the variants; ``p = std.n_kept``.
    block_size : int, optional
        Samples per output block (default: :func:`default_block_size`).
    out : path, optional
        A Zarr group created by :func:`create_grm_store`. Blocks are written
        as they finish and recorded in its ``done`` ledger; blocks already
        marked done are skipped, so an interrupted computation resumes. When
        None, K is returned as a NumPy array (small n only).
    dtype : numpy dtype
        Precision of each variant chunk's product (default
        :data:`bigmm.genotypes.LIBRARY_DTYPE`, float64); accumulation across chunks is
        float64. float32 doubles the speed; measured error |ΔK| ≤ 2e-7 (entries of
        size ~1, chunks of 8192 variants), far below the sampling noise of K
        (~1/√p) but above float64 round-off.
    counts : bool
        Also compute ``N``, per pair of samples the number of kept variants called in both
        (what GCTA and PLINK 2 store in ``.grm.N.bin``), in the same pass (:func:`grm_block`).
        With ``out``, it is on when the store was created with ``counts=True``.

    Returns
    -------
    numpy.ndarray or zarr.Array, or the pair ``(K, N)`` with ``counts``

    Notes
    -----
    Runs on the active Dask scheduler (a distributed client if one is the
    default). Peak memory per task: one b x b block plus two b x c slabs.

    Examples
    --------
    >>> import numpy as np, bigmm
    >>> G = np.random.default_rng(0).binomial(2, 0.4, size=(30, 200)).astype(np.int8)
    >>> std = bigmm.standardization(bigmm.variant_stats(G))
    >>> K = bigmm.grm(G, std)
    >>> X = bigmm.standardized(G, std).compute()
    >>> K.shape, bool(np.allclose(K, X @ X.T / std.n_kept))
    ((30, 30), True)
    """
    import dask

    from .genotypes import genotype_matrix

    G = genotype_matrix(G)
    n, p = G.shape
    if p != std.center.shape[0]:
        raise ValueError(f"standardization has {std.center.shape[0]} variants, genotypes {p}")
    check_finite(std)
    step = _variant_chunk(G)
    if block_size is None:
        chunks = getattr(G, "chunks", None)
        sc = int(chunks[0]) if chunks is not None and isinstance(chunks[0], (int, np.integer)) else None
        block_size = default_block_size(n, total_threads(), sc, step, itemsize=np.dtype(dtype).itemsize)
    blocks = _blocks(n, block_size)
    out_path = None
    done = np.zeros((len(blocks), len(blocks)), dtype=bool)
    if out is not None:
        out_path = str(out)
        group = zarr.open_group(out_path, mode="r")
        if group["K"].chunks[0] != block_size:
            raise ValueError("GRM store block size differs from block_size")
        done = np.asarray(group["done"][...]).astype(bool)
        counts = "N" in group
    task = dask.delayed(_block_task, pure=False)
    todo = []
    for I, ri in enumerate(blocks):
        for J in range(I, len(blocks)):
            if not done[I, J]:
                todo.append(((I, J), task(G, std.center, std.scale, I, J, ri, blocks[J], step,
                                          std.n_kept, dtype, out_path, counts)))
    n_total = len(blocks) * (len(blocks) + 1) // 2
    if n_total - len(todo):
        log.info("GRM: %d of %d blocks already done, computing %d", n_total - len(todo), n_total, len(todo))
    # off-diagonal blocks (a GEMM) do twice the work of diagonal ones (a SYRK): they start first
    results = run_tasks([t for _, t in todo], f"GRM {n}x{n} blocks",
                        costs=[1.0 if I == J else 2.0 for (I, J), _ in todo])
    if out is not None:
        group = zarr.open_group(out_path, mode="r")
        return (group["K"], group["N"]) if counts else group["K"]
    K = np.empty((n, n), dtype=np.float64)
    N = np.empty((n, n), dtype=np.int32) if counts else None
    for ((I, J), _), block in zip(todo, results):
        for full, part in ((K, block[0]), (N, block[1])) if counts else ((K, block),):
            put_block(full, blocks[I], blocks[J], part)
    return (K, N) if counts else K


def create_grm_store(path: str | Path, n: int, block_size: int, attrs: dict, counts: bool = False) -> zarr.Group:
    """An empty GRM group: ``K`` (n x n float64, chunks = blocks, checksummed, not compressed), the ``done`` ledger and, with
    ``counts``, ``N`` (n x n int32: per pair, the kept variants called in both samples)."""
    group = zarr.open_group(str(path), mode="w")
    nb = (n + block_size - 1) // block_size
    new_array(group, "K", shape=(n, n), dtype="float64", chunks=(block_size, block_size),
              fill_value=np.nan, compressors=CHECKSUM_ONLY)
    if counts:
        new_array(group, "N", shape=(n, n), dtype="int32", chunks=(block_size, block_size), fill_value=-1)
    # one chunk per block, so that concurrent tasks never rewrite each other's entries
    done = new_array(group, "done", shape=(nb, nb), dtype="int8", chunks=(1, 1), fill_value=0)
    done[...] = 0
    group.attrs.update(attrs)
    return group


def grm_complete(group: zarr.Group) -> bool:
    done = np.asarray(group["done"][...])
    return bool(np.all(np.triu(done) == np.triu(np.ones_like(done))))
