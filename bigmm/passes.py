"""One operator for every pass over the genotypes: ``K M = X (Xᵀ M) / p`` without forming K.

Every method that needs K but not K itself (the randomized spectrum, the SNP-effect pass, the
matrix-free REML) takes a :class:`GrmOperator`. The operator streams the int8 genotypes once per
call, multiplies each variant piece in the tasks with its centring and scaling folded into the
products (or standardized first: :data:`KERNELS`; never materialising X), and runs its tasks on
whatever Dask scheduler is active: the default ``distributed`` client if there is one, else local
threads. Its memory plan (:meth:`GrmOperator.plan`, :func:`plan_pass`) is checked before a pass
starts, so a block of vectors too wide for the workers is refused with the numbers, not killed.

Rules named here, once:

* :func:`piece_width` — columns of X standardized per product (:data:`PIECE`, :data:`PIECE_BYTES`);
* :func:`plan_pass` — the bytes one task needs for a pass of ``b`` vectors, and how the pass is
  cut into tasks (:func:`balanced_groups`).

:class:`DenseOperator` is the same interface over a GRM held in memory (a GCTA ``.grm.bin``
read back, or a test's K).
"""

from __future__ import annotations

import concurrent.futures
import logging
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .genotypes import LIBRARY_DTYPE, BlockReader, blas, check_finite, standardize_block
from .tasks import current_client, run_tasks, total_threads

log = logging.getLogger("bigmm")

#: passes run again when the block of vectors scattered to the workers is lost with them
LOST_BLOCK_RETRIES = 2
#: columns of X in one product of a pass (pieces aligned to the chunk starts), at most; fewer
#: when n is large, so that a standardized piece stays within PIECE_BYTES (see piece_width). The
#: products, and so the results, do not depend on how the pieces are grouped into tasks.
PIECE = 2048
PIECE_BYTES = 256 * 2**20
#: how a pass goes from genotype codes to its products (GrmOperator's ``kernel``): ``standardize``
#: writes each standardized piece of X and multiplies it; ``fold`` multiplies the codes and folds
#: the centring and scaling into the products (:func:`_fold_piece`); ``tile`` does what ``fold``
#: does one cache-sized block of rows at a time (:func:`_tile_piece`). The results agree to
#: round-off (tests/test_pass_kernel.py). ``tile`` is the default: at n = 100,000, p = 50,000 on
#: 2 workers (scripts/bench/bench_pass_scaling.py, docs/performance.md) a pass of l = 33 took
#: 12.5 s against fold's 15.1 s (1.35x its floor), and of l = 250 36.9 s against 37.3 s; one
#: task's products at l = 34, 2.7 against 4.2 ns per genotype; fold took 7-12% less CPU than
#: standardize in a narrow pass at n = 10,000. Unlike the other two, tile's float32 sums over a
#: chunk split between two tasks depend on where it is split (its row blocks follow the slab's
#: width), so passes on clusters of different sizes agree to float32 round-off, not bit for bit
KERNELS = ("standardize", "fold", "tile")
DEFAULT_KERNEL = "tile"
#: the ``tile`` kernel's unit of work: a slab of at most TILE_COLUMNS variants (a whole store chunk
#: at the default 2048: its rows are contiguous, where a narrower slice of a chunk is strided and
#: converts ~15% slower) is expanded from its codes into floats TILE_BYTES at a time (a block of
#: rows: 128 at 2048 columns), each block twice (once per product), so that the floats stay in a
#: core's L2 cache between the conversion and the product instead of going out to memory and back
#: (:func:`_tile_piece`); 1 MiB and whole chunks measured best of 256 KiB-2 MiB and 256-2048
#: columns at n = 100,000 (2.5-2.6 against 2.9-3.3 ns per genotype)
TILE_COLUMNS = 2048
TILE_BYTES = 2**20


