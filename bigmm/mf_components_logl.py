"""The log-likelihoods of a matrix-free components fit (:func:`bigmm.fit_components_matrix_free`;
docs/math.md §13).

Once a phenotype's REML fit converges: its ML fit and its REML fits without each component
(:func:`_launch`, :func:`_start_extra`: the same AI iteration, warm-started from its solves), and
at every fit's estimate ``log det V`` by stochastic Lanczos quadrature (:func:`_finish_logdets`);
then ℓ of each fit (:func:`_logls`) and the likelihood-ratio tests with their Monte Carlo SDs
(:func:`_tests`), by the delete-one-probe jackknife of :func:`_traces` (which also gives the
Monte Carlo covariance of the AI scores).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from .errors import InputError
from .mf_cg import CGSystem, LanczosCG
from .mf_components_state import (LOOSE_CG_TOL, MAX_CG_STEPS, ML, REML, WITHOUT, _Fit, _ai_keys, _pattern_of,
                                  _slq_keys, _spec)
from .vcreml import LOG2PI, _lrt_pvalue, null_fit

log = logging.getLogger("bigmm")


def _traces(t: np.ndarray, cv: np.ndarray | None):
    """The trace estimates from the per-probe terms ``t`` ((m + 1) x N) and their Monte Carlo
    covariance by the delete-one-probe jackknife.

    With control variates ``cv`` (m x N, ``z_iᵀK_jz_i − tr K_j``, mean 0 exactly) the estimate of
    trace j is ``mean(t_j) − β_j mean(cv_j)``, β_j the least-squares slope of t_j on cv_j; the
    jackknife refits β_j without each probe, so the covariance includes the error of β_j (the
    plain sample covariance / N of the adjusted terms left it out and fell ~1.5x short at N = 10).
    """
    N = t.shape[1]
    loo = (t.sum(axis=1, keepdims=True) - t) / (N - 1) if N > 1 else t.copy()  # mean without probe i
    est = t.mean(axis=1)
    if cv is not None:
        m = cv.shape[0]
        est = est.copy()
        loo = loo.copy()
        for j in range(m):
            tj, cj = t[j], cv[j]
            tc = tj - tj.mean()
            vc = float(cj @ cj)
            if vc > 0:
                est[j] -= float(tc @ cj) / vc * cj.mean()
            if N > 2:
                St, Sc, Stc, Scc = tj.sum(), cj.sum(), float(tj @ cj), vc
                t_i, c_i = (St - tj) / (N - 1), (Sc - cj) / (N - 1)  # means without probe i
                cov_i = (Stc - tj * cj) - (N - 1) * t_i * c_i
                var_i = Scc - cj * cj
                beta_i = np.where(var_i > 0, cov_i / np.where(var_i > 0, var_i, 1.0), 0.0)
                loo[j] = t_i - beta_i * c_i
    if N < 3:
        return est, np.full((t.shape[0],) * 2, np.nan)
    d = loo - loo.mean(axis=1, keepdims=True)
    return est, (N - 1) / N * (d @ d.T)



# --------------------------------------------------------------------------------------
# the log-likelihoods: the ML and reduced fits, log det V by stochastic Lanczos quadrature
# --------------------------------------------------------------------------------------

def _launch(prob, fit: _Fit, m: int, ml: bool, lrt: bool, cg_tol: float, constrain: bool, parallel: int) -> None:
    """For every AI fit that has converged (or stopped): start its log det solves at its
    estimate; for a phenotype's converged REML fit, queue its ML fit and its fits without each
    component, and start them (warm-started from its CG solutions) while fewer than
    ``parallel`` of them (or their log det solves) are under way; drop CG systems no longer
    needed."""
    q = prob.m
    for k in _ai_keys(fit):
        if not fit.a[f"done{k}"][0] or f"launched{k}" in fit.a:
            continue
        s = fit.cg[k]
        ph, kind, _ = _spec(fit, k, q)
        c = prob.patterns[_pattern_of(prob, ph)][2].shape[1]
        theta = fit.a[f"final{k}"][:m + 1]
        N = s.B.shape[1] - (c + 1) - (m + 1)
        if np.all(np.isfinite(theta)):
            # cold CG from 0 on [Z, y, probes] at the estimate: Lanczos on V from each probe
            fit.cg[f"L{k}"] = LanczosCG(s.B[:, :c + 1 + N], m, theta, np.arange(c + 1, c + 1 + N))
        else:  # a fit that failed (_backtrack): no log det
            fit.a[f"slq{k}"] = np.full(4, np.nan)
            fit.a[f"ldq{k}"] = fit.a[f"ldcv{k}"] = np.full(N, np.nan)
        todo = []
        if kind == REML and fit.a[f"final{k}"][m + 1]:  # an unconverged fit gets ℓ_R only
            todo = [(ML, -1)] if ml else []
            if lrt and m > 1:
                held = fit.a[f"held{k}"] | (theta == 0.0) & np.r_[np.ones(m, bool), False]
                todo += [(WITHOUT, j) for j in range(m) if not held[j]]  # at 0: ℓ without it is ℓ
        fit.a[f"queue{k}"] = np.array(todo, np.int64).reshape(-1, 2)
        if not todo:
            del fit.cg[k]
        fit.a[f"launched{k}"] = np.ones(1, bool)
    for k in range(q):
        queue = fit.a.get(f"queue{k}")
        if queue is None or not queue.size:
            continue
        extras = [kk for kk in range(q, int(fit.a["nfits"][0])) if _spec(fit, kk, q)[0] == k]
        busy = sum(kk in fit.cg or f"L{kk}" in fit.cg for kk in extras)
        theta = fit.a[f"final{k}"][:m + 1]
        while busy < parallel and queue.size:
            _start_extra(prob, fit, k, fit.cg[k], theta, int(queue[0, 0]), int(queue[0, 1]), m, cg_tol, constrain)
            queue, busy = queue[1:], busy + 1
        fit.a[f"queue{k}"] = queue
        if not queue.size:
            del fit.cg[k]  # every refit has its warm start


def _parallel_refits(op, width: int, n_refits: int) -> int:
    """How many of a phenotype's ML and reduced fits run at once: all of them if a pass of
    ``width · (1 + all)`` vectors (each phenotype's REML log det solves and its refits) fits the
    operator's memory plan, else the most that do (at least 1: then the refits take turns, at
    more passes)."""
    if n_refits <= 1 or not hasattr(op, "plan"):
        return max(n_refits, 1)
    for k in range(n_refits, 0, -1):
        try:
            op.plan(width * (1 + k))
            return k
        except InputError:
            continue
    return 1


def _start_extra(prob, fit: _Fit, k: int, s: CGSystem, theta: np.ndarray, kind: int, drop: int, m: int,
                 cg_tol: float, constrain: bool) -> None:
    """A new AI fit of phenotype k's model (ML, or REML without component ``drop``), started as
    :func:`bigmm.fit_components` starts it, from the REML estimate (the dropped component's
    variance moved to σ²_e), its solves warm-started from the REML fit's."""
    kk = int(fit.a["nfits"][0])
    fit.a["nfits"][0] += 1
    fit.a[f"spec{kk}"] = np.array([k, kind, drop], np.int64)
    theta0 = theta.copy()
    if kind == WITHOUT:
        gi = _pattern_of(prob, k)
        n_o = prob.patterns[gi][2].shape[0]
        theta0[-1] += theta0[drop] * float(fit.a[f"p{gi}_trK"][drop]) / n_o
        theta0[drop] = 0.0
        keep = np.r_[np.arange(m) != drop, False]
        if constrain:
            theta0[keep] = np.maximum(theta0[keep], 1e-3 * theta0[-1])
    tol0 = max(cg_tol, LOOSE_CG_TOL)
    new = CGSystem.restore(s.export(""), "")
    new.restart(theta0, None, tol0)
    fit.cg[kk] = new
    fit.a[f"ctol{kk}"] = np.array([tol0])
    fit.a[f"theta{kk}"] = theta0
    fit.a[f"held{kk}"] = np.zeros(m + 1, dtype=bool)
    fit.a[f"iter{kk}"] = np.zeros(1, np.int64)
    fit.a[f"done{kk}"] = np.zeros(1, bool)
    fit.a[f"cgsteps{kk}"] = np.zeros(1, np.int64)


