"""Spectra of the GRM: ``K = U diag(s) Uᵀ`` (exact) or its top-k part plus a tail.

A :class:`Spectrum` is what REML needs: eigenvectors ``U`` (n x k), eigenvalues
``s`` (k, descending), ``tr K`` and, when ``k < n``, the tail eigenvalue
``λ̄ = (tr K − Σ s) / (n − k)`` shared by the remaining directions
(DESIGN.md §2 "Low rank").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .genotypes import standardize_block

log = logging.getLogger("bigmm")


@dataclass(frozen=True)
class Spectrum:
    """Eigenpairs of a GRM over ``n`` samples.

    Attributes
    ----------
    U : (n, k) ndarray
        Orthonormal eigenvectors, columns ordered by decreasing eigenvalue.
    s : (k,) ndarray
        Eigenvalues, descending, clipped at 0 (K is positive semi-definite).
    n : int
    trace_K : float
        ``tr K`` (needed for the tail when ``k < n``).
    diag_K : (n,) ndarray or None
        The diagonal of K (for ``mean_diag_K`` and ``pve`` on sample subsets).
    method : str
        "exact" or "randomized".
    rank : int
        Numerical rank of K (eigenvalues above ``n · eps · max(s)``).
    diagnostics : dict
    """

    U: np.ndarray
    s: np.ndarray
    n: int
    trace_K: float
    diag_K: np.ndarray | None = None
    method: str = "exact"
    rank: int = 0
    diagnostics: dict = field(default_factory=dict)
    #: tr(K₂²) of the tail K₂ = (I − UUᵀ) K (I − UUᵀ) (0 for a full spectrum; NaN if unknown)
    tail_trace_K2: float = 0.0
    #: ‖(I − UUᵀ) K u_i‖² per eigenpair: the coupling left by inexact eigenvectors (None = 0)
    ritz_cross: np.ndarray | None = None

    @property
    def k(self) -> int:
        return int(self.s.shape[0])

    @property
    def n_tail(self) -> int:
        return self.n - self.k

    def top(self, k: int) -> "Spectrum":
        """The reduced spectrum of the top ``k`` eigenpairs of a full spectrum."""
        if self.n_tail:
            raise ValueError("top() needs a full spectrum")
        if not 0 < k <= self.k:
            raise ValueError(f"k must be in 1..{self.k}")
        return Spectrum(U=self.U[:, :k], s=self.s[:k], n=self.n, trace_K=self.trace_K,
                        diag_K=self.diag_K, method=f"{self.method} top {k}", rank=min(self.rank, k),
                        diagnostics=self.diagnostics, tail_trace_K2=float(np.sum(self.s[k:] ** 2)))

    @property
    def tail(self) -> float:
        """``λ̄``, the eigenvalue shared by the n − k directions not in U."""
        if self.n_tail == 0:
            return 0.0
        return max(0.0, (self.trace_K - float(self.s.sum())) / self.n_tail)

    def subset(self, rows: np.ndarray) -> "Spectrum":
        """The spectrum of the model restricted to the samples ``rows``.

        Exact spectrum: eigendecomposition of ``K[rows][:, rows]`` (O(n_o³)).
        Reduced spectrum: the reduced model ``K₁ = U S Uᵀ + λ̄ (I − U Uᵀ)`` restricted
        to the rows is ``λ̄ I + U_o (S − λ̄) U_oᵀ``; with ``U_o = Q R`` and
        ``R (S − λ̄) Rᵀ = E Γ Eᵀ`` it has eigenvectors ``Q E``, eigenvalues ``λ̄ + Γ``
        and the same tail ``λ̄``: again a reduced spectrum, in O(n_o k²), with no
        pass over the genotypes. The tail's excess second moment (for the
        sandwich SE) is scaled by (n_o / n)², as the off-diagonal pairs that
        dominate it are.
        """
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        n_o = rows.size
        diag = self.diag_K[rows] if self.diag_K is not None else None
        if not self.n_tail:
            Ur = self.U[rows]
            sub = exact_spectrum((Ur * self.s) @ Ur.T)
            return sub
        from scipy.linalg import eigh, qr

        lam = self.tail
        Q, R = qr(self.U[rows], mode="economic")
        M0 = (R * (self.s - lam)) @ R.T
        gam, E = eigh(0.5 * (M0 + M0.T))
        gam, E = gam[::-1], E[:, ::-1]
        U = np.ascontiguousarray(Q @ E)
        s = np.maximum(lam + gam, 0.0)
        k = s.size
        excess = max(0.0, self.tail_trace_K2 - self.n_tail * lam ** 2) * (n_o / self.n) ** 2
        return Spectrum(U=U, s=s, n=n_o, trace_K=lam * n_o + float(gam.sum()), diag_K=diag,
                        method=self.method, rank=k, diagnostics={"subset_of": self.n},
                        tail_trace_K2=(n_o - k) * lam ** 2 + excess)


def exact_spectrum(K: np.ndarray) -> Spectrum:
    """All eigenpairs of a symmetric GRM by ``scipy.linalg.eigh`` (LAPACK syevd).

    Cost: O(n³) flops and 2 n² doubles of memory (K and U).
    """
    from scipy.linalg import eigh

    K = np.asarray(K, dtype=np.float64)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"K must be square, got shape {K.shape}")
    n = K.shape[0]
    diag = np.diag(K).copy()
    trace = float(diag.sum())
    s, U = eigh(K, driver="evd", check_finite=True)
    s = s[::-1].copy()
    U = np.ascontiguousarray(U[:, ::-1])
    smin = float(s[-1])
    tol = n * np.finfo(float).eps * max(float(s[0]), 0.0)
    rank = int((s > tol).sum())
    np.maximum(s, 0.0, out=s)
    return Spectrum(U=U, s=s, n=n, trace_K=trace, diag_K=diag, method="exact", rank=rank,
                    diagnostics={"min_eigenvalue_before_clip": smin})


# --------------------------------------------------------------------------------------
# Randomized top-k eigendecomposition straight from the genotypes
# --------------------------------------------------------------------------------------

#: Defaults, from the measurements in docs/lowrank.md: with l = k + 50 and q = 4 (6 passes
#: over X) well-separated (structure) eigenvalues are exact to 1e-13 and ĥ² stays unbiased and
#: calibrated; bulk Ritz values come out 3-10% low, which costs 5-20% of the efficiency of the
#: exact top-k model. q = 10 (12 passes) recovers most of it; a larger k buys more than passes.
DEFAULT_OVERSAMPLE = 50
DEFAULT_POWER_ITERS = 4
DEFAULT_PROBES = 30


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


def plan_pass(n: int, n_cols: int, chunk_bounds: list[tuple[int, int]], memory: int | None,
              n_tasks: int, itemsize: int = 8) -> PassPlan:
    """Cut a pass over X (n rows, variant chunks ``chunk_bounds``) into tasks.

    A task holds the block of vectors it multiplies and its partial product
    (``2 · n · n_cols · 8`` bytes), one int8 slab of a variant chunk over the rows
    (``n · width``) and its standardized part (``n · sub_width · itemsize``);
    ``sub_width`` is the largest that fits ``memory`` (bytes per task).

    Raises
    ------
    InputError
        When not even one standardized column fits, with the memory needed.
    """
    from .errors import InputError

    width = max(b - a for a, b in chunk_bounds)
    fixed = 2 * n * n_cols * 8 + n * width + n * 8
    per_col = n * itemsize
    if memory is None:
        sub = width
    else:
        sub = (int(memory) - fixed) // per_col
        if sub < 1:
            need = fixed + per_col * min(width, 64)
            raise InputError(
                f"memory limit {memory / 2**20:.0f} MiB per task is too small for a pass over X with "
                f"n = {n} samples and {n_cols} vectors: a task needs at least {need / 2**20:.0f} MiB "
                f"(2·n·{n_cols}·8 bytes for the vectors and their product, plus a genotype slab); "
                f"raise cluster.memory_limit, use fewer threads per worker, or lower spectrum.rank")
        sub = min(sub, width)
    n_tasks = max(1, min(n_tasks, len(chunk_bounds)))
    groups = [list(g) for g in np.array_split(np.arange(len(chunk_bounds)), n_tasks) if len(g)]
    groups = [[chunk_bounds[i] for i in g] for g in groups]
    return PassPlan(n=n, n_cols=n_cols, chunk_width=width, sub_width=int(sub),
                    task_bytes=int(fixed + per_col * sub), groups=groups)


def _apply_task(G, rows, center, scale, bounds, sub_width, M, dtype, p_kept, want_diag):
    """Σ over the variant chunks ``bounds`` of X_v (X_vᵀ M) / p, and Σ of squared entries per row."""
    n = M.shape[0]
    acc = np.zeros(M.shape, dtype=np.float64)
    diag = np.zeros(n) if want_diag else None
    Md = M.astype(dtype, copy=False)
    buf = np.empty(n * sub_width, dtype=dtype)
    for a, b in bounds:
        if not scale[a:b].any():
            continue
        g = np.asarray(G[:, a:b])
        if rows is not None:
            g = g[rows]
        for w0 in range(0, b - a, sub_width):
            w1 = min(b - a, w0 + sub_width)
            sc = scale[a + w0:a + w1]
            if not sc.any():
                continue
            X = standardize_block(g[:, w0:w1], center[a + w0:a + w1], sc, dtype, out=buf)
            acc += X @ (X.T @ Md)
            if want_diag:
                diag += np.einsum("ij,ij->i", X, X)
    acc /= p_kept
    if want_diag:
        diag /= p_kept
    return acc, diag


def apply_grm(G, std, M: np.ndarray, *, rows=None, want_diag: bool = False, dtype=np.float64,
              memory: int | None = None, n_tasks: int | None = None, desc: str = "pass over X"):
    """``K M = X (Xᵀ M) / p`` in one pass over the genotypes, never forming K.

    Tasks take contiguous groups of variant chunks; each reads every chunk of its
    group once (all rows), standardizes it and accumulates ``X_v (X_vᵀ M)``. The
    partial products are summed as they arrive. With ``want_diag`` the diagonal
    of K (``Σ_j x_ij² / p``) comes from the same pass.

    Returns
    -------
    (K M, diag K or None)
    """
    import dask

    from .tasks import run_tasks, total_threads

    n_all, p = G.shape
    n = n_all if rows is None else len(rows)
    if M.shape[0] != n:
        raise ValueError(f"M has {M.shape[0]} rows, expected {n}")
    chunks = getattr(G, "chunks", None)
    cw = int(chunks[1]) if chunks is not None and isinstance(chunks[1], (int, np.integer)) else 2048
    bounds = [(a, min(p, a + cw)) for a in range(0, p, cw) if std.scale[a:min(p, a + cw)].any()]
    plan = plan_pass(n, M.shape[1], bounds, memory, n_tasks or 2 * total_threads(),
                     np.dtype(dtype).itemsize)
    task = dask.delayed(_apply_task, pure=False)
    Md = dask.delayed(M, pure=True)
    tasks = [task(G, rows, std.center, std.scale, grp, plan.sub_width, Md, dtype, std.n_kept, want_diag)
             for grp in plan.groups]

    def combine(state, part):
        if state is None:
            return part
        acc, diag = state
        acc += part[0]
        if diag is not None:
            diag += part[1]
        return acc, diag

    return run_tasks(tasks, desc, combine=combine)


def cholesky_qr2(Y: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the columns of a tall-skinny Y by CholeskyQR2.

    Two rounds of ``R = chol(YᵀY)``, ``Y ← Y R⁻¹``: the Gram matrix is a sum over
    row blocks (one reduction in a distributed setting) and the second round
    restores orthogonality to working precision when cond(Y) < ~1e7. A
    rank-deficient or worse-conditioned Y (e.g. rank K < l) falls back to
    Householder QR, which is always orthonormal.
    """
    from scipy.linalg import cholesky, solve_triangular

    Q = Y
    try:
        for _ in range(2):
            R = cholesky(Q.T @ Q, lower=False, check_finite=True)
            if np.min(np.abs(np.diag(R))) <= 1e-7 * np.max(np.abs(np.diag(R))):
                raise np.linalg.LinAlgError("ill-conditioned")
            Q = solve_triangular(R, Q.T, trans="T", lower=False).T
    except (np.linalg.LinAlgError, ValueError):
        Q, _ = np.linalg.qr(Y)
    return np.ascontiguousarray(Q)


