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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from itertools import combinations
from typing import Callable, Literal, Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import chdtrc

from .errors import InputError
from .results import _num, _pandas
from .spectrum import Spectrum

LOG2PI = math.log(2.0 * math.pi)
#: the six parameters, in GCTA's order (V(G)_tr1, V(G)_tr2, C(G)_tr12, V(e)_tr1, V(e)_tr2, C(e)_tr12)
PARAMS = ("sg_a", "sg_b", "cov_g", "ve_a", "ve_b", "cov_e")
#: d V / d θ_i as (genetic?, 2 x 2 pattern E_i)
_DERIV = [(True, np.array([[1.0, 0.0], [0.0, 0.0]])), (True, np.array([[0.0, 0.0], [0.0, 1.0]])),
          (True, np.array([[0.0, 1.0], [1.0, 0.0]])), (False, np.array([[1.0, 0.0], [0.0, 0.0]])),
          (False, np.array([[0.0, 0.0], [0.0, 1.0]])), (False, np.array([[0.0, 1.0], [1.0, 0.0]]))]
#: |r| of the two phenotypes' residuals (after the fixed effects) from which the pair is degenerate
DEGENERATE_R = 1.0 - 1e-10


@dataclass
class PairMeasure:
    """What K contributes to the REML of one pair on its common samples.

    ``[Z, y_a, y_b]ᵀ f(K) [Z, y_a, y_b] = G diag(f(nodes)) Gᵀ`` for every function f used here
    (exactly on a spectrum; by block Gauss quadrature on the matrix-free path), and
    ``logdet(h)`` gives ``log det(h K + (1 − h) I)`` with its first two h-derivatives.
    """

    nodes: np.ndarray   # (M,) eigenvalues (spectral) or Ritz values (matrix-free) of K, >= 0
    G: np.ndarray       # (c + 2, M): [Z, y_a, y_b]ᵀ f(K) [Z, y_a, y_b] = G diag(f(nodes)) Gᵀ for any f
    n: int              # samples of the pair (rows of the model)
    c: int              # covariates (columns of the fixed effects)
    logdet: Callable    # h (P,) -> (L, L1, L2): log det(hK + (1 − h)I) and its first two h-derivatives, each (P,)
    logdet_per_probe: Callable | None = None   # matrix-free only: h (P,) -> (N_probes, P) per-probe estimates
    #: of the ``c`` fixed-effect columns, how many are indicators of samples left out (spectral path,
    #: missing values by indicator columns: ``n`` then counts them too); the others are the covariates
    n_indicators: int = 0


# ---------------------------------------------------------------------------------------------
# the spectral measure


def spectral_measure(rot, ja: int, jb: int) -> PairMeasure:
    """The measure of phenotypes ``ja``, ``jb`` of one rotated group (:class:`bigmm.reml._Rotated`).

    Nodes are the eigenvalues of the spectrum with weights ``Uᵀ[Z, y_a, y_b]``; a reduced spectrum
    adds its complement ``I − U Uᵀ``, on which K acts as ``λ̄`` (as :func:`bigmm.fit_reml` models
    it): the complement's Gram matrix ``T = Bᵀ(I − UUᵀ)B`` from the totals (never from the
    discarded eigenvectors) is factored ``T = F Fᵀ`` and F's c + 2 columns enter at the node λ̄.
    ``log det(hK + (1 − h)I)`` counts λ̄ with its multiplicity n − k. The phenotypes are in the
    units of ``rot`` (residuals of their OLS fit divided by ``rot.scale``).
    """
    s = np.asarray(rot.s, dtype=np.float64)
    Gk = np.hstack([rot.Zt, rot.Yt[:, [ja, jb]]]).T  # (c + 2, k)
    nodes, G = s, Gk
    n_tail, lam = int(rot.n_tail), float(rot.lam)
    if n_tail:
        c = rot.Zt.shape[1]
        yo = rot.Yo if rot.Yo is not None else None
        if yo is None:
            raise ValueError("the rotated group has no observed phenotypes (Yo) for the complement's cross term")
        cross = float(yo[:, ja] @ yo[:, jb]) - float(rot.Yt[:, ja] @ rot.Yt[:, jb])
        T = np.zeros((c + 2, c + 2))
        T[:c, :c] = rot.ZZt
        T[:c, c] = T[c, :c] = rot.Zyt[:, ja]
        T[:c, c + 1] = T[c + 1, :c] = rot.Zyt[:, jb]
        T[c, c] = rot.yyt[ja]
        T[c + 1, c + 1] = rot.yyt[jb]
        T[c, c + 1] = T[c + 1, c] = cross
        w, V = np.linalg.eigh(0.5 * (T + T.T))
        F = V * np.sqrt(np.maximum(w, 0.0))
        nodes = np.concatenate([s, np.full(c + 2, lam)])
        G = np.hstack([Gk, F])

    def logdet(h):
        h = np.atleast_1d(np.asarray(h, dtype=np.float64))
        d = h[:, None] * s[None, :] + (1.0 - h)[:, None]
        a = s - 1.0
        L = np.log(d).sum(axis=1)
        L1 = (a / d).sum(axis=1)
        L2 = -((a / d) ** 2).sum(axis=1)
        if n_tail:
            dt = h * lam + 1.0 - h
            L = L + n_tail * np.log(dt)
            L1 = L1 + n_tail * (lam - 1.0) / dt
            L2 = L2 - n_tail * ((lam - 1.0) / dt) ** 2
        return L, L1, L2

    return PairMeasure(nodes=nodes, G=G, n=int(rot.n), c=int(rot.Zt.shape[1]), logdet=logdet,
                       n_indicators=int(rot.n_ind))


