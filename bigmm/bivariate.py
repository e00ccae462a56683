"""Bivariate REML: genetic correlations of pairs of phenotypes (docs/math.md, "Bivariate REML
(genetic correlations)").

For phenotypes a and b on the samples observed for both,
``Var([y_a; y_b]) = G₀ ⊗ K + E₀ ⊗ I`` with 2 x 2 genetic and residual covariance matrices G₀, E₀,
and each phenotype with its own fixed effects on the same covariates Z (n x c).

With ``E₀ = L Lᵀ`` and ``L⁻¹ G₀ L⁻ᵀ = Q diag(d) Qᵀ``, ``W = Qᵀ L⁻¹`` maps the pair to two
independent univariate problems ``y*_k = Σ_a W_ka y_a`` with ``Var(y*_k) = d_k K + I``, and maps
the fixed-effect space ``I₂ ⊗ Z`` onto itself, so

    ℓ_R(G₀, E₀) = Σ_k ℓ_R,k(y*_k; d_k K + I) − ½ (n − c) log det E₀.

Every term needs only ``[Z, y_a, y_b]ᵀ f(K) [Z, y_a, y_b]`` for rational functions f and
``log det(h K + (1 − h) I)``: what K contributes to one pair is a :class:`PairMeasure` (nodes and
weights of a discrete measure, and the log determinant). The spectral path builds it from the
rotation :func:`bigmm.reml.rotate` already made (:func:`spectral_measure`); the matrix-free path
from the block Gauss quadrature of its Krylov build. :func:`fit_pair` maximises the REML
likelihood of one measure by AI-REML (Newton's method with the average-information matrix,
step halving) in the six parameters of (G₀, E₀).

The measure and the likelihood are in :mod:`bigmm.bivariate_likelihood`, the result classes in
:mod:`bigmm.bivariate_results`, the dense stacked pair of ``samples="union"`` in
:mod:`bigmm.bivariate_stacked`; their names are importable from here as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from itertools import combinations
from typing import Callable, Literal, Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import chdtrc

# the likelihood, the dense stacked pair and the result classes live in their own modules;
# their names stay importable from here
from .bivariate_likelihood import (LOG2PI, PARAMS, _DERIV, PairMeasure, _decouple, _Evaluation,  # noqa: F401
                                   pair_loglik, pair_score_ai, spectral_measure)
from .bivariate_results import BivariateFit, BivariateResult, _delta_se, _json, _ratios  # noqa: F401
from .bivariate_stacked import _Stacked, _StackedEvaluation  # noqa: F401
from .errors import InputError
from .spectrum import Spectrum

#: |r| of the two phenotypes' residuals (after the fixed effects) from which the pair is degenerate
DEGENERATE_R = 1.0 - 1e-10


# ---------------------------------------------------------------------------------------------
# maximisation


def _evaluate(m, theta, derivatives: bool = True, ml: bool = False):
    """ℓ_R (score, AI) at θ from a :class:`PairMeasure`, or from a dense :class:`_Stacked` pair."""
    if isinstance(m, PairMeasure):
        return _Evaluation(m, theta, derivatives=derivatives, ml=ml)
    return m.evaluate(theta)


@dataclass
class _Model:
    """A parametrisation θ(φ) of (G₀, E₀): θ, its Jacobian (6, q) and second derivatives (6, q, q)."""

    name: str
    theta: Callable
    lower: np.ndarray | None = None  # bounds on φ (None: free)
    ml: bool = False  # maximise the ML instead of the REML log-likelihood


def _linear(keep: Sequence[int]) -> Callable:
    keep = list(keep)

    def theta(phi):
        t = np.zeros(6)
        t[keep] = phi
        J = np.zeros((6, len(keep)))
        J[keep, np.arange(len(keep))] = 1.0
        return t, J, np.zeros((6, len(keep), len(keep)))
    return theta


def _rank_one(phi):
    """G₀ = v vᵀ, v = (φ₀, φ₁); E₀ free (φ₂..φ₄ = ve_a, ve_b, cov_e)."""
    u, v = phi[0], phi[1]
    t = np.array([u * u, v * v, u * v, phi[2], phi[3], phi[4]])
    J = np.zeros((6, 5))
    J[0, 0] = 2 * u
    J[1, 1] = 2 * v
    J[2, 0], J[2, 1] = v, u
    J[3, 2] = J[4, 3] = J[5, 4] = 1.0
    H = np.zeros((6, 5, 5))
    H[0, 0, 0] = H[1, 1, 1] = 2.0
    H[2, 0, 1] = H[2, 1, 0] = 1.0
    return t, J, H


def _maximise(m: PairMeasure, model: _Model, phi0: np.ndarray, *, tol: float, max_iter: int,
              step_tol: float = 1e-9):
    """AI-REML (Newton with the AI matrix as the negative Hessian in θ, the exact second
    derivatives of θ(φ) added) with step halving; bounded coordinates of φ are held at their bound
    while the score points outward (an active set). Returns (φ, evaluation, iterations, converged)."""
    phi = np.asarray(phi0, dtype=np.float64).copy()
    lower = model.lower
    t, J, H = model.theta(phi)
    ev = _evaluate(m, t, ml=model.ml)
    if not ev.ok:
        raise ValueError(f"{model.name}: the starting point is not a valid model")
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        g = J.T @ ev.score
        Hs = J.T @ ev.AI @ J - np.einsum("i,ijk->jk", ev.score, H)
        free = np.ones(phi.size, bool)
        if lower is not None:
            free &= ~((phi <= lower) & (g <= 0.0))
        step = np.zeros_like(phi)
        Hf = Hs[np.ix_(free, free)]
        try:
            np.linalg.cholesky(Hf)
        except np.linalg.LinAlgError:
            Hf = (J.T @ ev.AI @ J)[np.ix_(free, free)]
        try:
            step[free] = np.linalg.solve(Hf, g[free])
        except np.linalg.LinAlgError:
            step[free] = g[free] / max(float(np.abs(np.diag(Hf)).max()), 1e-300)
        decrement = float(g @ step)
        if lower is not None:
            below = (phi + step < lower) & (step < 0)
            if below.any():
                frac = np.min((lower[below] - phi[below]) / step[below])
                step *= max(frac, 0.0)
                if frac <= 0:
                    step[below] = 0.0
        scale = 1.0
        accepted = False
        for _ in range(40):
            phin = phi + scale * step
            if lower is not None:
                phin = np.maximum(phin, lower)
            tn, Jn, Hn = model.theta(phin)
            evn = _evaluate(m, tn, derivatives=None, ml=model.ml)  # score and AI only if accepted
            if evn.ok and evn.loglik >= ev.loglik - 1e-12 * max(1.0, abs(ev.loglik)):
                accepted = True
                break
            scale *= 0.5
        if not accepted:
            converged = abs(decrement) < 1e-6 * max(1.0, abs(ev.loglik))
            break
        change = evn.loglik - ev.loglik
        # judged on the full AI step: a halved step is small without the iteration being near the maximum
        size = float(np.max(np.abs(step))) / max(float(np.max(np.abs(phi))), 1e-300)
        phi, ev, J, H = phin, evn, Jn, Hn
        # AI-REML converges linearly (the AI matrix is not the Hessian): stop when ℓ has settled
        # and the step is small against the parameters
        if scale == 1.0 and abs(change) < tol * max(1.0, abs(ev.loglik)) and size < step_tol:
            converged = True
            break
    return phi, ev, it, converged


def _univariate(m: PairMeasure, j: int) -> tuple[float, float, float]:
    """(h², σ²_g, σ²_e) of phenotype j alone (0: a, 1: b), REML profiled over σ², from the measure."""
    c = m.c
    Gz, y = m.G[:c], m.G[c + j]
    lam = m.nodes
    lmin = float(lam.min()) if lam.size else 0.0
    hmax = 1.0 if lmin > 1e-10 * max(float(lam.max()), 1e-300) else 1.0 - 1e-6

    def negll(h):
        # h (P,): every point of a grid in one set of array operations
        f = 1.0 / (h[:, None] * lam + (1.0 - h)[:, None])  # (P, M)
        A = np.einsum("cm,pm,dm->pcd", Gz, f, Gz)
        bk = np.linalg.solve(A, ((f * y) @ Gz.T)[:, :, None])[:, :, 0]
        r = y - bk @ Gz
        R = np.sum(f * r * r, axis=1)
        L = m.logdet(h)[0]
        return 0.5 * ((m.n - c) * np.log(R / (m.n - c)) + L + np.linalg.slogdet(A)[1]), R / (m.n - c)

    def negll1(h):
        return float(negll(np.array([h]))[0][0])

    grid = np.linspace(0.0, hmax, 41)
    vals = negll(grid)[0]
    i = int(np.argmin(vals))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    res = minimize_scalar(negll1, bounds=(lo, hi), method="bounded", options={"xatol": 1e-13})
    h = float(res.x) if res.fun <= vals[i] else float(grid[i])
    s2 = float(negll(np.array([h]))[1][0])
    return h, h * s2, (1.0 - h) * s2


def _residual_gram(m: PairMeasure) -> np.ndarray:
    """The 2 x 2 Gram matrix of y_a, y_b after their OLS fit on Z (f ≡ 1)."""
    c = m.c
    S = m.G @ m.G.T
    Szz, Szy, Syy = S[:c, :c], S[:c, c:], S[c:, c:]
    return Syy - Szy.T @ np.linalg.solve(Szz, Szy)


# ---------------------------------------------------------------------------------------------
# one pair


def fit_pair(measure: PairMeasure, *, names: tuple[str, str] = ("a", "b"), covariate_names=None, lrt: bool = True,
             constrain: bool = True, ml: bool = True, tol: float = 1e-10, max_iter: int = 200,
             n_left_out: int = 0, offset: np.ndarray | None = None, univariate=None) -> BivariateFit:
    """Bivariate REML of one pair from its :class:`PairMeasure`.

    Parameters
    ----------
    measure : PairMeasure
    names : the two phenotypes' names
    covariate_names : names of the covariate columns (default ``intercept``, ``covar1`` ...)
    lrt : also fit r_g = 0 (cov_g = 0) and |r_g| = 1 (G₀ of rank one) for the likelihood-ratio tests
    constrain : keep G₀ positive semi-definite (GCTA's default); ``False`` allows |r_g| > 1 and
        negative genetic variances (E₀ and V stay positive definite)
    ml : also maximise the ML log-likelihood (``logL_ml``, ``ml_estimates``; GEMMA prints both);
        not for a measure with indicator columns (NaN there)
    tol : convergence when an AI step changes ℓ_R by less than ``tol · max(1, |ℓ_R|)`` and moves
        no parameter by more than 1e-9 of the largest
    max_iter : AI iterations per fit (a fit at the boundary G₀ → 0 converges linearly: up to ~100 seen)
    n_left_out : reported as it is (samples with a value of only one of the two phenotypes)
    offset : (c, 2) added to the fixed effects (the OLS fit removed before rotation)
    univariate : optional ((h², σ²_g, σ²_e) of a, the same of b), each phenotype's univariate REML
        on this measure when the caller has it already (fits of many pairs share them); default:
        computed here

    Notes
    -----
    Start: each phenotype's univariate REML (profiled over σ², from the measure) and covariances
    ``r √(σ²_a σ²_b)`` with r the residual correlation after the fixed effects. AI-REML in the six
    parameters with step halving. Constrained: if the unconstrained maximum has a G₀ that is not
    positive semi-definite, the maximum over the constraint lies on its boundary, G₀ = v vᵀ, which
    is fitted instead. Cost per iteration O(M c²) with M the measure's nodes (2 x 6 x 6 quadratic
    forms), independent of n.
    """
    m = measure
    c = m.c
    c_report = c - int(m.n_indicators)
    if covariate_names is None:
        covariate_names = ["intercept"] + [f"covar{i}" for i in range(1, c_report)]
    covariate_names = list(covariate_names)
    if len(covariate_names) != c_report:
        raise InputError(f"covariate_names ({len(covariate_names)}) do not match the {c_report} covariates")
    n_obs = m.n - m.n_indicators
    offset = np.zeros((c_report, 2)) if offset is None else np.asarray(offset, float)
    R = _residual_gram(m) / (m.n - c)
    r_res = R[0, 1] / math.sqrt(R[0, 0] * R[1, 1])
    if abs(r_res) >= DEGENERATE_R:
        return _degenerate_fit(m, names, covariate_names, n_left_out, offset, r_res)
    (ha, ga, ea), (hb, gb, eb) = univariate if univariate is not None else (_univariate(m, 0), _univariate(m, 1))
    fl_a, fl_b = 1e-3 * (ga + ea), 1e-3 * (gb + eb)
    ga0, gb0 = max(ga, fl_a), max(gb, fl_b)
    ea0, eb0 = max(ea, fl_a), max(eb, fl_b)
    rho = 0.5 * r_res
    theta0 = np.array([ga0, gb0, rho * math.sqrt(ga0 * gb0), ea0, eb0, rho * math.sqrt(ea0 * eb0)])
    return _fit_from(m, theta0, (fl_a, fl_b), names=names, covariate_names=covariate_names, n_obs=n_obs, lrt=lrt,
                     constrain=constrain, ml=ml, tol=tol, max_iter=max_iter, n_left_out=n_left_out, offset=offset)


def _fit_from(m, theta0, floors, *, names, covariate_names, n_obs, lrt, constrain, ml, tol, max_iter, n_left_out,
              offset, note="") -> BivariateFit:
    """The fit, its LRTs, ML fit, SEs and fixed effects from the start θ₀, on a measure or a
    dense :class:`_Stacked` pair (``m``)."""
    fl_a, fl_b = floors
    c_report = len(covariate_names)
    offset = np.zeros((c_report, 2)) if offset is None else np.asarray(offset, float)
    full = _Model("full model", _linear(range(6)))
    phi, ev, iters, conv = _maximise(m, full, theta0, tol=tol, max_iter=max_iter)
    theta = phi
    boundary = ""

    def psd(t):
        return t[0] >= 0 and t[1] >= 0 and t[2] ** 2 <= t[0] * t[1]

    rank1 = None
    if constrain and not psd(theta):
        sign = 1.0 if theta[2] >= 0 else -1.0
        rank1 = _fit_rank_one(m, theta, sign, tol, max_iter)
        phi1, ev1, it1, conv1 = rank1
        theta, ev, iters, conv = _rank_one(phi1)[0], ev1, iters + it1, conv1
        boundary = "rank-1 G0"
    try:
        cov = np.linalg.inv(ev.AI)
    except np.linalg.LinAlgError:
        cov = np.full((6, 6), np.nan)
    rat = _ratios(theta, cov)
    ll = ev.loglik
    ll0 = ll1 = lrt0 = lrt1 = p0 = p1 = float("nan")
    if lrt:
        # r_g = 0: cov_g = 0 (σ²_g ≥ 0 when constrained)
        keep = [0, 1, 3, 4, 5]
        lower = np.array([0.0, 0.0, -np.inf, -np.inf, -np.inf]) if constrain else None
        start = theta[keep].copy()
        if constrain:
            start[:2] = np.maximum(start[:2], [fl_a, fl_b])
        try:
            _, ev0, _, _ = _maximise(m, _Model("r_g = 0", _linear(keep), lower), start, tol=tol, max_iter=max_iter)
            ll0 = ev0.loglik
            lrt0 = max(0.0, 2.0 * (ll - ll0))
            p0 = float(chdtrc(1, lrt0))
        except ValueError:
            pass
        # |r_g| = 1 with the sign of the estimate
        sign = -1.0 if theta[2] < 0 else 1.0
        if boundary and rank1 is not None:
            ll1 = ll
        else:
            try:
                ll1 = _fit_rank_one(m, theta, sign, tol, max_iter)[1].loglik
            except ValueError:
                ll1 = float("nan")
        lrt1 = max(0.0, 2.0 * (ll - ll1)) if np.isfinite(ll1) else float("nan")
        p1 = (1.0 if lrt1 <= 0 else 0.5 * float(chdtrc(1, lrt1))) if np.isfinite(lrt1) else float("nan")
    ll_ml, th_ml = float("nan"), (float("nan"),) * 6
    if ml and isinstance(m, PairMeasure) and m.n_indicators == 0:
        try:
            phm, evm, _, cm = _maximise(m, _Model("ML", _linear(range(6)), ml=True), theta, tol=tol, max_iter=max_iter)
            if constrain and not psd(phm):
                phm1, evm, _, cm = _fit_rank_one(m, phm, 1.0 if phm[2] >= 0 else -1.0, tol, max_iter, ml=True)
                phm = _rank_one(phm1)[0]
            if cm:
                ll_ml, th_ml = float(evm.loglik), tuple(float(v) for v in phm)
            else:  # e.g. a singular K with the intercept in its null space: ML grows without bound as a
                # residual variance → 0 (as in the univariate fit); nothing to report
                note = (note + "; " if note else "") + ("ML not reported: its iteration did not converge (the ML likelihood can grow without "
                        "bound as a residual variance tends to 0 when K is singular)")
        except ValueError:
            pass
    if not conv:
        note = ("AI-REML stopped before converging (max_iter reached, or no step along the AI direction "
                "increased ℓ_R: an estimate at the edge of the parameter space, e.g. |r_e| → 1 or a residual "
                "variance → 0)") + (f"; {note}" if note else "")
    B, SE = ev.fixed_effects(c_report)
    B = B + offset
    fe = tuple((nm, float(B[i, 0]), float(SE[i, 0]), float(B[i, 1]), float(SE[i, 1]))
               for i, nm in enumerate(covariate_names))
    return BivariateFit(
        trait_a=str(names[0]), trait_b=str(names[1]), n=int(n_obs), n_left_out=int(n_left_out),
        sg_a=float(theta[0]), sg_b=float(theta[1]), cov_g=float(theta[2]), ve_a=float(theta[3]),
        ve_b=float(theta[4]), cov_e=float(theta[5]), covariance=tuple(tuple(float(v) for v in r) for r in cov),
        logL=float(ll), logL_rg0=float(ll0), lrt_rg0=float(lrt0), p_rg0=float(p0), logL_rg1=float(ll1),
        lrt_rg1=float(lrt1), p_rg1=float(p1), boundary=boundary, logL_ml=ll_ml, ml_estimates=th_ml,
        converged=bool(conv), iterations=int(iters),
        constrained=bool(constrain), fixed_effects=fe, note=note, **rat)


def _fit_rank_one(m, theta: np.ndarray, sign: float, tol: float, max_iter: int, ml: bool = False):
    """The fit with G₀ = v vᵀ (|r_g| = 1, or a zero genetic variance), started from θ's variances."""
    scale = 1e-3 * (abs(theta[0]) + abs(theta[3]) + abs(theta[1]) + abs(theta[4]))
    u = math.sqrt(max(theta[0], scale))
    v = sign * math.sqrt(max(theta[1], scale))
    start = np.array([u, v, theta[3], theta[4], theta[5]])
    if not _evaluate(m, _rank_one(start)[0], derivatives=False).ok:
        start[2:] = [abs(theta[3]) + scale, abs(theta[4]) + scale, 0.0]
    return _maximise(m, _Model("|r_g| = 1", _rank_one, ml=ml), start, tol=tol, max_iter=max_iter)


