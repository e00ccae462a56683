"""Several variance components without a GRM: AI-REML by conjugate gradients (docs/math.md).

Model ``Var(y) = Σ_j σ²_j K_j + σ²_e I`` with ``K_j = X_j X_jᵀ / p_j`` applied by a
:class:`bigmm.ComponentsOperator` (every K_j in one pass over the genotypes). The estimates are
those of :func:`bigmm.fit_components` (the same AI-REML maximum) with the traces estimated by
Hutchinson probes and every solve by conjugate gradients; see
:func:`fit_components_matrix_free`. The steps: :func:`_first_pass` (products of Z, Y, 1 and the
probes; the Haseman–Elston start), :func:`_cg_pass` (one CG step of every phenotype's solves),
:func:`_ai_update` (score, AI matrix and the constrained step of one phenotype) and
:func:`_result` (estimates, SEs and Monte Carlo SDs). The log-likelihoods (the ML fit, the fits
without each component, log det V by Lanczos quadrature, the LRTs):
:mod:`bigmm.mf_components_logl`; the state a fit resumes from: :mod:`bigmm.mf_components_state`;
the CG and Lanczos recurrences: :mod:`bigmm.mf_cg`.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np

from .errors import InputError
from .mf_cg import CGSystem, IndefiniteError
from .mf_components_logl import _finish_logdets, _launch, _parallel_refits, _tests, _traces
from .mf_components_state import (CG_TOL_FACTOR, LOOSE_CG_TOL, MAX_CG_STEPS, ML, REML, WITHOUT, _ai_keys, _Fit,
                                  _fingerprint, _pattern_of, _slq_keys, _spec)
from .mf_solver import check_inputs, check_operator
from .results import FixedEffect
from .vcreml import ComponentEstimate, ComponentsFit, ComponentsResult, derived

log = logging.getLogger("bigmm")

#: Hutchinson probes per missing-value pattern, chosen with scripts/studies/mf_components_probes.py
#: (docs/matrix_free.md): at n = 3,000 with 3 components, N = 30 gave a reported Monte Carlo SD of
#: 0.06–0.09 of the statistical SE of every h²_j and of the total (0.08–0.09 measured over 12 probe
#: seeds), |ĥ²_mf − ĥ²_exact| ≤ 0.2 SE; N = 10 gave 0.13–0.22 over the seeds, within the goal of ¼
#: with little margin; the passes do not depend on N (~40)
DEFAULT_PROBES = 30
#: convergence: |Δh²_j| < tol for every component and |ΔVp| / Vp < tol between two iterations
#: (1e-4: below 1% of the statistical SE of h² at n ≤ 10⁶; the AI iteration converges in ~5
#: iterations from the Haseman–Elston start, so a tighter tol costs one more iteration)
DEFAULT_TOL = 1e-4
#: CG stops a column at ‖b − V x‖ / ‖b‖ < cg_tol. Measured (docs/matrix_free.md, n = 3,000, m = 3):
#: 1e-3 never converged (the CG error in the score moves θ by more than tol), 1e-4 took 35 passes
#: (total ĥ² within 0.001 SE of 1e-7's), 1e-5 39 passes (within 1e-6), 1e-7 56 passes; 1e-5 keeps
#: a decade of margin from failure
DEFAULT_CG_TOL = 1e-5
DEFAULT_MAX_ITER = 50
#: an AI step moves no parameter by more than this fraction of Vp (no likelihood to test a step)
MAX_STEP = 0.5
#: the log det V quadrature of a probe stops when one more Lanczos step changes it by less than
#: this (absolute, on zᵀ log(I + A) z; or at the CG residual cg_tol). The Gauss rule for log
#: converges monotonically and geometrically, so the truncation error of ℓ is a few times
#: ½ SLQ_TOL, far below its Monte Carlo SD (≳ 0.05 at N = 30; docs/matrix_free.md)
SLQ_TOL = 1e-4


# --------------------------------------------------------------------------------------
# set-up: inputs, probes
# --------------------------------------------------------------------------------------

def _check(op, Y, Z, phenotype_names, covariate_names, n_probes, tol, cg_tol, max_iter):
    n = check_operator(op)
    m = getattr(op, "m", None)
    if not isinstance(m, (int, np.integer)) or m < 1:
        raise InputError("op must be a ComponentsOperator or DenseComponentsOperator (attribute m: the "
                         "number of components)")
    exact = isinstance(n_probes, str) and n_probes == "exact"
    if not exact and (not isinstance(n_probes, (int, np.integer)) or isinstance(n_probes, bool) or n_probes < 2):
        raise InputError(f"n_probes must be an integer ≥ 2 or 'exact', got {n_probes!r}")
    if not (isinstance(cg_tol, (int, float)) and math.isfinite(cg_tol) and 0 < cg_tol < 1):
        raise InputError(f"cg_tol must be a number between 0 and 1, got {cg_tol!r}")
    if not isinstance(max_iter, (int, np.integer)) or isinstance(max_iter, bool) or max_iter < 1:
        raise InputError(f"max_iter must be a positive integer, got {max_iter!r}")
    prob = check_inputs(n, Y, Z, phenotype_names=phenotype_names, covariate_names=covariate_names,
                        probes=2, max_steps=max(int(max_iter), 2), tol=tol, deflate=None, grid_size=3)
    return prob, int(m), exact


def _probes(gi: int, n_o: int, n_probes, seed: int) -> np.ndarray:
    """Pattern ``gi``'s probes: Rademacher (n_o x N), or ``√n_o I`` for exact traces."""
    if n_probes == "exact":
        return math.sqrt(n_o) * np.eye(n_o)
    return np.random.default_rng([seed, 2, gi]).choice(np.array([-1.0, 1.0]), size=(n_o, int(n_probes)))