# ---------------------------------------------------------------------------------------------
# the likelihood in the decoupled basis


def _decouple(G0: np.ndarray, E0: np.ndarray):
    """(W, d): ``W E₀ Wᵀ = I``, ``W G₀ Wᵀ = diag(d)``; None if E₀ is not positive definite."""
    try:
        L = np.linalg.cholesky(E0)
    except np.linalg.LinAlgError:
        return None
    Li = np.linalg.inv(L)
    S = Li @ G0 @ Li.T
    d, Q = np.linalg.eigh(0.5 * (S + S.T))
    return Q.T @ Li, d


class _Evaluation:
    """ℓ_R at one (G₀, E₀) and, on request, its score and AI matrix in θ = :data:`PARAMS`.

    ``ml=True``: the ML log-likelihood ``−½ [2n log 2π + log det V + yᵀPy]`` instead (the fixed
    effects profiled out: yᵀPy is the GLS residual sum), with its score ``−½ tr(V⁻¹ ∂V/∂θ_i) +
    ½ yᵀP (∂V/∂θ_i) P y`` and the same AI matrix as the curvature of the iteration (measures
    without indicator columns only).
    """

    def __init__(self, m: PairMeasure, theta: np.ndarray, derivatives: bool = True, ml: bool = False):
        self.theta = theta = np.asarray(theta, dtype=np.float64)
        self.G0 = np.array([[theta[0], theta[2]], [theta[2], theta[1]]])
        self.E0 = np.array([[theta[3], theta[5]], [theta[5], theta[4]]])
        self.ok = False
        self.loglik = -np.inf
        dec = _decouple(self.G0, self.E0)
        if dec is None:
            return
        W, d = dec
        lam = m.nodes
        lmax = float(lam.max()) if lam.size else 0.0
        if np.any(1.0 + d <= 0.0) or np.any(1.0 + d * lmax <= 0.0):
            return  # V not positive definite
        n, c = m.n, m.c
        Gz = m.G[:c]
        h = d / (1.0 + d)
        L, L1, L2 = m.logdet(h)
        if not np.all(np.isfinite(L)):
            return
        f = 1.0 / (1.0 + d[:, None] * lam[None, :])  # (2, M)
        # coordinates of y*_k = B w_k in the measure: q_k = Gᵀ w_k
        wk = np.zeros((2, c + 2))
        wk[:, c:] = W
        q = wk @ m.G  # (2, M)
        Ainv, beta, resid, pi = [], [], [], []
        nc = n if ml else n - c  # error contrasts (REML) or observations (ML) per transformed phenotype
        ll = -0.5 * nc * float(np.log(np.linalg.det(self.E0)))
        for k in range(2):
            A = (Gz * f[k]) @ Gz.T
            try:
                C = np.linalg.cholesky(A)
            except np.linalg.LinAlgError:
                return
            b = Gz @ (f[k] * q[k])
            bk = np.linalg.solve(A, b)
            r = q[k] - Gz.T @ bk
            yPy = float(np.sum(f[k] * r * r))
            logdetV = n * math.log1p(d[k]) + float(L[k])
            ll += -0.5 * (nc * LOG2PI + logdetV + (0.0 if ml else 2.0 * float(np.log(np.diag(C)).sum())) + yPy)
            Ai = np.linalg.inv(A)
            Ainv.append(0.5 * (Ai + Ai.T))
            beta.append(bk)
            resid.append(r)
            pi.append(f[k] * r)  # coordinates of P_k y*_k
        if not np.isfinite(ll):
            return
        self.ok = True
        self.loglik = ll
        self.W, self.d, self.f, self.Ainv, self.beta = W, d, f, Ainv, beta
        self.yPy = None
        if not derivatives:
            return
        # traces tr(V_k⁻¹ K) = n/(1 + d) + L1(h)/(1 + d)², tr(V_k⁻¹) = n − d tr(V_k⁻¹ K)
        trK = n / (1.0 + d) + L1 / (1.0 + d) ** 2
        trI = n - d * trK
        D = {True: lam, False: np.ones_like(lam)}
        trP = {}
        for gen in (True, False):
            trP[gen] = np.array([(trK[k] if gen else trI[k])
                                 - (0.0 if ml else float(np.trace(Ainv[k] @ ((Gz * (f[k] ** 2 * D[gen])) @ Gz.T))))
                                 for k in range(2)])
        score = np.empty(6)
        u = []  # coordinates of (T V_i Tᵀ) P* y*, per block k: u[i][k] (M,)
        for i, (gen, Ei) in enumerate(_DERIV):
            Mi = W @ Ei @ W.T
            quad = sum(Mi[k, l] * float(np.sum(pi[k] * pi[l] * D[gen])) for k in range(2) for l in range(2))
            score[i] = -0.5 * float(Mi[0, 0] * trP[gen][0] + Mi[1, 1] * trP[gen][1]) + 0.5 * quad
            u.append([D[gen] * (Mi[k, 0] * pi[0] + Mi[k, 1] * pi[1]) for k in range(2)])
        AI = np.empty((6, 6))
        for i in range(6):
            for j in range(i, 6):
                v = 0.0
                for k in range(2):
                    zi = Gz @ (f[k] * u[i][k])
                    zj = Gz @ (f[k] * u[j][k])
                    v += float(np.sum(f[k] * u[i][k] * u[j][k])) - float(zi @ Ainv[k] @ zj)
                AI[i, j] = AI[j, i] = 0.5 * v
        self.score, self.AI = score, AI

    def fixed_effects(self, c_report: int):
        """(B (c_report, 2), SE (c_report, 2)) of the fixed effects of y_a and y_b."""
        Winv = np.linalg.inv(self.W)
        Bs = np.stack(self.beta, axis=1)  # (c, 2) in the decoupled basis
        B = Bs @ Winv.T  # β_a = Σ_k Winv[a, k] β*_k
        var = np.stack([sum(Winv[a, k] ** 2 * np.diag(self.Ainv[k]) for k in range(2)) for a in range(2)], axis=1)
        return B[:c_report], np.sqrt(var[:c_report])


