"""Bivariate REML of a pair on all its n_a + n_b observations (``samples="union"`` of
:func:`bigmm.fit_bivariate`): the dense stacked model, its likelihood, score and AI matrix.
"""

from __future__ import annotations

import numpy as np

from .bivariate_likelihood import LOG2PI


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