def piece_width(n: int, itemsize: int) -> int:
    """Columns of X per product: the largest power of two ≤ :data:`PIECE` whose standardized
    piece (n x width) fits :data:`PIECE_BYTES`, and at least 256.

    >>> piece_width(10_000, 8), piece_width(100_000, 8), piece_width(1_000_000, 4)
    (2048, 256, 256)
    """
    w = PIECE
    while w > 256 and n * w * itemsize > PIECE_BYTES:
        w //= 2
    return w


@dataclass(frozen=True)
class PassPlan:
    """How one pass over X is cut into tasks, from the memory each task may use."""

    n: int
    n_cols: int
    chunk_width: int
    sub_width: int
    task_bytes: int
    groups: list

    def describe(self) -> str:
        return (f"{len(self.groups)} tasks, variant slabs of {self.chunk_width} columns standardized "
                f"{self.sub_width} at a time, ~{self.task_bytes / 2**20:.0f} MiB per task")


def task_bytes(n: int, n_cols: int, chunk_width: int, sub_width: int, itemsize: int = 8,
               out_blocks: int = 1) -> int:
    """Bytes one pass task holds: the block of vectors and its float64 partial products
    (``(1 + out_blocks) · n · n_cols · 8``; ``out_blocks`` = m for a pass applying m component
    GRMs at once), one int8 genotype slab (``n · chunk_width``), the diagonals
    (``8 n · out_blocks``) and one standardized piece (``n · sub_width · itemsize``).

    >>> round(task_bytes(100_000, 32, 8192, 256, 4) / 2**20, 1)
    928.5
    """
    return ((1 + out_blocks) * n * n_cols * 8 + n * chunk_width + n * 8 * out_blocks
            + n * sub_width * itemsize)


#: the fewest standardized columns a pass task is asked to hold at a time, for memory checks
MIN_PIECE = 64


def least_task_bytes(n: int, n_cols: int, chunk_width: int, itemsize: int = 8) -> int:
    """The bytes a pass task needs at the least (:func:`task_bytes` standardizing
    :data:`MIN_PIECE` variants at a time): what memory checks compare with a task's memory."""
    return task_bytes(n, n_cols, chunk_width, min(chunk_width, MIN_PIECE), itemsize)


def plan_pass(n: int, n_cols: int, chunk_bounds: list[tuple[int, int]], memory: int | None,
              n_tasks: int, itemsize: int = 8, out_blocks: int = 1) -> PassPlan:
    """Cut a pass over X (n rows, variant chunks ``chunk_bounds``) into tasks.

    ``sub_width``, the columns of one product, is the largest that fits ``memory`` (bytes per
    task, :func:`task_bytes`), at most :func:`piece_width`. The chunks are cut into ``n_tasks``
    groups of equal width (:func:`balanced_groups`).

    Raises
    ------
    InputError
        When not even one standardized column fits, with the memory needed.

    Examples
    --------
    >>> plan = plan_pass(10_000, 250, [(0, 8192), (8192, 16384)], None, 2)
    >>> plan.sub_width, len(plan.groups)
    (2048, 2)
    """
    width = max(b - a for a, b in chunk_bounds)
    fixed = task_bytes(n, n_cols, width, 0, itemsize, out_blocks)
    per_col = n * itemsize
    if memory is None:
        sub = width
    else:
        sub = (int(memory) - fixed) // per_col
        if sub < 1:
            need = task_bytes(n, n_cols, width, min(width, MIN_PIECE), itemsize, out_blocks)
            raise InputError(
                f"memory limit {memory / 2**20:.0f} MiB per task is too small for a pass over X with "
                f"n = {n} samples and {n_cols} vectors: a task needs at least {need / 2**20:.0f} MiB "
                f"({1 + out_blocks}·n·{n_cols}·8 bytes for the vectors and their products, plus a genotype slab); "
                f"raise cluster.memory_limit, use fewer threads per worker, or pass fewer vectors "
                f"(a lower spectrum.rank, fewer probes or phenotypes per pass)")
        sub = min(sub, width)
    sub = min(sub, piece_width(n, itemsize))
    groups = balanced_groups(chunk_bounds, n_tasks, sub)
    return PassPlan(n=n, n_cols=n_cols, chunk_width=width, sub_width=int(sub),
                    task_bytes=task_bytes(n, n_cols, width, sub, itemsize, out_blocks), groups=groups)