class _Stacked:
    """A pair with all its n_a + n_b observations (``samples="union"``): dense bivariate REML.

    y = [y_a over its observed samples; y_b over its], X = diag(Z_a, Z_b), and
    ``V = [[σ²_g,a K_aa + σ²_e,a I, cov_g K_ab + cov_e I_ab], [·, σ²_g,b K_bb + σ²_e,b I]]`` with
    ``I_ab`` the incidence of samples observed for both. Every evaluation factors the
    (n_a + n_b)² matrix V: O((n_a + n_b)³) time and a few (n_a + n_b)² doubles of memory.
    """

    def __init__(self, K: np.ndarray, Y: np.ndarray, Z: np.ndarray):
        oa, ob = ~np.isnan(Y[:, 0]), ~np.isnan(Y[:, 1])
        ia, ib = np.flatnonzero(oa), np.flatnonzero(ob)
        self.na, self.nb = na, nb = ia.size, ib.size
        c = Z.shape[1]
        self.y = np.concatenate([Y[ia, 0], Y[ib, 1]])
        self.X = np.zeros((na + nb, 2 * c))
        self.X[:na, :c], self.X[na:, c:] = Z[ia], Z[ib]
        self.Kaa, self.Kbb, self.Kab = K[np.ix_(ia, ia)], K[np.ix_(ib, ib)], K[np.ix_(ia, ib)]
        self.Iab = (ia[:, None] == ib[None, :]).astype(np.float64)
        self.n, self.c = na + nb, 2 * c
        self.n_indicators = 0

    def _apply(self, i: int, v: np.ndarray) -> np.ndarray:
        """(∂V/∂θ_i) v."""
        na = self.na
        va, vb = v[:na], v[na:]
        z = np.zeros_like(v)
        if i == 0:
            z[:na] = self.Kaa @ va
        elif i == 1:
            z[na:] = self.Kbb @ vb
        elif i == 2:
            z[:na], z[na:] = self.Kab @ vb, self.Kab.T @ va
        elif i == 3:
            z[:na] = va
        elif i == 4:
            z[na:] = vb
        else:
            z[:na], z[na:] = self.Iab @ vb, self.Iab.T @ va
        return z

    def evaluate(self, theta):
        from scipy.linalg import cho_factor, cho_solve

        ga, gb, gab, ea, eb, eab = theta
        na = self.na
        V = np.empty((self.n, self.n))
        V[:na, :na] = ga * self.Kaa
        V[:na, :na][np.diag_indices(na)] += ea
        V[na:, na:] = gb * self.Kbb
        V[na:, na:][np.diag_indices(self.nb)] += eb
        V[:na, na:] = gab * self.Kab + eab * self.Iab
        V[na:, :na] = V[:na, na:].T
        ev = _StackedEvaluation()
        try:
            cf = cho_factor(V, lower=True)
        except np.linalg.LinAlgError:
            return ev
        Vi_X = cho_solve(cf, self.X)
        A = self.X.T @ Vi_X
        try:
            CA = np.linalg.cholesky(A)
        except np.linalg.LinAlgError:
            return ev
        Ai = np.linalg.inv(A)
        Vi_y = cho_solve(cf, self.y)
        beta = Ai @ (self.X.T @ Vi_y)
        Py = Vi_y - Vi_X @ beta
        logdetV = 2.0 * float(np.log(np.diag(cf[0])).sum())
        ev.loglik = -0.5 * ((self.n - self.c) * LOG2PI + logdetV + 2.0 * float(np.log(np.diag(CA)).sum())
                            + float(self.y @ Py))
        ev.ok = bool(np.isfinite(ev.loglik))
        P = cho_solve(cf, np.eye(self.n)) - Vi_X @ Ai @ Vi_X.T
        Paa, Pbb, Pab = P[:na, :na], P[na:, na:], P[:na, na:]
        tr = [float(np.sum(Paa * self.Kaa)), float(np.sum(Pbb * self.Kbb)), 2.0 * float(np.sum(Pab * self.Kab)),
              float(np.trace(Paa)), float(np.trace(Pbb)), 2.0 * float(np.sum(Pab * self.Iab))]
        u = [self._apply(i, Py) for i in range(6)]
        ev.score = np.array([0.5 * (float(Py @ u[i]) - tr[i]) for i in range(6)])
        Pu = [P @ ui for ui in u]
        ev.AI = np.array([[0.5 * float(u[i] @ Pu[j]) for j in range(6)] for i in range(6)])
        ev.AI = 0.5 * (ev.AI + ev.AI.T)
        ev.beta, ev.Ainv = beta, Ai
        return ev