# --------------------------------------------------------------------------------------
# pass 1: products of [Z, Y, 1, probes]; the Haseman–Elston start
# --------------------------------------------------------------------------------------

def _embed(n: int, pieces: list) -> np.ndarray:
    """The pass block: each (rows, columns) piece in its own columns, zero outside its rows."""
    W = sum(p.shape[1] for _, p in pieces)
    M = np.zeros((n, W))
    c0 = 0
    for idx, p in pieces:
        M[idx, c0:c0 + p.shape[1]] = p
        c0 += p.shape[1]
    return M


def _first_pass(op, prob, fit: _Fit, m: int, n_probes, seed: int, cg_tol: float) -> None:
    """Apply every K_j to each pattern's [Z_o, Ỹ_o, 1, probes] (and ask for diag K_j); keep the
    products, and start each phenotype at its Haseman–Elston estimate."""
    pieces = []
    for gi, (cols, obs, Zo, Yr, _) in enumerate(prob.patterns):
        idx = np.flatnonzero(obs)
        P = _probes(gi, idx.size, n_probes, seed)
        pieces.append((idx, np.hstack([Zo, Yr, np.ones((idx.size, 1)), P])))
    KM, diag = op.apply(_embed(prob.n, pieces), want_diag=True)
    c0 = 0
    for gi, (idx, block) in enumerate(pieces):
        KB = KM[:, idx, c0:c0 + block.shape[1]]
        c0 += block.shape[1]
        fit.a[f"p{gi}_KB"] = np.ascontiguousarray(KB)
        fit.a[f"p{gi}_trK"] = diag[:, idx].sum(axis=1)
    fit.a["passes"][0] += 1
    for gi, (cols, obs, Zo, Yr, _) in enumerate(prob.patterns):
        KB = fit.a[f"p{gi}_KB"]
        c, qg = Zo.shape[1], len(cols)
        KZ, KY, KP = KB[:, :, :c], KB[:, :, c:c + qg], KB[:, :, c + qg + 1:]
        P = pieces[gi][1][:, c + qg + 1:]
        for jj, k in enumerate(cols):
            theta0 = _haseman_elston(Zo, Yr[:, jj], KZ, KY[:, :, jj], KP, fit.a[f"p{gi}_trK"])
            y = Yr[:, jj]
            v = float(y @ y) / (y.size - c)
            # the lagged u = [K_j P y, P y] of the first iteration, with P ≈ P₀ / v
            U = np.column_stack([KY[j, :, jj] / v for j in range(m)] + [y / v])
            s = CGSystem(np.hstack([Zo, y[:, None], P, U]), m)
            tol0 = max(cg_tol, LOOSE_CG_TOL)
            s.restart(theta0, None, tol0)
            fit.a[f"ctol{k}"] = np.array([tol0])
            fit.cg[k] = s
            fit.a[f"theta{k}"] = theta0
            fit.a[f"held{k}"] = np.zeros(m + 1, dtype=bool)
            fit.a[f"iter{k}"] = np.zeros(1, np.int64)
            fit.a[f"done{k}"] = np.zeros(1, bool)
            fit.a[f"cgsteps{k}"] = np.zeros(1, np.int64)
    fit.a["stage"][0] = 1


def _haseman_elston(Zo, y, KZ, Ky, KP, trK) -> np.ndarray:
    """θ from the moment equations of ỹ = P₀y (P₀ = I − Z(ZᵀZ)⁻¹Zᵀ): for each j,
    ``Σ_k σ²_k tr(P₀K_jP₀K_k) + σ²_e tr(P₀K_j) = ỹᵀK_jỹ`` and ``Σ_k σ²_k tr(P₀K_k) + σ²_e (n − c) = ỹᵀỹ``,
    ``tr(K_jK_k)`` by the probes; clipped to positive values (a start, not an estimate)."""
    m = KZ.shape[0]
    n, c = Zo.shape
    S = np.linalg.inv(Zo.T @ Zo)
    G = [S @ (Zo.T @ KZ[j]) for j in range(m)]
    T = np.einsum("jin,kin->jk", KP, KP) / KP.shape[2]
    A = np.empty((m + 1, m + 1))
    for j in range(m):
        for k in range(m):
            A[j, k] = T[j, k] - 2.0 * np.trace(S @ (KZ[j].T @ KZ[k])) + np.trace(G[j] @ G[k])
        A[j, m] = A[m, j] = trK[j] - np.trace(G[j])
    A[m, m] = n - c
    rhs = np.r_[[float(y @ Ky[j]) for j in range(m)], float(y @ y)]
    try:
        th = np.linalg.solve(A, rhs)
    except np.linalg.LinAlgError:
        th = np.full(m + 1, np.nan)
    v = float(y @ y) / (n - c)
    th = np.where(np.isfinite(th), th, v / (m + 1))
    th[:m] = np.clip(th[:m], 0.01 * v / m, v)
    th[m] = np.clip(th[m], 0.1 * v, v)
    return th