def _finish_logdets(prob, fit: _Fit, m: int) -> None:
    """For every log det solve that has stopped: each probe's quadrature ``z_iᵀ log(I + A) z_i``
    (A = Σ_j (σ²_j/σ²_e) K_j), its control variate ``z_iᵀAz_i − tr A`` and the exact terms
    ``[n_o log σ²_e, log det ZᵀV⁻¹Z, yᵀPy, Lanczos steps]``; the solve's arrays are then dropped."""
    for key in _slq_keys(fit):
        s = fit.cg[key]
        if s.active.any() and s.steps[0] < MAX_CG_STEPS:
            continue
        k = int(key[1:])
        ph = _spec(fit, k, prob.m)[0]
        gi = _pattern_of(prob, ph)
        cols, _, Zo, _, _ = prob.patterns[gi]
        n_o, c = Zo.shape
        theta = s.theta
        te = float(theta[-1])
        N = s.B.shape[1] - c - 1
        probes = range(c + 1, c + 1 + N)
        if np.any(s.quad == -np.inf):  # V was not positive definite
            fit.a[f"slq{k}"] = np.full(4, np.nan)
            fit.a[f"ldq{k}"] = fit.a[f"ldcv{k}"] = np.full(N, np.nan)
        else:
            X = s.X
            A = Zo.T @ X[:, :c]
            A = 0.5 * (A + A.T)
            sign, logdet_A = np.linalg.slogdet(A)
            y = s.B[:, c]
            Zy = Zo.T @ X[:, c]
            yPy = float(y @ X[:, c] - Zy @ np.linalg.solve(A, Zy))
            fit.a[f"slq{k}"] = np.array([n_o * math.log(te), logdet_A if sign > 0 else np.nan, yPy,
                                         float(s.steps[0])])
            fit.a[f"ldq{k}"] = np.array([s.quadrature(i, lambda lam: np.log(lam / te)) for i in probes])
            KB = fit.a[f"p{gi}_KB"]
            qg = len(cols)
            KP, P = KB[:, :, c + qg + 1:], s.B[:, c + 1:]
            zKz = np.einsum("ni,jni->ji", P, KP)  # (m, N): z_iᵀ K_j z_i from pass 1
            ratio = theta[:m] / te
            fit.a[f"ldcv{k}"] = ratio @ (zKz - fit.a[f"p{gi}_trK"][:, None])
        del fit.cg[key]