class _StackedEvaluation:
    ok = False
    loglik = -np.inf

    def fixed_effects(self, c_report: int):
        c = self.beta.size // 2
        se = np.sqrt(np.diag(self.Ainv))
        return (np.column_stack([self.beta[:c], self.beta[c:]])[:c_report],
                np.column_stack([se[:c], se[c:]])[:c_report])


def _evaluate(m, theta, derivatives: bool = True, ml: bool = False):
    """ℓ_R (score, AI) at θ from a :class:`PairMeasure`, or from a dense :class:`_Stacked` pair."""
    if isinstance(m, PairMeasure):
        return _Evaluation(m, theta, derivatives=derivatives, ml=ml)
    return m.evaluate(theta)


def pair_loglik(measure: PairMeasure, G0, E0, ml: bool = False) -> float:
    """The REML log-likelihood (Harville's form without log det(XᵀX), X = I₂ ⊗ Z) of the pair at
    (G₀, E₀), or with ``ml=True`` the ML log-likelihood with the fixed effects profiled out, from
    the measure (−inf where V is not positive definite)."""
    G0, E0 = np.asarray(G0, float), np.asarray(E0, float)
    if ml and measure.n_indicators:
        raise ValueError("the ML log-likelihood needs a measure without indicator columns")
    theta = np.array([G0[0, 0], G0[1, 1], G0[0, 1], E0[0, 0], E0[1, 1], E0[0, 1]])
    return _Evaluation(measure, theta, derivatives=False, ml=ml).loglik