# --------------------------------------------------------------------------------------
# one CG step of every solve in one pass
# --------------------------------------------------------------------------------------

def _cg_pass(op, prob, fit: _Fit, desc: str, cg_tol: float, slq_tol: float) -> None:
    """One pass: a CG step of every AI fit's active solves and of every log det solve."""
    pieces, who = [], []
    q = prob.m
    for k in _ai_keys(fit) + _slq_keys(fit):
        s = fit.cg[k]
        if (isinstance(k, str) or not fit.a[f"done{k}"][0]) and s.active.any():
            gi = _pattern_of(prob, _spec(fit, int(k[1:]) if isinstance(k, str) else k, q)[0])
            idx = np.flatnonzero(prob.patterns[gi][1])
            D = s.directions()
            pieces.append((idx, D))
            who.append((k, idx, D.shape[1]))
    if not any(not isinstance(k, str) and k < q for k, _, _ in who):
        fit.a["passes_logl"][0] += 1  # a pass that only the log-likelihoods need
    KM, _ = op.apply(_embed(prob.n, pieces), desc=desc)
    c0 = 0
    for k, idx, w in who:
        s = fit.cg[k]
        if isinstance(k, str):
            te = float(s.theta[-1])
            try:
                s.absorb_quadrature(KM[:, idx, c0:c0 + w], cg_tol, lambda lam: np.log(lam / te), slq_tol)
            except IndefiniteError:
                s.stopped[:] = True  # V not positive definite at this fit's estimate: ℓ is NaN
                s.active[:] = False
                s.quad[:] = -np.inf
        else:
            ctol = float(fit.a[f"ctol{k}"][0])
            try:
                s.absorb(KM[:, idx, c0:c0 + w], ctol)
            except IndefiniteError:
                # V is not positive definite at this θ (an unconstrained step too far): back halfway
                _backtrack(fit, k, ctol)
            fit.a[f"cgsteps{k}"][0] += 1
        c0 += w
    fit.a["passes"][0] += 1


def _backtrack(fit: _Fit, k: int, cg_tol: float) -> None:
    s = fit.cg[k]
    prev = fit.a.get(f"prev{k}")
    if prev is None and f"spec{k}" in fit.a:
        # an ML or reduced fit whose start is not positive definite (unconstrained: a component
        # below 0 that the dropped one made up for): its ℓ is NaN, the REML fit's results stand
        log.warning("matrix-free components: V is not positive definite at the start of a fit without a "
                    "component (unconstrained); its likelihood-ratio test is NaN")
        fit.a[f"done{k}"][0] = True
        fit.a[f"final{k}"] = np.r_[np.full(s.theta.size, np.nan), 0.0, np.nan, np.nan]
        s.active[:] = False
        return
    if prev is None:
        raise InputError("the covariance matrix V is not positive definite at the start values")
    theta = 0.5 * (prev + s.theta)
    fit.a[f"theta{k}"] = theta
    s.restart(theta, None, cg_tol)


# --------------------------------------------------------------------------------------
# the AI step of one phenotype
# --------------------------------------------------------------------------------------

def _score_ai(prob, fit: _Fit, k: int, m: int, control_variates: bool, ml: bool = False):
    """At the θ of the finished solves: the score, its per-probe terms, the AI matrix, the new
    lagged vectors u = [K_j P y, P y] and the GLS fit (ω, (ZᵀV⁻¹Z)⁻¹). ``ml``: the ML score, with
    ``tr(V⁻¹K_j) ≈ mean_i (V⁻¹z_i)ᵀ(K_jz_i)`` in place of ``tr(PK_j)``."""
    gi = _pattern_of(prob, _spec(fit, k, prob.m)[0])
    cols, obs, Zo, Yr, _ = prob.patterns[gi]
    c, qg = Zo.shape[1], len(cols)
    s = fit.cg[k]
    X, KX = s.X, s.KX
    KB = fit.a[f"p{gi}_KB"]
    KP = KB[:, :, c + qg + 1:]
    N = KP.shape[2]
    P = s.B[:, c + 1:c + 1 + N]
    A = Zo.T @ X[:, :c]
    A = 0.5 * (A + A.T)
    Ainv = np.linalg.inv(A)

    def proj(cs):  # P b and K_j P b from the solves of columns cs
        H = Ainv @ (Zo.T @ X[:, cs])
        return X[:, cs] - X[:, :c] @ H, KX[:, :, cs] - np.einsum("jnc,cb->jnb", KX[:, :, :c], H)

    Py, KPy = proj([c])
    Py, KPy = Py[:, 0], KPy[:, :, 0]
    q = np.r_[KPy @ Py, Py @ Py]
    Pz = X[:, c + 1:c + 1 + N] if ml else proj(list(range(c + 1, c + 1 + N)))[0]
    t = np.vstack([np.einsum("ni,jni->ji", Pz, KP), np.einsum("ni,ni->i", Pz, P)[None]])  # (m+1, N)
    cv = np.einsum("ni,jni->ji", P, KP) - fit.a[f"p{gi}_trK"][:, None] if control_variates else None
    tr, cov_tr = _traces(t, cv)
    score = 0.5 * (q - tr)
    cov_s = 0.25 * cov_tr
    Ucols = list(range(c + 1 + N, c + 1 + N + m + 1))
    PU, _ = proj(Ucols)
    ai = 0.5 * s.B[:, Ucols].T @ PU
    ai = 0.5 * (ai + ai.T)
    u_new = np.column_stack([KPy[j] for j in range(m)] + [Py])
    omega = Ainv @ (Zo.T @ X[:, c])
    return score, np.atleast_2d(cov_s), ai, u_new, omega, Ainv