def _logls(prob, fit: _Fit, k: int, m: int, exact: bool) -> dict:
    """Phenotype k's log-likelihoods on y's scale from its fits' log det estimates: per fit
    (REML, ML, without each component) ℓ and, jointly over the fits (common probes), the
    delete-one-probe jackknife covariance of their log det estimates."""
    q = prob.m
    n_o, c = prob.patterns[_pattern_of(prob, k)][2].shape
    la = math.log(float(prob.scales[k]))
    fits = [(k, REML, -1)] + [(kk, kind, drop) for kk in range(q, int(fit.a["nfits"][0]))
                              for ph, kind, drop in [_spec(fit, kk, q)] if ph == k]
    t = np.vstack([fit.a[f"ldq{kk}"] for kk, _, _ in fits])
    cv = np.vstack([fit.a[f"ldcv{kk}"] for kk, _, _ in fits])
    est, cov = _traces(t, cv)
    if exact:
        cov = np.full(cov.shape, np.nan)
    out = {"cov": cov, "index": {}}
    for i, (kk, kind, drop) in enumerate(fits):
        logdet_I, logdet_A, yPy, _ = fit.a[f"slq{kk}"]
        if kind == ML:
            ll = -0.5 * (n_o * LOG2PI + logdet_I + est[i] + yPy) - n_o * la
        else:
            ll = -0.5 * ((n_o - c) * LOG2PI + logdet_I + est[i] + logdet_A + yPy) - (n_o - c) * la
        out["index"][(kind, drop)] = (i, float(ll), kk)
    return out