def pair_score_ai(measure: PairMeasure, G0, E0) -> tuple[np.ndarray, np.ndarray]:
    """(score, AI matrix) of ℓ_R at (G₀, E₀) in θ = :data:`PARAMS`:
    ``score_i = −½ tr(P V_i) + ½ yᵀP V_i P y``, ``AI_ij = ½ yᵀ P V_i P V_j P y``."""
    G0, E0 = np.asarray(G0, float), np.asarray(E0, float)
    ev = _Evaluation(measure, np.array([G0[0, 0], G0[1, 1], G0[0, 1], E0[0, 0], E0[1, 1], E0[0, 1]]))
    if not ev.ok:
        raise ValueError("V is not positive definite at these (G0, E0)")
    return ev.score, ev.AI


# ---------------------------------------------------------------------------------------------
# maximisation


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
            evn = _evaluate(m, tn, ml=model.ml)
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
        f = 1.0 / (h * lam + 1.0 - h)
        A = (Gz * f) @ Gz.T
        bk = np.linalg.solve(A, Gz @ (f * y))
        r = y - Gz.T @ bk
        R = float(np.sum(f * r * r))
        L = float(m.logdet(np.array([h]))[0][0])
        return 0.5 * ((m.n - c) * math.log(R / (m.n - c)) + L + np.linalg.slogdet(A)[1]), R / (m.n - c)

    grid = np.linspace(0.0, hmax, 41)
    vals = np.array([negll(h)[0] for h in grid])
    i = int(np.argmin(vals))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    res = minimize_scalar(lambda h: negll(h)[0], bounds=(lo, hi), method="bounded", options={"xatol": 1e-13})
    h = float(res.x) if res.fun <= vals[i] else float(grid[i])
    s2 = negll(h)[1]
    return h, h * s2, (1.0 - h) * s2


def _residual_gram(m: PairMeasure) -> np.ndarray:
    """The 2 x 2 Gram matrix of y_a, y_b after their OLS fit on Z (f ≡ 1)."""
    c = m.c
    S = m.G @ m.G.T
    Szz, Szy, Syy = S[:c, :c], S[:c, c:], S[c:, c:]
    return Syy - Szy.T @ np.linalg.solve(Szz, Szy)