def _step(theta, score, ai, held, constrain):
    """The AI step on the free parameters, cut at the first bound it meets (that σ²_j held at 0,
    as :func:`bigmm.fit_components`; σ²_e moved halfway to 0, the others by their AI step given
    that move: :func:`_residual_step`) and limited to MAX_STEP · Vp."""
    free = ~held
    delta = np.zeros_like(theta)
    try:
        delta[free] = np.linalg.solve(ai[np.ix_(free, free)], score[free])
    except np.linalg.LinAlgError:
        delta[free] = 2.0 * theta[free] ** 2 * score[free] / max(theta.size, 1)  # EM-like fallback
    vp = float(np.sum(np.abs(theta)))
    big = float(np.max(np.abs(delta)))
    if big > MAX_STEP * vp:
        delta *= MAX_STEP * vp / big
    out = (delta < 0) & (theta + delta <= 0.0)
    if not constrain:
        out[:-1] = False
    held = held.copy()
    if out.any():
        r = np.where(out, theta / np.where(out, -delta, 1.0), np.inf)
        k = int(np.argmin(r))
        alpha = float(r[k])
        if k == theta.size - 1:
            new, j = _residual_step(theta, score, ai, held, constrain, vp)
            if new is None:  # AI singular on the others: the whole step cut halfway to σ²_e = 0
                new = theta + 0.5 * alpha * delta
            elif j >= 0:  # a σ²_j met its bound first: held at 0, as above
                new[j] = 0.0
                held[j] = True
        else:
            new = theta + alpha * delta
            new[k] = 0.0
            held[k] = True
    else:
        new = theta + delta
    if constrain:
        new[:-1] = np.maximum(new[:-1], 0.0)
    return new, held


def _residual_step(theta, score, ai, held, constrain, vp):
    """The step when the AI step would take σ²_e to 0 or below: σ²_e moves halfway to 0, and the
    other free parameters take the maximiser of the AI quadratic model given that move,
    ``Δ_f = AI_ff⁻¹ (s_f − AI_fe Δ_e)``, cut where a σ²_j (constrained) would go below 0 (with
    σ²_e moving by the same fraction). Scaling the whole AI step to stop halfway instead moved
    every σ²_j by the same small fraction at each halving, and where the maximum lies on σ²_e = 0
    (small n, p_j > n) the fit stalled short of it, reporting convergence; this way σ²_e halves
    at each iteration and the others follow their maximum given it. Returns (θ, the σ²_j that met
    its bound or −1); θ None where AI_ff is singular."""
    free = ~held
    free[-1] = False
    d = np.zeros_like(theta)
    d[-1] = -0.5 * theta[-1]
    try:
        d[free] = np.linalg.solve(ai[np.ix_(free, free)], score[free] - ai[free, -1] * d[-1])
    except np.linalg.LinAlgError:
        return None, -1
    big = float(np.max(np.abs(d)))
    if big > MAX_STEP * vp:
        d *= MAX_STEP * vp / big
    out = (d < 0) & (theta + d <= 0.0)
    out[-1] = False
    if not constrain or not out.any():
        return theta + d, -1
    r = np.where(out, theta / np.where(out, -d, 1.0), np.inf)
    j = int(np.argmin(r))
    return theta + float(r[j]) * d, j


def _ai_update(prob, fit: _Fit, k: int, m: int, constrain, tol, cg_tol, max_iter, control_variates) -> None:
    """Score and AI at θ, the step, the convergence test; a converged phenotype's final arrays."""
    s = fit.cg[k]
    theta = s.theta
    _, kind, drop = _spec(fit, k, prob.m)
    score, cov_s, ai, u_new, omega, Ainv = _score_ai(prob, fit, k, m, control_variates, ml=kind == ML)
    fixed = np.zeros(m + 1, bool)
    if kind == WITHOUT:
        fixed[drop] = True  # the model without component `drop`: σ²_drop = 0, never released
    held0 = fit.a[f"held{k}"] | fixed
    new, held = _step(theta, score, ai, held0, constrain)
    fit.a[f"iter{k}"][0] += 1
    vp0, vp1 = float(theta.sum()), float(new.sum())
    dh = float(np.max(np.abs(new[:-1] / vp1 - theta[:-1] / vp0)))
    dvp = abs(vp1 - vp0) / vp0
    ctol = float(fit.a[f"ctol{k}"][0])
    # a step that holds a component at its bound is no test of convergence: the others have not
    # yet been fitted without it (testing it released the component it had just held, whose
    # score is positive, in a loop that never moved the others)
    converged = dh < tol and dvp < tol and ctol <= cg_tol and not (held & ~held0).any()
    if converged and held.any():
        release = held & ~fixed & (score / np.maximum(np.diag(ai), 1e-300) > tol * vp1)
        if release.any():
            held = held & ~release
            converged = False
    fit.a[f"held{k}"] = held
    it = int(fit.a[f"iter{k}"][0])
    if converged or it >= max_iter:
        fit.a[f"done{k}"][0] = True
        fit.a[f"final{k}"] = np.r_[new, float(converged), dh, dvp]
        fit.a[f"ai{k}"], fit.a[f"covs{k}"] = ai, cov_s
        fit.a[f"omega{k}"], fit.a[f"omegacov{k}"] = omega, Ainv
        return
    fit.a[f"prev{k}"] = theta.copy()
    fit.a[f"theta{k}"] = new
    B = s.B.copy()
    B[:, B.shape[1] - (m + 1):] = u_new
    step = float(np.max(np.abs(new - theta))) / vp0
    ctol = max(cg_tol, min(LOOSE_CG_TOL, CG_TOL_FACTOR * step))
    fit.a[f"ctol{k}"] = np.array([ctol])
    s.restart(new, B, ctol)


