"""Bivariate REML: the likelihood of one pair of phenotypes from what K contributes to it
(docs/math.md, "Bivariate REML (genetic correlations)"); the fit is :mod:`bigmm.bivariate`.

A :class:`PairMeasure` holds the nodes and weights of a discrete measure with
``[Z, y_a, y_b]ᵀ f(K) [Z, y_a, y_b] = G diag(f(nodes)) Gᵀ`` and the log determinant
``log det(h K + (1 − h) I)``; :func:`spectral_measure` builds it from a spectrum's rotation.
With ``E₀ = L Lᵀ`` and ``L⁻¹ G₀ L⁻ᵀ = Q diag(d) Qᵀ``, ``W = Qᵀ L⁻¹`` decouples the pair into two
univariate problems, and :class:`_Evaluation` gives ℓ_R (or the ML log-likelihood), its score
and its AI matrix in θ = :data:`PARAMS` from the measure alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

LOG2PI = math.log(2.0 * math.pi)
#: the six parameters, in GCTA's order (V(G)_tr1, V(G)_tr2, C(G)_tr12, V(e)_tr1, V(e)_tr2, C(e)_tr12)
PARAMS = ("sg_a", "sg_b", "cov_g", "ve_a", "ve_b", "cov_e")
#: d V / d θ_i as (genetic?, 2 x 2 pattern E_i)
_DERIV = [(True, np.array([[1.0, 0.0], [0.0, 0.0]])), (True, np.array([[0.0, 0.0], [0.0, 1.0]])),
          (True, np.array([[0.0, 1.0], [1.0, 0.0]])), (False, np.array([[1.0, 0.0], [0.0, 0.0]])),
          (False, np.array([[0.0, 0.0], [0.0, 1.0]])), (False, np.array([[0.0, 1.0], [1.0, 0.0]]))]


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
