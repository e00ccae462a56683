"""Per-variant LD scores in one windowed pass over the genotype store.

The LD score of variant v is the sum, over the kept variants u in a window around v (v itself
included), of the squared correlation of their genotypes, bias-corrected:

    ℓ_v = Σ_{u ∈ W(v)} r̃²_uv,     r̃² = r² − (1 − r²) / (n − 2),

with ``r_uv`` the Pearson correlation of the two mean-imputed genotype columns over the n
samples (the correction removes the expected sampling value of r² between unlinked variants,
``E[r²] ≈ 1/(n − 1)``, as LDSC does; Bulik-Sullivan et al. 2015). It is LDSC's ``--l2`` score
with a window centred on each variant; GCTA's ``--ld-score-region`` sums the same corrected r²
over fixed, half-overlapping blocks of variants instead (its ``ldscore_SNP``) and then averages
them over 200 kb segments (``ldscore_region``), which bigmm does not do. GREML-LDMS stratifies
variants by quantiles of the score within MAF bins (:func:`bigmm.components.greml_ldms`).

The pass streams blocks of kept variants; a block's task reads its own columns and the overlap
its windows reach into the neighbouring blocks, standardizes them (never materialising X) and
forms only the correlations of each variant with its reach, a few hundred rows at a time: the
p x p LD matrix is never formed.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .genotypes import LIBRARY_DTYPE, Standardization, check_finite, standardize_block
from .tasks import run_tasks

#: kept variants per LD-score task at most (by default): a task holds ``B x (B + 2w)`` float64
#: correlations, 66 MiB for B = 2048 and a reach of w = 1,000 variants either side
LD_BLOCK = 2048
#: rows of the correlations formed at once inside a task: each group of rows is multiplied with
#: its own reach only, so the products cost ``n (LD_ROWS + 2w)`` per variant, not ``n (B + 2w)``
LD_ROWS = 256


def ld_task_bytes(n: int, block: int, reach: int, itemsize: int = 8) -> int:
    """Memory of one LD-score task: the int8 and standardized slabs of its ``block + 2·reach``
    columns (``n (B + 2w)(1 + itemsize)``) and one group of correlations with its window mask
    (``9 r (r + 2w)``, ``r = min(B, LD_ROWS)``).

    >>> ld_task_bytes(10_000, 2048, 1000) // 2**20
    352
    """
    r = min(block, LD_ROWS)
    return n * (block + 2 * reach) * (1 + itemsize) + 9 * r * (r + 2 * reach)


def ld_block_size(n: int, reach: int, variant_chunk: int, memory: int | None, itemsize: int = 8) -> int:
    """Kept variants per LD-score task: the store's chunk width, at most :data:`LD_BLOCK`, halved
    until a task fits ``memory`` bytes (:func:`ld_task_bytes`).

    Raises
    ------
    InputError
        When not even 64 variants with their window fit, with the memory needed.
    """
    b = max(1, min(int(variant_chunk), LD_BLOCK))
    if memory is None:
        return b
    while b > 64 and ld_task_bytes(n, b, reach, itemsize) > memory:
        b = -(-b // 2)
    need = ld_task_bytes(n, b, reach, itemsize)
    if need > memory:
        raise InputError(
            f"memory limit {memory / 2**20:.0f} MiB per task is too small for LD scores of n = {n} samples "
            f"with windows reaching {reach} variants either side: a task needs at least "
            f"{need / 2**20:.0f} MiB; give the tasks more memory, a smaller window, or float32 products")
    return b


def _sorted_check(chrom: np.ndarray, pos: np.ndarray) -> None:
    """Refuse variants that are not grouped by chromosome and sorted by position within each."""
    change = np.flatnonzero(chrom[1:] != chrom[:-1]) + 1
    starts = np.concatenate(([0], change))
    seen = set()
    for s in starts.tolist():
        c = chrom[s]
        if c in seen:
            raise InputError(f"the variants of chromosome {c} are not contiguous in the store (again at "
                             f"variant {s + 1}); LD windows need variants sorted by chromosome and "
                             f"position: sort them (plink2 --sort-vars --make-pgen, then --make-bed) "
                             f"and ingest again")
        seen.add(c)
    back = np.flatnonzero((np.diff(pos) < 0) & (chrom[1:] == chrom[:-1]))
    if back.size:
        i = int(back[0]) + 1
        raise InputError(f"variant {i + 1} (position {int(pos[i])}) comes after position {int(pos[i - 1])} on "
                         f"chromosome {chrom[i]}: LD windows need variants sorted by position; sort "
                         f"them (plink2 --sort-vars) and ingest again")


def ld_windows(n_kept: int, window_kb: float | None = None, window_variants: int | None = None,
               positions: np.ndarray | None = None, chromosomes: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """The window of each kept variant as a range ``[lo, hi)`` of kept-variant indices.

    Variant u is in the window of v when both are on the same chromosome, ``|pos_u − pos_v| ≤
    1000 · window_kb`` (when given) and ``|i_u − i_v| ≤ window_variants`` counted in kept variants
    (when given); with both, both must hold (as PLINK's ``--ld-window-kb`` and ``--ld-window``).
    ``positions`` and ``chromosomes`` are those of the kept variants, in store order.

    >>> lo, hi = ld_windows(4, window_kb=1.5, positions=np.array([100, 1000, 2000, 5000]))
    >>> lo.tolist(), hi.tolist()
    ([0, 0, 1, 3], [2, 3, 3, 4])
    """
    if window_kb is None and window_variants is None:
        raise InputError("give an LD window: window_kb (kilobases either side) or window_variants")
    idx = np.arange(n_kept)
    chrom = (np.zeros(n_kept, dtype=np.int64) if chromosomes is None
             else np.unique(np.asarray(chromosomes).astype(str), return_inverse=True)[1].reshape(-1))
    # chromosome ranges (contiguous, checked by the caller)
    change = np.flatnonzero(chrom[1:] != chrom[:-1]) + 1
    starts = np.concatenate(([0], change)).astype(np.int64)
    ends = np.concatenate((change, [n_kept])).astype(np.int64)
    which = np.repeat(np.arange(starts.size), ends - starts)
    lo, hi = starts[which], ends[which]
    if window_kb is not None:
        if positions is None:
            raise InputError("window_kb needs the variants' positions")
        if window_kb < 0:
            raise InputError(f"window_kb must be ≥ 0, got {window_kb}")
        pos = np.asarray(positions, dtype=np.float64)
        w = 1000.0 * float(window_kb)
        for s, e in zip(starts.tolist(), ends.tolist()):
            p = pos[s:e]
            lo[s:e] = np.maximum(lo[s:e], s + np.searchsorted(p, p - w, side="left"))
            hi[s:e] = np.minimum(hi[s:e], s + np.searchsorted(p, p + w, side="right"))
    if window_variants is not None:
        if int(window_variants) < 0:
            raise InputError(f"window_variants must be ≥ 0, got {window_variants}")
        lo = np.maximum(lo, idx - int(window_variants))
        hi = np.minimum(hi, idx + int(window_variants) + 1)
    return lo, hi


def _ld_rows(X, ss, rows: slice, lo, hi, n):
    """Corrected LD scores of the columns ``rows`` of X from their windows ``[lo, hi)``."""
    L, H = int(lo.min()), int(hi.max())
    r2 = np.asarray(X[:, rows].T @ X[:, L:H], dtype=np.float64)  # rows x reach cross products
    np.square(r2, out=r2)
    r2 /= ss[rows, None]
    r2 /= ss[None, L:H]
    np.minimum(r2, 1.0, out=r2)  # round-off can lift r² of identical columns above 1
    j = np.arange(L, H)
    r2[(j[None, :] < lo[:, None]) | (j[None, :] >= hi[:, None])] = 0.0
    n_in = hi - lo
    # Σ_window [r² − (1 − r²)/(n − 2)] = (1 + 1/(n − 2)) Σ r² − |W| / (n − 2)
    return (1.0 + 1.0 / (n - 2)) * r2.sum(axis=1) - n_in / (n - 2)


def _ld_block_task(G, span, center, scale, rows: slice, lo, hi, n, dtype):
    """LD scores of the kept variants ``rows`` of ``span`` (the store columns of the kept variants
    their windows reach), each window ``[lo, hi)`` in positions of ``span``; the correlations are
    formed :data:`LD_ROWS` rows at a time, each against its own reach only."""
    g = np.asarray(G[:, int(span[0]):int(span[-1]) + 1])[:, span - span[0]]
    X = standardize_block(g, center, scale, dtype)
    ss = np.einsum("ij,ij->j", X, X, dtype=np.float64)
    parts = []
    for s0 in range(0, rows.stop - rows.start, LD_ROWS):
        s1 = min(rows.stop - rows.start, s0 + LD_ROWS)
        parts.append(_ld_rows(X, ss, slice(rows.start + s0, rows.start + s1), lo[s0:s1], hi[s0:s1], n))
    return np.concatenate(parts), hi - lo


def ld_scores(genotypes, std: Standardization, window_kb: float | None = None,
              window_variants: int | None = None, positions=None, chromosomes=None, *,
              block_variants: int | None = None, dtype=LIBRARY_DTYPE, memory: int | None = None,
              return_counts: bool = False):
    """Bias-corrected LD score of every kept variant, in one windowed pass over the genotypes.

    ``ℓ_v = Σ_{u ∈ W(v)} [r²_uv − (1 − r²_uv) / (n − 2)]`` over the kept variants u in v's window
    (v included: its own term is 1), ``r_uv`` the Pearson correlation of the mean-imputed genotypes
    of u and v over all n samples of the store (missing calls at the variant's mean, as in X).

    Parameters
    ----------
    genotypes : array-like (n, p) int8
        Genotypes, -1 missing (a cohort store's array or NumPy).
    std : Standardization
        The kept variants and their centres (:func:`bigmm.standardization`); r does not depend
        on the scaling.
    window_kb : float, optional
        Variants within this many kilobases either side, on the same chromosome.
    window_variants : int, optional
        Variants within this many kept variants either side, on the same chromosome. At least
        one of the two windows must be given; with both, a pair must satisfy both.
    positions, chromosomes : arrays (p,), optional
        Base-pair positions and chromosomes of all the store's variants
        (``store.variant_table()["pos"]``, ``["chrom"]``); variants must be sorted by position
        within contiguous chromosomes. Without ``chromosomes`` all variants count as one
        chromosome; ``positions`` are needed with ``window_kb``.
    block_variants : int, optional
        Kept variants per task (default: the store's variant chunk width, at most
        :data:`LD_BLOCK`, fewer when ``memory`` needs: :func:`ld_block_size`).
    memory : int, optional
        Bytes one task may use (:func:`ld_task_bytes`); refused before the pass when even 64
        variants and their windows do not fit.
    dtype : numpy dtype
        Precision of the products (default float64; float32 doubles the BLAS rate, r² to ~1e-6).
    return_counts : bool
        Also return the number of kept variants in each window (int, -1 for dropped variants).

    Returns
    -------
    ndarray (p,) float64, or ``(scores, counts)``
        The LD score of each variant of the store, NaN for variants the standardization drops.

    Notes
    -----
    Cost: one pass over the genotypes, each genotype read ``1 + 2w/B`` times for a window
    reaching w kept variants beyond a block of B (the overlap with the neighbouring blocks; a
    store chunk wider than B is also decoded once per block it holds, cheap next to the products),
    and ``n · p · (r + 2w)`` multiply-adds: the rows of a block are multiplied
    :data:`LD_ROWS` = r at a time with their own reach, against ``n · p · (2w + 1)`` for the
    windows alone (1.25x for w = 500). Memory per task (:func:`ld_task_bytes`): the int8 and
    standardized ``n x (B + 2w)`` slabs and ``r x (r + 2w)`` correlations. With ``window_kb`` the
    reach w depends on the variant density: 1 Mb at one variant per kb is ~1,000 variants. The
    task list runs on the active Dask scheduler (a distributed client when one is active).

    References
    ----------
    Bulik-Sullivan et al. (2015), LD Score regression, Nat Genet 47:291 (the estimator and its
    correction); Yang et al. (2015), GREML-LDMS, Nat Genet 47:1114.

    Examples
    --------
    >>> import numpy as np, bigmm
    >>> G = np.random.default_rng(1).binomial(2, 0.3, size=(200, 6)).astype(np.int8)
    >>> std = bigmm.standardization(bigmm.variant_stats(G))
    >>> ld = bigmm.ld_scores(G, std, window_variants=0)     # a window of one variant: itself
    >>> np.allclose(ld, 1.0)
    True
    """
    import dask

    from .genotypes import genotype_matrix
    from .grm import _variant_chunk

    G = genotype_matrix(genotypes)
    n, p = G.shape
    if std.keep.shape != (p,):
        raise InputError(f"variant statistics are for {std.keep.shape[0]} variants, the genotypes have {p}")
    if n < 3:
        raise InputError(f"LD scores need at least 3 samples (the correction divides by n − 2), got {n}")
    check_finite(std)
    cols = np.flatnonzero(std.keep)
    chrom = None if chromosomes is None else np.asarray(chromosomes, dtype=object).astype(str)
    pos = None if positions is None else np.asarray(positions)
    for name, arr in (("positions", pos), ("chromosomes", chrom)):
        if arr is not None and arr.shape != (p,):
            raise InputError(f"{name} has {arr.shape[0]} entries, the genotypes {p} variants")
    if pos is not None:
        _sorted_check(chrom if chrom is not None else np.zeros(p, dtype=str), pos)
    elif chrom is not None:
        _sorted_check(chrom, np.zeros(p))
    lo, hi = ld_windows(cols.size, window_kb, window_variants,
                        None if pos is None else pos[cols], None if chrom is None else chrom[cols])
    reach = int(max((np.arange(cols.size) - lo).max(initial=0), (hi - 1 - np.arange(cols.size)).max(initial=0)))
    B = int(block_variants or ld_block_size(n, reach, _variant_chunk(G), memory, np.dtype(dtype).itemsize))
    task = dask.delayed(_ld_block_task, pure=False)
    starts = range(0, cols.size, B)
    tasks = []
    for a in starts:  # each task gets only its own slice of the windows and the standardization
        b = min(cols.size, a + B)
        L, H = int(lo[a:b].min()), int(hi[a:b].max())
        span = cols[L:H]
        tasks.append(task(G, span, std.center[span], std.scale[span], slice(a - L, b - L), lo[a:b] - L,
                          hi[a:b] - L, n, np.dtype(dtype)))
    scores = np.full(p, np.nan)
    counts = np.full(p, -1, dtype=np.int64)
    for a, (part, cnt) in zip(starts, run_tasks(tasks, f"LD scores ({cols.size} variants)")):
        scores[cols[a:a + part.size]] = part
        counts[cols[a:a + part.size]] = cnt
    return (scores, counts) if return_counts else scores
