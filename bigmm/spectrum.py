"""Spectra of the GRM: ``K = U diag(s) Uᵀ`` (exact) or its top-k part plus a tail.

A :class:`Spectrum` is what REML needs: eigenvectors ``U`` (n x k), eigenvalues
``s`` (k, descending), ``tr K`` and, when ``k < n``, the tail eigenvalue
``λ̄ = (tr K − Σ s) / (n − k)`` shared by the remaining directions
(docs/math.md, "The reduced spectrum").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .errors import BigmmError, InputError

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

    def __repr__(self) -> str:
        top = ", ".join(f"{v:.4g}" for v in self.s[:3]) + (", ..." if self.k > 3 else "")
        tail = f", tail eigenvalue {self.tail:.4g} x {self.n_tail}" if self.n_tail else ""
        return (f"Spectrum({self.method}, n={self.n}, k={self.k}, rank={self.rank}, tr K={self.trace_K:.6g}, "
                f"eigenvalues [{top}]{tail})")

    def _repr_html_(self) -> str:
        import html

        rows = [("method", self.method), ("samples n", self.n), ("eigenpairs k", self.k), ("rank", self.rank),
                ("tr K", f"{self.trace_K:.6g}"),
                ("top eigenvalues", ", ".join(f"{v:.4g}" for v in self.s[:5]))]
        if self.n_tail:
            rows += [("tail eigenvalue", f"{self.tail:.4g} (x {self.n_tail})"),
                     ("share of tr K in the top k", f"{float(self.s.sum()) / self.trace_K:.3f}" if self.trace_K else "NA")]
        return ("<table><caption>Spectrum</caption>"
                + "".join(f"<tr><th>{html.escape(str(a))}</th><td>{html.escape(str(b))}</td></tr>" for a, b in rows)
                + "</table>")

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


def exact_spectrum(K: np.ndarray, round_off: float | None = None) -> Spectrum:
    """All eigenpairs of a symmetric GRM by ``scipy.linalg.eigh`` (LAPACK syevd).

    Cost: O(n³) flops and 2 n² doubles of memory (K and U).

    Eigenvalues below 0 are set to 0 (K = X Xᵀ / p is positive semi-definite; its null
    directions come out of ``eigh`` as ± round-off). ``diagnostics["negative_eigenvalues"]``
    counts those below ``−n · round_off · s_max``, i.e. negative beyond the round-off of K's
    entries (``round_off``: their relative precision, default float64's; float32 for a GRM read
    from a float32 file), and ``min_eigenvalue_before_clip`` is the most negative: a K with such
    eigenvalues is not a GRM of any genotypes, and REML uses its nearest positive semi-definite
    matrix (in Frobenius norm) instead.

    Examples
    --------
    >>> import numpy as np
    >>> spec = exact_spectrum(np.array([[2.0, 1.0], [1.0, 2.0]]))
    >>> spec.s.round(12).tolist(), spec.n, spec.k
    ([3.0, 1.0], 2, 2)
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
    eps = np.finfo(float).eps if round_off is None else round_off
    negative = int((s < -n * eps * max(float(s[0]), 0.0)).sum())
    np.maximum(s, 0.0, out=s)
    return Spectrum(U=U, s=s, n=n, trace_K=trace, diag_K=diag, method="exact", rank=rank,
                    diagnostics={"min_eigenvalue_before_clip": smin, "negative_eigenvalues": negative})


# --------------------------------------------------------------------------------------
# Randomized top-k eigendecomposition straight from the genotypes
# --------------------------------------------------------------------------------------

#: Defaults, from the measurements in docs/benchmarks.md and docs/lowrank.md. Block Krylov
#: (the default algorithm) with l = k + 50 and q = 3 (4 passes over X) gives well-separated
#: (structure) eigenvalues to round-off and bulk-edge ones far closer than subspace iteration's
#: q = 4 (6 passes); subspace iteration keeps its measured q = 4.
DEFAULT_OVERSAMPLE = 50
DEFAULT_POWER_ITERS = {"krylov": 3, "subspace": 4}
DEFAULT_PROBES = 30


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


