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
#: the same, stacked: kind of each parameter (0 genetic, 1 residual) and its pattern (6, 2, 2)
_KIND = np.array([0 if g else 1 for g, _ in _DERIV])
_PATTERN = np.stack([e for _, e in _DERIV])


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
    """(W, d): ``W E₀ Wᵀ = I``, ``W G₀ Wᵀ = diag(d)``; None if E₀ is not positive definite.

    Closed forms for 2 x 2 matrices (Cholesky ``E₀ = L Lᵀ``, then the Jacobi rotation that
    diagonalises ``L⁻¹ G₀ L⁻ᵀ``): a LAPACK call per factor costs more than the arithmetic here,
    and this runs once per likelihood evaluation.
    """
    e11, e21, e22 = float(E0[0, 0]), float(E0[1, 0]), float(E0[1, 1])
    if not e11 > 0.0:
        return None
    l11 = math.sqrt(e11)
    l21 = e21 / l11
    s22 = e22 - l21 * l21
    if not s22 > 0.0 or not math.isfinite(s22):
        return None
    l22 = math.sqrt(s22)
    Li = np.array([[1.0 / l11, 0.0], [-l21 / (l11 * l22), 1.0 / l22]])
    S = Li @ G0 @ Li.T
    a, b, c = float(S[0, 0]), 0.5 * float(S[0, 1] + S[1, 0]), float(S[1, 1])
    # eigenvalues in ascending order, as numpy.linalg.eigh returns them, and their unit eigenvectors
    phi = 0.5 * math.atan2(2.0 * b, a - c)  # rotation to the larger eigenvalue's eigenvector
    cs, sn = math.cos(phi), math.sin(phi)
    mid, rad = 0.5 * (a + c), math.hypot(0.5 * (a - c), b)
    d = np.array([mid - rad, mid + rad])
    Q = np.array([[-sn, cs], [cs, sn]])  # columns: eigenvectors of d[0], d[1]
    return Q.T @ Li, d


class _Evaluation:
    """ℓ_R at one (G₀, E₀) and, on request, its score and AI matrix in θ = :data:`PARAMS`.

    ``ml=True``: the ML log-likelihood ``−½ [2n log 2π + log det V + yᵀPy]`` instead (the fixed
    effects profiled out: yᵀPy is the GLS residual sum), with its score ``−½ tr(V⁻¹ ∂V/∂θ_i) +
    ½ yᵀP (∂V/∂θ_i) P y`` and the same AI matrix as the curvature of the iteration (measures
    without indicator columns only).

    Both decoupled problems k = 1, 2 and all six parameters are evaluated together, as stacked
    arrays over the measure's nodes (a few array operations of size 2 x 6 x M per evaluation).
    ``derivatives=None`` defers the score and AI matrix until :attr:`score` or :attr:`AI` is
    first read (the line search of the maximisation reads them only for the step it accepts).
    """

    def __init__(self, m: PairMeasure, theta: np.ndarray, derivatives: bool | None = True, ml: bool = False):
        self.theta = theta = np.asarray(theta, dtype=np.float64)
        self.G0 = np.array([[theta[0], theta[2]], [theta[2], theta[1]]])
        self.E0 = np.array([[theta[3], theta[5]], [theta[5], theta[4]]])
        self.ok = False
        self.loglik = -np.inf
        self._m, self._ml, self._derived = m, ml, False
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
        q = W @ m.G[c:]  # (2, M)
        A = np.einsum("cm,km,dm->kcd", Gz, f, Gz)  # (2, c, c)
        try:
            C = np.linalg.cholesky(A)
        except np.linalg.LinAlgError:
            return
        fq = f * q
        b = fq @ Gz.T  # (2, c)
        Ai = np.linalg.inv(A)
        Ai = 0.5 * (Ai + np.swapaxes(Ai, 1, 2))
        bk = np.linalg.solve(A, b[:, :, None])[:, :, 0]  # (2, c)
        r = q - bk @ Gz  # (2, M)
        pi = f * r  # coordinates of P_k y*_k
        yPy = np.sum(pi * r, axis=1)
        nc = n if ml else n - c  # error contrasts (REML) or observations (ML) per transformed phenotype
        logdetV = n * np.log1p(d) + L
        logdetA = 0.0 if ml else 2.0 * np.log(np.diagonal(C, axis1=1, axis2=2)).sum(axis=1)
        ll = -0.5 * nc * float(np.log(np.linalg.det(self.E0))) \
            - 0.5 * float(np.sum(nc * LOG2PI + logdetV + logdetA + yPy))
        if not np.isfinite(ll):
            return
        self.ok = True
        self.loglik = ll
        self.W, self.d, self.f, self.Ainv, self.beta = W, d, f, list(Ai), list(bk)
        self.yPy = None
        self._L1, self._pi = L1, pi
        if derivatives:
            self._derivatives()

    @property
    def score(self) -> np.ndarray:
        """∂ℓ/∂θ (6,), computed on first use."""
        if not self._derived:
            self._derivatives()
        return self._score

    @property
    def AI(self) -> np.ndarray:
        """The average-information matrix (6, 6), computed on first use."""
        if not self._derived:
            self._derivatives()
        return self._AI

    def _derivatives(self):
        if not self.ok:
            raise AttributeError("no score or AI matrix: V is not positive definite at this θ")
        m, ml = self._m, self._ml
        n, c = m.n, m.c
        lam, Gz = m.nodes, m.G[:c]
        W, d, f, pi = self.W, self.d, self.f, self._pi
        Ai = np.stack(self.Ainv)
        # traces tr(V_k⁻¹ K) = n/(1 + d) + L1(h)/(1 + d)², tr(V_k⁻¹) = n − d tr(V_k⁻¹ K)
        trK = n / (1.0 + d) + self._L1 / (1.0 + d) ** 2
        trI = n - d * trK
        D = np.stack([lam, np.ones_like(lam)])  # (genetic, residual) weights of the nodes
        if ml:
            trP = np.stack([trK, trI])  # (2 kinds, 2 blocks)
        else:
            S = np.einsum("cm,gkm,dm->gkcd", Gz, (f * f)[None] * D[:, None], Gz)  # (2, 2, c, c)
            trP = np.stack([trK, trI]) - np.einsum("kcd,gkcd->gk", Ai, S)
        gen = _KIND
        Mi = np.einsum("ka,iab,lb->ikl", W, _PATTERN, W)  # W E_i Wᵀ, (6, 2, 2)
        Pg = np.einsum("km,gm,lm->gkl", pi, D, pi)  # Σ pi_k pi_l D_gen, (2, 2, 2)
        score = -0.5 * (Mi[:, 0, 0] * trP[gen, 0] + Mi[:, 1, 1] * trP[gen, 1]) \
            + 0.5 * np.einsum("ikl,ikl->i", Mi, Pg[gen])
        # coordinates of (T V_i Tᵀ) P* y*, per block k: U[i, k] (M,)
        U = D[gen][:, None, :] * np.einsum("ikl,lm->ikm", Mi, pi)  # (6, 2, M)
        fU = f[None] * U
        Zk = np.einsum("ikm,cm->kic", fU, Gz)  # (2, 6, c)
        AI = 0.5 * (np.einsum("ikm,jkm->ij", fU, U) - np.einsum("kic,kcd,kjd->ij", Zk, Ai, Zk))
        self._score, self._AI = score, 0.5 * (AI + AI.T)
        self._derived = True

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
