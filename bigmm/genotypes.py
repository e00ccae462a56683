"""Per-variant statistics, filters and the lazy standardized genotype matrix X.

One pass over the genotypes gives, per variant, the number of called
genotypes and the sums of g and g². From these follow the allele frequency,
the call rate, the filters, the standardization and tr K (docs/math.md).
Standardization is applied chunk by chunk where X is used; the standardized
matrix is never stored.

Dropped variants keep their column but get ``scale = 0``: their column of X is
zero, so ``X Xᵀ`` is unchanged and no re-chunking (fancy indexing) of the
genotypes is needed. ``p`` in ``K = X Xᵀ / p`` is the number of kept variants.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence

import numpy as np

from .errors import InputError
from .tasks import run_tasks

Standardize = Literal["gcta", "center", "sample_sd"]
STANDARDIZATIONS = ("gcta", "center", "sample_sd")
DROP_REASONS = ("all_missing", "monomorphic", "all_heterozygous", "max_missing", "min_maf",
                "not_in_variant_list")
#: Precision of the products in a pass over X (the GRM, a GrmOperator pass, SNP effects); every
#: pass accumulates in float64. The rule: the library's functions default to float64 (results
#: agree with dense references and peer tools to round-off); a run config defaults to float32
#: (twice the BLAS rate; measured |ΔK| ≤ 2e-7 for entries of size ~1, far below K's sampling
#: noise ~1/√p; docs/performance.md). Pass ``dtype=np.float32`` to the library for speed, or
#: ``dtype: float64`` in a config for bit-level comparisons.
LIBRARY_DTYPE = "float64"
RUN_DTYPE = "float32"


@dataclass(frozen=True)
class VariantStats:
    """Sufficient statistics of every variant over all samples of a store."""

    n_samples: int
    n_called: np.ndarray  # (p,) int64
    allele_sum: np.ndarray  # (p,) int64, sum of g over called genotypes
    allele_sq_sum: np.ndarray  # (p,) int64, sum of g² over called genotypes

    @property
    def n_variants(self) -> int:
        return int(self.n_called.shape[0])

    @property
    def freq(self) -> np.ndarray:
        """Frequency of the counted allele among called genotypes (NaN if none called)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.allele_sum / (2.0 * self.n_called)

    @property
    def call_rate(self) -> np.ndarray:
        return self.n_called / float(self.n_samples)

    @property
    def maf(self) -> np.ndarray:
        """Minor allele frequency (NaN if no genotype is called)."""
        f = self.freq
        return np.minimum(f, 1.0 - f)

    def __repr__(self) -> str:
        with np.errstate(invalid="ignore"):
            maf = self.maf
        called = np.isfinite(maf)
        med = f"{float(np.median(maf[called])):.3f}" if called.any() else "NA"
        cr = f"{float(self.call_rate.mean()):.4f}" if self.n_variants else "NA"
        return (f"VariantStats(n_samples={self.n_samples}, n_variants={self.n_variants}, "
                f"mean call rate {cr}, median MAF {med})")


#: rows summed at a time in int16 by :func:`_chunk_sums`: a column's sum of squared codes over
#: this many rows is at most 4 · 4096 < 2¹⁵
SUM_ROWS = 4096


def _chunk_sums(g: np.ndarray) -> np.ndarray:
    """Calls, sum of g and sum of g² per column of one chunk, shape (1, 3, cols).

    Genotypes are 0/1/2 or negative (missing), so three sums per column give all three: with m
    missing calls, s = Σ g and q = Σ g² (a missing call as -1), n_called = n − m,
    n₁ + 2 n₂ = s + m and n₁ + 4 n₂ = q − m. Each is summed over blocks of :data:`SUM_ROWS`
    rows in int16 (exact) and the blocks in int64: 3x faster than counting 0/1/2 per column
    (2.8 → 1.0 ns per genotype on an 8192 x 2048 chunk). A call below -1 counts as missing.
    """
    n, w = g.shape
    m = np.zeros(w, np.int64)
    s = np.zeros(w, np.int64)
    q = np.zeros(w, np.int64)
    for r in range(0, n, SUM_ROWS):
        b = g[r:r + SUM_ROWS]
        neg = np.less(b, 0)
        if neg.any():
            m += neg.sum(axis=0, dtype=np.int16)
            if b.min() < -1:
                b = np.maximum(b, -1)
        s += b.sum(axis=0, dtype=np.int16)
        q += np.square(b).sum(axis=0, dtype=np.int16)
    return np.stack([n - m, s + m, q - m])[None]