# --------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------

def _covariances(ai: np.ndarray, cov_s: np.ndarray, held: np.ndarray, exact: bool):
    """Cov(θ̂) = AI⁻¹ (NaN where AI is singular) and the Monte Carlo covariance
    ``AI⁻¹ Cov_MC(s) AI⁻¹`` over the free parameters (0 for the held ones; NaN with exact traces)."""
    try:
        cov = np.linalg.inv(ai)
    except np.linalg.LinAlgError:
        cov = np.full(ai.shape, np.nan)
    free = ~held
    cov_mc = np.zeros_like(ai)
    if exact:
        cov_mc[:] = np.nan
    else:
        try:
            Fi = np.linalg.inv(ai[np.ix_(free, free)])
            cov_mc[np.ix_(free, free)] = Fi @ cov_s[np.ix_(free, free)] @ Fi
        except np.linalg.LinAlgError:
            cov_mc[:] = np.nan
    return cov, cov_mc


def _result(prob, fit: _Fit, k: int, m: int, cnames, nv, constrain, exact, ml, lrt) -> ComponentsFit:
    gi = _pattern_of(prob, k)
    cols, obs, Zo, Yr, shift = prob.patterns[gi]
    n_o, c = Zo.shape
    a = float(prob.scales[k])
    a2 = a * a
    fin = fit.a[f"final{k}"]
    theta, converged = fin[:m + 1], bool(fin[m + 1])
    held = fit.a[f"held{k}"] | (theta == 0.0) & np.r_[np.ones(m, bool), False]
    cov, cov_mc = _covariances(fit.a[f"ai{k}"], fit.a[f"covs{k}"], held, exact)
    theta_o, cov_o, cov_mc_o = theta * a2, cov * a2 * a2, cov_mc * a2 * a2
    nan = float("nan")
    T = _tests(prob, fit, k, m, theta, held, constrain, exact, lrt)
    none = not np.any(theta[:-1])
    KB = fit.a[f"p{gi}_KB"]
    qg = len(cols)
    K1 = KB[:, :, c + qg]
    trK = fit.a[f"p{gi}_trK"]
    d = trK / n_o - K1.sum(axis=1) / n_o ** 2
    der, der_mc = derived(theta_o, cov_o, d, nv), derived(theta_o, cov_mc_o, d, nv)
    se = np.sqrt(np.maximum(np.diag(cov_o), 0.0))
    se_mc = np.sqrt(np.maximum(np.diag(cov_mc_o), 0.0)) if not exact else np.full(m + 1, np.nan)
    comps = tuple(ComponentEstimate(
        name=cnames[j], n_variants=nan if nv is None else float(nv[j]), sigma2=float(theta_o[j]),
        sigma2_se=float(se[j]), h2=der["h2"][j][0], h2_se=der["h2"][j][1], share=der["share"][j][0],
        share_se=der["share"][j][1], enrichment=der["enrichment"][j][0], enrichment_se=der["enrichment"][j][1],
        pve=der["pve"][j][0], pve_se=der["pve"][j][1], mean_diag_K=float(trK[j] / n_o), boundary=bool(held[j]),
        lrt_stat=T["tests"][j][0], lrt_pvalue=T["tests"][j][1], logl_reml_without=T["tests"][j][2],
        h2_se_mc=der_mc["h2"][j][1], sigma2_se_mc=float(se_mc[j]), lrt_stat_se_mc=T["tests"][j][3]) for j in range(m))
    gen = np.r_[np.ones(m), 0.0]
    omega = a * (fit.a[f"omega{k}"] + shift[:, cols.index(k)])
    om_cov = fit.a[f"omegacov{k}"]
    fe = tuple(FixedEffect(name=zn, estimate=float(omega[i]), se=float(a * math.sqrt(max(om_cov[i, i], 0.0))))
               for i, zn in enumerate(prob.znames))
    return ComponentsFit(
        name=prob.names[k], n=n_o, h2=der["h2_total"][0], h2_se=der["h2_total"][1],
        h2_se_method="average_information", h2_se_curvature=nan, pve=der["pve_total"][0],
        pve_se=der["pve_total"][1], mean_diag_K=nan, sigma2_g=float(theta_o[:-1].sum()),
        sigma2_g_se=float(math.sqrt(max(gen @ cov_o @ gen, 0.0))), sigma2_e=float(theta_o[-1]),
        sigma2_e_se=float(se[-1]), logl_reml=T["logl"], logl_reml_h2_0=T["ll0"], logl_ml=T["logl_ml"],
        h2_ml=T["h2_ml"], lrt_stat=T["lrt_all"][0], lrt_pvalue=T["lrt_all"][1], boundary="lower" if none else "",
        fixed_effects=fe, n_missing=int(prob.n - n_o),
        missing_method="subset" if n_o < prob.n else "none", sigma2_g_sigma2_e_cov=float(gen @ cov_o[:, -1]),
        components=comps, sigma2_cov=tuple(tuple(float(v) for v in r) for r in cov_o),
        reml_method="matrix_free_ai_reml", iterations=int(fit.a[f"iter{k}"][0]), converged=converged,
        delta_logl=nan, delta_sigma2=float(fin[m + 2]), constrain=constrain, h2_se_mc=der_mc["h2_total"][1],
        passes=int(fit.a["passes"][0]), cg_iterations=int(fit.a[f"cgsteps{k}"][0]),
        logl_reml_se_mc=T["logl_se_mc"], logl_ml_se_mc=T["logl_ml_se_mc"], lrt_stat_se_mc=T["lrt_all"][2])