def randomized_spectrum(G, std, rank: int, *, oversample: int | None = None,
                        power_iters: int | None = None, seed: int = 0,
                        n_probes: int = DEFAULT_PROBES, rows=None, dtype=np.float64,
                        memory: int | None = None, n_tasks: int | None = None,
                        checkpoint=None) -> Spectrum:
    """Top-``rank`` eigenpairs of ``K = X Xᵀ / p`` from the genotypes, without forming K.

    Randomized subspace iteration (Halko, Martinsson & Tropp 2011, Alg. 4.4 and
    5.3): ``Q ← orth(K Ω)`` for a Gaussian ``Ω`` (n x l, ``l = rank + oversample``),
    then ``q`` power iterations ``Q ← orth(K Q)`` and Rayleigh–Ritz on
    ``T = Qᵀ K Q``. Each application of K is one pass over X (:func:`apply_grm`),
    so the cost is ``q + 2`` passes and ``2 n p l`` multiply-adds per pass;
    memory per task is ``O(n l)`` plus a genotype slab (see :func:`plan_pass`).

    The first pass also gives ``diag K`` (so ``tr K`` is exact) and ``K 1``; the
    last pass also applies K to ``n_probes`` Rademacher vectors, giving a
    deflated Hutchinson estimate of the tail's ``tr K₂²`` for the calibrated SE.
    Ritz residuals ``‖K u − s u‖ / s`` come from the last pass at no extra cost.

    Parameters
    ----------
    G : array-like (n_all, p) int8
        Genotypes (zarr array of a cohort store, or NumPy).
    std : Standardization
        Variant filters and standardization (from :func:`bigmm.standardization`).
    rank : int
        Number of eigenpairs k, ``0 < k < n``.
    oversample, power_iters : int, optional
        ``l − k`` and ``q``; defaults :data:`DEFAULT_OVERSAMPLE`, :data:`DEFAULT_POWER_ITERS`.
    seed : int
        Seed of Ω and of the probes; recorded in the diagnostics.
    rows : int array, optional
        Samples (rows of G) the spectrum is over; default all.
    memory : int, optional
        Bytes one task may use; the pass is cut to fit or an error says what is needed.
    checkpoint : object, optional
        With ``save(state)`` and ``load() -> state or None``: the state after each
        pass (the orthonormal block Q, diag K, K 1) is saved, and a run resumes
        after the last saved pass.

    References
    ----------
    N. Halko, P. G. Martinsson, J. A. Tropp (2011), Finding structure with randomness,
    SIAM Review 53(2). M. F. Hutchinson (1990), A stochastic estimator of the trace.
    """
    import time

    from scipy.linalg import eigh

    from .errors import InputError

    if std is None or not hasattr(std, "scale"):
        raise InputError("randomized spectrum: no variant statistics; compute them first with "
                         "bigmm.variant_stats and bigmm.standardization")
    n_all, p = G.shape
    if std.scale.shape[0] != p:
        raise InputError(f"variant statistics are for {std.scale.shape[0]} variants, the genotypes have {p}")
    rows = None if rows is None else np.asarray(rows, dtype=np.int64)
    n = n_all if rows is None else rows.size
    oversample = DEFAULT_OVERSAMPLE if oversample is None else int(oversample)
    q = DEFAULT_POWER_ITERS if power_iters is None else int(power_iters)
    if not isinstance(rank, (int, np.integer)) or not 0 < rank < n:
        raise InputError(f"spectrum rank must be between 1 and n − 1 = {n - 1} (got {rank}); "
                         f"for all eigenpairs use method: exact")
    if q < 0:
        raise InputError(f"power_iters must be ≥ 0 (got {q})")
    if oversample < 0:
        raise InputError(f"oversample must be ≥ 0 (got {oversample})")
    if n_probes < 0:
        raise InputError(f"probes must be ≥ 0 (got {n_probes})")
    l = min(n, rank + oversample)
    # check the memory plan of the widest pass before any computation
    chunks = getattr(G, "chunks", None)
    cw = int(chunks[1]) if chunks is not None and isinstance(chunks[1], (int, np.integer)) else 2048
    plan_pass(n, max(l + 1, l + n_probes), [(0, min(cw, p))], memory, 1, np.dtype(dtype).itemsize)
    t0 = time.perf_counter()
    kw = dict(rows=rows, dtype=dtype, memory=memory, n_tasks=n_tasks)
    n_pass = q + 2
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None and state["Q"].shape == (n, l) and 1 <= state["pass"] <= q + 1:
        done, Q, diag, K1 = int(state["pass"]), state["Q"], state["diag"], state["K1"]
        log.info("randomized spectrum: resuming after pass %d of %d (checkpoint)", done, n_pass)
    else:
        # Ω and the probes come from separate streams of the seed, so a resumed run draws
        # exactly what an uninterrupted one does
        Omega = np.random.default_rng([seed, 0]).standard_normal((n, l))
        Y, diag = apply_grm(G, std, np.hstack([Omega, np.ones((n, 1))]), want_diag=True,
                            desc=f"randomized spectrum pass 1/{n_pass}", **kw)
        K1 = Y[:, -1].copy()
        Q = cholesky_qr2(Y[:, :l])
        del Y, Omega
        done = 1
        if checkpoint is not None:
            checkpoint.save({"pass": done, "Q": Q, "diag": diag, "K1": K1})
    for i in range(done, q + 1):
        Y, _ = apply_grm(G, std, Q, desc=f"randomized spectrum pass {i + 1}/{n_pass}", **kw)
        Q = cholesky_qr2(Y)
        del Y
        if checkpoint is not None:
            checkpoint.save({"pass": i + 1, "Q": Q, "diag": diag, "K1": K1})
    probes = np.random.default_rng([seed, 1]).choice(np.array([-1.0, 1.0]), size=(n, n_probes))
    Y, _ = apply_grm(G, std, np.hstack([Q, probes]), desc=f"randomized spectrum pass {n_pass}/{n_pass}", **kw)
    YQ, Yp = Y[:, :l], Y[:, l:]
    T = Q.T @ YQ
    theta, W = eigh(0.5 * (T + T.T))
    theta, W = theta[::-1], W[:, ::-1]
    U = Q @ W
    KU = YQ @ W
    with np.errstate(divide="ignore", invalid="ignore"):
        resid = np.linalg.norm(KU - U * theta, axis=0) / np.abs(theta)
    k = rank
    U1 = np.ascontiguousarray(U[:, :k])
    s1 = np.maximum(theta[:k], 0.0)
    orth = float(np.linalg.norm(U1.T @ U1 - np.eye(k)))
    # coupling of each Ritz vector with the tail: ‖(I − U₁U₁ᵀ) K u_i‖²
    KU1 = KU[:, :k]
    C = KU1 - U1 @ (U1.T @ KU1)
    cross = np.sum(C * C, axis=0)
    if n_probes:
        # deflated Hutchinson: E‖P₂ K P₂ ω‖² = tr((P₂ K P₂)²), P₂ = I − U₁U₁ᵀ
        v = Yp - KU1 @ (U1.T @ probes)
        v -= U1 @ (U1.T @ v)
        tail_K2 = float(np.mean(np.sum(v * v, axis=0)))
    else:
        tail_K2 = float("nan")
    trace = float(diag.sum())
    tol = n * np.finfo(float).eps * max(float(theta[0]), 0.0)
    diagnostics = {
        "rank": k, "oversample": l - k, "power_iters": q, "seed": seed, "passes_over_X": n_pass,
        "ritz_residuals": resid[:k].tolist(), "max_ritz_residual": float(np.nanmax(resid[:k])),
        "orthonormality_error": orth, "probes": n_probes, "tail_trace_K2": tail_K2,
        "sum_K": float(K1.sum()), "seconds": round(time.perf_counter() - t0, 3),
        "compute_dtype": np.dtype(dtype).name,
    }
    if orth > 1e-8:
        from .errors import BigmmError

        raise BigmmError(f"randomized spectrum: eigenvectors not orthonormal (‖UᵀU − I‖ = {orth:.2e})")
    return Spectrum(U=U1, s=s1, n=n, trace_K=trace, diag_K=diag, method="randomized",
                    rank=int((s1 > tol).sum()), diagnostics=diagnostics,
                    tail_trace_K2=tail_K2, ritz_cross=cross)