def pass_columns(l: int, n_probes: int, algorithm: str = "krylov") -> int:
    """Vectors in the widest pass of :func:`randomized_spectrum` (for memory plans)."""
    if algorithm == "krylov":
        return l + 1 + n_probes  # pass 1: the start block, the ones vector and the probes
    return max(l + 1, l + n_probes)


def basis_width(n: int, l: int, q: int, algorithm: str = "krylov") -> int:
    """Columns of the randomized spectrum's basis: the Krylov space ``(q + 1) l`` capped at n
    (the space cannot be wider than R^n; a small cohort reaches the cap and its Rayleigh–Ritz is
    then exact), or the subspace block l (itself ≤ n, :func:`subspace_width`).

    >>> basis_width(100_000, 250, 3), basis_width(379, 100, 3), basis_width(379, 100, 3, "subspace")
    (1000, 379, 100)
    """
    return min(int(n), (q + 1) * l) if algorithm == "krylov" else min(int(n), l)


def driver_bytes(n: int, l: int, q: int, algorithm: str = "krylov") -> int:
    """Memory the driver needs for :func:`randomized_spectrum`: the Krylov basis
    (n x :func:`basis_width`) or the subspace block, plus about five n x l work arrays (a pass's
    product, its remainder, the next block, the Ritz vectors), all float64."""
    return 8 * n * (basis_width(n, l, q, algorithm) + 5 * l)


def check_driver_memory(n: int, l: int, q: int, algorithm: str = "krylov") -> None:
    """Raise :class:`InputError` before any pass when the driver cannot hold what it needs."""
    import psutil

    need = driver_bytes(n, l, q, algorithm)
    avail = psutil.virtual_memory().available
    if need > avail:
        from dask.utils import format_bytes

        hint = (f"use spectrum.algorithm: subspace (needs {format_bytes(driver_bytes(n, l, q, 'subspace'))}, "
                f"more passes for the same accuracy), fewer power_iters, or " if algorithm == "krylov" else "")
        raise InputError(f"randomized spectrum ({algorithm}, n = {n}, l = {l}, power_iters = {q}) needs "
                         f"{format_bytes(need)} on the driver but {format_bytes(avail)} is available; "
                         f"{hint}a lower spectrum.rank or oversample, or run the driver on a larger machine")


def _orthonormal_extension(V: np.ndarray, Y: np.ndarray, scale: float, tol: float = 1e-10,
                           basis: bool = True, max_cols: int | None = None):
    """An orthonormal basis of the part of span(Y) orthogonal to the orthonormal V.

    Block classical Gram–Schmidt applied twice (CGS2: orthogonal to working precision), then a
    rank-revealing step on the remainder W: from the eigendecomposition of its Gram matrix
    ``Wᵀ W = E Λ Eᵀ``, directions with ``√λ < tol · scale`` are dropped — the Krylov space is
    exhausted in them (rank K reached) — and the kept ones, ``W E Λ^(-1/2)``, are projected out
    of V once more and orthonormalised by CholeskyQR2. All steps are matrix products over the
    n rows (no Householder QR of an n-row block, which is 5x slower here).

    Returns (B, C, W): the new block B (n x b, b ≤ Y's columns, possibly 0; None when not
    ``basis``: the last pass needs only C and W), the coefficients C = Vᵀ Y and the remainder
    W = Y − V C. ``max_cols`` caps b (the largest directions are kept): V and B together never
    exceed the n dimensions there are, where the remainder's extra directions are round-off.
    """
    from scipy.linalg import cholesky, eigh, solve_triangular

    C = V.T @ Y
    W = Y - V @ C
    C2 = V.T @ W
    W -= V @ C2
    C += C2
    if not basis:
        return None, C, W
    lam, E = eigh(W.T @ W)
    keep = lam > (tol * scale) ** 2
    if max_cols is not None and keep.sum() > max_cols:
        keep[: lam.size - max(0, max_cols)] = False  # eigh sorts ascending: keep the largest
    if not keep.any():
        return np.empty((Y.shape[0], 0)), C, W
    sig = np.sqrt(lam[keep])
    B = W @ (E[:, keep] / sig)
    # whitening by the Gram matrix leaves B orthonormal to ~eps·cond², and orthogonal to V to
    # ~eps·scale/σ_min: one more projection when small directions were kept, then a Cholesky QR
    # round (two when cond is large)
    if sig[0] < 1e-4 * scale:
        B -= V @ (V.T @ B)
    rounds = 1 if sig[-1] < 1e4 * sig[0] else 2
    try:
        for _ in range(rounds):
            R = cholesky(B.T @ B, lower=False)
            B = solve_triangular(R, B.T, trans="T", lower=False).T
    except np.linalg.LinAlgError:  # numerically dependent directions: Householder, always orthonormal
        B -= V @ (V.T @ B)
        B, _ = np.linalg.qr(B - V @ (V.T @ B))
    return np.asfortranarray(B), C, W