# --------------------------------------------------------------------------------------
# the fit
# --------------------------------------------------------------------------------------

def fit_components_matrix_free(op, Y, Z=None, *, phenotype_names: Sequence[str] | None = None,
                               covariate_names: Sequence[str] | None = None, n_probes=DEFAULT_PROBES,
                               seed: int = 0, constrain: bool = True, tol: float = DEFAULT_TOL,
                               cg_tol: float = DEFAULT_CG_TOL, max_iter: int = DEFAULT_MAX_ITER,
                               state=None, progress=None, control_variates: bool = True, ml: bool = True,
                               lrt: bool = True, slq_tol: float = SLQ_TOL) -> ComponentsResult:
    """REML estimates of ``V = Σ_j σ²_j K_j + σ²_e I`` without any n x n matrix.

    Parameters
    ----------
    op : ComponentsOperator or DenseComponentsOperator
        Applies every K_j to a block of vectors in one pass (``op.apply(M) -> (KM (m, n, b), diag)``).
    Y : (n,) or (n, q) array
        Phenotypes over the operator's samples; NaN marks a missing value (each phenotype is
        fitted on its observed samples).
    Z : (n, c) array, optional
        Fixed effects including the intercept (default: intercept only).
    phenotype_names, covariate_names : sequences of str, optional
    n_probes : int or "exact"
        Hutchinson probes per missing-value pattern (Rademacher, seeded by ``seed``); ``"exact"``
        uses the n_o scaled unit vectors, so every trace is exact (small n only: the block then
        has n_o columns per phenotype).
    seed : int
        Seed of the probes (recorded in the result's notes).
    constrain : bool
        GCTA's default, σ²_j ≥ 0 (a component whose step goes below 0 is held at 0 and released
        when its score turns positive); False leaves σ²_j free (σ²_e stays positive).
    tol : float
        Converged when, between two AI iterations, |Δh²_j| < tol for every j and |ΔVp| / Vp < tol.
    cg_tol : float
        CG stops each column at relative residual ‖b − Vx‖ / ‖b‖ < cg_tol in the iterations that
        may end the fit; earlier ones stop at ``max(cg_tol, min(1e-3, 0.01 · max|Δθ| / Vp))`` of
        the step that led to them (:data:`LOOSE_CG_TOL`, :data:`CG_TOL_FACTOR`).
    max_iter : int
        AI iterations at most.
    state : path, optional
        An ``.npz`` file written atomically after every pass; a fit started with a state of the
        same inputs continues after its last pass with results equal to an uninterrupted fit; a
        state of other inputs is refused.
    progress : callable, optional
        Called as ``progress(passes, message)`` after each pass (the line is also logged to the
        ``bigmm`` logger).
    control_variates : bool
        Subtract each probe's fitted share of ``z_iᵀK_jz_i − tr K_j`` (zero mean, tr K_j known
        from the diagonal) from its term of ``tr(P K_j)``.
    ml : bool
        Also maximise the ML likelihood (``logl_ml``, ``h2_ml``), as :func:`bigmm.fit_components`.
    lrt : bool
        Refit without each component (m > 1) for its likelihood-ratio test, as
        :func:`bigmm.fit_components`.
    slq_tol : float
        A probe's Lanczos quadrature of ``zᵀ log(I + A) z`` stops when one step changes it by
        less than this (or at ``cg_tol``); :data:`SLQ_TOL`.

    Returns
    -------
    ComponentsResult
        ``reml_method = "matrix_free_ai_reml"``; per component σ²_j, h²_j, share, enrichment,
        pve with AI SEs, and the Monte Carlo SDs ``h2_se_mc``, ``sigma2_se_mc`` (NaN with exact
        traces); per phenotype the total h² with ``h2_se_mc``, ``passes`` and ``cg_iterations``.
        ``logl_reml``, ``logl_ml``, ``h2_ml``, the LRT of all components and of each with
        ``logl_reml_without``, in :func:`bigmm.fit_components`' conventions, with the Monte
        Carlo SDs ``logl_reml_se_mc``, ``logl_ml_se_mc``, ``lrt_stat_se_mc`` (fit and
        component). A fit that did not converge has no ML fit or per-component tests (NaN).

    Notes
    -----
    Pass 1 applies every K_j to each pattern's ``[Z, Ỹ, 1, probes]`` and gives diag K_j: the
    Haseman–Elston start (moment equations with ``tr(K_jK_k) ≈ mean_i (K_jz_i)ᵀ(K_kz_i)``), the
    products ``K_j z_i`` kept for the traces. Each AI iteration at θ solves ``V x = b`` for
    ``b = [Z, y, z_1..z_N, u_1..u_{m+1}]`` of every phenotype by CG, one pass per CG step for
    all of them, warm-started from the previous solutions; ``K_j x`` is accumulated from the
    pass products. Score ``s_j = ½(yᵀPK_jPy − tr(PK_j))`` with ``tr(PK_j) ≈ mean_i (Pz_i)ᵀ(K_jz_i)``
    (``tr P ≈ mean z_iᵀPz_i``), exact at θ up to the probes; AI matrix ``½ u_jᵀPu_k`` with
    ``u = [K_jPy, Py]`` of the previous iterate (lagged by one step). Step ``θ += AI⁻¹s``, cut at
    the first bound (:func:`_step`; σ²_e halfway to 0 with the others fitted given it).
    SEs: inverse AI at the estimate; Monte Carlo covariance ``AI⁻¹ Cov_MC(s) AI⁻¹`` with
    ``Cov_MC(s)`` from the per-probe terms of the traces (delete-one-probe jackknife), carried to
    ratios by the same delta method.

    Log-likelihoods (docs/math.md §13): once a phenotype's REML fit converges, its ML fit and its
    fits without each component (not held at 0) run the same iteration, warm-started from its
    solves; at each fit's estimate ``log det V = n_o log σ²_e + tr log(I + A)``,
    ``A = Σ_j (σ²_j/σ²_e) K_j``, with ``tr log(I + A)`` by stochastic Lanczos quadrature: cold CG
    from 0 on the same probes (Lanczos on V), control variate ``z_iᵀAz_i − tr A``; the other terms
    from the same cold solves of Z and y. SDs: the delete-one-probe jackknife of all the fits'
    log dets jointly (common probes).

    Cost: 1 + Σ (CG steps per iteration) passes over the genotypes for the REML fits, each with
    ``q (c + 2 + N + m)`` columns for q phenotypes, then the log-likelihood passes, shared by
    every ML fit, reduced fit and log det solve (+14 passes for the log det alone, +33 with the
    ML and two reduced fits, on 47, at n = 2,000 with m = 2; up to ``1 + ml + m·lrt`` times the
    columns, fewer refits at once, in turns, where the operator's memory plan refuses that width); memory ``8 (m + 4) n_o (c + 2 + N + m)``
    bytes per phenotype for the solves and their K_j products, ``8 m n N`` per pattern for the
    probes' products, and ``8 m n b`` for a pass's output (b its columns).
    """
    prob, m, exact = _check(op, Y, Z, phenotype_names, covariate_names, n_probes, tol, cg_tol, max_iter)
    tol = float(tol)
    q = prob.m
    nprobe_key = "exact" if exact else int(n_probes)
    fp = _fingerprint(prob, m, nprobe_key, int(seed), bool(constrain), tol, float(cg_tol))
    if not (isinstance(slq_tol, (int, float)) and math.isfinite(slq_tol) and slq_tol > 0):
        raise InputError(f"slq_tol must be a positive number, got {slq_tol!r}")
    notes = {"n_probes": nprobe_key, "seed": int(seed), "cg_tol": float(cg_tol), "tol": tol,
             "control_variates": bool(control_variates), "slq_tol": float(slq_tol),
             "logl": "log det V by stochastic Lanczos quadrature at each fit's estimate (cold CG on the same "
                     "probes; control variate z'Az - tr A), the other terms exact: logl_reml, logl_ml, the LRTs "
                     "and logl_reml_without are Monte Carlo estimates, their SDs in *_se_mc"}
    fit = _open(state, fp, q, f"ml={bool(ml)} lrt={bool(lrt)} slq_tol={float(slq_tol)!r}", notes)
    per = prob.c + 2 + m + (prob.n if exact else int(n_probes))  # a phenotype's AI solves
    if hasattr(op, "plan") and fit.a["stage"][0] == 0:
        width = sum(prob.patterns[g][2].shape[1] + len(prob.patterns[g][0]) + 1
                    + (int(prob.patterns[g][1].sum()) if exact else int(n_probes)) for g in range(len(prob.patterns)))
        op.plan(max(width, q * per))
    parallel = _parallel_refits(op, q * per, bool(ml) + (m if lrt and m > 1 else 0))

    def report(msg):
        log.info(msg)
        if progress is not None:
            progress(int(fit.a["passes"][0]), msg)

    if fit.a["stage"][0] == 0:
        _first_pass(op, prob, fit, m, nprobe_key, int(seed), float(cg_tol))
        fit.save(state)
        report(f"matrix-free components pass 1: Haseman–Elston start, {q} phenotypes, {m} components")
    _iterate(op, prob, fit, m, state, report, ml=bool(ml), lrt=bool(lrt), constrain=bool(constrain), tol=tol,
             cg_tol=float(cg_tol), slq_tol=float(slq_tol), max_iter=int(max_iter),
             control_variates=control_variates, parallel=parallel)
    cnames = list(op.names)
    nv = np.asarray(op.n_variants, dtype=np.float64) if getattr(op, "n_variants", None) is not None else None
    if nv is not None and not np.all(nv > 0):
        nv = None
    fits = tuple(_result(prob, fit, k, m, cnames, nv, constrain, exact, bool(ml), bool(lrt)) for k in range(q))
    notes["passes"] = int(fit.a["passes"][0])
    notes["passes_logl"] = int(fit.a["passes_logl"][0])
    notes["not_converged"] = [f.name for f in fits if not f.converged]
    if notes["not_converged"]:
        log.warning("matrix-free components: %d of %d phenotypes did not converge in %d AI iterations",
                    len(notes["not_converged"]), q, max_iter)
    return ComponentsResult(fits=fits, component_names=tuple(cnames), covariate_names=tuple(prob.znames),
                            n_variants=None if nv is None else tuple(float(v) for v in nv),
                            constrain=bool(constrain), reml_method="matrix_free_ai_reml", notes=notes)


