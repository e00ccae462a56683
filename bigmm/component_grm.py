"""All m component GRMs ``K_j = X_j X_jᵀ / p_j`` from one pass over the genotypes.

The blocking is that of :func:`bigmm.grm` (its sample blocks, variant chunks, task list and
standardization): a task computes the sample block (I, J) of every K_j at once. For each variant
chunk it reads the two genotype slabs once, and for each component j present in the chunk copies
its columns out of the int8 slabs, standardizes them, and adds ``X_I[:, S_j] X_J[:, S_j]ᵀ`` to
block (I, J) of K_j, summed by the BLAS in place as :func:`bigmm.grm.grm_block` sums its block.
The reads are those of one :func:`bigmm.grm`, and the multiply-adds ``n² p_A / 2`` those of one
GRM over the assigned variants A.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .genotypes import LIBRARY_DTYPE, Standardization, check_finite, standardize_block
from .tasks import run_tasks, total_threads


@dataclass(frozen=True)
class ComponentGrms:
    """The GRMs of m variance components over the same samples.

    Attributes
    ----------
    K : ndarray (m, n, n) float64
        ``K[j] = X_j X_jᵀ / p_j``.
    n_variants : ndarray (m,) int64
        ``p_j``, the kept variants of each component.
    names : tuple of str
        The components' names.
    """

    K: np.ndarray
    n_variants: np.ndarray
    names: tuple

    @property
    def m(self) -> int:
        """Number of components."""
        return int(self.K.shape[0])

    def weighted_sum(self) -> np.ndarray:
        """``Σ_j (p_j / p) K_j = X_A X_Aᵀ / p``, the one GRM of all assigned variants A
        (``p = Σ p_j``)."""
        w = self.n_variants / self.n_variants.sum()
        return np.tensordot(w, self.K, axes=1)


def component_block_bytes(block: int, variant_chunk: int, m: int, itemsize: int = 8) -> int:
    """Memory of one component-GRM block task: m float64 output blocks (with the blocks their
    float32 products are summed in, :func:`bigmm.grm.sums_bytes`), the int8 codes of two slabs
    (:class:`~bigmm.genotypes.BlockReader`), the two slabs with their columns in component order
    and one standardized component of each (at most a chunk wide).

    >>> component_block_bytes(1024, 8192, 4) // 2**20, component_block_bytes(1024, 8192, 4, 4) // 2**20
    (192, 144)
    """
    from .grm import sums_bytes

    return m * sums_bytes(block, itemsize) + 2 * (itemsize + 2) * block * variant_chunk


def _grouped(g: np.ndarray, order: np.ndarray, inorder: bool) -> np.ndarray:
    """The columns ``order`` (chunk-relative, one component's) of the int8 slab ``g``: a contiguous
    copy (standardized 1.6x faster than a view of a slab of all components), or a plain slice
    when the components are already contiguous in the chunk."""
    # np.take: 4x faster than fancy indexing g[:, order] on an int8 slab
    return g[:, int(order[0]):int(order[-1]) + 1] if inorder else np.take(g, order, axis=1)


def component_grm_block(G, center, scale, comp, m, rows_i: slice, rows_j: slice, variant_step: int,
                        p_j: np.ndarray, dtype=np.float64) -> list[np.ndarray]:
    """Blocks ``(I, J)`` of all m component GRMs, ``X_{I,S_j} X_{J,S_j}ᵀ / p_j`` (a list of m
    F-ordered |I| x |J| arrays), from one read of each variant chunk of sample ranges I and J.

    ``comp`` gives each variant's component (-1: none, dropped variants included); each chunk's
    columns are sorted by component, and each component's columns standardized into one
    contiguous slab whose product the component's sums take in place
    (:class:`bigmm.grm.BlockSums`, as :func:`bigmm.grm.grm_block`).
    """
    from .genotypes import BlockReader
    from .grm import BlockSums, _read_pair, check_block

    ni, nj = rows_i.stop - rows_i.start, rows_j.stop - rows_j.start
    same = rows_i == rows_j
    sums = [BlockSums(ni, nj, same, dtype) for _ in range(m)]
    p = G.shape[1]
    buf_i = np.empty(ni * min(variant_step, p), dtype=dtype)
    buf_j = None if same else np.empty(nj * min(variant_step, p), dtype=dtype)
    read = (BlockReader(G), BlockReader(G))
    for v0 in range(0, p, variant_step):
        cols = slice(v0, min(p, v0 + variant_step))
        cj = comp[cols]
        order = np.argsort(cj, kind="stable")
        order = order[cj[order] >= 0]
        if not order.size:
            continue
        bounds = np.searchsorted(cj[order], np.arange(m + 1))
        c, s = center[cols][order], scale[cols][order]
        # variants already grouped by component (e.g. by chromosome) need no reordering
        inorder = bool(np.all(np.diff(order) == 1))
        gi, gj = _read_pair(G, rows_i, rows_j, cols, read)  # one read of a store chunk both ranges share
        for j in range(m):
            a, b = int(bounds[j]), int(bounds[j + 1])
            if b > a:
                xi = standardize_block(_grouped(gi, order[a:b], inorder), c[a:b], s[a:b], dtype, out=buf_i)
                xj = None if same else standardize_block(_grouped(gj, order[a:b], inorder), c[a:b], s[a:b], dtype,
                                                         out=buf_j)
                sums[j].add(xi, xj)
    blocks = []
    for j in range(m):
        acc = sums[j].total()
        acc /= float(p_j[j])
        check_block(acc, rows_i, rows_j, f"component {j + 1} GRM")
        blocks.append(acc)
    return blocks


def _assignment(assignment, std: Standardization, p: int, min_variants: int | None):
    """The per-variant component codes over the kept variants, the names and the counts p_j."""
    from .components import MIN_COMPONENT_VARIANTS, Components

    if isinstance(assignment, Components):
        comps = assignment
    else:
        a = np.asarray(assignment)
        comps = Components(tuple(f"C{j + 1}" for j in range(int(a.max(initial=-1)) + 1)), a, "assignment")
    if comps.assignment.shape != (p,):
        raise InputError(f"the component assignment covers {comps.assignment.shape[0]} variants, the "
                         f"genotypes have {p}")
    comps = comps.check(std.keep, MIN_COMPONENT_VARIANTS if min_variants is None else min_variants)
    return comps.assignment, comps.names, comps.counts()


def component_grms(genotypes, std: Standardization, assignment, *, block_size: int | None = None,
                   dtype=LIBRARY_DTYPE, memory: int | None = None,
                   min_variants: int | None = None) -> ComponentGrms:
    """The m GRMs ``K_j = X_j X_jᵀ / p_j`` of a split of the variants, in one pass.

    Parameters
    ----------
    genotypes : array-like (n, p) int8
        Genotypes, -1 missing (a cohort store's array, a VCF Zarr dataset or NumPy).
    std : Standardization
        Variant filters and standardization (:func:`bigmm.standardization`); only kept
        variants enter any K_j.
    assignment : Components or int array (p,)
        Each variant's component (-1: none), e.g. from :func:`bigmm.read_components`; a plain
        array names the components ``C1``, ``C2``, ...
    block_size : int, optional
        Samples per output block (default: as :func:`bigmm.grm`, smaller when ``memory`` needs).
    dtype : numpy dtype
        Precision of each chunk's products (float64 default; accumulation is float64).
    memory : int, optional
        Bytes one task may use (:func:`component_block_bytes`): the default block size is halved
        until a task fits.
    min_variants : int, optional
        The fewest kept variants per component (default
        :data:`bigmm.components.MIN_COMPONENT_VARIANTS`); smaller components are refused before
        the pass (:meth:`bigmm.Components.check`).

    Returns
    -------
    ComponentGrms
        ``K`` (m, n, n), ``n_variants`` (p_j) and the names.

    Notes
    -----
    Blocked as :func:`bigmm.grm`: the upper-triangle sample blocks (I ≤ J) are tasks on the
    active Dask scheduler; each reads the variant chunks of its two sample ranges once and
    splits each standardized chunk by component. Cost: the reads of one :func:`bigmm.grm` (each
    genotype chunk read ``n / b`` times) and ``n² p_A / 2`` multiply-adds for the ``p_A``
    assigned variants; memory per task :func:`component_block_bytes` (float32 products:
    ``12 m b² + 12 b c`` bytes) and ``8 m n²`` for the result.

    Examples
    --------
    >>> import numpy as np, bigmm
    >>> G = np.random.default_rng(0).binomial(2, 0.4, size=(30, 200)).astype(np.int8)
    >>> std = bigmm.standardization(bigmm.variant_stats(G))
    >>> split = np.repeat([0, 1], 100)
    >>> res = bigmm.component_grms(G, std, split, min_variants=1)
    >>> X = bigmm.standardized(G, std).compute()
    >>> bool(np.allclose(res.K[1], X[:, 100:] @ X[:, 100:].T / 100)), res.n_variants.tolist()
    (True, [100, 100])
    """
    import dask

    from .genotypes import genotype_matrix
    from .grm import _blocks, _variant_chunk, default_block_size, put_block

    G = genotype_matrix(genotypes)
    n, p = G.shape
    if p != std.center.shape[0]:
        raise InputError(f"standardization has {std.center.shape[0]} variants, genotypes {p}")
    check_finite(std)
    comp, names, p_j = _assignment(assignment, std, p, min_variants)
    m = len(names)
    step = _variant_chunk(G)
    itemsize = np.dtype(dtype).itemsize
    if block_size is None:
        block_size = default_block_size(n, total_threads(), None, step, itemsize=itemsize)
        while memory and block_size > 256 and component_block_bytes(block_size, step, m, itemsize) > memory:
            block_size = -(-block_size // 2)
    blocks = _blocks(n, block_size)
    task = dask.delayed(component_grm_block, pure=False)
    pairs = [(I, J) for I in range(len(blocks)) for J in range(I, len(blocks))]
    results = run_tasks([task(G, std.center, std.scale, comp, m, blocks[I], blocks[J], step, p_j,
                              np.dtype(dtype)) for I, J in pairs], f"{m} component GRMs {n}x{n} blocks")
    K = np.empty((m, n, n), dtype=np.float64)
    for (I, J), parts in zip(pairs, results):
        for j, block in enumerate(parts):
            put_block(K[j], blocks[I], blocks[J], block)
    return ComponentGrms(K=K, n_variants=p_j, names=tuple(names))