def subspace_width(rank: int, oversample: int | None, n: int) -> int:
    """``l = rank + oversample`` (default :data:`DEFAULT_OVERSAMPLE`), at most n: the width of
    the randomized spectrum's blocks.

    >>> subspace_width(200, None, 100_000), subspace_width(200, 0, 100_000), subspace_width(50, None, 60)
    (250, 200, 60)
    """
    return min(int(n), int(rank) + (DEFAULT_OVERSAMPLE if oversample is None else int(oversample)))


def randomized_spectrum(op, rank: int, *, oversample: int | None = None,
                        power_iters: int | None = None, seed: int = 0,
                        n_probes: int = DEFAULT_PROBES, checkpoint=None,
                        algorithm: str = "krylov") -> Spectrum:
    """Top-``rank`` eigenpairs of ``K = X Xᵀ / p`` from the genotypes, without forming K.

    ``algorithm="krylov"`` (default): randomized block Krylov iteration (block Lanczos with full
    reorthogonalisation; Musco & Musco 2015). With ``V₀ = orth(Ω)`` for a Gaussian ``Ω``
    (n x l, ``l = rank + oversample``), pass j applies K to the block ``V_j`` and the part of
    ``K V_j`` orthogonal to ``V₀ … V_j`` becomes ``V_{j+1}``; after ``q + 1`` passes
    (``q = power_iters``) Rayleigh–Ritz runs on the whole Krylov space
    ``span{Ω, KΩ, …, K^q Ω}`` of dimension ``(q + 1) l``. Every product K V_j is already known,
    so ``T = Vᵀ K V`` needs no extra pass, and the Ritz residuals are exact: ``K V − V T`` is
    the remainder of the last block. The space contains the subspace iteration's ``K^q Ω``,
    so its Ritz values are at least as accurate for the same number of passes, and far more
    for eigenvalues at the edge of a flat bulk (docs/benchmarks.md). The driver holds the basis:
    ``8 n (q + 1) l`` bytes.

    ``algorithm="subspace"``: randomized subspace iteration (Halko, Martinsson & Tropp 2011,
    Alg. 4.4 and 5.3): ``Q ← orth(K Ω)``, ``q`` power iterations ``Q ← orth(K Q)``, then
    Rayleigh–Ritz on ``Qᵀ K Q``: ``q + 2`` passes.

    Each application of K is one pass over X (:meth:`bigmm.passes.GrmOperator.apply`):
    ``2 n p l`` multiply-adds and one read of every genotype; memory per task is ``O(n l)``
    plus a genotype slab (see :func:`bigmm.passes.plan_pass`). The first pass also gives ``diag K`` (so ``tr K`` is exact) and
    ``K 1``; K applied to ``n_probes`` Rademacher vectors gives a deflated Hutchinson
    estimate of the tail's ``tr K₂²`` for the calibrated SE.

    Parameters
    ----------
    op : GrmOperator
        K of the samples the spectrum is over (:class:`bigmm.passes.GrmOperator`: genotypes,
        standardization, rows, precision and memory per task).
    rank : int
        Number of eigenpairs k, ``0 < k < n``.
    oversample, power_iters : int, optional
        ``l − k`` and ``q``; defaults :data:`DEFAULT_OVERSAMPLE` and
        :data:`DEFAULT_POWER_ITERS` (for the algorithm).
    seed : int
        Seed of Ω and of the probes; recorded in the diagnostics.
    checkpoint : object, optional
        With ``save(state)`` and ``load() -> list of states or None``: what each pass adds
        (a dict with its number under "pass") is saved after the pass, and a run resumes
        after the last saved pass.
    algorithm : "krylov" or "subspace"

    References
    ----------
    C. Musco, C. Musco (2015), Randomized block Krylov methods for stronger and faster
    approximate singular value decomposition, NeurIPS. N. Halko, P. G. Martinsson, J. A.
    Tropp (2011), Finding structure with randomness, SIAM Review 53(2). M. F. Hutchinson
    (1990), A stochastic estimator of the trace.

    Examples
    --------
    >>> import numpy as np, bigmm
    >>> G = np.random.default_rng(0).binomial(2, 0.3, size=(200, 400)).astype(np.int8)
    >>> std = bigmm.standardization(bigmm.variant_stats(G))
    >>> spec = bigmm.randomized_spectrum(bigmm.GrmOperator(G, std), 5, seed=1, algorithm="subspace")
    >>> exact = bigmm.exact_spectrum(bigmm.grm(G, std))
    >>> spec.k, spec.n, bool(np.allclose(spec.s, exact.s[:5], rtol=1e-2))
    (5, 200, True)
    """
    import time

    if not hasattr(op, "apply"):
        raise InputError("randomized_spectrum takes a GrmOperator: "
                         "bigmm.GrmOperator(store.genotypes, std), then randomized_spectrum(op, rank)")
    if algorithm not in DEFAULT_POWER_ITERS:
        raise InputError(f"spectrum algorithm must be one of {sorted(DEFAULT_POWER_ITERS)} (got {algorithm!r})")
    n = op.n
    q = DEFAULT_POWER_ITERS[algorithm] if power_iters is None else int(power_iters)
    if not isinstance(rank, (int, np.integer)) or not 0 < rank < n:
        raise InputError(f"spectrum rank must be between 1 and n − 1 = {n - 1} (got {rank}); "
                         f"for all eigenpairs use method: exact")
    if oversample is not None and oversample < 0:
        raise InputError(f"oversample must be ≥ 0 (got {oversample})")
    if q < 0:
        raise InputError(f"power_iters must be ≥ 0 (got {q})")
    if n_probes < 0:
        raise InputError(f"probes must be ≥ 0 (got {n_probes})")
    l = subspace_width(rank, oversample, n)
    if algorithm == "krylov" and (q + 1) * l > n:
        log.info("randomized spectrum: the Krylov space (power_iters + 1)·(rank + oversample) = %d·%d = %d "
                 "is wider than n = %d samples: capped at n (on the whole space its Rayleigh–Ritz is exact)",
                 q + 1, l, (q + 1) * l, n)
    # check the memory plans of the widest pass and of the driver before any computation
    op.plan(pass_columns(l, n_probes, algorithm))
    check_driver_memory(n, l, q, algorithm)
    t0 = time.perf_counter()
    saved = checkpoint.load() if checkpoint is not None else None
    saved = [st for st in (saved or []) if st.get("algorithm", algorithm) == algorithm]
    run = _krylov if algorithm == "krylov" else _subspace
    out = run(op, l, q, seed, n_probes, checkpoint, saved)
    theta, U, KU_minus, n_pass, extra = out
    # KU_minus: (n, k') columns (K − θ_i) u_i for the top k' Ritz pairs
    k = rank
    U1 = np.ascontiguousarray(U[:, :k])
    R1 = KU_minus[:, :k]
    with np.errstate(divide="ignore", invalid="ignore"):
        resid = np.linalg.norm(KU_minus, axis=0) / np.abs(theta[:KU_minus.shape[1]])
    s1 = np.maximum(theta[:k], 0.0)
    orth = float(np.linalg.norm(U1.T @ U1 - np.eye(k)))
    # coupling of each Ritz vector with the tail: ‖(I − U₁U₁ᵀ) K u_i‖²
    C = R1 - U1 @ (U1.T @ R1)
    cross = np.sum(C * C, axis=0)
    KU1 = U1 * theta[:k] + R1
    probes, Kp, diag, K1 = extra["probes"], extra["Kp"], extra["diag"], extra["K1"]
    if n_probes:
        # deflated Hutchinson: E‖P₂ K P₂ ω‖² = tr((P₂ K P₂)²), P₂ = I − U₁U₁ᵀ
        v = Kp - KU1 @ (U1.T @ probes)
        v -= U1 @ (U1.T @ v)
        per_probe = np.sum(v * v, axis=0)
        tail_K2 = float(per_probe.mean())
        tail_K2_se = float(per_probe.std(ddof=1) / np.sqrt(n_probes)) if n_probes > 1 else float("nan")
    else:
        tail_K2 = tail_K2_se = float("nan")
    trace = float(diag.sum())
    tol = n * np.finfo(float).eps * max(float(theta[0]), 0.0)
    diagnostics = {
        "algorithm": algorithm, "rank": k, "oversample": l - k, "power_iters": q, "seed": seed,
        "passes_over_X": n_pass, "subspace_dim": int(extra["dim"]),
        "ritz_residuals": resid[:k].tolist(), "max_ritz_residual": float(np.nanmax(resid[:k])),
        "orthonormality_error": orth, "probes": n_probes, "tail_trace_K2": tail_K2,
        "tail_trace_K2_se": tail_K2_se,
        "sum_K": float(K1.sum()), "seconds": round(time.perf_counter() - t0, 3),
        "pass_seconds": extra["pass_seconds"], "compute_dtype": np.dtype(getattr(op, "dtype", np.float64)).name,
    }
    if orth > 1e-8:
        raise BigmmError(f"randomized spectrum: eigenvectors not orthonormal (‖UᵀU − I‖ = {orth:.2e})")
    spec = Spectrum(U=U1, s=s1, n=n, trace_K=trace, diag_K=diag, method="randomized",
                    rank=int((s1 > tol).sum()), diagnostics=diagnostics,
                    tail_trace_K2=tail_K2, ritz_cross=cross)
    diagnostics.update(captured_share(spec, tail_K2_se))
    return spec