def _degenerate_fit(m, names, covariate_names, n_left_out, offset, r_res) -> BivariateFit:
    """y_b = α y_a + Zγ exactly (a phenotype with itself, or a copy rescaled): the bivariate
    likelihood is unbounded (Var(y_b − α y_a) → 0), and the model reduces to the univariate fit of
    y_a with G₀ = σ²_g (1, α)ᵀ(1, α), E₀ = σ²_e (1, α)ᵀ(1, α): r_g = r_e = sign(α)."""
    R = _residual_gram(m)
    alpha = R[0, 1] / R[0, 0]
    h, sg, se = _univariate(m, 0)
    nan = float("nan")
    s = 1.0 if alpha > 0 else -1.0
    c_report = len(covariate_names)
    fe = tuple((nm, float(offset[i, 0]) + nan, nan, float(offset[i, 1]) + nan, nan) for i, nm in enumerate(covariate_names))
    return BivariateFit(
        trait_a=str(names[0]), trait_b=str(names[1]), n=int(m.n - m.n_indicators), n_left_out=int(n_left_out),
        sg_a=sg, sg_b=alpha * alpha * sg, cov_g=alpha * sg, ve_a=se, ve_b=alpha * alpha * se, cov_e=alpha * se,
        covariance=tuple(tuple(nan for _ in range(6)) for _ in range(6)), h2_a=h, h2_a_se=nan, h2_b=h, h2_b_se=nan,
        rg=s, rg_se=nan, re=s, re_se=nan, rp=s, rp_se=nan, logL=nan, logL_rg0=nan, lrt_rg0=nan, p_rg0=nan,
        logL_rg1=nan, lrt_rg1=0.0, p_rg1=1.0, boundary="degenerate", logL_ml=nan, ml_estimates=(nan,) * 6,
        converged=True, iterations=0,
        constrained=True, fixed_effects=fe[:c_report],
        note=(f"the two phenotypes are collinear after the fixed effects (residual correlation {r_res:.12f}): "
              "the bivariate likelihood is unbounded; r_g = r_e = ±1 and h² from the univariate REML"))