class BlockReader:
    """Reads blocks ``G[rows, cols]`` (slices) for one task into one int8 buffer that all its reads
    reuse, where G can decode into it (a store's chunk files,
    :meth:`bigmm.store.CheckedArray.read_into`); else ``np.asarray(G[rows, cols])``. A new array
    per read is a fresh memory mapping whose pages the kernel faults in and zeroes: at
    n = 100,000, as much time as the decoding (sys 0.55-1.2 s against 0.02-0.06 s for 4 columns
    of 2048-variant chunks, wall 1.3-2.2 s against 0.6-0.7 s). A block is valid until the next read."""

    def __init__(self, G):
        self.G = G
        self.buf = None

    def __call__(self, rows: slice, cols: slice) -> np.ndarray:
        read_into = getattr(self.G, "read_into", None)
        if read_into is None:
            return np.asarray(self.G[rows, cols])
        r0, r1, _ = rows.indices(self.G.shape[0])
        c0, c1, _ = cols.indices(self.G.shape[1])
        shape = (max(0, r1 - r0), max(0, c1 - c0))
        if self.buf is None or self.buf.size < shape[0] * shape[1]:
            self.buf = np.empty(shape[0] * shape[1], dtype=np.int8)
        return read_into(rows, cols, self.buf[: shape[0] * shape[1]].reshape(shape))