#: a Ritz pair (θ, u) counts as converged when ‖K u − θ u‖ / θ is at most this: then θ is within
#: 1% of an eigenvalue (|λ − θ| ≤ ‖K u − θ u‖), and u within an angle of residual / gap of its
#: eigenvector. Structure eigenpairs reach ~1e-7 at the defaults, bulk ones ~0.1 (docs/lowrank.md)
RITZ_CONVERGED = 1e-2


def captured_share(spec: Spectrum, tail_K2_se: float = float("nan")) -> dict:
    """What the top k eigenvalues of a reduced spectrum capture of K: ``share_trace_K`` =
    Σ s / tr K (tr K exact, from the diagonal) and ``share_trace_K2`` = Σ s² / tr K², with

        tr K² = ‖K‖_F² = Σ θ_i² + 2 Σ ‖(I − UUᵀ) K u_i‖² + tr(K₂²),   K₂ = (I − UUᵀ) K (I − UUᵀ)

    (exact for Ritz pairs, Uᵀ K U = diag θ): the Ritz values, their coupling with the tail
    (``ritz_cross``) and the tail's deflated Hutchinson estimate (``tail_trace_K2``, with its
    Monte Carlo SE ``trace_K2_se``; NaN without probes). A full spectrum captures all of both.
    """
    s = np.asarray(spec.s, dtype=float)
    if not spec.n_tail:
        return {"share_trace_K": 1.0, "share_trace_K2": 1.0, "trace_K2": float(np.sum(s * s)),
                "trace_K2_se": 0.0}
    top2 = float(np.sum(s * s))
    cross = 0.0 if spec.ritz_cross is None else float(np.sum(spec.ritz_cross))
    trace_K2 = top2 + 2.0 * cross + float(spec.tail_trace_K2)
    return {"share_trace_K": float(s.sum() / spec.trace_K) if spec.trace_K > 0 else float("nan"),
            "share_trace_K2": top2 / trace_K2 if trace_K2 > 0 else float("nan"),
            "trace_K2": trace_K2, "trace_K2_se": float(tail_K2_se)}