# ---------------------------------------------------------------------------------------------
# all pairs on a spectrum


def _pairs(names: list[str], pairs) -> list[tuple[int, int]]:
    if isinstance(pairs, str):
        if pairs != "all":
            raise InputError(f"pairs must be 'all' or a list of (a, b) phenotype names, not {pairs!r}")
        return list(combinations(range(len(names)), 2))
    out = []
    for p in pairs:
        if len(p) != 2:
            raise InputError(f"pair {p!r}: give two phenotype names")
        idx = []
        for x in p:
            if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
                if not 0 <= int(x) < len(names):
                    raise InputError(f"pair {p!r}: phenotype index {x} is not in 0..{len(names) - 1}")
                idx.append(int(x))
            elif x in names:
                idx.append(names.index(x))
            else:
                raise InputError(f"pair {p!r}: no phenotype named {x!r} (phenotypes: {', '.join(names[:10])}"
                                 f"{', ...' if len(names) > 10 else ''})")
        out.append((idx[0], idx[1]))
    return out


def fit_bivariate(spectrum: Spectrum, Y, Z=None, *, phenotype_names: Sequence[str] | None = None,
                  covariate_names: Sequence[str] | None = None, pairs="all", constrain: bool = True,
                  lrt: bool = True, ml: bool = True, missing: Literal["auto", "indicator", "subset"] = "subset",
                  samples: Literal["intersection", "union"] = "intersection", tol: float = 1e-10,
                  max_iter: int = 200) -> BivariateResult:
    """Bivariate REML (genetic correlation) of pairs of phenotypes on one spectrum.

    Parameters
    ----------
    spectrum : Spectrum
        Eigenpairs of the GRM over the n samples (exact, or top-k with its tail, treated as
        :func:`bigmm.fit_reml` treats it).
    Y : (n, m) array
        Phenotypes, NaN where missing.
    Z : (n, c) array, optional
        Covariates including the intercept (default: intercept only); each phenotype has its
        own coefficients.
    pairs : "all" or a list of (a, b)
        Phenotype names (or column indices); "all": every pair a < b in column order.
    constrain : bool
        Keep G₀ positive semi-definite (|r_g| ≤ 1, σ²_g ≥ 0), as GCTA does by default.
    lrt : bool
        Refit with r_g = 0 and with |r_g| = 1 for the likelihood-ratio tests.
    ml : bool
        Also fit by ML (``logL_ml`` and ``ml_estimates`` of each pair).
    samples : {"intersection", "union"}
        "intersection" (default): each pair on the samples observed for both. "union": a pair
        whose phenotypes have different missing values is fitted on all n_a + n_b observations
        (GCTA ``--reml-bivar``'s model: the residual covariance acts on the samples with both),
        by dense REML of the stacked observations started from the intersection fit; needs an
        exact spectrum (K over the pair's samples is rebuilt from it) and costs
        O((n_a + n_b)³) time and ~10 (n_a + n_b)² doubles of memory per AI iteration: for n up to a
        few thousand. ML is not fitted there (NaN).
    missing : {"subset", "indicator", "auto"}
        How samples without a value are left out (both exact, see :func:`bigmm.fit_reml`):
        "subset" (default) takes the spectrum of the observed samples (O(n_o³) for an exact
        spectrum, O(n_o k²) for a reduced one); "indicator" adds one fixed-effect column per
        missing sample, whose cost per AI iteration grows with the square of their number (the
        bivariate fit makes many more evaluations than the univariate one that "auto" is tuned for).

    Returns
    -------
    BivariateResult
        One :class:`BivariateFit` per pair.

    Notes
    -----
    Y and Z are rotated once (:func:`bigmm.reml.rotate`, O(n k (c + m))); a pair whose two
    phenotypes have the same missing values uses that rotation; other pairs are fitted on the
    samples observed for both (``n_left_out`` says how many samples with a value of only one of
    the two were left out), rotated again for those two columns on the spectrum of those samples
    (one spectrum for each set of common samples, shared by the pairs that have it). Each pair's fit then costs
    O(k c²) per AI iteration, independent of n for a reduced spectrum.

    Examples
    --------
    >>> import numpy as np, bigmm
    >>> rng = np.random.default_rng(1)
    >>> X = rng.normal(size=(100, 300))
    >>> spec = bigmm.exact_spectrum(X @ X.T / 300)      # or a spectrum of bigmm.grm(...)
    >>> Y = rng.normal(size=(100, 3))
    >>> Y[:4, 2] = np.nan                                 # pairs with c: the 96 samples with both
    >>> res = bigmm.fit_bivariate(spec, Y, phenotype_names=["a", "b", "c"], lrt=False)
    >>> [(f.trait_a, f.trait_b, f.n, f.n_left_out) for f in res.fits]
    [('a', 'b', 100, 0), ('a', 'c', 96, 4), ('b', 'c', 96, 4)]
    >>> bool(all(f.converged for f in res.fits))
    True
    """
    from .reml import rotate

    if samples not in ("intersection", "union"):
        raise InputError(f"samples must be 'intersection' or 'union', not {samples!r}")
    if samples == "union" and spectrum.n_tail:
        raise InputError("samples='union' needs an exact spectrum (all n eigenpairs); this one has "
                         f"{spectrum.k} of {spectrum.n}: use samples='intersection'")
    design = rotate(spectrum, Y, Z, phenotype_names=phenotype_names, covariate_names=covariate_names,
                    missing=missing)
    names = design.phenotype_names
    where = {}
    for gi, rot in enumerate(design.groups):
        for jj, col in enumerate(rot.cols):
            where[col] = (gi, jj)
    Yarr = np.asarray(Y, dtype=np.float64)
    if Yarr.ndim == 1:
        Yarr = Yarr[:, None]
    Zarr = None if Z is None else np.asarray(Z, dtype=np.float64)
    def fit_one(rot, ia, ib, a, b):
        left_out = int(np.sum(np.isnan(Yarr[:, a]) ^ np.isnan(Yarr[:, b])))
        meas = spectral_measure(rot, ia, ib)
        # back to the phenotypes' units: the rotation divided each by its residual SD
        sc = rot.scale[[ia, ib]] if rot.scale is not None else np.ones(2)
        meas.G[-2] *= sc[0]
        meas.G[-1] *= sc[1]
        offset = rot.shift[:, [ia, ib]] if rot.shift is not None else None
        fit = fit_pair(meas, names=(names[a], names[b]), covariate_names=design.covariate_names,
                       lrt=lrt and not (samples == "union" and left_out), constrain=constrain,
                       ml=ml and not (samples == "union" and left_out), tol=tol, max_iter=max_iter,
                       n_left_out=left_out, offset=offset)
        if samples == "union" and left_out and fit.boundary != "degenerate":
            fit = _fit_union(spectrum, Yarr[:, [a, b]], Zarr, fit, design.covariate_names, lrt=lrt,
                             constrain=constrain, tol=tol, max_iter=max_iter)
        return fit

    todo = _pairs(names, pairs)
    fits = [None] * len(todo)
    by_samples = {}  # the pairs across missing-value groups, by the samples observed for both
    for i, (a, b) in enumerate(todo):
        (ga, ja), (gb, jb) = where[a], where[b]
        if ga == gb:
            fits[i] = fit_one(design.groups[ga], ja, jb, a, b)
        else:
            both = ~np.isnan(Yarr[:, a]) & ~np.isnan(Yarr[:, b])
            by_samples.setdefault(both.tobytes(), (both, []))[1].append(i)
    # one spectrum of each set of common samples (O(n_o³) for an exact spectrum), shared by its pairs
    for both, idx in by_samples.values():
        sub = spectrum.subset(both) if missing == "subset" else None
        for i in idx:
            a, b = todo[i]
            Yp = Yarr[:, [a, b]].copy()
            Yp[~both] = np.nan
            try:
                if sub is None:
                    d2 = rotate(spectrum, Yp, Zarr, phenotype_names=[names[a], names[b]],
                                covariate_names=design.covariate_names, missing=missing)
                else:
                    d2 = rotate(sub, Yp[both], None if Zarr is None else Zarr[both],
                                phenotype_names=[names[a], names[b]], covariate_names=design.covariate_names)
            except InputError as e:
                raise InputError(f"pair {names[a]!r} x {names[b]!r} on the {int(both.sum())} samples observed for "
                                 f"both: {e}") from None
            fits[i] = fit_one(d2.groups[0], 0, 1, a, b)
    rotated_again = sum(len(idx) for _, idx in by_samples.values())
    methods = sorted({g.method for g in design.groups})
    if samples == "union":
        methods.append("union (dense stacked REML for pairs with different missing values)")
    return BivariateResult(fits=tuple(fits), method=f"spectrum {design.spectrum_method}",
                           notes={"missing_methods": methods, "pairs_rotated_again": rotated_again,
                                  "common_sample_spectra": len(by_samples),
                                  "constrained": constrain,
                                  "logl_convention": "Harville REML of the 2n stacked observations without "
                                                     "the log det(X'X) term, X = I2 (x) Z"})