def _tests(prob, fit: _Fit, k: int, m: int, theta: np.ndarray, held: np.ndarray, constrain: bool, exact: bool,
           lrt: bool) -> dict:
    """Phenotype k's log-likelihoods and likelihood-ratio tests at its estimate ``theta`` (``held``:
    the components at 0), on y's scale, with their Monte Carlo SDs: ``ll0`` (the model without
    any K), ``logl`` and its SD, ``lrt_all`` (statistic, p, SD), ``tests`` per component
    (statistic, p, ℓ without it, SD), ``logl_ml``, ``h2_ml`` and the SD of ``logl_ml``."""
    _, obs, Zo, _, _ = prob.patterns[_pattern_of(prob, k)]
    a = float(prob.scales[k])
    nan = float("nan")
    ll0 = null_fit(prob.Y[obs, k] * a, Zo)[0]
    L = _logls(prob, fit, k, m, exact)
    i0, logl, _ = L["index"][(REML, -1)]
    cov = L["cov"]

    def mc_sd(w):  # Monte Carlo SD of Σ_i w_i log det_i (w over the fits of this phenotype)
        w = np.asarray(w, float)
        on = w != 0
        c2 = cov[np.ix_(on, on)]
        return float(math.sqrt(max(w[on] @ c2 @ w[on], 0.0))) if np.all(np.isfinite(c2)) else nan

    e0 = np.eye(cov.shape[0])[i0]
    none = not np.any(theta[:-1])
    def clip(d):  # an LRT statistic from 2Δℓ: at least 0; NaN stays NaN (a failed log det)
        return max(0.0, d) if math.isfinite(d) else nan

    stat_all = 0.0 if none else clip(2.0 * (logl - ll0))
    # LRT = 2(ℓ − ℓ0) = −log det V + exact terms: its SD is that of the log det estimate
    lrt_all = (stat_all, _lrt_pvalue(stat_all, m, constrain), 0.0 if none else mc_sd(e0))
    tests = []
    for j in range(m):
        if not lrt or m > 1 and not held[j] and (WITHOUT, j) not in L["index"]:  # not asked for, or not
            tests.append((nan, nan, nan, nan))                                   # converged: not fitted
        elif held[j]:  # the model without it is the same model at the same maximum: LRT 0
            tests.append((0.0, 1.0, ll0 if m == 1 else logl, 0.0))
        elif m == 1:
            tests.append((lrt_all[0], _lrt_pvalue(lrt_all[0], 1, constrain), ll0, lrt_all[2]))
        else:
            iw, lw, _ = L["index"][(WITHOUT, j)]
            st = clip(2.0 * (logl - lw))
            tests.append((st, _lrt_pvalue(st, 1, constrain), lw, mc_sd(e0 - np.eye(cov.shape[0])[iw])))
    if (ML, -1) in L["index"]:
        iml, logl_ml, kml = L["index"][(ML, -1)]
        th_ml = fit.a[f"final{kml}"][:m + 1]
        h2_ml, logl_ml_sd = float(th_ml[:-1].sum() / th_ml.sum()), 0.5 * mc_sd(np.eye(cov.shape[0])[iml])
    else:
        logl_ml = h2_ml = logl_ml_sd = nan
    return {"ll0": ll0, "logl": logl, "logl_se_mc": 0.5 * mc_sd(e0), "lrt_all": lrt_all, "tests": tests,
            "logl_ml": logl_ml, "h2_ml": h2_ml, "logl_ml_se_mc": logl_ml_sd}