def unconverged_pcs(spec: Spectrum, m: int | None = None) -> list[int]:
    """1-based indices of the top ``m`` Ritz pairs (all k by default) whose relative residual
    ‖K u − θ u‖ / θ exceeds :data:`RITZ_CONVERGED` (none for an exact spectrum)."""
    res = spec.diagnostics.get("ritz_residuals")
    if not res:
        return []
    res = np.asarray(res[: (len(res) if m is None else m)], dtype=float)
    return [int(i) + 1 for i in np.flatnonzero(~(res <= RITZ_CONVERGED))]


def _probes(seed: int, n: int, n_probes: int) -> np.ndarray:
    # Ω and the probes come from separate streams of the seed, so a resumed run draws exactly
    # what an uninterrupted one does
    return np.random.default_rng([seed, 1]).choice(np.array([-1.0, 1.0]), size=(n, n_probes))


def _timed_pass(op, M, desc, times, want_diag=False):
    import time

    t = time.perf_counter()
    Y, diag = op.apply(M, want_diag=want_diag, desc=desc)
    times.append(round(time.perf_counter() - t, 3))
    return Y, diag


def _krylov(op, l, q, seed, n_probes, checkpoint, saved):
    from scipy.linalg import eigh

    n = op.n
    n_pass = q + 1
    probes = _probes(seed, n, n_probes)
    # the Krylov basis, block by block (each contiguous), at most n columns (basis_width)
    V = np.empty((n, basis_width(n, l, q, "krylov")), order="F")
    offsets = [0]  # start column of each block; the next block starts at offsets[-1]
    Tcols: list[np.ndarray] = []  # Tcols[j] = V[:, :end_j]ᵀ K V_j
    times: list[float] = []
    done = 0
    ok = (saved and saved[0].get("pass") == 1 and saved[0]["V0"].shape[0] == n
          and all(st.get("pass") == i + 1 for i, st in enumerate(saved)) and len(saved) <= q)
    if ok:
        first = saved[0]
        diag, K1, Kp = first["diag"], first["K1"], first["Kp"]
        V0 = first["V0"]
        V[:, :V0.shape[1]] = V0
        offsets.append(V0.shape[1])
        for st in saved:
            B = st["B"]
            Tcols.append(st["T"])
            V[:, offsets[-1]:offsets[-1] + B.shape[1]] = B
            offsets.append(offsets[-1] + B.shape[1])
        done = len(saved)
        log.info("randomized spectrum: resuming after pass %d of %d (checkpoint)", done, n_pass)
    else:
        V0 = cholesky_qr2(np.random.default_rng([seed, 0]).standard_normal((n, l)))
        V[:, :l] = V0
        offsets.append(l)
    last_W = None
    for j in range(done, n_pass):
        a, b = offsets[j], offsets[j + 1]
        if b == a:  # the Krylov space is exhausted (an invariant subspace of K): exact
            break
        desc = f"randomized spectrum pass {j + 1}/{n_pass}"
        if j == 0:
            Y, diag = _timed_pass(op, np.hstack([V[:, a:b], np.ones((n, 1)), probes]), desc, times,
                                  want_diag=True)
            K1, Kp, Y = Y[:, l].copy(), Y[:, l + 1:].copy(), np.ascontiguousarray(Y[:, :l])
        else:
            Y, _ = _timed_pass(op, V[:, a:b], desc, times)
        scale = float(np.sqrt(np.max(np.sum(Y * Y, axis=0)))) if Y.size else 0.0
        B, Cj, W = _orthonormal_extension(V[:, :b], Y, scale, basis=j < n_pass - 1, max_cols=V.shape[1] - b)
        Tcols.append(Cj)
        if j == n_pass - 1:
            last_W = W  # K V − V T lives in the last block's remainder
            break
        V[:, b:b + B.shape[1]] = B
        offsets.append(b + B.shape[1])
        del Y, W
        if checkpoint is not None:
            st = {"pass": j + 1, "algorithm": "krylov", "B": B, "T": Cj}
            if j == 0:
                st.update(V0=np.ascontiguousarray(V[:, :l]), diag=diag, K1=K1, Kp=Kp)
            checkpoint.save(st)
    m = offsets[len(Tcols)]
    T = np.zeros((m, m))
    for j, Cj in enumerate(Tcols):
        a, b = offsets[j], offsets[j + 1]
        T[:Cj.shape[0], a:b] = Cj
    T = np.triu(T) + np.triu(T, 1).T  # columns j hold rows ≤ end of block j: the upper triangle
    T = 0.5 * (T + T.T)
    theta, Wt = eigh(T)
    theta, Wt = theta[::-1], Wt[:, ::-1]
    Vm = V[:, :m]
    U = Vm @ Wt
    if last_W is not None:
        a, b = offsets[len(Tcols) - 1], offsets[len(Tcols)]
        R = last_W @ Wt[a:b, :]
    else:
        R = np.zeros_like(U)
    extra = {"probes": probes, "Kp": Kp, "diag": diag, "K1": K1, "dim": m, "pass_seconds": times}
    return theta, U, R, len(times) + done, extra