def _open(state, fp: str, q: int, logl_fp: str, notes: dict) -> _Fit:
    """The fit to continue: the saved ``state`` of the same inputs (refused if of other inputs;
    its log-likelihood part redone if made with other settings, the whole fit if its REML solves
    are gone), or a new one."""
    fit = _Fit.load(state, fp, q)
    if fit is not None:
        notes["resumed_after_pass"] = int(fit.a["passes"][0])
        log.info("matrix-free components: resuming after pass %d (%s)", int(fit.a["passes"][0]), state)
        kept = fit.reset_logl(q, logl_fp)
        if kept is None:
            log.info("matrix-free components: the saved state's log-likelihood solves were made with other "
                     "settings (ml, lrt, slq_tol); the fit starts afresh")
            notes.pop("resumed_after_pass")
            fit = _Fit(fp)
            fit.reset_logl(q, logl_fp)
        elif kept:
            log.info("matrix-free components: the saved log-likelihood solves were made with other settings "
                     "(or by an earlier version); they start again")
    else:
        fit = _Fit(fp)
        fit.reset_logl(q, logl_fp)
    return fit


def _iterate(op, prob, fit: _Fit, m: int, state, report, *, ml: bool, lrt: bool, constrain: bool, tol: float,
             cg_tol: float, slq_tol: float, max_iter: int, control_variates: bool, parallel: int) -> None:
    """After pass 1, until every fit and log det is done: start what the finished fits call for
    (:func:`_launch`), take the AI step of every fit whose solves are done (:func:`_ai_update`),
    else make one pass (:func:`_cg_pass`); the state is saved after each."""
    q = prob.m
    while True:
        _finish_logdets(prob, fit, m)
        _launch(prob, fit, m, ml, lrt, cg_tol, constrain, parallel)
        todo = [k for k in _ai_keys(fit) if not fit.a[f"done{k}"][0]]
        need = [k for k in todo if fit.cg[k].active.any() and fit.cg[k].steps[0] < MAX_CG_STEPS]
        if todo and not need:
            for k in todo:
                _ai_update(prob, fit, k, m, constrain, tol, cg_tol, max_iter, control_variates)
            fit.save(state)
            continue
        slq = [k for k in _slq_keys(fit) if fit.cg[k].active.any() and fit.cg[k].steps[0] < MAX_CG_STEPS]
        if not (need or slq):
            fit.save(state)  # with the last log dets' quadratures
            break
        if need:
            k0 = need[0]
            ph, kind, drop = _spec(fit, k0, q)
            it = int(fit.a[f"iter{k0}"][0]) + 1
            step = int(fit.cg[k0].steps[0]) + 1
            what = ("" if kind == REML else " ML" if kind == ML else f" without {op.names[drop]}")
            desc = f"components{what} AI iteration {it}, CG step {step}"
        else:
            step = int(fit.cg[slq[0]].steps[0]) + 1
            desc = f"components log det V, Lanczos step {step}"
        _cg_pass(op, prob, fit, desc, cg_tol, slq_tol)
        fit.save(state)
        if need:
            res = max(fit.cg[k].residual() for k in need)
            th = fit.cg[k0].theta
            report(f"matrix-free components pass {int(fit.a['passes'][0])}: {prob.names[ph]}{what} AI iteration "
                   f"{it}, CG step {step}, max relative residual {res:.2e}, θ = "
                   + ", ".join(f"{v:.4g}" for v in th * prob.scales[ph] ** 2)
                   + (f"; log det V of {len(slq)} fits" if slq else ""))
        else:
            report(f"matrix-free components pass {int(fit.a['passes'][0])}: log det V of {len(slq)} fits, "
                   f"Lanczos step {step}")
