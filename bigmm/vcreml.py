"""REML with several variance components on dense GRMs (docs/math.md §12, the exact AI-REML fit).

Model ``y = Z ω + Σ_j g_j + e`` with ``g_j ~ N(0, σ²_j K_j)``, ``e ~ N(0, σ²_e I)``, so

    V = Var(y) = Σ_j σ²_j K_j + σ²_e I,        j = 1..m,

with each ``K_j`` a dense n × n GRM (for partitioned heritability, ``K_j = X_j X_jᵀ / p_j`` from
the j-th group of variants). :func:`fit_components` maximises the restricted likelihood by
average-information (AI) REML, as GCTA ``--reml --mgrm`` and GEMMA ``-vc 2 -mk`` do, for every
phenotype on its own observed samples, and reports per component σ²_j, h²_j = σ²_j / Vp, its
share of h², its enrichment and GEMMA's pve_j, with SEs from the inverse AI matrix, and the
likelihood-ratio tests of each component and of all of them.

The steps (each a function): :func:`evaluate` (one Cholesky of V: ℓ, score, AI matrix),
:func:`maximise` (the AI iteration with its EM fall-back and the σ²_j ≥ 0 constraint),
:func:`null_fit` (no genetic component, closed form), :func:`derived` (h², shares, enrichments
and their delta-method SEs) and :func:`fit_components` (validation, missing values, scaling,
the fits and tests of each phenotype). The result types are :class:`ComponentEstimate`,
:class:`ComponentsFit` and :class:`ComponentsResult`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.special import chdtrc  # chi2.sf without importing scipy.stats (0.8 s at start-up)

from .components_results import (  # noqa: F401 - the result types, importable from here as before
    COMPONENT_COLUMNS, COMPONENT_MC_COLUMNS, COMPONENTS_FIT_COLUMNS, LRT_ALL_RULE, PHENOTYPE_COLUMNS,
    PHENOTYPE_FIELDS, PHENOTYPE_MC_FIELDS, ComponentEstimate, ComponentsFit, ComponentsResult)
from .errors import InputError
from .results import FixedEffect, design_names

log = logging.getLogger("bigmm")

LOG2PI = math.log(2.0 * math.pi)
#: defaults of :func:`fit_components`: convergence when, between two iterations, |Δℓ| < TOL_LOGL
#: and max_j |Δσ²_j| < TOL · Vp (on the unit residual scale the fit runs on); MAX_ITER iterations
TOL = 1e-8
TOL_LOGL = 1e-8
MAX_ITER = 200
#: step halvings of an AI step that lowers ℓ before an EM step is taken instead
MAX_HALVINGS = 8
#: ℓ may fall by this much (relative, round-off) in an accepted step
LOGL_SLACK = 1e-12


# --------------------------------------------------------------------------------------
# The likelihood at one point
# --------------------------------------------------------------------------------------

@dataclass
class State:
    """ℓ and its derivatives at θ = (σ²_1, ..., σ²_m, σ²_e) for the components in the model.

    ``score_k = ½ (yᵀP K_k P y − tr(P K_k))`` (REML; ML: ``tr(V⁻¹K_k)``), ``ai_kl = ½ (K_k P y)ᵀ
    P (K_l P y)`` with ``K_{m+1} = I``; ``omega`` and ``omega_cov`` = (ZᵀV⁻¹Z)⁻¹ the GLS fit.
    """

    logl: float
    score: np.ndarray
    ai: np.ndarray
    omega: np.ndarray
    omega_cov: np.ndarray


def evaluate(Ks: Sequence[np.ndarray], y: np.ndarray, Z: np.ndarray, theta: np.ndarray,
             ml: bool = False) -> State | None:
    """ℓ_R (or ℓ_ML with ``ml``), its score and the AI matrix at ``theta``; None where V is not
    positive definite.

    One Cholesky of V (n³/3 flops: it tests that V is positive definite and gives log det V) and
    V⁻¹ (LAPACK's LU inverse, ~2n³ flops): with V⁻¹ and
    ``P = V⁻¹ − V⁻¹Z (ZᵀV⁻¹Z)⁻¹ ZᵀV⁻¹`` in hand, each trace is an O(n²) elementwise sum and the
    AI matrix needs the m + 1 vectors ``K_k P y``: O(n³ + m n²) flops, at most three n × n work
    arrays at a time.
    """
    n, c = Z.shape
    V = np.multiply(Ks[0], theta[0]) if Ks else np.zeros((n, n))
    for K, t in zip(Ks[1:], theta[1:-1]):
        V += t * K
    V.flat[::n + 1] += theta[-1]
    # NumPy's LAPACK, not SciPy's: SciPy's bundled OpenBLAS took 4 s for this Cholesky at n = 2,000
    # on a busy 2-core machine where NumPy's took 0.24-0.6 s (scripts/bench/bench_components.py)
    try:
        L = np.linalg.cholesky(V)
    except np.linalg.LinAlgError:
        return None
    logdet_V = 2.0 * float(np.log(np.diag(L)).sum())
    del L
    Vi = np.linalg.inv(V)
    del V
    Vi += Vi.T
    Vi *= 0.5
    ViZ = Vi @ Z
    A = Z.T @ ViZ
    try:
        LA = np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        return None
    A_inv = np.linalg.inv(A)
    omega = A_inv @ (ViZ.T @ y)
    traces = [float(np.vdot(Vi, K)) for K in Ks] + [float(np.trace(Vi))] if ml else None
    P = Vi
    P -= ViZ @ A_inv @ ViZ.T  # in place: V⁻¹ is not needed again
    Py = P @ y
    yPy = float(y @ Py)
    if not ml:
        traces = [float(np.vdot(P, K)) for K in Ks] + [float(np.trace(P))]
    U = np.column_stack([K @ Py for K in Ks] + [Py])
    score = 0.5 * (U.T @ Py - np.array(traces))
    ai = 0.5 * U.T @ (P @ U)
    if ml:
        logl = -0.5 * (n * LOG2PI + logdet_V + yPy)
    else:
        logl = -0.5 * ((n - c) * LOG2PI + logdet_V + 2.0 * float(np.log(np.diag(LA)).sum()) + yPy)
    return State(logl=logl, score=score, ai=0.5 * (ai + ai.T), omega=omega, omega_cov=A_inv)


def null_fit(y: np.ndarray, Z: np.ndarray, ml: bool = False) -> tuple[float, float]:
    """(ℓ, σ̂²_e) of the model without genetic components, V = σ²_e I, in closed form:
    σ̂²_e = RSS / (n − c) and ℓ_R = −½ [(n − c)(log 2πσ̂²_e + 1) + log det ZᵀZ] (ML: RSS / n and
    −½ n (log 2πσ̂²_e + 1))."""
    n, c = Z.shape
    Q, R = np.linalg.qr(Z)
    r = y - Q @ (Q.T @ y)
    rss = float(r @ r)
    if ml:
        s2 = rss / n
        return -0.5 * n * (LOG2PI + math.log(s2) + 1.0), s2
    s2 = rss / (n - c)
    logdet_ZZ = 2.0 * float(np.log(np.abs(np.diag(R))).sum())
    return -0.5 * ((n - c) * (LOG2PI + math.log(s2) + 1.0) + logdet_ZZ), s2


# --------------------------------------------------------------------------------------
# The AI iteration
# --------------------------------------------------------------------------------------

@dataclass
class Maximum:
    """Where :func:`maximise` stopped: θ, the state there, which genetic components the
    constraint holds at 0, and the convergence record."""

    theta: np.ndarray
    state: State
    held: np.ndarray
    iterations: int
    converged: bool
    delta_logl: float
    delta_theta: float


def em_step(theta: np.ndarray, st: State, n: int) -> np.ndarray:
    """The EM-REML update ``σ²_k ← σ²_k + (2 σ⁴_k / n) score_k`` (GCTA's ``em_reml``); it keeps
    non-negative components non-negative and never lowers ℓ."""
    return theta + 2.0 * theta ** 2 * st.score / n


def _ai_direction(st: State, free: np.ndarray) -> np.ndarray | None:
    """The AI (Newton) step ``AI⁻¹ score`` on the free parameters; None if AI is singular there."""
    delta = np.zeros_like(st.score)
    try:
        delta[free] = np.linalg.solve(st.ai[np.ix_(free, free)], st.score[free])
    except np.linalg.LinAlgError:
        return None
    return delta if np.all(np.isfinite(delta)) else None


def _better(new: State | None, old: State) -> bool:
    """``new`` exists (V positive definite) and ℓ did not fall beyond round-off."""
    return new is not None and new.logl >= old.logl - LOGL_SLACK * max(1.0, abs(old.logl))


def _step(Ks, y, Z, theta, st, held, constrain, ml):
    """One iteration from θ along the AI step Δ on the free parameters.

    Where θ + Δ would leave the parameter space (a σ²_j < 0 under the constraint, or σ²_e ≤ 0) the
    step is cut at the first bound it meets, α_max = min θ_k / −Δ_k: a genetic component reaching
    its bound is set to exactly 0 and held there (:func:`maximise` releases it later if its score
    says so). Where that bound is σ²_e = 0, σ²_e moves halfway to 0 and the others take the AI
    model's best step given that move (:func:`_residual_direction`; cut in turn where a σ²_j meets
    0, held there); with ``ml`` the whole step is cut halfway to σ²_e = 0 instead. The step α Δ, α = α_max, α_max / 2, ... (at most ``MAX_HALVINGS`` halvings), is
    taken at the first α where ℓ does not fall; if none, or AI is singular, an EM step
    (:func:`em_step`).

    Returns (θ, state, held, kind), kind one of "ai", "ai_to_bound", "held", "em"."""
    delta = _ai_direction(st, ~held)
    if delta is not None:
        out = (delta < 0) & (theta + delta <= 0.0)
        if not constrain:
            out[:-1] = False
        alpha, k = 1.0, -1
        if out.any():
            ratio = np.where(out, theta / np.where(out, -delta, 1.0), np.inf)
            k = int(np.argmin(ratio))
            alpha = float(ratio[k])
            if k == theta.size - 1:  # σ²_e must stay positive: halfway to 0, the others fitted given it
                # (ML: not there. Where a fixed effect lies in the null space of every K_j, as the
                # intercept does with centred GRMs, ℓ_ML grows without bound as σ²_e → 0: the ML fit
                # keeps the whole step cut halfway, as it always has)
                res = None if ml else _residual_direction(theta, st, held, constrain)
                if res is None:  # ML, or AI singular on the others: the whole step cut halfway to σ²_e = 0
                    alpha, k = 0.5 * alpha, -1
                else:
                    delta, alpha, k = res
            if k >= 0 and alpha == 0.0:  # already at 0 and the step points outwards: hold it
                held = held.copy()
                held[k] = True
                return theta, st, held, "held"
        for h in range(MAX_HALVINGS + 1):
            new = theta + alpha * delta
            if k >= 0 and h == 0:
                new[k] = 0.0
            if constrain:
                new[:-1] = np.maximum(new[:-1], 0.0)
            ns = evaluate(Ks, y, Z, new, ml)
            if _better(ns, st):
                if k >= 0 and h == 0:
                    held = held.copy()
                    held[k] = True
                    return new, ns, held, "ai_to_bound"
                return new, ns, held, "ai"
            alpha *= 0.5
    new = em_step(theta, st, y.size)
    new[held] = 0.0
    ns = evaluate(Ks, y, Z, new, ml)
    if ns is None:  # cannot happen for positive semi-definite K; stay put (maximise reports no convergence)
        return theta, st, held, "stuck"
    return new, ns, held, "em"


def _residual_direction(theta: np.ndarray, st: State, held: np.ndarray, constrain: bool):
    """The step where the AI step would take σ²_e to 0 or below: σ²_e moves halfway to 0,
    ``Δ_e = −θ_e / 2``, and the other free parameters take the maximiser of the AI quadratic model
    given that move, ``Δ_f = AI_ff⁻¹ (s_f − AI_fe Δ_e)``.

    Cutting the whole AI step halfway instead moves every σ²_j by the same fraction as σ²_e at
    each halving: where the REML maximum lies on σ²_e = 0 (small n, V = Σ σ²_j K_j still positive
    definite) the fit stalled short of it, at a point set by the path, and reported convergence.
    This way σ²_e halves at each iteration and the others follow their maximum given it.

    Returns (Δ, α, k): under the constraint α = min θ_j / −Δ_j ≤ 1 over the σ²_j that Δ would take
    to 0 or below, k that σ²_j (α = 1, k = −1 if none); None where AI_ff is singular."""
    free = ~held
    free[-1] = False
    delta = np.zeros_like(theta)
    delta[-1] = -0.5 * theta[-1]
    try:
        delta[free] = np.linalg.solve(st.ai[np.ix_(free, free)], st.score[free] - st.ai[free, -1] * delta[-1])
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(delta)):
        return None
    out = (delta < 0) & (theta + delta <= 0.0)
    out[-1] = False
    if not constrain or not out.any():
        return delta, 1.0, -1
    ratio = np.where(out, theta / np.where(out, -delta, 1.0), np.inf)
    k = int(np.argmin(ratio))
    return delta, float(ratio[k]), k


def maximise(Ks: Sequence[np.ndarray], y: np.ndarray, Z: np.ndarray, theta0: np.ndarray, *,
             constrain: bool = True, ml: bool = False, tol: float = TOL, tol_logl: float = TOL_LOGL,
             max_iter: int = MAX_ITER, first_em: bool = True) -> Maximum:
    """Maximise ℓ_R (ℓ_ML with ``ml``) over θ = (σ²_1, ..., σ²_m, σ²_e) from ``theta0`` by AI-REML.

    Each iteration is one :func:`_step` (AI step, step to a bound, or EM step; the first is an
    EM step when ``first_em``, as GCTA starts). With ``constrain`` a genetic σ²_j that an AI step
    would take below 0 is held at exactly 0 and the others are fitted; when the fit of the free
    ones has converged, a held component whose score is positive is released (the Karush–Kuhn–
    Tucker condition of the constrained maximum: score ≤ 0 at a bound). Converged: |Δℓ| <
    ``tol_logl`` and max |Δθ| < ``tol`` · Vp between two iterations, the step held no component at
    0, and there is no component to release.
    """
    theta = np.asarray(theta0, dtype=np.float64).copy()
    st = evaluate(Ks, y, Z, theta, ml)
    if st is None:
        raise InputError("the starting values give a covariance matrix V that is not positive definite")
    held = np.zeros(theta.size, bool)
    dl = dt = float("inf")
    it = 0
    while it < max_iter:
        it += 1
        if it == 1 and first_em:
            new = em_step(theta, st, y.size)
            ns = evaluate(Ks, y, Z, new, ml)
            if ns is None:
                new, ns = theta, st
            kind = "em"
        else:
            new, ns, held, kind = _step(Ks, y, Z, theta, st, held, constrain, ml)
        dl, dt = abs(ns.logl - st.logl), float(np.max(np.abs(new - theta)))
        vp = float(np.sum(np.abs(new)))
        theta, st = new, ns
        # a step that holds a component at 0 is no test of convergence: the others have not yet
        # been fitted without it (testing there released the component just held, in a loop)
        if it > 1 and kind not in ("held", "ai_to_bound") and dl < tol_logl and dt < tol * vp:
            # a held component whose AI step from 0 would be upwards and beyond the tolerance
            release = held & (st.score / np.maximum(np.diag(st.ai), 1e-300) > tol * vp)
            if not release.any():
                return Maximum(theta, st, held, it, True, dl, dt / vp)
            held = held & ~release
    return Maximum(theta, st, held, it, False, dl, dt / max(float(np.sum(np.abs(theta))), 1e-300))


# --------------------------------------------------------------------------------------
# Derived quantities
# --------------------------------------------------------------------------------------

def ratio(a: np.ndarray, b: np.ndarray, theta: np.ndarray, cov: np.ndarray) -> tuple[float, float]:
    """``R = aᵀθ / bᵀθ`` and its delta-method SE, ``∇R = (a bᵀθ − b aᵀθ) / (bᵀθ)²``."""
    num, den = float(a @ theta), float(b @ theta)
    if den == 0.0:
        return float("nan"), float("nan")
    grad = (a * den - b * num) / den ** 2
    with np.errstate(invalid="ignore"):
        return num / den, float(np.sqrt(grad @ cov @ grad))


def derived(theta: np.ndarray, cov: np.ndarray, d: np.ndarray, n_variants: np.ndarray | None) -> dict:
    """h², share of h², enrichment and pve of each component and their totals, with SEs.

    Every one is a ratio of linear forms in θ = (σ²_1..σ²_m, σ²_e) (:func:`ratio`): h²_j = σ²_j / Vp,
    total h² = Σσ²_j / Vp, share_j = σ²_j / Σσ²_k, pve_j = d_j σ²_j / (Σ d_k σ²_k + σ²_e),
    enrichment_j = share_j / (p_j / Σ p_k).
    """
    m = theta.size - 1
    ones = np.ones(m + 1)
    gen = np.r_[np.ones(m), 0.0]
    dvec = np.r_[d, 1.0]
    out = {"h2": [], "share": [], "pve": [], "enrichment": []}
    frac = None if n_variants is None else n_variants / n_variants.sum()
    for j in range(m):
        e = np.zeros(m + 1)
        e[j] = 1.0
        out["h2"].append(ratio(e, ones, theta, cov))
        share = ratio(e, gen, theta, cov)
        out["share"].append(share)
        out["pve"].append(ratio(d[j] * e, dvec, theta, cov))
        out["enrichment"].append((float("nan"),) * 2 if frac is None else (share[0] / frac[j], share[1] / frac[j]))
    out["h2_total"] = ratio(gen, ones, theta, cov)
    out["pve_total"] = ratio(np.r_[d, 0.0], dvec, theta, cov)
    return out


def _lrt_pvalue(stat: float, df: int, constrain: bool) -> float:
    """P-value of a likelihood-ratio statistic: ½ P(χ²_df > stat) constrained (the ½χ²₀ + ½χ²₁
    mixture for one component; GCTA's rule for several), P(χ²_df > stat) unconstrained."""
    if stat <= 0.0:
        return 1.0
    p = float(chdtrc(df, stat))
    return 0.5 * p if constrain else p


# --------------------------------------------------------------------------------------
# Validation and the fit of each phenotype
# --------------------------------------------------------------------------------------

def _check_inputs(Ks, Y, Z, component_names, phenotype_names, covariate_names, n_variants):
    """Ks as a list of (n, n) float64 arrays, Y (n, q), Z (n, c) and the names, or an InputError."""
    Ks = [np.asarray(K, dtype=np.float64) for K in Ks]
    if not Ks:
        raise InputError("fit_components needs at least one GRM in Ks")
    n = Ks[0].shape[0]
    names = list(component_names) if component_names is not None else [f"K{j + 1}" for j in range(len(Ks))]
    if len(names) != len(Ks) or len(set(names)) != len(names):
        raise InputError(f"component_names must name each of the {len(Ks)} GRMs once, got {names}")
    for name, K in zip(names, Ks):
        if K.shape != (n, n):
            raise InputError(f"GRM of component {name!r} has shape {K.shape}, expected ({n}, {n})")
        if not np.all(np.isfinite(K)):
            raise InputError(f"GRM of component {name!r} has missing or non-finite entries")
        if not np.allclose(K, K.T, rtol=1e-6, atol=1e-8 * max(1.0, float(np.abs(K).max()))):
            raise InputError(f"GRM of component {name!r} is not symmetric")
    Y = np.asarray(Y, dtype=np.float64)
    Y = Y[:, None] if Y.ndim == 1 else Y
    Z = np.ones((n, 1)) if Z is None else np.asarray(Z, dtype=np.float64)
    Z = Z[:, None] if Z.ndim == 1 else Z
    if Y.shape[0] != n or Z.shape[0] != n:
        raise InputError(f"phenotypes have {Y.shape[0]} rows and covariates {Z.shape[0]}; the GRMs {n} samples")
    if not np.all(np.isfinite(Z)):
        raise InputError("covariates contain missing or non-finite values; drop those samples first")
    q, c = Y.shape[1], Z.shape[1]
    pnames, znames = design_names(q, c, phenotype_names, covariate_names)
    nv = None
    if n_variants is not None:
        nv = np.asarray(n_variants, dtype=np.float64)
        if nv.shape != (len(Ks),) or not np.all(nv > 0):
            raise InputError(f"n_variants must give a positive count for each of the {len(Ks)} components")
    return Ks, Y, Z, names, pnames, znames, nv


def _observed(y: np.ndarray, Z: np.ndarray, name: str) -> np.ndarray:
    """The samples with a value of phenotype ``name``, checked for a fit with Z's columns."""
    obs = ~np.isnan(y)
    n_o, c = int(obs.sum()), Z.shape[1]
    if n_o < c + 2:
        raise InputError(f"phenotype {name!r}: {n_o} observed samples, need at least {c + 2} for {c} fixed effects")
    if not np.ptp(y[obs]) > 0:
        raise InputError(f"phenotype {name!r} is constant; there is nothing to fit")
    if np.linalg.matrix_rank(Z[obs]) < c:
        raise InputError(f"phenotype {name!r}: the fixed effects are collinear on its {n_o} observed samples")
    return obs


def _start(Ks: list, var: float) -> np.ndarray:
    """GCTA's start: the phenotypic variance split equally over the m + 1 components (each σ²_j
    divided by the mean diagonal of its K, so that each K_j σ²_j starts with an equal share)."""
    share = var / (len(Ks) + 1)
    return np.array([share / max(float(np.mean(np.diag(K))), 1e-12) for K in Ks] + [share])


def _fit_without(Ks, y, Z, full: Maximum, drop: int, constrain, kw) -> float:
    """ℓ_R of the fit without component ``drop``, started from the full fit (its variance moved to σ²_e)."""
    keep = [j for j in range(len(Ks)) if j != drop]
    if not keep:
        return null_fit(y, Z)[0]
    theta = np.r_[full.theta[keep], full.theta[-1] + full.theta[drop] * float(np.mean(np.diag(Ks[drop])))]
    theta[:-1] = np.maximum(theta[:-1], 1e-3 * theta[-1]) if constrain else theta[:-1]
    return maximise([Ks[j] for j in keep], y, Z, theta, constrain=constrain, **kw).state.logl


def _ml_fit(Ks, yu, Z, theta, constrain, kw) -> tuple[float, float]:
    """(ℓ_ML at its maximum, the total h² there), started from the REML estimate ``theta``."""
    mlfit = maximise(Ks, yu, Z, theta, constrain=constrain, ml=True, first_em=False, **kw)
    return mlfit.state.logl, float(mlfit.theta[:-1].sum() / mlfit.theta.sum())


#: an AI matrix whose condition number (after scaling to unit diagonal) exceeds this is singular
#: to the precision of the fit: its inverse, the SEs, carries no digit. Measured: ~15 for the
#: regular fits of docs/components_study.md; 3e15 for its one unconstrained fit that stopped where
#: V is singular (row lowmaf, replicate 31: SE of the total h² 818)
AI_CONDITION_MAX = 1e12


def _ill_conditioned(ai: np.ndarray) -> bool:
    """Is the AI matrix singular to the fit's precision (its unit-diagonal scaling's condition
    number above :data:`AI_CONDITION_MAX`)?"""
    d = np.sqrt(np.abs(np.diag(ai)))
    if not np.all(np.isfinite(ai)) or np.any(d == 0):
        return True
    return bool(np.linalg.cond(ai / np.outer(d, d)) > AI_CONDITION_MAX)


def _inverse_ai(st: State) -> np.ndarray:
    """Cov(θ̂) = AI⁻¹ over every component, held ones included (NaN where AI is singular)."""
    try:
        return np.linalg.inv(st.ai)
    except np.linalg.LinAlgError:
        return np.full(st.ai.shape, np.nan)


def _components(best: Maximum, theta_o, cov_o, Ks, cnames, nv, logl, without, constrain) -> tuple:
    """The :class:`ComponentEstimate` of each K at the estimate ``theta_o`` (y's scale) with Cov ``cov_o``."""
    m = len(Ks)
    d = np.array([float(np.mean(np.diag(K)) - np.mean(K)) for K in Ks])
    der = derived(theta_o, cov_o, d, nv)
    se = np.sqrt(np.maximum(np.diag(cov_o), 0.0)) if np.all(np.isfinite(cov_o)) else np.full(m + 1, np.nan)
    comps = []
    for j in range(m):
        # held at 0, the fit without the component is the same model at the same maximum: LRT 0
        at_bound = bool(best.held[j] or best.theta[j] == 0.0)
        tested = np.isfinite(without[j])
        stat = (0.0 if at_bound else max(0.0, 2.0 * (logl - without[j]))) if tested else float("nan")
        comps.append(ComponentEstimate(
            name=cnames[j], n_variants=float("nan") if nv is None else float(nv[j]),
            sigma2=float(theta_o[j]), sigma2_se=float(se[j]), h2=der["h2"][j][0], h2_se=der["h2"][j][1],
            share=der["share"][j][0], share_se=der["share"][j][1], enrichment=der["enrichment"][j][0],
            enrichment_se=der["enrichment"][j][1], pve=der["pve"][j][0], pve_se=der["pve"][j][1],
            mean_diag_K=float(np.mean(np.diag(Ks[j]))), boundary=at_bound, lrt_stat=stat,
            lrt_pvalue=_lrt_pvalue(stat, 1, constrain) if tested else float("nan"),
            logl_reml_without=float(without[j])))
    return tuple(comps), der, se


def _fit_one(Ks, y, Z, *, name, cnames, znames, nv, constrain, lrt, ml, kw, n_missing) -> ComponentsFit:
    """Every estimate and test of one phenotype on its observed samples (y, Z, Ks restricted to them).

    The fits run on y / a, a the residual SD of the OLS fit (REML is scale-equivariant), and are
    reported on y's scale: σ² = a² σ'², ω = a ω', ℓ_R = ℓ_R' − (n − c) log a, ℓ_ML = ℓ_ML' − n log a."""
    n, c = Z.shape
    m = len(Ks)
    ll0, s2 = null_fit(y, Z)  # the model without any K, on y's scale
    a = math.sqrt(s2)
    la, a2 = math.log(a), s2
    yu = y / a
    best = maximise(Ks, yu, Z, _start(Ks, 1.0), constrain=constrain, **kw)
    logl = best.state.logl - (n - c) * la
    if lrt:
        without = [ll0] if m == 1 else [_fit_without(Ks, yu, Z, best, j, constrain, kw) - (n - c) * la
                                        for j in range(m)]
    else:
        without = [float("nan")] * m
    logl_ml, h2_ml = _ml_fit(Ks, yu, Z, best.theta, constrain, kw) if ml else (float("nan"), float("nan"))
    theta_o, cov_o = best.theta * a2, _inverse_ai(best.state) * a2 * a2
    # an AI matrix that cannot be inverted: V is singular at the point reached (an unconstrained
    # fit walking along a direction with no maximum); not a converged estimate, whatever the steps
    singular = not np.isfinite(cov_o).all() or _ill_conditioned(best.state.ai)
    if singular:
        log.warning("REML %s: the average-information matrix is singular at the estimate (V singular or "
                    "a direction without a maximum): the fit is reported as not converged; constrain the "
                    "components (GCTA's default) or merge the component(s) near 0", name)
    comps, der, se = _components(best, theta_o, cov_o, Ks, cnames, nv, logl, without, constrain)
    none = not np.any(best.theta[:-1])
    stat_all = 0.0 if none else max(0.0, 2.0 * (logl - ll0))
    gen = np.r_[np.ones(m), 0.0]
    fe = tuple(FixedEffect(name=zn, estimate=float(a * best.state.omega[i]),
                           se=float(a * math.sqrt(best.state.omega_cov[i, i]))) for i, zn in enumerate(znames))
    return ComponentsFit(
        name=name, n=n, h2=der["h2_total"][0], h2_se=der["h2_total"][1], h2_se_method="average_information",
        h2_se_curvature=float("nan"), pve=der["pve_total"][0], pve_se=der["pve_total"][1],
        mean_diag_K=float("nan"), sigma2_g=float(theta_o[:-1].sum()),
        sigma2_g_se=float(math.sqrt(max(gen @ cov_o @ gen, 0.0))), sigma2_e=float(theta_o[-1]),
        sigma2_e_se=float(se[-1]), logl_reml=logl, logl_reml_h2_0=ll0, logl_ml=logl_ml - n * la, h2_ml=h2_ml,
        lrt_stat=stat_all, lrt_pvalue=_lrt_pvalue(stat_all, m, constrain), boundary="lower" if none else "",
        fixed_effects=fe, n_missing=n_missing, missing_method="subset" if n_missing else "none",
        sigma2_g_sigma2_e_cov=float(gen @ cov_o[:, -1]), components=comps,
        sigma2_cov=tuple(tuple(float(v) for v in r) for r in cov_o), iterations=best.iterations,
        converged=best.converged and not singular, delta_logl=best.delta_logl, delta_sigma2=best.delta_theta, constrain=constrain)


def fit_components(Ks: Sequence[np.ndarray], Y, Z=None, *, component_names: Sequence[str] | None = None,
                   phenotype_names: Sequence[str] | None = None, covariate_names: Sequence[str] | None = None,
                   n_variants: Sequence[float] | None = None, constrain: bool = True, lrt: bool = True,
                   ml: bool = True, tol: float = TOL, tol_logl: float = TOL_LOGL,
                   max_iter: int = MAX_ITER) -> ComponentsResult:
    """REML estimates of several variance components, ``V = Σ_j σ²_j K_j + σ²_e I``, per phenotype.

    Parameters
    ----------
    Ks : sequence of m (n, n) arrays
        The GRMs, one per component (dense, symmetric, positive semi-definite), over the n samples
        of Y's rows.
    Y : (n,) or (n, q) array
        Phenotypes; NaN marks a missing value. Each phenotype is fitted on its own observed samples
        (the REML of that subset: K_j, Z restricted to its rows).
    Z : (n, c) array, optional
        Fixed effects including the intercept (default: intercept only).
    component_names, phenotype_names, covariate_names : sequences of str, optional
    n_variants : sequence of m numbers, optional
        Variants in each component, for the enrichments (share of h² / share of variants).
    constrain : bool
        GCTA's default: every σ²_j ≥ 0 (a component is held at exactly 0 where the maximum lies on
        that bound). False: σ²_j may be negative as long as V stays positive definite
        (GCTA ``--reml-no-constrain``, GEMMA ``-noconstrain``).
    lrt : bool
        Refit without each component for its likelihood-ratio test (m more fits per phenotype).
    ml : bool
        Also maximise the ML likelihood (``logl_ml``, ``h2_ml``).
    tol, tol_logl, max_iter
        Convergence: |Δℓ| < ``tol_logl`` and max |Δσ²| < ``tol`` · Vp between two iterations (on
        the unit residual scale), at most ``max_iter`` iterations per fit.

    Returns
    -------
    ComponentsResult
        One :class:`ComponentsFit` per phenotype, each with one :class:`ComponentEstimate` per GRM.

    Notes
    -----
    AI-REML (Gilmour, Thompson & Cullis 1995) in θ = (σ²_1, ..., σ²_m, σ²_e): the step is
    ``AI⁻¹ s`` with the score ``s_k = ½ (yᵀP K_k P y − tr(P K_k))`` and the average information
    ``AI_kl = ½ yᵀP K_k P K_l P y`` (K_{m+1} = I), the mean of the observed and expected
    information. A step that leaves the parameter space goes to the first bound it meets (that σ²_j
    held at 0) if that raises ℓ; otherwise an EM step is taken; a step that lowers ℓ is halved.
    Where the bound met first is σ²_e = 0, σ²_e moves halfway to 0 and the σ²_j take the AI step
    given that move (so a REML maximum on σ²_e = 0, possible at small n, is reached; the ML fit
    cuts the whole step halfway there).
    SEs: the inverse AI matrix at the estimate, over every component (as GCTA and GEMMA report),
    carried to ratios by the delta method. LRT of component j: 2(ℓ_R − ℓ_R without j), p from
    ½χ²₀ + ½χ²₁ (constrained; χ²₁ unconstrained); of all components: 2(ℓ_R − ℓ_R(no K)), p by
    GCTA's rule ½ P(χ²_m > LRT) (constrained; for small p conservative against the χ̄² mixture of
    independent components) or P(χ²_m > LRT) (unconstrained). Log-likelihoods in bigmm's convention
    (Harville's REML without ½ log det ZᵀZ; docs/math.md §1); ``logl_ml`` is the maximum of the
    ML likelihood.

    Cost: each iteration is one Cholesky of V and the inverse from it, ~n³ flops, plus O(m n²)
    for V, the traces and the AI matrix; a fit takes ~5–20 iterations, and each phenotype needs
    1 + ``ml`` + m·``lrt`` fits. Memory: the m GRMs (8 m n² bytes; a phenotype with missing
    values works on copies of their observed rows and columns, 8 m n_obs² more) plus two n × n
    work arrays.

    Examples
    --------
    >>> import numpy as np, bigmm
    >>> rng = np.random.default_rng(1)
    >>> X = rng.normal(size=(200, 600))
    >>> K1, K2 = X[:, :300] @ X[:, :300].T / 300, X[:, 300:] @ X[:, 300:].T / 300
    >>> y = X[:, :300] @ rng.normal(0, np.sqrt(0.5 / 300), 300) + rng.normal(0, np.sqrt(0.5), 200)
    >>> res = bigmm.fit_components([K1, K2], y, component_names=["a", "b"], n_variants=[300, 300])
    >>> f = res["pheno1"]
    >>> [c.name for c in f.components], f.converged, 0.0 <= f.h2 <= 1.0
    (['a', 'b'], True, True)
    """
    Ks, Y, Z, cnames, pnames, znames, nv = _check_inputs(Ks, Y, Z, component_names, phenotype_names,
                                                         covariate_names, n_variants)
    kw = dict(tol=tol, tol_logl=tol_logl, max_iter=max_iter)
    fits = [None] * Y.shape[1]
    groups: dict[bytes, list[int]] = {}
    obs_of = [_observed(Y[:, j], Z, pnames[j]) for j in range(Y.shape[1])]
    for j, obs in enumerate(obs_of):
        groups.setdefault(np.packbits(obs).tobytes(), []).append(j)
    for cols in groups.values():
        obs = obs_of[cols[0]]
        Ko = Ks if obs.all() else [K[np.ix_(obs, obs)] for K in Ks]
        for j in cols:
            fits[j] = _fit_one(Ko, Y[obs, j], Z[obs], name=pnames[j], cnames=cnames, znames=znames, nv=nv,
                               constrain=constrain, lrt=lrt, ml=ml, kw=kw, n_missing=int((~obs).sum()))
    notes = {"not_converged": [f.name for f in fits if not f.converged]}
    return ComponentsResult(fits=tuple(fits), component_names=tuple(cnames), covariate_names=tuple(znames),
                            n_variants=None if nv is None else tuple(float(v) for v in nv), constrain=constrain,
                            notes=notes)