def _column_sums(G, a: int, b: int, rows: int) -> np.ndarray:
    """:func:`_chunk_sums` of the columns ``a:b`` of G over all its rows, read ``rows`` at a time.

    Where G is a store's array in the 2-bit layout and ``a:b`` one column of its chunks, each chunk
    is counted from its packed bytes (:func:`bigmm.codecs.packed_counts`) without decoding it."""
    from .codecs import packed_counts

    n = G.shape[0]
    out = np.zeros((3, b - a), np.int64)
    read = BlockReader(G)
    packed = getattr(G, "packed_chunk", None)
    rc, cc = G.chunks if packed is not None else (None, None)
    whole = packed is not None and rows == rc and a % cc == 0 and b == min(G.shape[1], a + cc)
    for r in range(0, n, rows):
        block = packed(r // rc, a // cc) if whole else None
        if block is not None:
            out += packed_counts(block, min(n, r + rows) - r)[:, : b - a]
        else:
            out += _chunk_sums(read(slice(r, min(n, r + rows)), slice(a, b)))[0]
    return out


def genotype_matrix(genotypes):
    """The samples x variants int8 genotype matrix of what a user holds.

    Taken: an array (NumPy, Dask, a cohort store's Zarr array), a cohort store (its
    ``genotypes``), or an xarray Dataset in the VCF Zarr / sgkit layout
    (:func:`bigmm.from_xarray`; ALT allele counts of its biallelic sites).

    >>> import numpy as np
    >>> genotype_matrix(np.zeros((3, 2), np.int8)).shape
    (3, 2)
    """
    from .io.vcfzarr import from_xarray, is_vcf_dataset

    if is_vcf_dataset(genotypes):
        return from_xarray(genotypes).genotypes
    if not hasattr(genotypes, "shape") and hasattr(genotypes, "genotypes"):
        return genotypes.genotypes
    return genotypes


def variant_stats(genotypes) -> VariantStats:
    """One pass over the genotypes: calls, allele sums and squared sums per variant.

    Parameters
    ----------
    genotypes : dask array or array-like (n_samples, n_variants) of int8
        Allele counts with -1 for missing. A Dask array is reduced chunk by
        chunk with whatever scheduler is active (a distributed client if one
        is set as default); memory is bounded by one chunk per thread. A cohort
        store or an xarray Dataset in the VCF Zarr layout is taken too
        (:func:`genotype_matrix`); a chunked array (a store's, Zarr) is read by one
        task per column of chunks, a chunk of rows at a time (a store's 2-bit chunks
        counted from their packed bytes, :func:`bigmm.codecs.packed_counts`). Cost: one
        read of every genotype.

    Examples
    --------
    >>> import numpy as np, bigmm
    >>> G = np.array([[0, 1, 2], [1, -1, 2], [2, 1, 2]], dtype=np.int8)
    >>> st = bigmm.variant_stats(G)
    >>> st.n_called.tolist(), st.freq.tolist()
    ([3, 2, 3], [0.5, 0.5, 1.0])
    """
    import dask
    import dask.array as da

    genotypes = genotype_matrix(genotypes)
    chunks = getattr(genotypes, "chunks", None)
    if not isinstance(genotypes, da.Array) and chunks is not None and len(chunks) == 2:
        # a chunked array read by the tasks themselves (a store's): one task per column of
        # chunks, reading it a chunk of rows at a time (25 tasks at p = 50,000, where a Dask array
        # of the same chunks makes 3 tasks per chunk and moves the decoded chunks between them)
        rc, cc = (int(c) for c in chunks)
        p = genotypes.shape[1]
        task = dask.delayed(_column_sums, pure=False)
        tasks = [task(genotypes, a, min(p, a + cc), rc) for a in range(0, p, cc)]
    else:
        G = genotypes if isinstance(genotypes, da.Array) else da.from_array(genotypes)
        # one task per column of chunks (exact integer sums, in any order), run with progress
        edges = np.cumsum((0,) + tuple(G.chunks[1]))
        tasks = [G[:, a:b].map_blocks(_chunk_sums, dtype=np.int64, new_axis=1,
                                      chunks=((1,) * G.numblocks[0], (3,), (b - a,))).sum(axis=0)
                 for a, b in zip(edges[:-1], edges[1:])]
    totals = np.concatenate(run_tasks(tasks, "variant statistics"), axis=1) if tasks else np.zeros((3, 0), np.int64)
    return VariantStats(n_samples=int(genotypes.shape[0]), n_called=totals[0], allele_sum=totals[1],
                        allele_sq_sum=totals[2])


@dataclass(frozen=True)
class Standardization:
    """Which variants are kept and how each is centred and scaled.

    ``x_ij = (g_ij - center_j) * scale_j`` for called genotypes and 0 for
    missing ones (mean imputation). ``scale_j = 0`` for dropped variants.
    """

    standardize: Standardize
    center: np.ndarray  # (p,) 2f
    scale: np.ndarray  # (p,) 1/sqrt(2f(1-f)) (gcta), 1 (center), 1/sd (sample_sd), 0 if dropped
    keep: np.ndarray  # (p,) bool
    dropped: dict = field(default_factory=dict)
    trace_K: float = float("nan")  # tr(X Xᵀ / p) over all samples of the store
    n_samples: int = 0
    filters: dict = field(default_factory=dict)

    @property
    def n_kept(self) -> int:
        return int(self.keep.sum())

    def __repr__(self) -> str:
        dropped = ", ".join(f"{k} {v}" for k, v in self.dropped.items() if v) or "none"
        return (f"Standardization({self.standardize!r}, {self.n_kept} of {self.keep.size} variants kept, "
                f"dropped: {dropped}; tr K = {self.trace_K:.6g} over {self.n_samples} samples)")


def standardization(stats: VariantStats, standardize: Standardize = "gcta", *, min_maf: float = 0.0,
                    max_missing: float = 1.0, variant_ids: Sequence[str] | None = None,
                    include_ids: Sequence[str] | None = None,
                    drop: Mapping[str, np.ndarray] | None = None) -> Standardization:
    """Apply the variant filters and compute the standardization of every variant.

    Parameters
    ----------
    stats : VariantStats
    standardize : {"gcta", "center", "sample_sd"}
        ``gcta``: ``(g - 2f) / sqrt(2f(1-f))`` (GCTA);
        ``center``: ``g - 2f`` (GEMMA ``-gk 1``);
        ``sample_sd``: ``(g - 2f) / sd(g)`` as GEMMA ``-gk 2`` computes it:
        ``sd(g)² = Σ_called (g - 2f)² / n``, the sum of squares over the called
        genotypes divided by the number of ALL samples n (the variance of the
        mean-imputed column), not by the number of calls. Without missing calls
        it is the sample variance with divisor n, and it differs from ``gcta``
        by the departure from Hardy-Weinberg proportions.
    min_maf : float
        Drop variants with minor allele frequency below this.
    max_missing : float
        Drop variants whose fraction of missing calls exceeds this.
    variant_ids, include_ids : sequences of str, optional
        The store's variant IDs and a list of IDs to keep; variants not in the
        list are dropped.
    drop : mapping of str to bool arrays (p,), optional
        Variants selected out before the filters, by reason (as PLINK applies --chr, --extract
        and --exclude before --maf and --geno): ``{"chr": mask, "not_in_extract": mask, ...}``,
        True for a variant to drop.

    Each dropped variant is counted under the first reason that applies, in
    the order of ``drop``, then all_missing, monomorphic, all_heterozygous, max_missing,
    min_maf, not_in_variant_list. Monomorphic and all-heterozygous variants (every call
    equal, sample SD 0) are dropped under every standardization, as GEMMA
    drops them: their column of X is zero (or, for ``sample_sd``, undefined),
    so they would only inflate p.

    Examples
    --------
    >>> import numpy as np, bigmm
    >>> G = np.array([[0, 1, 2, 0], [1, 1, 2, 0], [2, 0, 2, 1]], dtype=np.int8)
    >>> std = bigmm.standardization(bigmm.variant_stats(G), "gcta", min_maf=0.2)
    >>> std.keep.tolist(), {k: v for k, v in std.dropped.items() if v}
    ([True, True, False, False], {'monomorphic': 1, 'min_maf': 1})
    """
    if standardize not in STANDARDIZATIONS:
        raise InputError(f"standardize must be one of {', '.join(STANDARDIZATIONS)}, not {standardize!r}")
    p = stats.n_variants
    f = stats.freq
    reason = np.full(p, -1)

    def mark(mask, code):
        reason[(reason < 0) & mask] = code

    selections = list((drop or {}).items())
    for k, (name, mask) in enumerate(selections):
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (p,):
            raise ValueError(f"drop[{name!r}] has shape {mask.shape}, expected ({p},)")
        mark(mask, len(DROP_REASONS) + k)
    called = stats.n_called > 0
    mark(~called, 0)
    # integer test for monomorphic: all calls equal 0 or all equal 2
    mono = called & ((stats.allele_sum == 0) | (stats.allele_sum == 2 * stats.n_called))
    mark(mono, 1)
    # every call heterozygous: N·S2 = S1² (all calls equal, zero variance) and not monomorphic
    constant = called & (stats.n_called * stats.allele_sq_sum == stats.allele_sum ** 2)
    mark(constant, 2)
    # the missing fraction as GEMMA and PLINK compute it, (n - N) / n: 1 - N/n rounds 10/200 above 0.05
    mark((stats.n_samples - stats.n_called) / float(stats.n_samples) > max_missing, 3)
    with np.errstate(invalid="ignore"):
        maf = np.minimum(f, 1.0 - f)
    mark(called & (maf < min_maf), 4)
    if include_ids is not None:
        if variant_ids is None:
            raise ValueError("include_ids needs variant_ids")
        wanted = set(include_ids)
        mark(~np.isin(np.asarray(variant_ids, dtype=object), list(wanted)), 5)
    keep = reason < 0
    dropped = {name: int((reason == len(DROP_REASONS) + k).sum()) for k, (name, _) in enumerate(selections)}
    # not_in_variant_list only where include_ids gave a list (a selection by ``drop`` has its own name)
    dropped.update({name: int((reason == k).sum()) for k, name in enumerate(DROP_REASONS)
                    if name != "not_in_variant_list" or include_ids is not None})
    if not keep.any():
        raise InputError(f"no variant passes the filters (of {p}: "
                         + ", ".join(f"{k} {v}" for k, v in dropped.items() if v) + ")")
    fk = np.where(keep, f, 0.0)
    center = np.where(keep, 2.0 * fk, 0.0)
    if standardize == "gcta":
        with np.errstate(divide="ignore"):
            scale = np.where(keep, 1.0 / np.sqrt(np.where(keep, 2.0 * fk * (1.0 - fk), 1.0)), 0.0)
    elif standardize == "sample_sd":
        # GEMMA -gk 2 (PlinkKin): the variance of the mean-imputed column over all n samples,
        # Σ_called (g - mean)² / n = (S2 - S1²/N) / n
        nc = np.maximum(stats.n_called, 1)
        var = (stats.allele_sq_sum - stats.allele_sum ** 2 / nc) / float(stats.n_samples)
        with np.errstate(divide="ignore"):
            scale = np.where(keep, 1.0 / np.sqrt(np.where(keep, var, 1.0)), 0.0)
    else:
        scale = keep.astype(np.float64)
    # sum over called genotypes of (g - c)^2 = S2 - 2 c S1 + c^2 N
    ss = stats.allele_sq_sum - 2.0 * center * stats.allele_sum + center ** 2 * stats.n_called
    trace = float(np.sum(ss * scale ** 2) / keep.sum())
    return Standardization(standardize=standardize, center=center, scale=scale, keep=keep,
                           dropped=dropped, trace_K=trace, n_samples=stats.n_samples,
                           filters={"min_maf": min_maf, "max_missing": max_missing,
                                    "variant_list": include_ids is not None,
                                    "selection": [name for name, _ in selections]})


def check_finite(std: Standardization) -> None:
    """Refuse a standardization with a non-finite centre or scale (it would make K NaN).

    :func:`standardization` never makes one (zero-variance variants are dropped); this guards
    statistics made otherwise, e.g. saved by an older bigmm whose ``sample_sd`` gave an
    all-heterozygous variant an infinite scale.
    """
    bad = np.flatnonzero(~(np.isfinite(std.center) & np.isfinite(std.scale)))
    if bad.size:
        raise InputError(
            f"the variant standardization has a non-finite centre or scale for {bad.size} variant(s) "
            f"(first: variant index {int(bad[0])}, scale {std.scale[bad[0]]!r}); a variant whose calls "
            f"are all equal (sample SD 0, e.g. all heterozygous) gives an infinite scale and a NaN GRM. "
            f"Recompute the variant statistics (bigmm.standardization drops such variants; in a run, "
            f"rerun from the variant_stats stage)")


def blas(dtype, name: str):
    """The ``scipy.linalg.blas`` routine ``name`` (``"gemm"``, ``"syrk"``) of a float dtype."""
    from scipy.linalg import blas as _blas

    return getattr(_blas, ("s" if np.dtype(dtype) == np.float32 else "d") + name)


def standardize_block(g: np.ndarray, center: np.ndarray, scale: np.ndarray,
                      out_dtype=np.float64, out: np.ndarray | None = None) -> np.ndarray:
    """Standardize one block of genotypes (rows x variants): ``(g − c) s``, missing → 0.

    Computed as ``g·s + (−c·s)`` straight from the int8 block, with the missing
    mask applied only when the block has missing calls; ``out`` (a buffer of
    at least the block's size) avoids an allocation per block.
    """
    dt = np.dtype(out_dtype)
    if out is None:
        x = np.empty(g.shape, dtype=dt)
    else:
        x = out.reshape(-1)[: g.size].reshape(g.shape)
    s = np.asarray(scale, dtype=dt)
    np.multiply(g, s, out=x, casting="unsafe")
    x += np.asarray(-np.asarray(center, dtype=np.float64) * np.asarray(scale, dtype=np.float64), dtype=dt)
    if g.size and g.min() < 0:
        np.putmask(x, g < 0, 0.0)
    return x


def standardized(genotypes, std: Standardization, dtype=np.float64):
    """The standardized genotype matrix X as a lazy Dask array (never stored).

    Column j of X is zero for a dropped variant, so ``X @ X.T / std.n_kept`` is
    the GRM. The standardization is fused into each chunk's task.

    Examples
    --------
    >>> import numpy as np, bigmm
    >>> G = np.array([[0, 2], [2, -1], [1, 1]], dtype=np.int8)
    >>> std = bigmm.standardization(bigmm.variant_stats(G), "center")
    >>> (bigmm.standardized(G, std).compute() + 0.0).tolist()   # g − 2f, missing → 0
    [[-1.0, 0.5], [1.0, 0.0], [0.0, -0.5]]
    """
    import dask.array as da

    genotypes = genotype_matrix(genotypes)
    G = genotypes if isinstance(genotypes, da.Array) else da.from_array(genotypes)
    c = da.from_array(std.center, chunks=(G.chunks[1],))
    s = da.from_array(std.scale, chunks=(G.chunks[1],))
    return da.map_blocks(standardize_block, G, c[None, :], s[None, :], dtype=np.dtype(dtype),
                         out_dtype=dtype)