def _subspace(op, l, q, seed, n_probes, checkpoint, saved):
    from scipy.linalg import eigh

    n = op.n
    n_pass = q + 2
    times: list[float] = []
    ok = (saved and saved[0].get("pass") == 1 and saved[-1]["Q"].shape == (n, l)
          and all(st.get("pass") == i + 1 for i, st in enumerate(saved)) and len(saved) <= q + 1)
    if ok:
        done, Q, diag, K1 = len(saved), saved[-1]["Q"], saved[0]["diag"], saved[0]["K1"]
        log.info("randomized spectrum: resuming after pass %d of %d (checkpoint)", done, n_pass)
    else:
        Omega = np.random.default_rng([seed, 0]).standard_normal((n, l))
        Y, diag = _timed_pass(op, np.hstack([Omega, np.ones((n, 1))]),
                              f"randomized spectrum pass 1/{n_pass}", times, want_diag=True)
        K1 = Y[:, -1].copy()
        Q = cholesky_qr2(Y[:, :l])
        del Y, Omega
        done = 1
        if checkpoint is not None:
            checkpoint.save({"pass": done, "algorithm": "subspace", "Q": Q, "diag": diag, "K1": K1})
    for i in range(done, q + 1):
        Y, _ = _timed_pass(op, Q, f"randomized spectrum pass {i + 1}/{n_pass}", times)
        Q = cholesky_qr2(Y)
        del Y
        if checkpoint is not None:
            checkpoint.save({"pass": i + 1, "algorithm": "subspace", "Q": Q})
    probes = _probes(seed, n, n_probes)
    Y, _ = _timed_pass(op, np.hstack([Q, probes]), f"randomized spectrum pass {n_pass}/{n_pass}", times)
    YQ, Kp = Y[:, :l], Y[:, l:]
    T = Q.T @ YQ
    theta, W = eigh(0.5 * (T + T.T))
    theta, W = theta[::-1], W[:, ::-1]
    U = Q @ W
    R = YQ @ W - U * theta
    extra = {"probes": probes, "Kp": Kp, "diag": diag, "K1": K1, "dim": l, "pass_seconds": times}
    return theta, U, R, n_pass, extra