def balanced_groups(chunk_bounds: list[tuple[int, int]], n_tasks: int, piece: int = PIECE) -> list:
    """Cut the variant chunks into ``n_tasks`` groups of (nearly) equal width.

    Chunks are cut into pieces of ``piece`` columns from their start; groups take consecutive
    pieces, so a chunk may be split between two groups: with 7 chunks of 8192 variants and 4
    tasks on 2 workers, whole chunks would give one worker 4 chunks and the other 3 (an eighth
    of the pass idle); the price of a split is decoding that one chunk twice. Each group is a
    list of column ranges, each inside one chunk and made of whole pieces.

    >>> balanced_groups([(0, 8), (8, 16)], 4, piece=4)
    [[(0, 4)], [(4, 8)], [(8, 12)], [(12, 16)]]
    """
    pieces = [(c, min(b, c + piece)) for a, b in chunk_bounds for c in range(a, b, piece)]
    total = sum(b - a for a, b in pieces)
    n_tasks = max(1, min(int(n_tasks), len(pieces)))
    groups: list[list[tuple[int, int]]] = [[] for _ in range(n_tasks)]
    chunk_of = {}
    for i, (a, b) in enumerate(chunk_bounds):
        for c in range(a, b, piece):
            chunk_of[c] = i
    done = 0
    for a, b in pieces:
        g = min(n_tasks - 1, int((done + 0.5 * (b - a)) * n_tasks // total))
        done += b - a
        rs = groups[g]
        if rs and rs[-1][1] == a and chunk_of[rs[-1][0]] == chunk_of[a]:
            rs[-1] = (rs[-1][0], b)
        else:
            rs.append((a, b))
    return [g for g in groups if g]


def _apply_task(G, rows, center, scale, bounds, sub_width, M, dtype, p_kept, want_diag, kernel=DEFAULT_KERNEL):
    """Σ over the variant chunks ``bounds`` of X_v (X_vᵀ M) / p, and Σ of squared entries per row.

    ``kernel`` (:data:`KERNELS`): ``standardize`` writes each standardized piece X_v and multiplies
    it; ``fold`` multiplies the genotype codes and folds the centring and scaling into the products
    (:func:`_fold_piece`)."""
    n = M.shape[0]
    acc = np.zeros(M.shape, dtype=np.float64)
    diag = np.zeros(n) if want_diag else None
    Md = M.astype(dtype, copy=False)
    tile = kernel == "tile"
    fold = kernel == "fold" or tile
    if tile:
        buf = np.empty(max(TILE_BYTES // Md.itemsize, TILE_COLUMNS), dtype=dtype)
        out = np.empty(M.shape, dtype=dtype)
    else:
        buf = np.empty(n * sub_width, dtype=dtype)
    if fold:
        colsum = Md.sum(axis=0, dtype=np.float64)
        shift = np.zeros(M.shape[1])
    read = BlockReader(G)
    for a, b in bounds:
        if not scale[a:b].any():
            continue
        g = read(slice(None), slice(a, b))
        if rows is not None:
            g = g[rows]
        if tile:
            for t0 in range(0, b - a, TILE_COLUMNS):
                t1 = min(b - a, t0 + TILE_COLUMNS)
                if scale[a + t0:a + t1].any():
                    shift += _tile_piece(g[:, t0:t1], center[a + t0:a + t1], scale[a + t0:a + t1], Md, colsum,
                                         buf, out, acc, diag)
            continue
        for w0 in range(0, b - a, sub_width):
            w1 = min(b - a, w0 + sub_width)
            sc = scale[a + w0:a + w1]
            if not sc.any():
                continue
            if fold:
                shift += _fold_piece(g[:, w0:w1], center[a + w0:a + w1], sc, Md, colsum, dtype, buf, acc, diag)
                continue
            X = standardize_block(g[:, w0:w1], center[a + w0:a + w1], sc, dtype, out=buf)
            acc += X @ (X.T @ Md)
            if want_diag:
                diag += np.einsum("ij,ij->i", X, X)
    if fold:
        acc -= shift
    acc /= p_kept
    if want_diag:
        diag /= p_kept
    return acc, diag


def _fold_piece(g, center, scale, Md, colsum, dtype, buf, acc, diag):
    """One piece of a ``fold`` pass: ``acc += F U`` and the returned row ``cᵀ U`` to subtract from
    every row of ``acc`` (once, at the end of the task), where ``X = (F − 1cᵀ) S`` is the
    standardized piece.

    F is the genotype codes as floats with a missing call set to its variant's centre c (so that
    its entry of X is 0, the mean imputation of :func:`bigmm.genotypes.standardize_block`), written
    in one sweep instead of standardize_block's two. Then, with S = diag(scale),

        Xᵀ M = S (Fᵀ M − c (1ᵀ M)),     X (Xᵀ M) = F U − 1 (cᵀ U),   U = S Xᵀ M,

    the products in ``dtype`` as in the standardize kernel, the corrections (w x b and 1 x b) in
    float64. ``diag`` (when wanted) gets Σ_j x_ij² (:func:`_add_diag`).
    """
    c = np.asarray(center, dtype=np.float64)
    s = np.asarray(scale, dtype=np.float64)
    F = _codes_as_floats(g, buf[: g.size].reshape(g.shape), c.astype(dtype))
    T = _folded(F.T @ Md, c, s, colsum)
    acc += F @ T.astype(Md.dtype)
    if diag is not None:
        _add_diag(F, c, s, diag, np.empty(TILE_BYTES // F.itemsize, dtype=F.dtype))
    return c @ T


def _codes_as_floats(g, F, c):
    """``F`` := the codes ``g`` as floats, a missing call set to its variant's centre ``c`` (so
    that its entry of X is 0: mean imputation), in one sweep (a second only where calls are missing)."""
    np.copyto(F, g, casting="unsafe")
    if g.size and g.min() < 0:
        np.copyto(F, c, where=g < 0)
    return F


def _folded(FtM, c, s, colsum):
    """``S Xᵀ M`` (float64) from ``Fᵀ M``: ``S² (Fᵀ M − c (1ᵀ M))``, ``colsum`` = 1ᵀ M."""
    T = np.asarray(FtM, dtype=np.float64)
    T = T - np.outer(c, colsum)
    T *= (s * s)[:, None]
    return T


def _add_diag(F, c, s, diag, tmp):
    """``diag += Σ_j x_ij²`` over the rows of F (unchanged), x_ij = (F_ij − c_j) s_j, as
    ``(F∘F) s² − 2 F (s² c) + Σ_j s_j² c_j²``: one square into ``tmp`` (a buffer of TILE_BYTES) and
    two GEMVs per block of rows (0.26 against 0.68 ns per genotype for writing X over F and summing
    its squares; the terms are at most a few times the result, so float32 loses no more than that)."""
    s2 = s * s
    const = float(s2 @ (c * c))
    s2f, s2cf = s2.astype(F.dtype), (2.0 * s2 * c).astype(F.dtype)
    rb = max(1, tmp.size // max(F.shape[1], 1))
    for r0 in range(0, F.shape[0], rb):
        Fr = F[r0:r0 + rb]
        sq = np.square(Fr, out=tmp[:Fr.size].reshape(Fr.shape))
        diag[r0:r0 + rb] += (sq @ s2f - Fr @ s2cf) + const


def _tile_piece(g, center, scale, Md, colsum, buf, out, acc, diag):
    """One piece of a ``tile`` pass: the products of :func:`_fold_piece` (``acc += F U``, and the
    row ``cᵀ U`` returned), computed one block of rows at a time.

    The first sweep expands each block of rows of the codes into floats in ``buf`` (rows x w,
    about :data:`TILE_BYTES`: it stays in cache) and adds its ``F_rᵀ M_r`` to ``Fᵀ M`` (the GEMM
    accumulating in place, in the products' precision); the second expands each block again and
    writes ``F_r U`` into ``out``.
    Writing the codes as floats twice into cache costs less than writing them once to memory
    and reading them back twice (the fold kernel), which is what bounds a narrow pass.
    """
    n, w = g.shape
    dtype = Md.dtype
    rb = max(1, buf.size // max(w, 1))
    c = np.asarray(center, dtype=np.float64)
    s = np.asarray(scale, dtype=np.float64)
    cd = c.astype(dtype)

    def expand(r0):
        gb = g[r0:r0 + rb]
        return _codes_as_floats(gb, buf[: gb.size].reshape(gb.shape), cd)

    # Fᵀ M summed over the row blocks in place by the BLAS (C := Fᵣᵀ Mᵣ + C, in the products'
    # precision, as one GEMM over all rows would sum them): adding a new w x l product to a
    # float64 sum per block cost 2 operations per genotype at l = 250
    gemm = blas(dtype, "gemm")
    Tb = np.zeros((w, Md.shape[1]), dtype=dtype, order="F")
    for r0 in range(0, n, rb):
        Mr = Md[r0:r0 + rb]
        Tb = gemm(1.0, expand(r0).T, Mr.T, beta=1.0, c=Tb, trans_b=1, overwrite_c=1)
    T = _folded(Tb, c, s, colsum)
    U = T.astype(dtype)
    tmp = np.empty_like(buf) if diag is not None else None
    for r0 in range(0, n, rb):
        F = expand(r0)
        np.matmul(F, U, out=out[r0:r0 + rb])
        if diag is not None:
            _add_diag(F, c, s, diag[r0:r0 + rb], tmp)
    acc += out
    return c @ T


def _xt_task(G, rows, center, scale, bounds, sub_width, W, dtype):
    """(a, b, X_vᵀ W) for each column range of ``bounds``."""
    out = []
    Wd = W.astype(dtype, copy=False)
    read = BlockReader(G)
    for a, b in bounds:
        g = read(slice(None), slice(a, b))
        if rows is not None:
            g = g[rows]
        for w0 in range(0, b - a, sub_width):
            w1 = min(b - a, w0 + sub_width)
            X = standardize_block(g[:, w0:w1], center[a + w0:a + w1], scale[a + w0:a + w1], dtype)
            out.append((a + w0, a + w1, (X.T @ Wd).astype(np.float64)))
    return out


def _sum_parts(state, part):
    if state is None:
        return part
    acc, diag = state
    acc += part[0]
    if diag is not None:
        diag += part[1]
    return acc, diag


class GrmOperator:
    """``K = X Xᵀ / p`` of a genotype matrix, applied to blocks of vectors one pass at a time.

    Parameters
    ----------
    G : array-like (n_all, p) int8
        Genotypes, -1 for missing (a cohort store's Zarr array, a VCF Zarr adapter or NumPy).
    std : Standardization
        Variant filters and standardization (:func:`bigmm.standardization`); ``p = std.n_kept``.
    rows : int array, optional
        The samples (rows of G) K is over; default all.
    dtype : numpy dtype
        Precision of each piece's product (default :data:`bigmm.genotypes.LIBRARY_DTYPE`, float64;
        float32 doubles the BLAS rate; accumulation across pieces is float64).
    memory : int, optional
        Bytes one task may use; a pass is cut to fit, or refused before it starts.
    n_tasks : int, optional
        Tasks per pass (default: one per thread of the active scheduler).
    label : str, optional
        What the passes are for, in progress lines: pass j is called "``label`` j" unless
        :meth:`apply` is given its own description.
    kernel : {"tile", "fold", "standardize"}
        How :meth:`apply` goes from the genotype codes to the products (:data:`KERNELS`; default
        :data:`DEFAULT_KERNEL`, ``tile``):
        ``standardize`` writes each standardized piece of X, then multiplies it; ``fold``
        multiplies the codes (as floats, one sweep) and folds the centring and scaling into the
        products; ``tile`` does the same as ``fold`` one cache-sized block of rows at a time, so
        the floats never go out to memory. Same results to round-off.

    Examples
    --------
    >>> import numpy as np, bigmm
    >>> G = np.random.default_rng(0).integers(0, 3, size=(50, 200)).astype(np.int8)
    >>> std = bigmm.standardization(bigmm.variant_stats(G))
    >>> op = GrmOperator(G, std)
    >>> KM, diag = op.apply(np.eye(50)[:, :3], want_diag=True)
    >>> X = bigmm.standardized(G, std).compute()
    >>> bool(np.allclose(KM, (X @ X.T / std.n_kept)[:, :3]))
    True
    """

    def __init__(self, G, std, *, rows=None, dtype=LIBRARY_DTYPE, memory: int | None = None,
                 n_tasks: int | None = None, label: str | None = None, kernel: str = DEFAULT_KERNEL):
        from .genotypes import genotype_matrix

        if kernel not in KERNELS:
            raise InputError(f"kernel must be one of {', '.join(KERNELS)}, not {kernel!r}")
        self.kernel = kernel

        G = genotype_matrix(G)
        if std is None or not hasattr(std, "scale"):
            raise InputError("no variant statistics; compute them first with bigmm.variant_stats and "
                             "bigmm.standardization")
        if std.scale.shape[0] != G.shape[1]:
            raise InputError(f"variant statistics are for {std.scale.shape[0]} variants, the genotypes "
                             f"have {G.shape[1]}")
        check_finite(std)
        self.G = G
        self.std = std
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.dtype = np.dtype(dtype)
        self.memory = memory
        self.n_tasks = n_tasks
        self.label = label
        #: passes made so far
        self.passes = 0
        chunks = getattr(G, "chunks", None)
        self.chunk_width = (int(chunks[1]) if chunks is not None and isinstance(chunks[1], (int, np.integer))
                            else 2048)
        p = G.shape[1]
        cw = self.chunk_width
        self.bounds = [(a, min(p, a + cw)) for a in range(0, p, cw) if std.scale[a:min(p, a + cw)].any()]

    @property
    def n(self) -> int:
        """Samples K is over."""
        return int(self.G.shape[0] if self.rows is None else self.rows.size)

    @property
    def p(self) -> int:
        """Variants in K (those kept by the standardization)."""
        return int(self.std.n_kept)

    def restrict(self, rows) -> "GrmOperator":
        """The operator of ``K[rows][:, rows]`` (rows of this operator's samples)."""
        rows = np.asarray(rows, dtype=np.int64)
        base = rows if self.rows is None else self.rows[rows]
        return GrmOperator(self.G, self.std, rows=base, dtype=self.dtype, memory=self.memory,
                           n_tasks=self.n_tasks, label=self.label, kernel=self.kernel)

    def plan(self, n_cols: int) -> PassPlan:
        """The memory plan of a pass with ``n_cols`` vectors (raises :class:`InputError` if it cannot fit)."""
        return plan_pass(self.n, n_cols, self.bounds or [(0, 1)], self.memory,
                         self.n_tasks or total_threads(), self.dtype.itemsize)

    def _prepare(self, M, desc: str | None):
        """The block as float64, its memory plan (checked) and the pass's progress label."""
        M = np.asarray(M, dtype=np.float64)
        if M.ndim != 2 or M.shape[0] != self.n:
            raise ValueError(f"the block must have {self.n} rows, got shape {M.shape}")
        plan = self.plan(M.shape[1])
        self.passes += 1
        if desc is None:
            desc = f"{self.label} {self.passes}" if self.label else "pass over X"
        return M, plan, desc

    def apply(self, M: np.ndarray, *, want_diag: bool = False, desc: str | None = None):
        """``(K M, diag K or None)`` in one pass over the genotypes.

        Tasks take contiguous, equally wide groups of variant columns (:func:`plan_pass`); each
        reads every chunk of its group once, multiplies it with the operator's ``kernel`` and
        accumulates ``X_v (X_vᵀ M)`` in float64; the partial products are summed as they arrive. Cost:
        ``2 n p b`` multiply-adds for b columns, one read of every genotype.
        """
        M, plan, desc = self._prepare(M, desc)
        s = self.std
        return self._run_pass(_apply_task, M, desc, lambda Md: [
            (self.G, self.rows, s.center, s.scale, grp, plan.sub_width, Md, self.dtype, s.n_kept, want_diag,
             self.kernel)
            for grp in plan.groups])

    def _run_pass(self, task_fn, M: np.ndarray, desc: str, task_args, combine=_sum_parts):
        """Run one pass of ``task_fn`` over the tasks ``task_args(Md)`` (Md: the block of vectors as
        the tasks receive it) and combine their partial products as they arrive; the pass runs
        again (at most :data:`LOST_BLOCK_RETRIES` times) when the block sent to the workers is lost."""
        import dask

        task = dask.delayed(task_fn, pure=False)
        # the block of vectors in the tasks' precision, sent to every worker before the tasks
        # start (embedded in the graph, it would reach the second worker only through the first)
        Mc = np.ascontiguousarray(M, dtype=self.dtype)
        client = current_client()
        for attempt in range(LOST_BLOCK_RETRIES + 1):
            Md = client.scatter(Mc, broadcast=True, hash=False) if client is not None else dask.delayed(Mc, pure=True)
            tasks = [task(*args) for args in task_args(Md)]
            try:
                return run_tasks(tasks, desc, combine=combine)
            except concurrent.futures.CancelledError as exc:
                # the scattered block is lost when every worker that held it dies (a worker that
                # joined after the broadcast has none): the pass runs again with a new copy
                if client is None or attempt == LOST_BLOCK_RETRIES:
                    raise
                log.warning("%s: the block of vectors sent to the workers was lost with a worker (%s); "
                            "the pass runs again", desc, exc)

    def xt(self, W: np.ndarray, desc: str | None = None) -> np.ndarray:
        """``Xᵀ W`` (p_all x m; zero rows for dropped variants) in one pass over the genotypes."""
        import dask

        W, plan, desc = self._prepare(W, desc)
        task = dask.delayed(_xt_task, pure=False)
        Wd = dask.delayed(np.ascontiguousarray(W, dtype=self.dtype), pure=True)
        s = self.std
        parts = run_tasks([task(self.G, self.rows, s.center, s.scale, grp, plan.sub_width, Wd, self.dtype)
                           for grp in plan.groups], desc)
        out = np.zeros((self.G.shape[1], W.shape[1]))
        for part in parts:
            for a, b, block in part:
                out[a:b] = block
        out[~s.keep] = 0.0
        return out


class DenseOperator:
    """The :class:`GrmOperator` interface over a GRM held in memory (n x n).

    >>> op = DenseOperator(np.diag([2.0, 1.0]))
    >>> op.apply(np.ones((2, 1)), want_diag=True)[1]
    array([2., 1.])
    """

    def __init__(self, K: np.ndarray):
        K = np.asarray(K, dtype=np.float64)
        if K.ndim != 2 or K.shape[0] != K.shape[1]:
            raise InputError(f"K must be square, got shape {K.shape}")
        self.K = K

    @property
    def n(self) -> int:
        return int(self.K.shape[0])

    def restrict(self, rows) -> "DenseOperator":
        rows = np.asarray(rows, dtype=np.int64)
        return DenseOperator(self.K[np.ix_(rows, rows)])

    def plan(self, n_cols: int) -> None:
        return None

    def apply(self, M: np.ndarray, *, want_diag: bool = False, desc: str = ""):
        M = np.asarray(M, dtype=np.float64)
        return self.K @ M, (np.diag(self.K).copy() if want_diag else None)