def _fit_union(spectrum: Spectrum, Y2: np.ndarray, Z: np.ndarray | None, start: BivariateFit, covariate_names,
               *, lrt: bool, constrain: bool, tol: float, max_iter: int) -> BivariateFit:
    """The pair on all its observations (:class:`_Stacked`), started from its intersection fit."""
    rows = ~np.isnan(Y2).all(axis=1)
    U = spectrum.U[rows]
    K = (U * spectrum.s) @ U.T
    Zr = np.ones((int(rows.sum()), 1)) if Z is None else Z[rows]
    st = _Stacked(K, Y2[rows], Zr)
    theta0 = np.array([start.sg_a, start.sg_b, start.cov_g, start.ve_a, start.ve_b, start.cov_e])
    fl = (1e-3 * (start.sg_a + start.ve_a), 1e-3 * (start.sg_b + start.ve_b))
    theta0[0], theta0[1] = max(theta0[0], fl[0]), max(theta0[1], fl[1])
    lim = 0.99 * math.sqrt(theta0[0] * theta0[1])
    theta0[2] = min(max(theta0[2], -lim), lim)  # strictly inside the PSD cone
    fit = _fit_from(st, theta0, fl, names=(start.trait_a, start.trait_b), covariate_names=covariate_names,
                    n_obs=int(rows.sum()), lrt=lrt, constrain=constrain, ml=False, tol=tol, max_iter=max_iter,
                    n_left_out=0, offset=None,
                    note=f"samples=union: {st.na} + {st.nb} observations on {int(rows.sum())} samples "
                         f"({start.n} with both), dense stacked REML")
    return replace(fit, n_observations=int(st.n))
