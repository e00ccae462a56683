"""Matrix-free REML: block Lanczos quadrature on the GRM operator, no spectrum of K.

Model ``y = Z ω + g + e`` with ``Var(y) = σ²_g K + σ²_e I = σ² H(h)``,
``H(h) = h K + (1 − h) I``, ``h = h² = σ²_g / σ²``. The σ²-profiled restricted
log-likelihood (Harville's form without ``log det ZᵀZ``, the convention of
:mod:`bigmm.reml`, constants included)

    ℓ_R(h) = −½ [ (n − c)(log(2π σ̂²) + 1) + log det H + log det(ZᵀH⁻¹Z) ],
    σ̂² = yᵀPy / (n − c),   yᵀPy = yᵀH⁻¹y − yᵀH⁻¹Z (ZᵀH⁻¹Z)⁻¹ ZᵀH⁻¹y,

is a function of matrix functions of K only:

* the quadratic forms ``Bᵀ f(K) B`` of the block ``B = [Z, Y]`` with
  ``f(λ) = 1 / (hλ + 1 − h)``, by block Gauss quadrature: block Lanczos on K
  started at ``B = Q₀R₀`` gives a block tridiagonal ``T`` (its eigenpairs
  ``θ, S``) and ``Bᵀ f(K) B ≈ R₀ᵀ E₁ᵀ f(T) E₁ R₀``. The Krylov space does not
  depend on h: after one eigendecomposition of ``T`` every h costs O(dim T · b);
* ``log det H = tr log(hK + 1 − h)`` by stochastic Lanczos quadrature (SLQ)
  with Rademacher probes, optionally deflated by k orthonormal vectors U, with
  the linear part of ``log(hλ + 1 − h)`` (whose trace is known exactly from
  ``tr K``) and the converged Ritz pairs of the ``[Z, Y]`` block taken out as
  control variates.

Each Lanczos step applies K ONCE to one block holding every recurrence's
current vectors side by side (the ``[Z, Y]`` block of every missing-value
pattern and every probe), so one step is one pass over the genotypes.

See :func:`fit_matrix_free` for the algorithm, its costs and its outputs.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
from scipy.special import chdtrc  # chi2.sf without importing scipy.stats (0.8 s at start-up)
from scipy.linalg import eigh, eigh_tridiagonal

from .errors import InputError
from .results import MATRIX_FREE_COLUMNS, TABLE_COLUMNS, FitsResult, FixedEffect, PhenotypeFit, information_covariance

log = logging.getLogger("bigmm")

LOG2PI = math.log(2.0 * math.pi)
LOGL_CONVENTION = "Harville REML without the log det(Z'Z) term"

#: Defaults chosen with ``scripts/studies/sim_matrix_free.py`` (docs/matrix_free.md): n = 5,000,
#: p = 10,000, an unrelated and a 10-population (F_ST = 0.05) cohort, h² ∈ {0.2, 0.5, 0.8}, 100
#: replicates each, against exact REML on the same phenotypes. Probes: N = 30 gave Monte Carlo
#: SD / statistical SE ≤ 0.10 and efficiency Var(ĥ²_exact)/Var(ĥ²_mf) ≥ 0.976 (paired: ≥ 0.992)
#: in all six rows; N = 10 met the goal (≤ ¼, ≥ 0.95) only narrowly (≤ 0.17, ≥ 0.956), at the
#: same number of passes.
DEFAULT_PROBES = 30
#: Passes over X at most: at tol = 1e-4 the study converged in 13–14 steps (unrelated) and 20–22
#: (structured, no deflation; 14–15 deflated by the top 20 eigenvectors).
DEFAULT_MAX_STEPS = 100
#: Convergence: |Δĥ²| < tol and |Δℓ_R| < 10·tol between consecutive steps, twice. 1e-3 saved
#: ~2–3 passes but its quadrature error was visible (RMS(ĥ²_mf − ĥ²_exact) up to 1.2x the MC SD,
#: unpaired efficiency down to 0.925); at 1e-4 the error was within the MC SD everywhere.
DEFAULT_TOL = 1e-4
GRID_SIZE = 101
#: h² upper bound: σ²_e ≥ 1e-6 σ² keeps H positive definite when K is singular (it always is
#: for a GRM of centred genotypes) and its quadrature well conditioned
H2_MAX = 1.0 - 1e-6
#: the largest h² at which the REML information (SEs) is evaluated: above it the Gauss rules of
#: its second derivatives, which grow like 1/(1 − h)² on K's null directions, lose it (measured,
#: n = 200, h² = 1: the expected information indefinite from h² = 0.9999, its SE 0.171 at 0.999
#: and 0.170 at 0.99); the exact expected-information SE changes by 0.1% from 0.999 to H2_MAX
#: (0.1634 → 0.1632), so an estimate at the bound gets its SE from here
INFO_H2_MAX = 0.999
#: relative size (to ‖K‖) below which a new Krylov direction is dropped: the Krylov space is
#: exhausted in it (an invariant subspace of K has been found)
RANK_TOL = 1e-10
#: Ritz pairs of the [Z, Y] block whose residual ‖K x − θ x‖ is below RITZ_TOL · θ_max enter
#: the Ritz control variate of the log det probes (at most RITZ_MAX, farthest from the tail mean)
RITZ_TOL = 1e-3
RITZ_MAX = 64
STATE_VERSION = 1
MAX_NEWTON = 100
#: h2_se_mc / h2_se_stat above which a fit warns and says how many probes bring it to
#: MC_SE_RATIO_TARGET (the Monte Carlo SD falls as 1/√N): at 0.25, h2_se is 3% above the
#: statistical SE and the efficiency against exact REML about 1 / (1 + 0.25²) = 0.94
MC_SE_RATIO_WARN = 0.25
MC_SE_RATIO_TARGET = 0.1


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------

@dataclass(frozen=True, repr=False)  # PhenotypeFit's short repr
class MatrixFreeFit(PhenotypeFit):
    """Matrix-free REML estimates for one phenotype.

    Field names shared with :class:`bigmm.results.PhenotypeFit` have the same meaning. The
    additional fields: ``h2_se_stat`` (statistical SE from the REML information),
    ``h2_se_mc`` (Monte Carlo SD of ĥ² due to the log det probes, delete-one-probe
    jackknife), ``h2_se = sqrt(h2_se_stat² + h2_se_mc²)``; ``h2_he`` (Haseman–Elston moment
    estimate from the first pass); ``lanczos_steps`` and ``passes_over_X`` (the passes the
    result rests on, including those before a resume from a checkpoint); ``converged``
    with ``delta_h2`` and ``delta_logl`` (|Δĥ²| and |Δℓ_R| between the last two steps);
    ``probes``, ``deflation_rank`` and ``deflation_coupling`` (‖(I − UUᵀ) K U‖_F, NaN where
    unknown); ``h2_se_mc_ratio`` = h2_se_mc / h2_se_stat (falls as 1/√probes: ``probes ·
    (ratio / r)²`` probes give about r).
    """

    table_columns = TABLE_COLUMNS + MATRIX_FREE_COLUMNS

    h2_se_stat: float = float("nan")
    h2_se_mc: float = float("nan")
    h2_se_mc_ratio: float = float("nan")
    h2_he: float = float("nan")
    lanczos_steps: int = 0
    passes_over_X: int = 0
    converged: bool = False
    delta_h2: float = float("nan")
    delta_logl: float = float("nan")
    probes: int = 0
    deflation_rank: int = 0
    deflation_coupling: float = float("nan")
    reml_method: str = "matrix_free"


@dataclass(frozen=True, repr=False)  # FitsResult's short repr
class MatrixFreeResult(FitsResult):
    """Fits of every phenotype of one :func:`fit_matrix_free` call.

    Besides the fits it keeps, per missing-value pattern, the quadrature model (the
    eigenpairs of the block tridiagonal matrix, the kept ``[Z, Y]`` Krylov basis and the
    probes' Gauss rules) so that the likelihood can be evaluated at any h² and the BLUP
    weights formed without another pass over X (:meth:`blup_weights`,
    :func:`blup_matrix_free`). :meth:`to_dict` leaves the quadrature models out: a result
    read back by :meth:`from_dict` has the fits and the solver's summary only.
    """

    fit_type = MatrixFreeFit

    fits: tuple
    phenotype_names: tuple
    covariate_names: tuple
    n: int
    lanczos_steps: int
    passes_over_X: int
    converged: bool
    delta_h2: float
    delta_logl: float
    probes: int
    seed: int
    tol: float
    max_steps: int
    deflation_rank: int
    logl_convention: str = LOGL_CONVENTION
    reml_method: str = "matrix_free"
    notes: dict = field(default_factory=dict)
    models: tuple = field(default=(), repr=False, compare=False)
    #: the scale each phenotype was fitted on (y / scale; the fits are reported on y's scale)
    scales: tuple = field(default=(), repr=False, compare=False)
    #: σ̂² of each phenotype on that unit scale (the BLUP solves are made there)
    unit_sigma2: tuple = field(default=(), repr=False, compare=False)

    #: the solver's summary in :meth:`to_dict`, in its order (``covariate_names`` follows)
    SUMMARY = ("reml_method", "logl_convention", "n", "lanczos_steps", "passes_over_X", "converged", "delta_h2",
               "delta_logl", "probes", "seed", "tol", "max_steps", "deflation_rank")

    def _facts(self) -> dict:
        return {**{k: getattr(self, k) for k in self.SUMMARY}, "covariate_names": list(self.covariate_names)}

    @classmethod
    def _facts_from_dict(cls, d: dict, fits: tuple) -> dict:
        return {**{k: d[k] for k in cls.SUMMARY}, "covariate_names": tuple(d["covariate_names"]),
                "phenotype_names": tuple(f.name for f in fits)}

    def _head(self) -> str:
        return (f"matrix-free, n={self.n}, {self.lanczos_steps} Lanczos steps, {self.passes_over_X} passes over X, "
                f"{self.probes} probes, {'converged' if self.converged else 'NOT converged'}")

    def _where(self, name: str):
        for mdl in self.models:
            if name in mdl.names:
                return mdl, mdl.names.index(name)
        raise KeyError(name)

    def loglik_profile(self, h2, name: str) -> dict:
        """ℓ_R(h²) of phenotype ``name`` at the points ``h2`` from the final quadrature.

        Returns a dict of arrays over ``h2``: ``logl_reml``, ``logdet_H`` (the estimate of
        ``log det H`` on the phenotype's observed samples) and ``logdet_H_mc_se`` (its Monte
        Carlo SE over the probes, 0 where it is exact).
        """
        mdl, j = self._where(name)
        h = np.atleast_1d(np.asarray(h2, dtype=np.float64))
        ll = mdl.eval(h, shared=True, which=0)[0][:, j]
        if self.scales:  # the model is of y / a: back on y's scale
            ll = ll - (mdl.n_obs - mdl.c) * math.log(self.scales[self.phenotype_names.index(name)])
        L, _, _, y, _, _ = mdl.logdet(h, per_probe=True)
        N = y.shape[-1]
        se = y.std(axis=-1, ddof=1) / math.sqrt(N) if N > 1 else np.zeros_like(L)
        return {"h2": h, "logl_reml": ll, "logdet_H": L, "logdet_H_mc_se": se}

    def quadratic_forms(self, h2: float, name: str):
        """(ZᵀH⁻¹Z, ZᵀH⁻¹y, yᵀH⁻¹y) of phenotype ``name`` on its observed samples at h² by
        block Gauss quadrature (the original y, not the OLS residual the solver works with)."""
        mdl, j = self._where(name)
        A, b, c = mdl.quadratic_forms(float(h2), j)[:3]
        a = self.scales[self.phenotype_names.index(name)] if self.scales else 1.0
        return (A, b * a, c * a * a)

    def blup_weights(self) -> np.ndarray:
        """``w = V⁻¹ (y − Z ω̂)`` at the REML estimates (n x m, zero where y is missing).

        From the kept ``[Z, Y]`` Krylov basis ``Q``: ``H⁻¹ r ≈ Q f(T) Qᵀ r`` (the Lanczos /
        conjugate-gradient approximation, exact once the Krylov space is exhausted).
        """
        W = np.zeros((self.n, len(self.phenotype_names)))
        fits = {f.name: f for f in self.fits}
        m = len(self.phenotype_names)
        unit = np.asarray(self.unit_sigma2) if self.unit_sigma2 else \
            np.array([f.sigma2_g + f.sigma2_e for f in self.fits])
        scales = np.asarray(self.scales) if self.scales else np.ones(m)
        for mdl in self.models:
            h = np.array([fits[nm].h2 for nm in mdl.names])
            cols = np.asarray(mdl.cols)
            # the solves are of r' = r / a on the unit scale: V⁻¹ r = (σ'² H)⁻¹ r' / a
            W[np.ix_(mdl.idx, mdl.cols)] = mdl.blup_solve(h) / unit[cols] / scales[cols]
        return W


def blup_matrix_free(op, result: MatrixFreeResult) -> tuple[np.ndarray, np.ndarray]:
    """Genetic values ``ĝ = σ²_g K w`` and weights ``w = V⁻¹(y − Zω̂)`` of a matrix-free fit.

    Parameters
    ----------
    op : operator
        The same K as the fit (``n`` and ``apply(M, want_diag=False) -> (K M, diag)``).
    result : MatrixFreeResult

    Returns
    -------
    g_hat, w : (n, m) arrays
        ``w`` is zero where a phenotype is missing; ``ĝ`` is defined for every sample
        (``K_{·o} w_o``: the prediction for samples without a value too).

    Notes
    -----
    ``w`` comes from the fit's kept Krylov basis (no pass); ``K w`` takes one pass over X.
    """
    if int(op.n) != result.n:
        raise InputError(f"the operator has {op.n} samples, the fit {result.n}")
    w = result.blup_weights()
    KW, _ = op.apply(w, want_diag=False)
    sg = np.array([f.sigma2_g for f in result.fits])
    return np.asarray(KW) * sg, w


# --------------------------------------------------------------------------------------
# Linear algebra helpers
# --------------------------------------------------------------------------------------

def _rank_revealing_qr(W: np.ndarray, thr: float) -> tuple[np.ndarray, np.ndarray, float]:
    """``W ≈ Q R`` with Q an orthonormal basis of the directions of W with singular value
    above ``thr`` (the others are dropped). R = QᵀW is r x b. Also returns the smallest kept
    singular value (inf if none).

    From the eigendecomposition of the Gram matrix ``WᵀW = E Λ Eᵀ``: the kept directions
    ``W E_r Λ_r^(-1/2)`` are orthonormalised by two rounds of Cholesky QR. Only matrix
    products touch the n rows (no Householder QR of an n-row block, which runs on level-2
    BLAS); singular values are resolved down to ~1e-8 ‖W‖, so a dropped direction is one the
    Krylov space has exhausted, and a kept noisy one is merely an extra orthonormal direction.
    """
    from scipy.linalg import cholesky, solve_triangular

    n, b = W.shape
    if b == 0:
        return np.zeros((n, 0)), np.zeros((0, 0)), float("inf")
    lam, E = eigh(W.T @ W)
    keep = lam > thr ** 2
    if not keep.any():
        return np.zeros((n, 0)), np.zeros((0, b)), float("inf")
    sig = np.sqrt(lam[keep])
    Q = W @ (E[:, keep] / sig)
    for _ in range(2):  # Q ← Q R⁻¹ (R⁻¹ of the small b x b factor, then one product over the rows)
        R = cholesky(Q.T @ Q, lower=False)
        Q = Q @ solve_triangular(R, np.eye(R.shape[0]), lower=False)
    Q = np.ascontiguousarray(Q)
    return Q, Q.T @ W, float(sig.min())


def _colnorm2(W: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->j", W, W)


def _coldot(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->j", A, B)


# --------------------------------------------------------------------------------------
# One missing-value pattern: its recurrences
# --------------------------------------------------------------------------------------

class _Group:
    """The phenotypes sharing one pattern of missing values, and their Lanczos recurrences.

    Every vector lives in the coordinates of the pattern's observed samples (n_o rows);
    the operator is ``K_oo``, applied as ``(K [v; 0])_o``.
    """

    def __init__(self, gi: int, cols: list, names: list, obs: np.ndarray, Zo: np.ndarray,
                 Yo: np.ndarray, shift: np.ndarray, deflation, n_probes: int, seed: int):
        self.gi = gi
        self.cols = list(cols)
        self.names = list(names)
        self.obs = obs
        self.idx = np.flatnonzero(obs)
        self.full = bool(obs.all())
        self.n_obs = int(self.idx.size)
        self.c = Zo.shape[1]
        self.m = len(cols)
        self.shift = shift  # OLS coefficients removed from Y (c x m), added back to ω̂
        self.ZtZ = Zo.T @ Zo
        self.yy = _colnorm2(Yo)  # ‖ỹ‖² of the OLS residuals
        # the start block B = [Z_o, Ỹ_o] = Q₀ R₀, rank-revealing on unit columns
        B = np.hstack([Zo, Yo])
        norms = np.sqrt(_colnorm2(B))
        Q0, Rs, _ = _rank_revealing_qr(B / norms, RANK_TOL * 1e2)
        self.R0 = Rs * norms
        self.blocks = [Q0]
        self.A_list: list[np.ndarray] = []
        self.B_list: list[np.ndarray] = []
        self.block_active = True
        # deflation
        self.Ud = None
        self.sd = None
        self.need_rayleigh = False
        self.coupling = float("nan")
        self.KU2 = 0.0  # ‖K U‖²_F (for tr K² of the Haseman–Elston estimate)
        if deflation is not None:
            U, s, cross = deflation
            if self.full:
                self.Ud, self.sd = U, s
                self.coupling = float(math.sqrt(np.sum(cross))) if cross is not None else float("nan")
                self.KU2 = float(np.sum(s ** 2) + (np.sum(cross) if cross is not None else 0.0))
            else:
                # orthonormal basis of U's observed rows; its Rayleigh matrix from the first pass
                Uo = U[self.idx]
                lam, E = eigh(Uo.T @ Uo)
                keep = lam > 1e-10 * max(float(lam.max(initial=0.0)), 1e-300)
                Ud = Uo @ (E[:, keep] / np.sqrt(lam[keep]))
                Ud, _ = np.linalg.qr(Ud)  # one more round: orthonormal to working precision
                self.Ud = np.ascontiguousarray(Ud)
                self.need_rayleigh = True
        self.k = 0 if self.Ud is None else self.Ud.shape[1]
        self.n_perp = self.n_obs - self.k
        # probes: Rademacher on the observed samples, projected on the complement of U
        N = n_probes if self.n_perp > 0 else 0
        self.seed = seed
        v = self.probe_vectors(N)
        if self.Ud is not None and N:
            for _ in range(2):
                v -= self.Ud @ (self.Ud.T @ v)
        self.N = N
        self.wn2 = _colnorm2(v)
        self.pq_cur = v / np.sqrt(np.where(self.wn2 > 0, self.wn2, 1.0))
        self.pq_prev = np.zeros_like(self.pq_cur)
        self.alpha = np.zeros((N, 0))
        self.beta = np.zeros((N, 0))
        self.plen = np.zeros(N, dtype=np.int64)
        self.pactive = self.wn2 > 0
        self.kq2 = np.zeros(N)  # ‖K q₁‖² of the first probe vectors (for tr K²)
        # first-pass quantities
        self.trK = float("nan")
        self.sumK = float("nan")
        self.he = (float("nan"), float("nan"), float("nan"))
        self.scale = 0.0
        #: (θ, deviations) of the Ritz control variate of the previous step's model
        self.prev_ritz = None

    def probe_vectors(self, N: int) -> np.ndarray:
        """The Rademacher probe vectors (n_o x N) of this pattern, before projection (seeded)."""
        return np.random.default_rng([self.seed, 1, self.gi]).choice(np.array([-1.0, 1.0]), size=(self.n_obs, N))

    # ---- the driver's view
    @property
    def active(self) -> bool:
        return self.block_active or bool(self.pactive.any())

    def pieces(self, step: int) -> list:
        out = []
        if self.block_active:
            out.append(("block", self.blocks[-1]))
        act = np.flatnonzero(self.pactive)
        if act.size:
            out.append(("probes", self.pq_cur[:, act]))
        if step == 1:
            out.append(("ones", np.ones((self.n_obs, 1))))
            if self.need_rayleigh and self.k:
                out.append(("ud", self.Ud))
        return out

    def absorb(self, step: int, prods: dict, diag) -> None:
        """Advance every recurrence with the products of this step's pass."""
        if step == 1:
            if diag is not None:
                self.trK = float(np.sum(diag[self.idx]))
                self.scale = max(self.scale, self.trK / self.n_obs)
            self.sumK = float(prods["ones"].sum())
            if "ud" in prods:
                KU = prods["ud"]
                S = self.Ud.T @ KU
                s, E = eigh(0.5 * (S + S.T))
                self.Ud = np.ascontiguousarray(self.Ud @ E)
                KU = KU @ E
                self.sd = np.maximum(s, 0.0)  # K is positive semi-definite
                C = KU - self.Ud * s
                C -= self.Ud @ (self.Ud.T @ C)
                self.coupling = float(np.sqrt(np.sum(C * C)))
                self.KU2 = float(np.sum(KU * KU))
                self.scale = max(self.scale, float(np.abs(s).max(initial=0.0)))
        if "block" in prods:
            self._absorb_block(step, prods["block"])
        if "probes" in prods:
            self._absorb_probes(step, prods["probes"])
        if step == 1:
            self._haseman_elston()

    def _absorb_block(self, step: int, W: np.ndarray) -> None:
        W = np.array(W, dtype=np.float64, copy=True)
        self.scale = max(self.scale, float(np.sqrt(_colnorm2(W).max(initial=0.0))))
        if step == 1:
            self._KQ0 = W.copy()
        # full re-orthogonalisation against the kept basis (classical Gram–Schmidt, twice)
        C = [np.zeros((Q.shape[1], W.shape[1])) for Q in self.blocks]
        for _ in range(2):
            Cs = [Q.T @ W for Q in self.blocks]
            for Q, Cj, acc in zip(self.blocks, Cs, C):
                W -= Q @ Cj
                acc += Cj
        A = C[-1]
        self.A_list.append(0.5 * (A + A.T))
        Qn, Bn, dmin = _rank_revealing_qr(W, RANK_TOL * self.scale)
        if Qn.shape[1] and dmin < 1e-4 * self.scale:
            # small new directions: orthogonality to the basis is ~eps·‖K‖/σ; project once more
            for Q in self.blocks:
                Qn -= Q @ (Q.T @ Qn)
            Qn, R2 = np.linalg.qr(Qn)
            Bn = R2 @ Bn
        self.B_list.append(Bn)
        if Qn.shape[1] == 0:
            self.block_active = False  # the Krylov space is exhausted: the quadrature is exact
        else:
            self.blocks.append(Qn)

    def _absorb_probes(self, step: int, W: np.ndarray) -> None:
        act = np.flatnonzero(self.pactive)
        W = np.array(W, dtype=np.float64, copy=True)
        nrm2 = _colnorm2(W)
        self.scale = max(self.scale, float(np.sqrt(nrm2.max(initial=0.0))))
        if step == 1:
            self.kq2[act] = nrm2
        q = self.pq_cur[:, act]
        qp = self.pq_prev[:, act]
        bprev = np.array([self.beta[j, self.plen[j] - 1] if self.plen[j] else 0.0 for j in act])
        if self.Ud is not None:
            W -= self.Ud @ (self.Ud.T @ W)
        a = _coldot(q, W)
        W -= q * a + qp * bprev
        # local re-orthogonalisation against the last two Lanczos vectors
        d1 = _coldot(q, W)
        W -= q * d1
        a += d1
        d2 = _coldot(qp, W)
        W -= qp * d2
        if self.Ud is not None:
            W -= self.Ud @ (self.Ud.T @ W)
        b = np.sqrt(_colnorm2(W))
        N = self.N
        acol = np.zeros((N, 1))
        bcol = np.zeros((N, 1))
        acol[act, 0] = a
        bcol[act, 0] = b
        self.alpha = np.hstack([self.alpha, acol])
        self.beta = np.hstack([self.beta, bcol])
        self.plen[act] += 1
        done = (b <= RANK_TOL * self.scale) | (self.plen[act] >= self.n_perp)
        self.pq_prev[:, act] = q
        go = act[~done]
        self.pq_cur[:, go] = W[:, ~done] / b[~done]
        self.pactive[act[done]] = False

    def _haseman_elston(self) -> None:
        """σ²_g, σ²_e, h² by Haseman–Elston regression from the first pass (see fit_matrix_free)."""
        c, m = self.c, self.m
        KQ = self._KQ0
        del self._KQ0
        R0 = self.R0
        BKB = R0.T @ (self.blocks[0].T @ KQ) @ R0
        BKB = 0.5 * (BKB + BKB.T)
        KZ = KQ @ R0[:, :c]
        ZKZ = BKB[:c, :c]
        ZK2Z = KZ.T @ KZ
        yKy = np.diag(BKB)[c:]
        trK = self.trK
        if not np.isfinite(trK):  # no diagonal from the operator: Hutchinson
            trK = float(np.sum(self.sd) if self.sd is not None else 0.0)
            if self.N:
                trK += float(np.mean(self.wn2 * self.alpha[:, 0]))
        trK2 = self.KU2 + (float(np.mean(self.wn2 * self.kq2)) if self.N else 0.0)
        G = np.linalg.solve(self.ZtZ, ZKZ)
        trPK = trK - float(np.trace(G))
        trPKPK = trK2 - 2.0 * float(np.trace(np.linalg.solve(self.ZtZ, ZK2Z))) + float(np.sum(G * G.T))
        nc = self.n_obs - c
        det = trPKPK * nc - trPK ** 2
        if det > 0:
            sg = (nc * yKy - trPK * self.yy) / det
            se = (trPKPK * self.yy - trPK * yKy) / det
            with np.errstate(divide="ignore", invalid="ignore"):
                h = sg / (sg + se)
        else:
            sg = se = h = np.full(m, np.nan)
        self.he = (sg, se, h)

    # ---- checkpoint state
    def export(self) -> tuple[dict, dict]:
        p = f"g{self.gi}_"
        sizes = [Q.shape[1] for Q in self.blocks]
        tot = sum(sizes)
        T = np.zeros((tot, tot))
        off = np.concatenate([[0], np.cumsum(sizes)])
        for j, A in enumerate(self.A_list):
            T[off[j]:off[j + 1], off[j]:off[j + 1]] = A
        for j, Bm in enumerate(self.B_list):
            if Bm.shape[0]:
                T[off[j + 1]:off[j + 2], off[j]:off[j + 1]] = Bm
        arrays = {p + "basis": np.hstack(self.blocks), p + "T": T, p + "pq_prev": self.pq_prev,
                  p + "pq_cur": self.pq_cur, p + "alpha": self.alpha, p + "beta": self.beta,
                  p + "plen": self.plen, p + "pactive": self.pactive, p + "kq2": self.kq2,
                  p + "he": np.array([np.asarray(x, dtype=float) for x in self.he]).reshape(3, self.m)}
        if self.Ud is not None:
            arrays[p + "Ud"] = self.Ud
            arrays[p + "sd"] = np.asarray(self.sd, dtype=float)
        if self.prev_ritz is not None:
            arrays[p + "ritz_theta"], arrays[p + "ritz_dev"] = self.prev_ritz
        meta = {"sizes": sizes, "n_A": len(self.A_list), "n_B": len(self.B_list),
                "block_active": self.block_active, "scale": self.scale, "trK": self.trK,
                "sumK": self.sumK, "coupling": self.coupling, "KU2": self.KU2}
        return arrays, meta

    def restore(self, arrays: dict, meta: dict) -> None:
        p = f"g{self.gi}_"
        sizes = meta["sizes"]
        off = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        basis = np.asarray(arrays[p + "basis"])
        T = np.asarray(arrays[p + "T"])
        self.blocks = [np.ascontiguousarray(basis[:, off[j]:off[j + 1]]) for j in range(len(sizes))]
        self.A_list = [T[off[j]:off[j + 1], off[j]:off[j + 1]].copy() for j in range(meta["n_A"])]
        self.B_list = []
        for j in range(meta["n_B"]):
            if j + 1 < len(sizes):
                self.B_list.append(T[off[j + 1]:off[j + 2], off[j]:off[j + 1]].copy())
            else:  # the exhausted last step: no new block
                self.B_list.append(np.zeros((0, sizes[j])))
        for k in ("pq_prev", "pq_cur", "alpha", "beta", "kq2"):
            setattr(self, k, np.array(arrays[p + k], dtype=np.float64))
        self.plen = np.array(arrays[p + "plen"], dtype=np.int64)
        self.pactive = np.array(arrays[p + "pactive"], dtype=bool)
        he = np.array(arrays[p + "he"], dtype=np.float64)
        self.he = (he[0], he[1], he[2])
        if p + "Ud" in arrays:
            self.Ud = np.ascontiguousarray(arrays[p + "Ud"], dtype=np.float64)
            self.sd = np.array(arrays[p + "sd"], dtype=np.float64)
        if p + "ritz_theta" in arrays:
            self.prev_ritz = (np.array(arrays[p + "ritz_theta"], dtype=np.float64),
                              np.array(arrays[p + "ritz_dev"], dtype=np.float64))
        self.block_active = bool(meta["block_active"])
        for k in ("scale", "trK", "sumK", "coupling", "KU2"):
            setattr(self, k, float(meta[k]))


# --------------------------------------------------------------------------------------
# The quadrature model of one group after some steps
# --------------------------------------------------------------------------------------

class _Model:
    """ℓ_R(h), ℓ_ML(h) and their h-derivatives from the Gauss rules of one group.

    Krylov part: with ``T = S diag(θ) Sᵀ`` and ``G = R₀ᵀ E₁ᵀ S`` ((c + m) x dim T), every
    entry of ``Bᵀ f(K) B`` is ``Σ_k G_ik f(θ_k) G_jk``; derivatives in h use
    ``∂f/∂h = −(θ − 1)/d²`` and ``∂²f/∂h² = 2(θ − 1)²/d³``, ``d = hθ + 1 − h`` (the Gauss
    rule of a function's h-derivative is the h-derivative of its Gauss rule).

    log det part (see :meth:`logdet`).
    """

    def __init__(self, g: _Group, steps: int, hmax: float):
        self.names = g.names
        self.cols = np.asarray(g.cols)
        self.idx = g.idx
        self.n_obs, self.c, self.m = g.n_obs, g.c, g.m
        self.shift = g.shift
        self.hmax = hmax
        self.steps = steps
        tb = len(g.A_list)
        sizes = [Q.shape[1] for Q in g.blocks[:tb]]
        off = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        M = int(off[-1])
        T = np.zeros((M, M))
        for j in range(tb):
            T[off[j]:off[j + 1], off[j]:off[j + 1]] = g.A_list[j]
            if j + 1 < tb:
                Bm = g.B_list[j]
                T[off[j + 1]:off[j + 2], off[j]:off[j + 1]] = Bm
                T[off[j]:off[j + 1], off[j + 1]:off[j + 2]] = Bm.T
        theta, S = eigh(T, check_finite=True)
        self.theta = np.maximum(theta, 0.0)  # K is positive semi-definite
        self.S = S
        G = g.R0.T @ S[:sizes[0], :]
        self.GZ = np.ascontiguousarray(G[:g.c])
        self.GY = np.ascontiguousarray(G[g.c:])
        self.GY2 = self.GY ** 2
        self.blocks = g.blocks[:tb]
        self.dim = M
        tmax = max(float(theta.max(initial=0.0)), 1e-300)
        #: the Krylov space found a null direction of K (e.g. K 1 = 0 with an intercept): ML may
        #: then grow without bound as h² → 1
        self.singular = bool(theta.min(initial=1.0) <= 1e-10 * tmax)
        self.exhausted = not g.active
        # log det: deflated part, exact tail traces, probes' Gauss rules
        self.sd = np.zeros(0) if g.sd is None else np.asarray(g.sd, dtype=float)
        self.k = g.k
        self.n_perp = g.n_perp
        self.trK_perp = g.trK - float(self.sd.sum()) if np.isfinite(g.trK) else float("nan")
        self.mu = self.trK_perp / self.n_perp if (self.n_perp > 0 and np.isfinite(self.trK_perp)) else float("nan")
        N = g.N
        self.N = N
        L = int(g.plen.max(initial=0))
        self.nodes = np.zeros((N, max(L, 1)))
        self.weights = np.zeros((N, max(L, 1)))
        for j in range(N):
            t = int(g.plen[j])
            if t == 0:
                continue
            a = g.alpha[j, :t]
            b = g.beta[j, :t - 1]
            if t == 1:
                lam, vec = a.copy(), np.ones((1, 1))
            else:
                lam, vec = eigh_tridiagonal(a, b)
            self.nodes[j, :t] = np.maximum(lam, 0.0)
            self.weights[j, :t] = g.wn2[j] * vec[0] ** 2
        self._ritz_control(g, off, tb)
        self.mean_diag_K = g.trK / g.n_obs if np.isfinite(g.trK) else float("nan")
        self.mean_K = g.sumK / g.n_obs ** 2
        self.he = g.he
        self.coupling = g.coupling
        self.n_missing = int(g.obs.size - g.n_obs)

    def _ritz_control(self, g: _Group, off, tb: int) -> None:
        """Ritz control variate for the probes (patterns without deflation).

        The ``[Z, Y]`` block finds the isolated eigenpairs of K (population structure, the
        null vector 1 of an intercept) within a few steps; its converged Ritz pairs
        ``(θ_k, x_k)`` (residual ``‖K x_k − θ_k x_k‖ = ‖B_last S_last,k‖`` below
        ``RITZ_TOL · θ_max``) do not depend on the probes. For each probe v_j,
        ``c_j = Σ_k r(θ_k) [(x_kᵀv_j)² − 1]`` has mean exactly 0 (``E[(xᵀv)²] = ‖x‖² = 1``),
        and cancels the probe's own Gauss weight ``≈ (x_kᵀv_j)²`` on θ_k: ``y_j − c_j`` keeps the
        estimate unbiased and removes the χ²₁ noise of the isolated eigenvalues, which the
        linear control variate cannot (their r(θ) is far from 0).
        """
        self.ritz_theta = np.zeros(0)
        self.ritz_dev = np.zeros((self.N, 0))
        if g.Ud is not None or self.N == 0 or tb == 0:
            return
        S, theta = self.S, self.theta
        if len(g.B_list) >= tb and g.B_list[tb - 1].shape[0]:
            res = np.sqrt(_colnorm2(g.B_list[tb - 1] @ S[off[tb - 1]:off[tb], :]))
        else:  # exhausted: every Ritz pair is exact
            res = np.zeros(theta.size)
        sel = np.flatnonzero(res <= RITZ_TOL * max(float(theta.max(initial=0.0)), 1e-300))
        if not sel.size:
            return
        mu = self.mu if np.isfinite(self.mu) else float(np.mean(theta))
        sel = sel[np.argsort(-np.abs(theta[sel] - mu), kind="stable")[:RITZ_MAX]]
        X = np.zeros((g.n_obs, sel.size))
        for j in range(tb):
            X += g.blocks[j] @ S[off[j]:off[j + 1], sel]
        P = X.T @ g.probe_vectors(self.N)  # (k_R, N)
        self.ritz_theta = theta[sel]
        self.ritz_dev = (P * P - _colnorm2(X)[:, None]).T  # (N, k_R)

    # ---- log det H
    def _cv(self, h: np.ndarray):
        """Control variate ``a(h) + b(h) λ`` (the tangent of log(hλ + 1 − h) at the tail's mean
        eigenvalue μ) and its h-derivatives; with μ unknown, ``a = log(1 − h)``, ``b = 0``."""
        if np.isfinite(self.mu):
            mu = self.mu
            dm = h * mu + 1.0 - h
            b = h / dm
            b1 = 1.0 / dm ** 2
            b2 = -2.0 * (mu - 1.0) / dm ** 3
            a = np.log(dm) - mu * b
            a1 = (mu - 1.0) / dm - mu * b1
            a2 = -((mu - 1.0) / dm) ** 2 - mu * b2
        else:
            z = np.zeros_like(h)
            a, a1, a2 = np.log1p(-h), -1.0 / (1.0 - h), -1.0 / (1.0 - h) ** 2
            b = b1 = b2 = z
        return a, a1, a2, b, b1, b2

    def logdet(self, h: np.ndarray, per_probe: bool = False):
        """``log det H`` on the group's samples and its first two h-derivatives.

        ``Σ_i log(h s_i + 1 − h)`` over the deflated directions (Rayleigh values ``s``) plus
        the tail ``tr_⊥ f(K_⊥)``, ``K_⊥ = P K P``, ``P = I − U Uᵀ``, estimated as

            a(h) n_⊥ + b(h) tr K_⊥ + (1/N) Σ_j ‖w_j‖² Σ_k τ_jk² r(θ_jk),   r = f − a − bλ,

        with ``w_j = P v_j`` (``E[w_jᵀ A w_j] = tr(P A P)``), Gauss nodes θ and weights τ² of
        probe j's Lanczos on K_⊥. Since the rule integrates linear functions exactly, the
        sum is ``w_jᵀ f(K_⊥) w_j − a‖w_j‖² − b w_jᵀK_⊥w_j``: a control variate with known mean
        ``a n_⊥ + b tr K_⊥`` (``tr K_⊥ = tr K − Σ s``). It removes the Monte Carlo variance of
        the linear part of f, and makes the estimate exact when K_⊥ = 0 (U spans range K).

        Returns (L, L', L'') of shape ``h.shape``, plus with ``per_probe`` the probe terms
        (y, y', y'') of shape ``h.shape + (N,)``.
        """
        h = np.asarray(h, dtype=np.float64)
        d = h[..., None] * self.sd + (1.0 - h)[..., None]
        t = self.sd - 1.0
        L = np.log(d).sum(axis=-1)
        L1 = (t / d).sum(axis=-1)
        L2 = -((t / d) ** 2).sum(axis=-1)
        N = self.N
        if self.n_perp <= 0 or N == 0:
            z = np.zeros(h.shape + (0,))
            return (L, L1, L2, z, z, z) if per_probe else (L, L1, L2)
        a, a1, a2, b, b1, b2 = self._cv(h)
        trp = self.trK_perp if np.isfinite(self.trK_perp) else 0.0
        L = L + a * self.n_perp + b * trp
        L1 = L1 + a1 * self.n_perp + b1 * trp
        L2 = L2 + a2 * self.n_perp + b2 * trp
        th = self.nodes  # (N, t)
        hh = h[..., None, None]
        dd = hh * th + (1.0 - hh)
        tt = th - 1.0
        ex = (Ellipsis, None, None)
        r0 = np.log(dd) - a[ex] - b[ex] * th
        r1 = tt / dd - a1[ex] - b1[ex] * th
        r2 = -(tt / dd) ** 2 - a2[ex] - b2[ex] * th
        y0 = (self.weights * r0).sum(axis=-1)
        y1 = (self.weights * r1).sum(axis=-1)
        y2 = (self.weights * r2).sum(axis=-1)
        if self.ritz_theta.size:  # Ritz control variate (see _ritz_control)
            tr = self.ritz_theta
            hr = h[..., None]
            dr = hr * tr + (1.0 - hr)
            q0 = np.log(dr) - a[..., None] - b[..., None] * tr
            q1 = (tr - 1.0) / dr - a1[..., None] - b1[..., None] * tr
            q2 = -((tr - 1.0) / dr) ** 2 - a2[..., None] - b2[..., None] * tr
            y0 = y0 - q0 @ self.ritz_dev.T
            y1 = y1 - q1 @ self.ritz_dev.T
            y2 = y2 - q2 @ self.ritz_dev.T
        L, L1, L2 = L + y0.mean(axis=-1), L1 + y1.mean(axis=-1), L2 + y2.mean(axis=-1)
        if per_probe:
            return L, L1, L2, y0, y1, y2
        return L, L1, L2

    # ---- the [Z, Y] quadratic forms
    def _f(self, h: np.ndarray):
        d = h[..., None] * self.theta + (1.0 - h)[..., None]
        f0 = 1.0 / d
        t = self.theta - 1.0
        return f0, -t * f0 ** 2, 2.0 * t ** 2 * f0 ** 3

    def _kry(self, h: np.ndarray, shared: bool, cols):
        """(A_k, b_k, s_k) for k = 0, 1, 2 (value and h-derivatives): ZᵀH⁻¹Z, ZᵀH⁻¹ỹ, ỹᵀH⁻¹ỹ.

        shared: h (P,) for all phenotypes ``cols`` → A (P, 1, c, c), b (P, m, c), s (P, m);
        else h (m,) one per phenotype → A (m, c, c), b (m, c), s (m,).
        """
        GZ, GY, GY2 = self.GZ, self.GY[cols], self.GY2[cols]
        out = []
        for f in self._f(h):
            if shared:
                A = (GZ[None] * f[:, None, :]) @ GZ.T  # (P, c, c)
                b = np.einsum("mk,pkc->pmc", GY, f[:, :, None] * GZ.T[None])
                s = f @ GY2.T
                out.append((A[:, None], b, s))
            else:
                A = (GZ[None] * f[:, None, :]) @ GZ.T  # (m, c, c)
                b = (f * GY) @ GZ.T
                s = np.einsum("mk,mk->m", f, GY2)
                out.append((A, b, s))
        return out

    @staticmethod
    def _schur(kry):
        """R = yᵀPy, log det A and their h-derivatives, and u = A⁻¹b, from (A_k, b_k, s_k)."""
        (A0, b0, s0), (A1, b1, s1), (A2, b2, s2) = kry
        A0b = np.broadcast_to(A0, b0.shape[:-1] + A0.shape[-2:])
        A1b = np.broadcast_to(A1, A0b.shape)
        A2b = np.broadcast_to(A2, A0b.shape)
        u = np.linalg.solve(A0b, b0[..., None])[..., 0]
        A1u = (A1b @ u[..., None])[..., 0]
        A2u = (A2b @ u[..., None])[..., 0]
        R = s0 - np.sum(b0 * u, axis=-1)
        R1 = s1 - 2.0 * np.sum(b1 * u, axis=-1) + np.sum(u * A1u, axis=-1)
        e = b1 - A1u
        Ae = np.linalg.solve(A0b, e[..., None])[..., 0]
        R2 = s2 - 2.0 * np.sum(b2 * u, axis=-1) + np.sum(u * A2u, axis=-1) - 2.0 * np.sum(e * Ae, axis=-1)
        _, ld = np.linalg.slogdet(A0)
        X1 = np.linalg.solve(A0, A1)
        ld1 = np.trace(X1, axis1=-2, axis2=-1)
        ld2 = np.trace(np.linalg.solve(A0, A2), axis1=-2, axis2=-1) - np.sum(X1 * np.swapaxes(X1, -1, -2),
                                                                            axis=(-2, -1))
        if A0.ndim == 4:  # shared: (P, 1) → broadcast over phenotypes
            ld, ld1, ld2 = ld[:, :1] * np.ones_like(R), ld1[:, :1] * np.ones_like(R), ld2[:, :1] * np.ones_like(R)
        return R, R1, R2, ld, ld1, ld2, u

    def pieces(self, h, shared: bool, cols=None):
        """Everything the likelihoods need at h (see :meth:`eval`)."""
        cols = np.arange(self.m) if cols is None else np.asarray(cols)
        h = np.asarray(h, dtype=np.float64)
        R, R1, R2, ld, ld1, ld2, u = self._schur(self._kry(h, shared, cols))
        L, L1, L2 = self.logdet(h)
        if shared:
            L, L1, L2 = L[:, None], L1[:, None], L2[:, None]
        return R, R1, R2, ld, ld1, ld2, L, L1, L2, u

    def eval(self, h, shared: bool, which: int, cols=None):
        """(ℓ, ℓ', ℓ'') of REML (which=0) or ML (which=1), σ² profiled out.

        shared: h (P,) → arrays (P, m); else h (m,) (one h per phenotype ``cols``) → (m,).
        """
        R, R1, R2, ld, ld1, ld2, L, L1, L2, _ = self.pieces(h, shared, cols)
        with np.errstate(divide="ignore", invalid="ignore"):
            if which == 0:
                k = self.n_obs - self.c
                ll = -0.5 * (k * (LOG2PI + np.log(R / k) + 1.0) + L + ld)
                l1 = -0.5 * (k * R1 / R + L1 + ld1)
                l2 = -0.5 * (k * (R2 / R - (R1 / R) ** 2) + L2 + ld2)
            else:
                k = self.n_obs
                ll = -0.5 * (k * (LOG2PI + np.log(R / k) + 1.0) + L)
                l1 = -0.5 * (k * R1 / R + L1)
                l2 = -0.5 * (k * (R2 / R - (R1 / R) ** 2) + L2)
        return ll, l1, l2

    def quadratic_forms(self, h: float, j: int):
        f = self._f(np.array([h]))[0][0]
        A = (self.GZ * f) @ self.GZ.T
        b = (self.GZ * f) @ self.GY[j]
        s = float(np.sum(f * self.GY2[j]))
        sh = self.shift[:, j]
        # y = ỹ + Z shift
        return A, b + A @ sh, s + 2.0 * float(b @ sh) + float(sh @ A @ sh)

    def blup_solve(self, h: np.ndarray) -> np.ndarray:
        """H⁻¹(y − Zω̂) at per-phenotype h (n_o x m), from the Krylov basis."""
        cols = np.arange(self.m)
        *_, u = self.pieces(h, shared=False, cols=cols)
        f0 = self._f(h)[0]  # (m, M)
        Gc = self.GY - u @ self.GZ  # (m, M): Gᵀ c_j with c_j = (−u_j, e_j)
        coef = self.S @ (f0 * Gc).T  # (M, m)
        out = np.zeros((self.n_obs, self.m))
        o = 0
        for Q in self.blocks:
            out += Q @ coef[o:o + Q.shape[1]]
            o += Q.shape[1]
        return out


def _maximise(mdl: _Model, which: int, grid: np.ndarray, hmax: float):
    """Maximise ℓ over h ∈ [0, hmax] for every phenotype of a group.

    1. ℓ on the grid (all phenotypes at once): the global optimum of a possibly multimodal
       profile to within a grid step, or a boundary;
    2. the sign of the analytic quadrature derivative ℓ' at the best grid point picks the
       bracket [a, z] with ℓ'(a) > 0 ≥ ℓ'(z);
    3. safeguarded Newton on ℓ' with the analytic ℓ'' (a Newton step that leaves the bracket
       or meets ℓ'' ≥ 0 is replaced by bisection; the bracket shrinks at every step), to
       |Δh²| < 1e-14: ~5 evaluations where bisection needs ~50.
    """
    m = mdl.m
    ll = mdl.eval(grid, shared=True, which=which)[0]
    ll = np.where(np.isfinite(ll), ll, -np.inf)
    G = grid.size
    bi = np.argmax(ll, axis=0)
    best_h = grid[bi].astype(float)
    best_ll = ll[bi, np.arange(m)]
    _, g0, c0 = mdl.eval(grid[bi], shared=False, which=which)
    up = g0 > 0
    lo = np.where(up, grid[bi], grid[np.maximum(bi - 1, 0)])
    hi = np.where(up, grid[np.minimum(bi + 1, G - 1)], grid[bi])
    at_lo = (~up) & (bi == 0)
    at_hi = up & (bi == G - 1)
    inner = ~(at_lo | at_hi) & (g0 != 0) & np.isfinite(g0)
    h = np.where(at_lo, 0.0, np.where(at_hi, hmax, best_h))
    if inner.any():
        ci = np.flatnonzero(inner)
        a, z = lo[ci], hi[ci]
        x, g, c = best_h[ci], g0[ci], c0[ci]
        live = np.ones(ci.size, bool)
        for _ in range(MAX_NEWTON):
            with np.errstate(divide="ignore", invalid="ignore"):
                xn = x - g / c
            ok = (c < 0) & (xn > a) & (xn < z)
            xn = np.where(ok, xn, 0.5 * (a + z))
            done = live & ((np.abs(xn - x) < 1e-14) | (z - a < 1e-14))
            x = np.where(live, xn, x)
            live &= ~done
            if not live.any():
                break
            idx = np.flatnonzero(live)
            _, gi, cc = mdl.eval(x[idx], shared=False, which=which, cols=ci[idx])
            g[idx], c[idx] = gi, cc
            pos = gi > 0
            a[idx] = np.where(pos, x[idx], a[idx])
            z[idx] = np.where(pos, z[idx], x[idx])
        h[ci] = x
    val = mdl.eval(h, shared=False, which=which)[0]
    # keep the grid point if round-off made the refined value worse
    better = np.isfinite(val) & (val >= best_ll - 1e-9 * np.maximum(1.0, np.abs(best_ll)))
    return np.where(better, h, best_h), np.where(better, val, best_ll)


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------

def _parse_deflation(deflate, n: int):
    if deflate is None:
        return None
    cross = None
    if hasattr(deflate, "U") and hasattr(deflate, "s"):
        U, s = deflate.U, deflate.s
        # a Spectrum's ritz_cross: ‖(I − UUᵀ) K u_i‖² per pair, None for exact eigenvectors
        cross = getattr(deflate, "ritz_cross", None)
        if cross is None:
            cross = np.zeros(np.shape(s)[0] if np.ndim(s) else 0)
        if getattr(deflate, "n", n) != n:
            raise InputError(f"deflation spectrum is over {deflate.n} samples, the operator over {n}")
    else:
        try:
            U, s = deflate
        except (TypeError, ValueError):
            raise InputError("deflate must be a bigmm Spectrum or a tuple (U, s) of orthonormal vectors "
                             "(n x k) and their Rayleigh values (k,)") from None
    U = np.asarray(U, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    if U.ndim != 2 or U.shape[0] != n:
        raise InputError(f"deflation vectors U must be an (n, k) = ({n}, k) array, got shape {U.shape}")
    k = U.shape[1]
    if k >= n:
        raise InputError(f"deflation rank k = {k} must be below the number of samples n = {n} "
                         f"(with all n eigenpairs use bigmm.fit_reml on the exact spectrum)")
    if k == 0:
        return None
    if s.shape != (k,):
        raise InputError(f"deflation values s must have k = {k} entries (one per column of U), got {s.shape}")
    if not (np.all(np.isfinite(U)) and np.all(np.isfinite(s))):
        raise InputError("deflation vectors or values contain non-finite entries")
    err = float(np.abs(U.T @ U - np.eye(k)).max())
    if err > 1e-6:
        raise InputError(f"deflation vectors U are not orthonormal (max |UᵀU − I| = {err:.1e})")
    if cross is not None:
        cross = np.asarray(cross, dtype=np.float64).reshape(-1)
        if cross.shape != (k,) or not np.all(np.isfinite(cross)):
            cross = None
    return U, np.maximum(s, 0.0), cross


def _fingerprint(n, Y, Z, seed, probes, deflation) -> str:
    h = hashlib.sha256()
    h.update(f"v{STATE_VERSION} n={n} seed={seed} probes={probes}".encode())
    h.update(np.ascontiguousarray(np.nan_to_num(Y, nan=1.2345e300)).tobytes())
    h.update(np.isnan(Y).tobytes())
    h.update(np.ascontiguousarray(Z).tobytes())
    if deflation is not None:
        h.update(np.ascontiguousarray(deflation[0]).tobytes())
        h.update(np.ascontiguousarray(deflation[1]).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------
# The solver
# --------------------------------------------------------------------------------------

def fit_matrix_free(op, Y, Z=None, *, phenotype_names: Sequence[str] | None = None,
                    covariate_names: Sequence[str] | None = None, probes: int = DEFAULT_PROBES,
                    max_steps: int = DEFAULT_MAX_STEPS, tol: float = DEFAULT_TOL, deflate=None,
                    seed: int = 0, grid_size: int = GRID_SIZE, checkpoint=None) -> MatrixFreeResult:
    """REML of h², σ²_g, σ²_e and the fixed effects by Lanczos quadrature on K, never forming K.

    Parameters
    ----------
    op : operator
        The GRM over the n samples of the model: an object with ``n`` (rows) and
        ``apply(M, want_diag=False) -> (K @ M, diag K or None)`` for an n x b float64 M (one
        call is one pass over the genotypes). Without a diagonal, ``mean_diag_K`` and ``pve``
        are NaN and the log det loses its control variate (more Monte Carlo error).
    Y : (n,) or (n, m) array
        Phenotypes; NaN marks a missing value. Each phenotype gets the exact model of its
        observed samples (``K_oo``).
    Z : (n, c) array, optional
        Fixed effects including the intercept (default: intercept only); no missing values.
    phenotype_names, covariate_names : sequence of str, optional
    probes : int
        Rademacher probes N per missing-value pattern for ``log det H`` (≥ 2).
    max_steps : int
        Lanczos steps (passes over X) at most (≥ 2).
    tol : float
        Convergence: ``max |Δĥ²| < tol`` and ``max |Δℓ_R| < 10 tol`` between consecutive steps
        for two consecutive steps.
    deflate : Spectrum or (U, s), optional
        k orthonormal vectors (n x k, k < n) with their Rayleigh values ``uᵢᵀKuᵢ`` (e.g. the
        top-k of :func:`bigmm.randomized_spectrum`); ``log det H`` is then exact on span(U)
        (up to the coupling ``‖(I − UUᵀ)KU‖``, second order) and estimated on the rest.
    seed : int
        Seed of the probes (recorded in the result).
    grid_size : int
        Points of the h² grid on [0, H2_MAX] before the 1-D refinement.
    checkpoint : object, optional
        With ``save(state)`` and ``load() -> state or None``: the full state (a dict with
        "meta", JSON-able, and "arrays", NumPy arrays) is saved after every step, and a run
        whose checkpoint holds a state of the same inputs resumes after that step, with the
        same results as an uninterrupted run.

    Returns
    -------
    MatrixFreeResult
        One :class:`MatrixFreeFit` per phenotype, and the quadrature models (for
        :meth:`MatrixFreeResult.loglik_profile` and the BLUP).

    Raises
    ------
    InputError
        For unusable inputs, before any application of K.

    Notes
    -----
    **Solves.** Per missing-value pattern, block Lanczos with full re-orthogonalisation runs
    on ``K_oo`` from ``B = [Z_o, Ỹ_o] = Q₀R₀`` (Ỹ: Y with its OLS fit on Z removed; REML is
    invariant to it, and it avoids cancellation). A rank-revealing QR drops dependent
    directions; a block that loses every direction has exhausted its Krylov space, the
    quadrature is then exact and the recurrence stops. With ``T = S diag(θ) Sᵀ``,
    ``Bᵀ H⁻¹ B ≈ R₀ᵀ E₁ᵀ S diag(1/(hθ + 1 − h)) Sᵀ E₁ R₀``: every h, and the h-derivatives,
    from one eigendecomposition of T.

    **log det H.** Stochastic Lanczos quadrature: each probe ``w_j = (I − UUᵀ)v_j``
    (Rademacher v_j, U = deflation vectors or none) runs its own scalar Lanczos on
    ``K_⊥ = (I − UUᵀ)K_oo(I − UUᵀ)`` with local re-orthogonalisation; the Gauss rule gives
    ``w_jᵀ f(K_⊥) w_j``. ``E[w_jᵀ A w_j] = tr((I − UUᵀ) A (I − UUᵀ))``, the trace over the
    n_o − k directions orthogonal to U, so the deflated directions (where ``K_⊥`` is 0 and
    ``f(0) = log(1 − h)``) are never counted. The tangent of f at the tail's mean
    eigenvalue ``tr K_⊥ / (n_o − k)`` is a control variate with exactly known trace
    (``tr K`` comes from the operator's diagonal in the first pass): see :meth:`_Model.logdet`.
    Without deflation, the converged Ritz pairs of the ``[Z, Y]`` block (the isolated
    eigenvalues of population structure, the null vector of an intercept) give a second,
    zero-mean control variate ``Σ_k r(θ_k)[(x_kᵀv_j)² − 1]`` (:meth:`_Model._ritz_control`): it
    removes the χ²₁ noise those eigenvalues put into each probe, which the linear one cannot.
    For a pattern with missing samples U's observed rows are re-orthonormalised and their
    exact Rayleigh matrix taken from the first pass (the columns ride along with it).

    **One step = one pass.** Each step applies K once to the block holding every pattern's
    ``[Z, Y]`` block and all its probes' vectors (zero rows where the pattern is missing);
    the first pass also carries a ones vector per pattern (for ``1ᵀK1``), the deflation
    vectors of patterns with missing samples, and asks for ``diag K``. After every step the
    estimates are recomputed from the Gauss rules (driver work only) and the run stops when
    they have converged (``tol``; the change is measured with the previous step's Ritz
    control variate, so it reflects the quadrature, not a reshuffled zero-mean Monte Carlo
    term) or at ``max_steps``; a fit that did not converge says so (``converged``,
    ``delta_h2``, ``delta_logl``) and a warning is logged.

    **Maximisation** over h² ∈ [0, H2_MAX] by a grid (global optimum of a possibly
    multimodal profile), then safeguarded Newton on the analytic quadrature derivative in the
    best grid bracket (to ~1e-14 in h²).

    **Standard errors.** ``h2_se_stat``: from the observed REML information in
    (σ²_g, σ²_e) (the expected information at a boundary or if the observed is not
    positive definite), both exact functions of the quadrature:
    with ``ℓ(h, σ²) = −½[(n−c) log(2πσ²) + log det H + log det A + R/σ²]``,
    ``−∂²ℓ/∂h² = ½(L'' + (log det A)'' + R''/σ²)``, ``−∂²ℓ/∂h∂σ² = −R'/(2σ⁴)``,
    ``−∂²ℓ/∂σ²² = (n−c)/(2σ⁴)``; expected: ``I_hh = −½(L'' + (log det A)'')``,
    ``I_hσ² = (L' + (log det A)')/(2σ²)``; transformed to (σ²_g, σ²_e) by the chain rule.
    ``h2_se_mc``: delete-one-probe jackknife, each delete-one estimate by one Newton step
    from ĥ² on the delete-one likelihood (exact to second order in the O(1/N) change).
    ``h2_se = sqrt(h2_se_stat² + h2_se_mc²)``; ``sigma2_g_se`` and ``sigma2_e_se`` add the
    Monte Carlo part the same way, through ``dσ̂²_g/dh²`` and ``dσ̂²_e/dh²``.

    **Haseman–Elston** (``h2_he``, from the first pass only): with ``P = I − Z(ZᵀZ)⁻¹Zᵀ``,
    ``ỹ = P y``, solve

        [tr(PKPK)  tr(PK)] [σ²_g]   [ỹᵀKỹ]
        [tr(PK)    n − c ] [σ²_e] = [ỹᵀỹ ]

    (the least-squares fit of ``ỹỹᵀ`` by ``σ²_g PKP + σ²_e P``), ``h2_he = σ²_g/(σ²_g + σ²_e)``;
    ``tr(PKPK) = tr K² − 2 tr((ZᵀZ)⁻¹ZᵀK²Z) + tr(((ZᵀZ)⁻¹ZᵀKZ)²)`` with ``KZ``, ``Kỹ`` from the
    first product of the ``[Z, Y]`` block and ``tr K² = ‖KU‖²_F + mean_j ‖K w_j‖²`` from the
    probes' first products.

    **Cost.** Passes over X = steps (plus one for ĝ in :func:`blup_matrix_free`); each
    applies K to ``Σ_patterns (c + m_pattern + N)`` columns at most (the first pass adds
    1 + k per pattern with missing samples). Driver memory O(n · width) for the recurrences
    plus the kept ``[Z, Y]`` Krylov basis (n_o x steps · (c + m) per pattern) for the BLUP;
    driver flops per step O(n · dim T · (c + m)) for the re-orthogonalisation and
    O(dim T³) for the eigendecomposition of T.

    References
    ----------
    G. H. Golub, G. Meurant (2010), *Matrices, Moments and Quadrature with Applications*,
    Princeton University Press. S. Ubaru, J. Chen, Y. Saad (2017), Fast estimation of
    tr(f(A)) via stochastic Lanczos quadrature, SIAM J. Matrix Anal. Appl. 38(4). P.-R. Loh
    et al. (2015), Contrasting genetic architectures of schizophrenia and other complex
    diseases using fast variance-components analysis (BOLT-REML), Nature Genetics 47.
    """
    t_start = time.perf_counter()
    # ---------------- validation (no application of K before this block ends)
    if not (hasattr(op, "n") and callable(getattr(op, "apply", None))):
        raise InputError("op must have an attribute n and a method apply(M, want_diag=False) -> (K M, diag)")
    n = int(op.n)
    if not isinstance(probes, (int, np.integer)) or probes < 2:
        raise InputError(f"probes must be an integer ≥ 2 (the Monte Carlo error needs at least two), "
                         f"got {probes!r}")
    if not isinstance(max_steps, (int, np.integer)) or max_steps < 2:
        raise InputError(f"max_steps must be an integer ≥ 2 (convergence compares two steps), got {max_steps!r}")
    try:
        tol = float(tol)
    except (TypeError, ValueError):
        tol = float("nan")
    if not (math.isfinite(tol) and tol > 0):
        raise InputError(f"tol must be a positive number, got {tol!r}")
    if not isinstance(grid_size, (int, np.integer)) or grid_size < 3:
        raise InputError(f"grid_size must be an integer ≥ 3, got {grid_size!r}")
    Y = np.array(Y, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2 or Y.shape[0] != n:
        raise InputError(f"phenotypes Y must be (n,) or (n, m) with n = {n} rows (the operator's samples), "
                         f"got shape {Y.shape}")
    if np.isinf(Y).any():
        raise InputError("phenotypes contain infinite values; use NaN for a missing value")
    Z = np.ones((n, 1)) if Z is None else np.array(Z, dtype=np.float64)
    if Z.ndim == 1:
        Z = Z[:, None]
    if Z.ndim != 2 or Z.shape[0] != n:
        raise InputError(f"covariates Z must be (n, c) with n = {n} rows, got shape {Z.shape}")
    if Z.shape[1] == 0:
        raise InputError("Z has no columns; the model needs at least an intercept")
    if not np.all(np.isfinite(Z)):
        raise InputError("covariates contain missing or non-finite values; drop those samples first")
    m, c = Y.shape[1], Z.shape[1]
    if m == 0:
        raise InputError("no phenotypes (Y has no columns)")
    names = list(phenotype_names) if phenotype_names is not None else [f"pheno{j + 1}" for j in range(m)]
    znames = list(covariate_names) if covariate_names is not None else \
        (["intercept"] + [f"covar{i}" for i in range(1, c)])
    if len(names) != m or len(znames) != c:
        raise InputError(f"phenotype_names ({len(names)}) / covariate_names ({len(znames)}) do not match "
                         f"the columns of Y ({m}) / Z ({c})")
    if len(set(names)) != m:
        raise InputError("phenotype names must be unique")
    deflation = _parse_deflation(deflate, n)
    obs_all = ~np.isnan(Y)
    n_obs = obs_all.sum(axis=0)
    for j in range(m):
        if n_obs[j] < c + 2:
            raise InputError(f"phenotype {names[j]!r}: {n_obs[j]} observed samples, need at least {c + 2} "
                             f"for {c} fixed effects")
        yj = Y[obs_all[:, j], j]
        if not (yj.max() > yj.min()):
            raise InputError(f"phenotype {names[j]!r} is constant; there is nothing to fit")
    # the fit runs on a unit scale per phenotype (REML is scale-equivariant; the fits are scaled
    # back at the end), so a trait measured in units of 1e-200 or 1e150 neither under- nor overflows
    scales = np.ones(m)
    for j in range(m):
        yj = Y[obs_all[:, j], j]
        big = float(np.max(np.abs(yj)))
        scales[j] = big * float(np.std(yj / big))
    Y = Y / scales
    patterns: dict[bytes, list[int]] = {}
    packed = np.packbits(obs_all, axis=0)
    for j in range(m):
        patterns.setdefault(packed[:, j].tobytes(), []).append(j)
    groups: list[_Group] = []
    for gi, cols in enumerate(patterns.values()):
        obs = obs_all[:, cols[0]]
        Zo = Z[obs]
        if np.linalg.matrix_rank(Zo) < c:
            raise InputError(f"phenotype {names[cols[0]]!r}: the fixed effects are collinear on its "
                             f"{int(obs.sum())} observed samples")
        Yo = Y[np.ix_(obs, cols)]
        Qz, Rz = np.linalg.qr(Zo)
        QtY = Qz.T @ Yo
        Yr = Yo - Qz @ QtY
        QtY2 = Qz.T @ Yr  # a second projection: Ỹ ⟂ Z to working precision
        Yr -= Qz @ QtY2
        shift = np.linalg.solve(Rz, QtY + QtY2)
        scale_y = np.sqrt(_colnorm2(Yo - Yo.mean(axis=0)))
        small = np.sqrt(_colnorm2(Yr)) <= 1e-10 * np.maximum(scale_y, 1e-300)
        if small.any():
            j = cols[int(np.flatnonzero(small)[0])]
            raise InputError(f"phenotype {names[j]!r} is a linear combination of the covariates on its "
                             f"observed samples; there is no residual variance to fit")
        groups.append(_Group(gi, cols, [names[j] for j in cols], obs, Zo, Yr, shift, deflation,
                             int(probes), int(seed)))
    width1 = sum(sum(p.shape[1] for _, p in g.pieces(1)) for g in groups)
    if hasattr(op, "plan"):
        op.plan(width1)  # the operator's memory plan for the widest pass, before any pass
    # ---------------- resume
    fp = _fingerprint(n, Y, Z, int(seed), int(probes), deflation)
    notes: dict = {"seed": int(seed), "patterns": len(groups), "grid_size": int(grid_size), "h2_max": H2_MAX}
    step = 0
    prev_h = prev_ll = None
    delta_h = np.full(m, np.nan)
    delta_ll = np.full(m, np.nan)
    streak = np.zeros(m, dtype=np.int64)
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        meta = saved.get("meta", {})
        if meta.get("fingerprint") == fp and meta.get("version") == STATE_VERSION:
            arrays = saved["arrays"]
            for g, gm in zip(groups, meta["groups"]):
                g.restore(arrays, gm)
            step = int(meta["step"])
            if "prev_h" in arrays:
                prev_h = np.array(arrays["prev_h"], dtype=np.float64)
                prev_ll = np.array(arrays["prev_ll"], dtype=np.float64)
            delta_h = np.array(arrays["delta_h"], dtype=np.float64)
            delta_ll = np.array(arrays["delta_ll"], dtype=np.float64)
            streak = np.array(arrays["streak"], dtype=np.int64)
            notes["resumed_after_step"] = step
            log.info("matrix-free REML: resuming after step %d (checkpoint)", step)
        else:
            notes["checkpoint"] = "ignored: it holds the state of other inputs"
            log.warning("matrix-free REML: the checkpoint holds the state of other inputs; starting afresh")
    grid = np.linspace(0.0, H2_MAX, int(grid_size))
    passes = 0
    pass_seconds = []

    def all_done() -> bool:
        return bool(np.all(streak >= 2)) or not any(g.active for g in groups)

    while step < max_steps and not (step >= 2 and all_done()):
        if not any(g.active for g in groups):
            break
        step += 1
        layout = []
        mats = []
        col = 0
        for g in groups:
            for key, P in g.pieces(step):
                layout.append((g, key, col, col + P.shape[1]))
                mats.append((g, P))
                col += P.shape[1]
        Mfull = np.zeros((n, col))
        for (g, key, a, b), (_, P) in zip(layout, mats):
            if g.full:
                Mfull[:, a:b] = P
            else:
                Mfull[g.idx, a:b] = P
        t0 = time.perf_counter()
        KM, diag = op.apply(Mfull, want_diag=(step == 1))
        pass_seconds.append(round(time.perf_counter() - t0, 3))
        passes += 1
        KM = np.asarray(KM, dtype=np.float64)
        if KM.shape != Mfull.shape or not np.all(np.isfinite(KM)):
            raise InputError(f"the operator returned a product of shape {KM.shape} (expected {Mfull.shape}) "
                             f"or with non-finite values")
        if diag is not None:
            diag = np.asarray(diag, dtype=np.float64).reshape(-1)
        prods: dict = {g.gi: {} for g in groups}
        for g, key, a, b in layout:
            prods[g.gi][key] = KM[:, a:b] if g.full else KM[g.idx, a:b]
        for g in groups:
            g.absorb(step, prods[g.gi], diag)
        # estimates after this step, and the convergence figures: the change since the last
        # step with the SAME Ritz control variate (the last step's), so that the figures
        # measure the quadrature's convergence, not the reshuffling of zero-mean Monte Carlo
        # terms as more Ritz pairs converge (that error is in h2_se_mc)
        h_now, ll_now = np.empty(m), np.empty(m)
        h_cmp, ll_cmp = np.empty(m), np.empty(m)
        for g in groups:
            mdl = _Model(g, step, H2_MAX)
            hh, ll = _maximise(mdl, 0, grid, H2_MAX)
            h_now[g.cols], ll_now[g.cols] = hh, ll
            current = (mdl.ritz_theta, mdl.ritz_dev)
            if g.prev_ritz is not None and (g.prev_ritz[0].size or mdl.ritz_theta.size):
                mdl.ritz_theta, mdl.ritz_dev = g.prev_ritz
                hh, ll = _maximise(mdl, 0, grid, H2_MAX)
            h_cmp[g.cols], ll_cmp[g.cols] = hh, ll
            g.prev_ritz = current
            if mdl.exhausted:
                streak[g.cols] = np.maximum(streak[g.cols], 2)
        if prev_h is not None:
            delta_h = np.abs(h_cmp - prev_h)
            delta_ll = np.abs(ll_cmp - prev_ll)
            ok = (delta_h < tol) & (delta_ll < 10.0 * tol)
            streak = np.where(ok, streak + 1, 0)
            for g in groups:  # an exhausted pattern is exact: converged whatever the figures say
                if not g.active:
                    streak[g.cols] = np.maximum(streak[g.cols], 2)
        prev_h, prev_ll = h_now, ll_now
        log.info("matrix-free REML step %d/%d: %d columns, max |Δh²| %.2e, max |Δℓ| %.2e, %d converged",
                 step, max_steps, col, float(np.nanmax(delta_h)) if step > 1 else float("nan"),
                 float(np.nanmax(delta_ll)) if step > 1 else float("nan"), int((streak >= 2).sum()))
        if checkpoint is not None:
            arrays = {"prev_h": prev_h, "prev_ll": prev_ll, "delta_h": delta_h, "delta_ll": delta_ll,
                      "streak": streak}
            gmeta = []
            for g in groups:
                a, gm = g.export()
                arrays.update(a)
                gmeta.append(gm)
            checkpoint.save({"meta": {"version": STATE_VERSION, "fingerprint": fp, "step": step,
                                      "seed": int(seed), "probes": int(probes), "groups": gmeta},
                             "arrays": arrays})
    if step == 0:
        raise InputError("no Lanczos step was run")  # unreachable: max_steps ≥ 2
    exhausted_all = not any(g.active for g in groups)
    conv = streak >= 2
    converged = bool(conv.all())
    if not converged:
        log.warning("matrix-free REML: %d of %d phenotypes did not converge in %d steps (max |Δh²| %.2e, "
                    "max |Δℓ| %.2e, tol %.1e); raise max_steps", int((~conv).sum()), m, step,
                    float(np.nanmax(delta_h)), float(np.nanmax(delta_ll)), tol)
    notes.update({"pass_seconds": pass_seconds, "passes_this_run": passes, "exhausted": exhausted_all,
                  "seconds": round(time.perf_counter() - t_start, 3)})
    # ---------------- final fits
    fits: list = [None] * m
    models = []
    kdef = 0 if deflation is None else deflation[0].shape[1]
    for g in groups:
        mdl = _Model(g, step, H2_MAX)
        models.append(mdl)
        common = dict(steps=step, probes=int(probes), tol=float(tol))
        for j, f in zip(g.cols, _group_fits(mdl, grid, znames, delta_h[g.cols], delta_ll[g.cols],
                                            conv[g.cols], common)):
            fits[j] = f
    _warn_mc_ratio(fits, int(probes))
    unit_sigma2 = tuple(f.sigma2_g + f.sigma2_e for f in fits)
    fits = [_rescale(f, float(a), c) for f, a in zip(fits, scales)]
    return MatrixFreeResult(fits=tuple(fits), phenotype_names=tuple(names), covariate_names=tuple(znames),
                            scales=tuple(float(a) for a in scales), unit_sigma2=unit_sigma2,
                            n=n, lanczos_steps=step, passes_over_X=step, converged=converged,
                            delta_h2=float(np.nanmax(delta_h)), delta_logl=float(np.nanmax(delta_ll)),
                            probes=int(probes), seed=int(seed), tol=float(tol), max_steps=int(max_steps),
                            deflation_rank=kdef, notes=notes, models=tuple(models))


def probes_for_ratio(ratio: float, probes: int, target: float | None = None) -> int:
    """Probes that bring h2_se_mc / h2_se_stat from ``ratio`` (at ``probes``) to about ``target``
    (default :data:`MC_SE_RATIO_TARGET`): the Monte Carlo SD of ĥ² falls as 1/√N, so
    N' = ⌈N (ratio / target)²⌉."""
    target = MC_SE_RATIO_TARGET if target is None else target
    return int(math.ceil(probes * (ratio / target) ** 2))


def _warn_mc_ratio(fits, probes: int) -> None:
    """Warn when the probes' Monte Carlo SD is more than MC_SE_RATIO_WARN of the statistical SE."""
    high = [f for f in fits if np.isfinite(f.h2_se_mc_ratio) and f.h2_se_mc_ratio > MC_SE_RATIO_WARN]
    if high:
        worst = max(high, key=lambda f: f.h2_se_mc_ratio)
        log.warning("matrix-free REML: the Monte Carlo SD of h2 from the %d log det probes is more than %.2g of "
                    "the statistical SE for %d of %d phenotypes (up to %.3f, %s; h2_se includes it): "
                    "reml.probes: %d would bring it to about %.2g (it falls as 1/sqrt(probes); each probe "
                    "is one more column of every pass, not one more pass)", probes, MC_SE_RATIO_WARN,
                    len(high), len(fits), worst.h2_se_mc_ratio, worst.name,
                    probes_for_ratio(worst.h2_se_mc_ratio, probes), MC_SE_RATIO_TARGET)


def _rescale(f: MatrixFreeFit, a: float, c: int) -> MatrixFreeFit:
    """A fit made on y / a, back on y's scale: σ² × a², ω̂ × a, ℓ − (error contrasts) log a."""
    from dataclasses import replace

    la = math.log(a)
    a = np.float64(a)
    with np.errstate(over="ignore", under="ignore"):
        a2 = a * a
        fe = tuple(replace(e, estimate=float(e.estimate * a), se=float(e.se * a)) for e in f.fixed_effects)
        return replace(f, sigma2_g=float(f.sigma2_g * a2), sigma2_g_se=float(f.sigma2_g_se * a2),
                       sigma2_e=float(f.sigma2_e * a2), sigma2_e_se=float(f.sigma2_e_se * a2),
                       sigma2_g_sigma2_e_cov=float(f.sigma2_g_sigma2_e_cov * a2 * a2), fixed_effects=fe,
                       logl_reml=f.logl_reml - (f.n - c) * la, logl_reml_h2_0=f.logl_reml_h2_0 - (f.n - c) * la,
                       logl_ml=f.logl_ml - f.n * la)


def _information(mdl: _Model, h: float, j: int):
    """Observed and expected REML information in (σ²_g, σ²_e) at (h, σ̂²) for phenotype j,
    and the pieces of the likelihood there."""
    R, R1, R2, ld, ld1, ld2, L, L1, L2, u = mdl.pieces(np.array([h]), shared=False, cols=[j])
    R, R1, R2, ld1, ld2, L1, L2 = (float(x[0]) for x in (R, R1, R2, ld1, ld2, L1, L2))
    k = mdl.n_obs - mdl.c
    s2 = R / k
    lh = -0.5 * (L1 + ld1 + R1 / s2)  # ∂ℓ/∂h (0 at an interior optimum)
    H_phi = np.array([[-0.5 * (L2 + ld2 + R2 / s2), 0.5 * R1 / s2 ** 2],
                      [0.5 * R1 / s2 ** 2, -0.5 * k / s2 ** 2]])  # Hessian in (h, σ²)
    I_phi = np.array([[-0.5 * (L2 + ld2), 0.5 * (L1 + ld1) / s2],
                      [0.5 * (L1 + ld1) / s2, 0.5 * k / s2 ** 2]])  # expected information
    sg, se = h * s2, (1.0 - h) * s2
    S = sg + se
    D = np.array([[se / S ** 2, -sg / S ** 2], [1.0, 1.0]])  # ∂(h, σ²)/∂(σ²_g, σ²_e)
    d2h = np.array([[-2.0 * se, sg - se], [sg - se, 2.0 * sg]]) / S ** 3  # ∂²h/∂(σ²_g, σ²_e)²
    observed = -(D.T @ H_phi @ D + lh * d2h)
    expected = D.T @ I_phi @ D
    return observed, expected, s2, R, R1


def _upper_boundary(mdl: _Model, h: np.ndarray, ll: np.ndarray, tol: float):
    """ĥ² within ``tol`` (the fit's convergence tolerance on ĥ²) of ``H2_MAX`` is the boundary
    estimate ``H2_MAX``, as the spectral fit reports it (boundary "upper", SEs from the expected
    information).

    Near h² = 1, ``H = hK + (1 − h)I`` is nearly singular on K's null directions (a GRM of
    centred genotypes always has one), and the Gauss rules of ``log(hλ + 1 − h)``, whose
    derivative there is 1/(1 − h), are off by ~1e-3 in ℓ_R: where the exact profile still rises
    to the bound, the quadrature's turns down within 1e-5 of it, a spurious interior maximum
    whose curvature gives an SE a hundred times too small (measured: n = 200–1,000, h² = 1:
    the spectral fit at the bound with SE 0.06–0.17, the matrix-free one at 1 − ĥ² = 1e-5 to
    4e-5 with SE 0.0005–0.004). An optimum that close to the bound is the bound to the accuracy
    the fit converged to; the lower bound needs no such rule (H → I is well conditioned).
    """
    at = (h < H2_MAX) & (h >= H2_MAX - tol)
    if not at.any():
        return h, ll
    h = np.where(at, H2_MAX, h)
    return h, np.where(at, mdl.eval(h, shared=False, which=0)[0], ll)


def _group_fits(mdl: _Model, grid, znames, dh, dll, conv, common) -> list:
    hmax = H2_MAX
    h_reml, ll_reml = _maximise(mdl, 0, grid, hmax)
    h_reml, ll_reml = _upper_boundary(mdl, h_reml, ll_reml, common["tol"])
    ml_capped = mdl.singular
    gml = grid[:-1] if ml_capped else grid
    h_ml, ll_ml = _maximise(mdl, 1, gml, float(gml[-1]))
    ll0 = mdl.eval(np.array([0.0]), shared=True, which=0)[0][0]
    # per-probe terms at each phenotype's ĥ² for the jackknife
    R, R1, R2, ld, ld1, ld2, L, L1, L2, U = mdl.pieces(h_reml, shared=False)
    *_, y1, y2 = mdl.logdet(h_reml, per_probe=True)
    k = mdl.n_obs - mdl.c
    l1 = -0.5 * (k * R1 / R + L1 + ld1)
    l2 = -0.5 * (k * (R2 / R - (R1 / R) ** 2) + L2 + ld2)
    N = y1.shape[-1]
    dpve = mdl.mean_diag_K - mdl.mean_K
    he_h = mdl.he[2]
    fits = []
    for j, name in enumerate(mdl.names):
        h = float(h_reml[j])
        observed, expected, s2, Rj, R1j = _information(mdl, h, j)
        if h > INFO_H2_MAX:  # the information where its quadrature holds
            observed, expected = _information(mdl, INFO_H2_MAX, j)[:2]
        sg, se = h * s2, (1.0 - h) * s2
        boundary = "lower" if h <= 0.0 else ("upper" if h >= hmax else "")
        cov, method = information_covariance(observed, expected, boundary)
        grad = np.array([se, -sg]) / (sg + se) ** 2
        with np.errstate(invalid="ignore"):
            se_stat = float(np.sqrt(grad @ cov @ grad))
            sg_se_stat, se_se_stat = float(np.sqrt(cov[0, 0])), float(np.sqrt(cov[1, 1]))
        # delete-one-probe jackknife: one Newton step from ĥ² on each delete-one likelihood
        if N >= 2:
            g1 = l1[j] - 0.5 * (y1[j].mean() - y1[j]) / (N - 1)
            g2 = l2[j] - 0.5 * (y2[j].mean() - y2[j]) / (N - 1)
            with np.errstate(divide="ignore", invalid="ignore"):
                step = np.where(g2 < 0, -g1 / g2, 0.0)
            hj = np.clip(h + step, 0.0, hmax)
            se_mc = float(np.sqrt((N - 1) / N * np.sum((hj - hj.mean()) ** 2)))
        else:
            se_mc = 0.0
        h_se = math.sqrt(se_stat ** 2 + se_mc ** 2) if np.isfinite(se_stat) else float("nan")
        dsg = (Rj + h * R1j) / k  # dσ̂²_g/dh
        dse = ((1.0 - h) * R1j - Rj) / k  # dσ̂²_e/dh
        sg_se = math.hypot(sg_se_stat, dsg * se_mc)
        se_se = math.hypot(se_se_stat, dse * se_mc)
        lrt = 0.0 if h <= 0.0 else max(0.0, 2.0 * (float(ll_reml[j]) - float(ll0[j])))
        pval = 1.0 if lrt <= 0 else 0.5 * float(chdtrc(1, lrt))
        pve = sg * dpve / (sg * dpve + se) if np.isfinite(dpve) and (sg * dpve + se) > 0 else float("nan")
        A, *_ = mdl.quadratic_forms(h, j)
        C = np.linalg.inv(A) * s2
        omega = U[j] + mdl.shift[:, j]
        fe = tuple(FixedEffect(name=zn, estimate=float(omega[i]), se=float(np.sqrt(C[i, i])))
                   for i, zn in enumerate(znames))
        fits.append(MatrixFreeFit(
            name=name, n=mdl.n_obs, h2=h, h2_se=h_se,
            h2_se_method=f"{method} + probe jackknife (Monte Carlo)",
            h2_se_curvature=se_stat, pve=float(pve), mean_diag_K=float(mdl.mean_diag_K),
            sigma2_g=sg, sigma2_g_se=sg_se, sigma2_e=se, sigma2_e_se=se_se,
            logl_reml=float(ll_reml[j]), logl_reml_h2_0=float(ll0[j]), logl_ml=float(ll_ml[j]),
            h2_ml=float(h_ml[j]), lrt_stat=lrt, lrt_pvalue=pval, boundary=boundary, fixed_effects=fe,
            n_missing=mdl.n_missing, missing_method="observed_subset" if mdl.n_missing else "none",
            sigma2_g_sigma2_e_cov=float(cov[0, 1]),
            pve_se=(float(dpve / (h * dpve + 1.0 - h) ** 2 * h_se)
                    if np.isfinite(dpve) and (h * dpve + 1.0 - h) > 0 else float("nan")),
            ml_note=(f"K is singular: ML is maximised over h2 in [0, {gml[-1]:g}] because it can grow "
                     f"without bound as h2 -> 1" if ml_capped else ""),
            h2_se_stat=se_stat, h2_se_mc=se_mc, h2_he=float(np.asarray(he_h)[j]),
            h2_se_mc_ratio=se_mc / se_stat if se_stat > 0 else float("nan"),
            lanczos_steps=common["steps"], passes_over_X=common["steps"], converged=bool(conv[j]),
            delta_h2=float(dh[j]), delta_logl=float(dll[j]), probes=common["probes"],
            deflation_rank=int(mdl.k), deflation_coupling=float(mdl.coupling)))
    return fits