# ---------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class BivariateFit:
    """Bivariate REML estimates of one pair of phenotypes (docs/math.md, "Bivariate REML").

    Variances and covariances are on the scale of K (GCTA's V(G)_tr1 ...); ``h2_*`` = σ²_g / Vp;
    ``rg`` = cov_g / √(σ²_g,a σ²_g,b), ``re`` likewise for E₀, ``rp`` the phenotypic correlation
    (cov_g + cov_e) / √(Vp_a Vp_b). SEs from the inverse AI matrix at the estimate, delta method
    for ratios. ``lrt_rg0`` = 2 (ℓ − ℓ|cov_g = 0), p-value from χ²₁; ``lrt_rg1`` = 2 (ℓ − ℓ|r_g = ±1,
    the sign of the estimate), p-value from ½χ²₀ + ½χ²₁ (|r_g| = 1 is the boundary of the
    parameter space; GCTA's ``--reml-bivar-lrt-rg``).
    """

    table_columns = ("trait_a", "trait_b", "n", "n_left_out", "sg_a", "sg_a_se", "sg_b", "sg_b_se", "cov_g",
                     "cov_g_se", "ve_a", "ve_a_se", "ve_b", "ve_b_se", "cov_e", "cov_e_se", "h2_a", "h2_a_se",
                     "h2_b", "h2_b_se", "rg", "rg_se", "re", "re_se", "rp", "rp_se", "logL", "logL_rg0",
                     "lrt_rg0", "p_rg0", "logL_rg1", "lrt_rg1", "p_rg1", "logL_ml", "boundary", "converged",
                     "iterations")

    trait_a: str
    trait_b: str
    n: int
    n_left_out: int
    sg_a: float
    sg_b: float
    cov_g: float
    ve_a: float
    ve_b: float
    cov_e: float
    #: covariance of the six estimates (PARAMS order), inverse AI matrix
    covariance: tuple
    h2_a: float
    h2_a_se: float
    h2_b: float
    h2_b_se: float
    rg: float
    rg_se: float
    re: float
    re_se: float
    rp: float
    rp_se: float
    logL: float
    logL_rg0: float
    lrt_rg0: float
    p_rg0: float
    logL_rg1: float
    lrt_rg1: float
    p_rg1: float
    boundary: str  # "", "rank-1 G0" (|r_g| = 1 or a zero genetic variance at the constraint)
    #: the ML log-likelihood at its maximum (same constraint) and the ML estimates (PARAMS order)
    logL_ml: float
    ml_estimates: tuple
    converged: bool
    iterations: int
    constrained: bool
    fixed_effects: tuple  # ((name, beta_a, se_a, beta_b, se_b), ...)
    note: str = ""
    #: stacked observations (GCTA's n): 2n on the common samples, n_a + n_b with samples="union"
    n_observations: int = 0

    def _se(self, i: int) -> float:
        v = self.covariance[i][i]
        return float(math.sqrt(v)) if v is not None and np.isfinite(v) and v >= 0 else float("nan")

    @property
    def sg_a_se(self): return self._se(0)  # noqa: E704
    @property
    def sg_b_se(self): return self._se(1)  # noqa: E704
    @property
    def cov_g_se(self): return self._se(2)  # noqa: E704
    @property
    def ve_a_se(self): return self._se(3)  # noqa: E704
    @property
    def ve_b_se(self): return self._se(4)  # noqa: E704
    @property
    def cov_e_se(self): return self._se(5)  # noqa: E704

    @property
    def G0(self) -> np.ndarray:
        return np.array([[self.sg_a, self.cov_g], [self.cov_g, self.sg_b]])

    @property
    def E0(self) -> np.ndarray:
        return np.array([[self.ve_a, self.cov_e], [self.cov_e, self.ve_b]])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["covariance"] = [[_json(v) for v in row] for row in self.covariance]
        d["fixed_effects"] = [[_json(v) for v in fe] for fe in self.fixed_effects]
        d["ml_estimates"] = [_json(v) for v in self.ml_estimates]
        return {k: (_json(v) if isinstance(v, float) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "BivariateFit":
        d = dict(d)
        d["covariance"] = tuple(tuple(float("nan") if v is None else v for v in row) for row in d["covariance"])
        d["fixed_effects"] = tuple(tuple(float("nan") if v is None else v for v in fe) for fe in d["fixed_effects"])
        d["ml_estimates"] = tuple(float("nan") if v is None else v for v in d["ml_estimates"])
        return cls(**{k: (float("nan") if v is None else v) for k, v in d.items()})

    def row(self) -> list:
        return [getattr(self, c) for c in self.table_columns]

    def hsq_text(self) -> str:
        """GCTA's ``.hsq`` of ``--reml-bivar`` for this pair (its rows, order and 6 decimals), with
        both LRTs (GCTA writes the one of ``--reml-bivar-lrt-rg``).

        logL in GCTA's convention: bigmm's ``logL`` plus ``(N − 2c)/2 · log 2π`` with N = 2n
        stacked observations (GCTA leaves out the constant). GCTA prints ½ P(χ²₁ > LRT) for any
        fixed r_g ("one-tailed test"); here r_g = 0 is interior and its p-value is P(χ²₁ > LRT).
        """
        c = len(self.fixed_effects)
        n_obs = self.n_observations or 2 * self.n
        shift = 0.5 * (n_obs - 2 * c) * LOG2PI
        vp_a, vp_b = self.sg_a + self.ve_a, self.sg_b + self.ve_b
        cov = np.array(self.covariance, dtype=float)
        se_vp_a = _delta_se(np.array([1, 0, 0, 1, 0, 0.0]), cov)
        se_vp_b = _delta_se(np.array([0, 1, 0, 0, 1, 0.0]), cov)

        def f(v):
            return "NA" if v is None or not np.isfinite(v) else f"{v:.6f}"

        rows = [("Source", "Variance", "SE")]
        for name, i in (("V(G)_tr1", 0), ("V(G)_tr2", 1), ("C(G)_tr12", 2), ("V(e)_tr1", 3), ("V(e)_tr2", 4),
                        ("C(e)_tr12", 5)):
            rows.append((name, f(getattr(self, PARAMS[i])), f(self._se(i))))
        rows += [("Vp_tr1", f(vp_a), f(se_vp_a)), ("Vp_tr2", f(vp_b), f(se_vp_b)),
                 ("V(G)/Vp_tr1", f(self.h2_a), f(self.h2_a_se)), ("V(G)/Vp_tr2", f(self.h2_b), f(self.h2_b_se)),
                 ("rG", f(self.rg), f(self.rg_se)),
                 ("logL", f"{self.logL + shift:.3f}" if np.isfinite(self.logL) else "NA")]
        for fixed, ll0, lrt, p, tail in ((0, self.logL_rg0, self.lrt_rg0, self.p_rg0, "two-tailed test"),
                                         (1 if not self.rg < 0 else -1, self.logL_rg1, self.lrt_rg1, self.p_rg1,
                                          "one-tailed test")):
            if not np.isfinite(lrt):
                continue
            rows += [("logL0", f"{ll0 + shift:.3f} (when rG fixed at {fixed})"), ("LRT", f"{lrt:.3f}"), ("df", "1"),
                     ("Pval", f"{p:.4e} ({tail})")]
        rows.append(("n", str(n_obs)))
        text = "\n".join("\t".join(r) for r in rows) + "\n"
        return text + (f"# bigmm: {self.trait_a} (tr1) and {self.trait_b} (tr2) on {self.n} samples; "
                       "logL in GCTA's convention (bigmm's logL + (N - 2c)/2 log(2 pi), N = n below, the "
                       "stacked observations)\n")


def _json(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def _delta_se(grad, cov) -> float:
    with np.errstate(invalid="ignore"):
        v = float(grad @ cov @ grad)
    return math.sqrt(v) if np.isfinite(v) and v >= 0 else float("nan")


@dataclass(frozen=True, repr=False)
class BivariateResult:
    """Bivariate REML fits of pairs of phenotypes (:func:`fit_bivariate`)."""

    fits: tuple
    method: str
    notes: dict = field(default_factory=dict)

    def __getitem__(self, pair) -> BivariateFit:
        a, b = pair
        for f in self.fits:
            if (f.trait_a, f.trait_b) == (a, b):
                return f
        raise KeyError(pair)

    def to_pandas(self):
        """One row per pair: :attr:`BivariateFit.table_columns`, then ``beta_<effect>_a``,
        ``se_<effect>_a``, ``beta_<effect>_b``, ``se_<effect>_b`` per fixed effect."""
        pd = _pandas()
        cols = list(BivariateFit.table_columns)
        fe_names = [fe[0] for fe in self.fits[0].fixed_effects] if self.fits else []
        for nm in fe_names:
            cols += [f"beta_{nm}_a", f"se_{nm}_a", f"beta_{nm}_b", f"se_{nm}_b"]
        rows = []
        for f in self.fits:
            r = f.row()
            for fe in f.fixed_effects:
                r += list(fe[1:])
            rows.append(r)
        return pd.DataFrame(rows, columns=cols)

    def to_dict(self) -> dict:
        return {"method": self.method, "notes": self.notes, "pairs": [f.to_dict() for f in self.fits]}

    @classmethod
    def from_dict(cls, d: dict) -> "BivariateResult":
        return cls(fits=tuple(BivariateFit.from_dict(p) for p in d["pairs"]), method=d["method"],
                   notes=d.get("notes", {}))

    def __repr__(self) -> str:
        lines = [f"BivariateResult({len(self.fits)} pair{'s' if len(self.fits) != 1 else ''}; {self.method})"]
        for f in self.fits[:10]:
            lines.append(f"  {f.trait_a} x {f.trait_b}: n={f.n}, rg={_num(f.rg)} (SE {_num(f.rg_se)}), "
                         f"h2={_num(f.h2_a)}, {_num(f.h2_b)}, p(rg=0)={_num(f.p_rg0, '{:.3g}')}")
        if len(self.fits) > 10:
            lines.append(f"  ... {len(self.fits) - 10} more (to_pandas() lists all)")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# one pair


def _ratios(theta: np.ndarray, cov: np.ndarray) -> dict:
    ga, gb, gab, ea, eb, eab = theta
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for key, (g, e, ig, ie) in {"a": (ga, ea, 0, 3), "b": (gb, eb, 1, 4)}.items():
            vp = g + e
            grad = np.zeros(6)
            grad[ig], grad[ie] = e / vp ** 2, -g / vp ** 2
            out[f"h2_{key}"], out[f"h2_{key}_se"] = float(g / vp), _delta_se(grad, cov)
        for key, (x, y, xy, ix, iy, ixy) in {"rg": (ga, gb, gab, 0, 1, 2), "re": (ea, eb, eab, 3, 4, 5)}.items():
            if x > 0 and y > 0:
                r = xy / math.sqrt(x * y)
                grad = np.zeros(6)
                grad[ixy], grad[ix], grad[iy] = 1.0 / math.sqrt(x * y), -0.5 * r / x, -0.5 * r / y
                out[key], out[f"{key}_se"] = float(r), _delta_se(grad, cov)
            else:
                out[key], out[f"{key}_se"] = float("nan"), float("nan")
        va, vb = ga + ea, gb + eb
        rp = (gab + eab) / math.sqrt(va * vb) if va > 0 and vb > 0 else float("nan")
        grad = np.zeros(6)
        if np.isfinite(rp):
            grad[2] = grad[5] = 1.0 / math.sqrt(va * vb)
            grad[0] = grad[3] = -0.5 * rp / va
            grad[1] = grad[4] = -0.5 * rp / vb
        out["rp"], out["rp_se"] = float(rp), _delta_se(grad, cov) if np.isfinite(rp) else float("nan")
    return out


def fit_pair(measure: PairMeasure, *, names: tuple[str, str] = ("a", "b"), covariate_names=None, lrt: bool = True,
             constrain: bool = True, ml: bool = True, tol: float = 1e-10, max_iter: int = 200,
             n_left_out: int = 0, offset: np.ndarray | None = None) -> BivariateFit:
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
    ha, ga, ea = _univariate(m, 0)
    hb, gb, eb = _univariate(m, 1)
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
    the two were left out), rotated again for those two columns. Each pair's fit then costs
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
    fits = []
    rotated_again = 0
    for a, b in _pairs(names, pairs):
        (ga, ja), (gb, jb) = where[a], where[b]
        obs_a, obs_b = ~np.isnan(Yarr[:, a]), ~np.isnan(Yarr[:, b])
        left_out = int(np.sum(obs_a ^ obs_b))
        if ga == gb:
            rot, ia, ib = design.groups[ga], ja, jb
        else:
            both = obs_a & obs_b
            Yp = Yarr[:, [a, b]].copy()
            Yp[~both] = np.nan
            try:
                sub = rotate(spectrum, Yp, Zarr, phenotype_names=[names[a], names[b]],
                             covariate_names=design.covariate_names, missing=missing)
            except InputError as e:
                raise InputError(f"pair {names[a]!r} x {names[b]!r} on the {int(both.sum())} samples observed for "
                                 f"both: {e}") from None
            rot, ia, ib = sub.groups[0], 0, 1
            rotated_again += 1
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
        fits.append(fit)
    methods = sorted({g.method for g in design.groups})
    if samples == "union":
        methods.append("union (dense stacked REML for pairs with different missing values)")
    return BivariateResult(fits=tuple(fits), method=f"spectrum {design.spectrum_method}",
                           notes={"missing_methods": methods, "pairs_rotated_again": rotated_again,
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
