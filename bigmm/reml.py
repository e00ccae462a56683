"""REML for ``y = Z ω + g + e`` on a spectrum of the GRM (docs/math.md, "REML on a spectrum").

With ``K = U diag(s) Uᵀ`` and ``V = σ² (h² K + (1 − h²) I)`` the eigenvalues of
``V / σ²`` are ``d_i = h² s_i + 1 − h²``. After one rotation ``ỹ = Uᵀy``,
``Z̃ = UᵀZ`` each evaluation of the σ²-profiled restricted log-likelihood

    ℓ_R(h²) = −½ [(n − c) log(2π σ̂²) + Σ log d_i + log det A + (n − c)]

(``A = Z̃ᵀ D⁻¹ Z̃``, ``σ̂² = R / (n − c)``, Harville's form without
``log det ZᵀZ``) costs O(k c²). A reduced spectrum (k < n) adds one tail term
with eigenvalue ``λ̄`` and multiplicity ``n − k`` built from totals, never from
the discarded eigenvectors.

ℓ_R is maximised over h² ∈ [0, 1] by a grid (all phenotypes at once), then
bisection of the sign change of the analytic score dℓ_R/dh² in the best grid
step, to |Δh²| < 1e-14; this finds the global optimum of a possibly multimodal
profile and the boundary solutions h² = 0 and h² = 1.

Missing phenotype values: a missing ``y_j`` is set to 0 and an
indicator column ``e_j`` added to Z; the REML likelihood, estimates and
information then equal those of the observed samples alone. In the rotated
basis the indicator's column is row j of U. When many values are missing an
exact spectrum of the observed subset is cheaper; ``missing_method`` in the
output says which ran.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
from scipy.special import chdtrc, ndtri  # chi2.sf, norm.ppf without importing scipy.stats (0.8 s at start-up)
from scipy.linalg import solve_triangular

from .errors import InputError
# the result types, their table and the SE rule live in bigmm.results; the names stay importable from here
from .results import (LOGL_CONVENTION, MATRIX_FREE_COLUMNS, TABLE_COLUMNS, FixedEffect,
                      PhenotypeFit, RemlResult, _delta_se, _num, design_names, _pandas, _safe_inv, fits_repr, fits_repr_html,
                      fits_table_rows, fits_to_pandas, information_covariance)
from .spectrum import Spectrum

LOG2PI = math.log(2.0 * math.pi)
GRID_SIZE = 101
#: h² upper bound when K is singular (V would be singular at h² = 1)
SINGULAR_H2_MAX = 1.0 - 1e-6
#: phenotypes whose REML profile over the h² grid is kept for the report
PROFILES_KEPT = 20


class _Rotated:
    """The rotated data of one group of phenotypes sharing a design (and missingness).

    ``n`` counts all rows of the model (observed + indicator rows); ``n_ind``
    indicator columns sit after the ``c_user`` user columns of Z̃.
    """

    ARRAYS = ("s", "Zt", "Yt", "ZZt", "Zyt", "yyt", "ritz_cross", "shift", "obs", "Yo", "scale")
    META = ("n", "n_tail", "lam", "c_user", "n_ind", "names", "cols", "method", "hmax",
            "mean_diag_K", "mean_K", "tail_excess", "spectrum_method")

    def __init__(self, s, Zt, Yt, n, n_tail, lam, ZZt, Zyt, yyt, c_user, n_ind, *, names=(),
                 cols=(), method="none", hmax=1.0, mean_diag_K=float("nan"), mean_K=float("nan"),
                 tail_excess=0.0, ritz_cross=None, spectrum_method="exact", shift=None, obs=None, Yo=None,
                 scale=None):
        self.s = s
        self.Zt = Zt
        self.Yt = Yt
        self.n = int(n)
        self.n_tail = int(n_tail)
        self.lam = float(lam)
        self.ZZt = ZZt
        self.Zyt = Zyt
        self.yyt = yyt
        self.c = Zt.shape[1]
        self.c_user = int(c_user)
        self.n_ind = int(n_ind)
        self.names = list(names)
        self.cols = [int(c) for c in cols]
        self.method = method
        self.hmax = float(hmax)
        self.mean_diag_K = float(mean_diag_K)
        self.mean_K = float(mean_K)
        #: tr K₂² − n_t λ̄² of the tail (second moment the reduced model leaves out)
        self.tail_excess = float(tail_excess)
        self.ritz_cross = ritz_cross
        self.spectrum_method = spectrum_method
        self.n_missing = int(n_ind)
        #: which of the design's samples have values (bool, one per sample of the spectrum
        #: the design was rotated on) and their phenotypes less the OLS fit (n_obs x m): what
        #: predictions need besides the spectrum (saved with the rest)
        self.obs = obs
        self.Yo = Yo
        #: the residual SD of each phenotype after its OLS fit: Yt and Yo are divided by it, so the
        #: fit runs on a unit scale whatever the units (a trait of size 1e-200 no longer underflows)
        self.scale = scale
        #: the OLS coefficients removed from Y before rotation (c_user x m), added back to ω̂
        self.shift = shift

    def to_dict(self) -> tuple[dict, dict]:
        """(arrays, metadata) for storage."""
        arrays = {k: getattr(self, k) for k in self.ARRAYS if getattr(self, k) is not None}
        return arrays, {k: getattr(self, k) for k in self.META}

    @classmethod
    def from_dict(cls, arrays: dict, meta: dict) -> "_Rotated":
        a = {k: arrays.get(k) for k in cls.ARRAYS}
        m = dict(meta)
        return cls(a["s"], a["Zt"], a["Yt"], m.pop("n"), m.pop("n_tail"), m.pop("lam"), a["ZZt"],
                   a["Zyt"], a["yyt"], m.pop("c_user"), m.pop("n_ind"), ritz_cross=a["ritz_cross"],
                   shift=a["shift"], obs=None if a["obs"] is None else a["obs"].astype(bool), Yo=a["Yo"],
                   scale=a["scale"], **m)

    def gls(self, h: float, j: int) -> np.ndarray:
        """ω̂ of phenotype j at h² = h, all columns of Z̃ (user and indicator), in the rotated basis."""
        d = h * self.s + (1.0 - h)
        A = (self.Zt / d[:, None]).T @ self.Zt
        b = self.Zt.T @ (self.Yt[:, j] / d)
        if self.n_tail:
            dt = h * self.lam + (1.0 - h)
            A = A + self.ZZt / dt
            b = b + self.Zyt[:, j] / dt
        return np.linalg.solve(A, b)

    def _weighted(self, w: np.ndarray, wt: float):
        """Z̃ᵀWZ̃ (+tail) for weights w (k,) and tail weight wt."""
        A = (self.Zt * w[:, None]).T @ self.Zt
        if self.n_tail:
            A = A + wt * self.ZZt
        return A

    def loglik(self, h: float, cols=slice(None)):
        """(ℓ_R, ℓ_ML, σ̂²_REML, σ̂²_ML) of phenotypes ``cols`` at h² = h."""
        d = h * self.s + (1.0 - h)
        w = 1.0 / d
        logdet = float(np.log(d).sum())
        wt = 0.0
        if self.n_tail:
            dt = h * self.lam + (1.0 - h)
            wt = 1.0 / dt
            logdet += self.n_tail * math.log(dt)
        Y = self.Yt[:, cols]
        Zw = self.Zt * w[:, None]
        A = Zw.T @ self.Zt
        B = Zw.T @ Y
        yWy = np.einsum("ij,ij->j", Y * w[:, None], Y)
        if self.n_tail:
            A = A + wt * self.ZZt
            B = B + wt * self.Zyt[:, cols]
            yWy = yWy + wt * self.yyt[cols]
        # NumPy's LAPACK calls for these c x c systems: SciPy's cho_solve hands a multi-column
        # right-hand side to threaded BLAS, which stalls on a busy machine
        L = np.linalg.cholesky(A)
        sol = np.linalg.solve(A, B)
        R = self._residual_sum(Y, w, wt, sol, cols, yWy, B)
        logdetA = 2.0 * float(np.log(np.diag(L)).sum())
        nmc = self.n - self.c
        with np.errstate(divide="ignore", invalid="ignore"):
            s2 = R / nmc
            llr = -0.5 * (nmc * (LOG2PI + np.log(s2)) + logdet + logdetA + nmc)
            # ML of the observed samples: log det V_o = log det V + log det A_EE
            n_obs = self.n - self.n_ind
            logdet_o = logdet
            if self.n_ind:
                AEE = A[self.c_user:, self.c_user:]
                logdet_o += 2.0 * float(np.log(np.diag(np.linalg.cholesky(AEE))).sum())
            s2ml = R / n_obs
            llml = -0.5 * (n_obs * (LOG2PI + np.log(s2ml)) + logdet_o + n_obs)
        return llr, llml, s2, s2ml

    def _residual_sum(self, Y, w, wt, omega, cols, yWy, B):
        """R = r̃ᵀ W r̃ (+ tail) summed from the residuals r̃ = ỹ − Z̃ω̂ (k x m).

        Without a tail this avoids the cancellation of ``yᵀWy − bᵀA⁻¹b``; with one,
        the tail total ``yᵀy − ...`` is a difference anyway, which is why ``rotate``
        first removes the OLS fit of Z from y (REML and ML are invariant to it).
        """
        if self.n_tail:
            return yWy - np.einsum("ij,ij->j", B, omega)
        r = Y - self.Zt @ omega
        return np.einsum("ij,ij->j", r * w[:, None], r)

    def _batch(self, h: np.ndarray, cols: np.ndarray):
        """Per-phenotype pieces at per-phenotype h² (vectorised over B phenotypes)."""
        d = h[:, None] * self.s[None, :] + (1.0 - h)[:, None]  # (B, k)
        w = 1.0 / d
        Y = self.Yt[:, cols].T  # (B, k)
        ZtT = self.Zt.T  # (c, k)
        A = (ZtT[None, :, :] * w[:, None, :]) @ self.Zt  # (B, c, c)
        b = np.einsum("ck,bk->bc", ZtT, w * Y)
        yWy = np.einsum("bk,bk->b", w * Y, Y)
        logdet = np.log(d).sum(axis=1)
        dt = wt = None
        if self.n_tail:
            dt = h * self.lam + (1.0 - h)
            wt = 1.0 / dt
            A = A + wt[:, None, None] * self.ZZt[None]
            b = b + wt[:, None] * self.Zyt[:, cols].T
            yWy = yWy + wt * self.yyt[cols]
            logdet = logdet + self.n_tail * np.log(dt)
        return d, w, Y, A, b, yWy, logdet, dt, wt

    def loglik_batch(self, h: np.ndarray, cols: np.ndarray, which: int) -> np.ndarray:
        """ℓ_R (which=0) or ℓ_ML (which=1) of phenotypes ``cols`` at their own h² values."""
        d, w, Y, A, b, yWy, logdet, dt, wt = self._batch(h, cols)
        L = np.linalg.cholesky(A)
        omega = np.linalg.solve(A, b[:, :, None])[:, :, 0]
        if self.n_tail:
            R = yWy - np.einsum("bc,bc->b", b, omega)
        else:  # from the residuals: no cancellation (see _residual_sum)
            r = Y - omega @ self.Zt.T
            R = np.einsum("bk,bk->b", w * r, r)
        if which == 0:
            nmc = self.n - self.c
            logdetA = 2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum(axis=1)
            return -0.5 * (nmc * (LOG2PI + np.log(R / nmc)) + logdet + logdetA + nmc)
        n_obs = self.n - self.n_ind
        if self.n_ind:
            e = slice(self.c_user, None)
            LE = np.linalg.cholesky(A[:, e, e])
            logdet = logdet + 2.0 * np.log(np.diagonal(LE, axis1=1, axis2=2)).sum(axis=1)
        return -0.5 * (n_obs * (LOG2PI + np.log(R / n_obs)) + logdet + n_obs)

    def dloglik_batch(self, h: np.ndarray, cols: np.ndarray, which: int) -> np.ndarray:
        """d/dh² of ℓ_R (which=0) or ℓ_ML (which=1) at per-phenotype h².

        With W = D⁻¹, dW/dh = −(s − 1)/d²; by the envelope theorem the GLS residual
        sum R = r̃ᵀWr̃ has dR/dh = r̃ᵀ (dW/dh) r̃, so
        dℓ_R/dh = −½ [(n − c) R'/R + Σ (s − 1)/d + tr(A⁻¹ dA/dh)].
        """
        d, w, Y, A, b, yWy, logdet, dt, wt = self._batch(h, cols)
        dw = -(self.s[None, :] - 1.0) * w * w
        dlogdet = ((self.s[None, :] - 1.0) * w).sum(axis=1)
        dA = (self.Zt.T[None, :, :] * dw[:, None, :]) @ self.Zt
        omega = np.linalg.solve(A, b[:, :, None])[:, :, 0]
        r = Y - omega @ self.Zt.T  # (B, k)
        R = np.einsum("bk,bk->b", w * r, r)
        dR = np.einsum("bk,bk->b", dw * r, r)
        if self.n_tail:
            dwt = -(self.lam - 1.0) * wt * wt
            dlogdet = dlogdet + self.n_tail * (self.lam - 1.0) * wt
            dA = dA + dwt[:, None, None] * self.ZZt[None]
            Zy = self.Zyt[:, cols].T
            rr_t = self.yyt[cols] - 2.0 * np.einsum("bc,bc->b", omega, Zy) + \
                np.einsum("bc,cd,bd->b", omega, self.ZZt, omega)
            R = R + wt * rr_t
            dR = dR + dwt * rr_t
        if which == 0:
            tr = np.trace(np.linalg.solve(A, dA), axis1=1, axis2=2)
            return -0.5 * ((self.n - self.c) * dR / R + dlogdet + tr)
        if self.n_ind:
            e = slice(self.c_user, None)
            dlogdet = dlogdet + np.trace(np.linalg.solve(A[:, e, e], dA[:, e, e]), axis1=1, axis2=2)
        return -0.5 * ((self.n - self.n_ind) * dR / R + dlogdet)

    def fixed_and_information(self, j: int, h: float, sigma2: float):
        """ω̂, Cov(ω̂) and the observed and expected REML information in (σ²_g, σ²_e)."""
        sg, se = h * sigma2, (1.0 - h) * sigma2
        v = sg * self.s + se
        vt = sg * self.lam + se if self.n_tail else 1.0
        y = self.Yt[:, j]
        nt = self.n_tail
        C = np.linalg.inv(self._weighted(1.0 / v, 1.0 / vt))
        C = 0.5 * (C + C.T)
        Zy = self.Zt.T @ (y / v)
        if nt:
            Zy = Zy + self.Zyt[:, j] / vt
        omega = C @ Zy
        r = y - self.Zt @ omega
        p = r / v
        if nt:
            rr_t = float(self.yyt[j] - 2.0 * omega @ self.Zyt[:, j] + omega @ self.ZZt @ omega)
            Ztr_t = self.Zyt[:, j] - self.ZZt @ omega
        comps = {"g": (self.s, self.lam), "e": (np.ones_like(self.s), 1.0)}
        keys = ("g", "e")
        Q = {a: self._weighted(comps[a][0] / v ** 2, comps[a][1] / vt ** 2) for a in keys}
        Zp = {}
        for a in keys:
            av, at = comps[a]
            z = self.Zt.T @ (av * p / v)
            if nt:
                z = z + at / vt ** 2 * Ztr_t
            Zp[a] = z
        T = np.zeros((2, 2))
        quad = np.zeros((2, 2))
        for ia, a in enumerate(keys):
            for ib, b in enumerate(keys):
                av, at = comps[a]
                bv, bt = comps[b]
                t = float(np.sum(av * bv / v ** 2))
                t -= 2.0 * float(np.trace(C @ self._weighted(av * bv / v ** 3, at * bt / vt ** 3)))
                t += float(np.trace(C @ Q[a] @ C @ Q[b]))
                q = float(np.sum(av * bv * p ** 2 / v)) - float(Zp[a] @ C @ Zp[b])
                if nt:
                    t += nt * at * bt / vt ** 2
                    q += at * bt * rr_t / vt ** 3
                T[ia, ib] = t
                quad[ia, ib] = q
        expected = 0.5 * T
        observed = -0.5 * T + quad
        return omega, C, observed, expected


def _mean_K(spec: Spectrum, obs: np.ndarray) -> tuple[float, float]:
    """(mean of diag K, mean of all entries of K) over the samples ``obs``."""
    n_o = int(obs.sum())
    u1 = spec.U[obs].sum(axis=0)
    total = float(np.sum(spec.s * u1 ** 2))
    if spec.n_tail:
        total += spec.tail * (n_o - float(u1 @ u1))
    if spec.diag_K is not None:
        mdiag = float(spec.diag_K[obs].mean())
    else:
        mdiag = spec.trace_K / spec.n if n_o == spec.n else float("nan")
    return mdiag, total / n_o ** 2


def _h2_max(spec: Spectrum) -> float:
    smin = float(spec.s.min())
    if spec.n_tail:
        smin = min(smin, spec.tail)
    scale = float(spec.s.max()) if spec.k else 1.0
    return 1.0 if smin > 1e-10 * max(scale, 1e-300) else SINGULAR_H2_MAX


def _rotate(spec: Spectrum, Y: np.ndarray, Z: np.ndarray, obs: np.ndarray, **meta) -> _Rotated:
    """Rotate a group of phenotypes with shared missingness ``~obs`` (indicator approach)."""
    U = spec.U
    miss = np.flatnonzero(~obs)
    mdiag, mK = _mean_K(spec, obs)
    excess = 0.0
    if spec.n_tail and np.isfinite(spec.tail_trace_K2):
        excess = max(0.0, spec.tail_trace_K2 - spec.n_tail * spec.tail ** 2)
    meta.update(hmax=_h2_max(spec), mean_diag_K=mdiag, mean_K=mK, tail_excess=excess,
                ritz_cross=spec.ritz_cross, spectrum_method=spec.method)
    # Y has no NaN: rotate() passes the observed rows, or zeros where values are missing
    Zt = U.T @ Z
    Yt = U.T @ Y
    c_user = Z.shape[1]
    if miss.size:
        Zt = np.hstack([Zt, U[miss].T])
    n_tail = spec.n_tail
    ZZt = Zyt = yyt = None
    if n_tail:
        E = np.zeros((spec.n, miss.size))
        E[miss, np.arange(miss.size)] = 1.0
        Zaug = np.hstack([Z, E])
        ZZt = Zaug.T @ Zaug - Zt.T @ Zt
        Zyt = Zaug.T @ Y - Zt.T @ Yt
        yyt = np.einsum("ij,ij->j", Y, Y) - np.einsum("ij,ij->j", Yt, Yt)
    return _Rotated(s=spec.s, Zt=Zt, Yt=Yt, n=spec.n, n_tail=n_tail, lam=spec.tail, ZZt=ZZt,
                    Zyt=Zyt, yyt=yyt, c_user=c_user, n_ind=int(miss.size), **meta)


def _maximise(rot: _Rotated, which: int, hmax: float, grid: np.ndarray, profile: dict | None = None):
    """Maximise ℓ_R (which=0) or ℓ_ML (which=1) over h² ∈ [0, hmax] for every phenotype.

    1. ℓ on the grid for all phenotypes at once (A is shared at a common h²), which
       finds the global maximum of a possibly multimodal profile to within a step;
    2. the analytic score dℓ/dh² at the best grid point says on which side the
       maximum lies (or that it is the boundary 0 or hmax);
    3. bisection of the score's sign change in that step, vectorised over the
       phenotypes, to |Δh²| < 1e-14: the root of the score is defined to working
       precision, where a search on function values stops at ~√ε (Brent's method
       would too). Cost: (G + 2 + 46) evaluations of O(k c²) per phenotype.

    With ``profile`` (a dict) the grid values of each phenotype are stored by name.
    """
    m = rot.Yt.shape[1]
    ll = np.array([rot.loglik(h)[which] for h in grid])  # (G, m)
    ll = np.where(np.isfinite(ll), ll, -np.inf)
    if profile is not None:
        for j, name in enumerate(rot.names):
            profile[name] = ll[:, j]
    G = grid.size
    best_i = np.argmax(ll, axis=0)
    best_h = grid[best_i].astype(float)
    best_ll = ll[best_i, np.arange(m)]
    # phenotypes in batches that bound the (B, c, c) work arrays
    batch = max(1, int(2_000_000 // max(1, rot.Zt.shape[0] * rot.c)))
    for b0 in range(0, m, batch):
        cols = np.arange(b0, min(m, b0 + batch))
        i = best_i[cols]
        g0 = rot.dloglik_batch(grid[i], cols, which)
        up = g0 > 0  # the maximum lies above the grid point
        lo = np.where(up, grid[i], grid[np.maximum(i - 1, 0)])
        hi = np.where(up, grid[np.minimum(i + 1, G - 1)], grid[i])
        at_lower = (~up) & (i == 0)
        at_upper = up & (i == G - 1)
        inner = ~(at_lower | at_upper) & (g0 != 0)
        h = np.where(at_lower, 0.0, np.where(at_upper, hmax, grid[i]))
        if inner.any():
            a, z, ci = lo[inner], hi[inner], cols[inner]
            for _ in range(46):  # 0.01 / 2^46 < 2e-16
                mid = 0.5 * (a + z)
                pos = rot.dloglik_batch(mid, ci, which) > 0
                a = np.where(pos, mid, a)
                z = np.where(pos, z, mid)
            h[inner] = 0.5 * (a + z)
        val = rot.loglik_batch(h, cols, which)
        # keep the grid point if round-off made the refined value worse
        better = np.isfinite(val) & (val >= best_ll[cols] - 1e-9 * np.maximum(1.0, np.abs(best_ll[cols])))
        best_h[cols] = np.where(better, h, best_h[cols])
        best_ll[cols] = np.where(better, val, best_ll[cols])
    return best_h, best_ll


def _fit_group(rot: _Rotated, znames, grid_size: int, profile: dict | None = None) -> list[PhenotypeFit]:
    hmax = rot.hmax
    names = rot.names
    grid = np.linspace(0.0, hmax, grid_size)
    h_reml, ll_reml = _maximise(rot, 0, hmax, grid, profile)
    # With a singular K whose null space meets span(Z) (a centred GRM and an intercept) the ML
    # likelihood grows without bound as h² → 1; report its largest maximum below the last grid step.
    ml_capped = hmax < 1.0
    h_ml, ll_ml = _maximise(rot, 1, grid[-2] if ml_capped else hmax, grid[:-1] if ml_capped else grid)
    ll0 = rot.loglik(0.0)[0]
    mdiag = rot.mean_diag_K
    dpve = mdiag - rot.mean_K
    n_obs = rot.n - rot.n_ind
    fits = []
    for j, name in enumerate(names):
        h = float(h_reml[j])
        s2 = float(rot.loglik(h, cols=[j])[2][0])
        omega, C, observed, expected = rot.fixed_and_information(j, h, s2)
        sg, se = h * s2, (1.0 - h) * s2
        boundary = "lower" if h == 0.0 else ("upper" if h >= hmax else "")
        cov, se_method = information_covariance(observed, expected, boundary)
        grad = np.array([se, -sg]) / (sg + se) ** 2
        h_se_curv = _delta_se(grad, cov)
        if rot.n_tail:
            # reduced spectrum: the curvature of the approximate likelihood misses the tail's
            # second moments; sandwich H⁻¹ (H + Δ) H⁻¹ with H its expected information
            Hinv = _safe_inv(expected)
            cov = Hinv + Hinv @ _sandwich_excess(rot, sg, se) @ Hinv
            se_method = ("sandwich (expected information of the reduced model, tail tr K² "
                         + ("estimated with probes" if rot.spectrum_method.startswith("randomized")
                            else "exact") + ")")
        h_se = _delta_se(grad, cov)
        with np.errstate(invalid="ignore"):
            sg_se, se_se = (float(np.sqrt(cov[0, 0])), float(np.sqrt(cov[1, 1])))
        lrt = 0.0 if h == 0.0 else max(0.0, 2.0 * (float(ll_reml[j]) - float(ll0[j])))
        pval = 1.0 if lrt <= 0 else 0.5 * float(chdtrc(1, lrt))
        pve = sg * dpve / (sg * dpve + se) if (sg * dpve + se) > 0 else float("nan")
        # pve = h d / (h d + 1 − h) in h = h²: dpve/dh = d / (h d + 1 − h)²
        pve_se = dpve / (h * dpve + 1.0 - h) ** 2 * h_se if (h * dpve + 1.0 - h) > 0 else float("nan")
        # back from the unit residual scale the fit ran on (rotate): y = a y', so σ² = a² σ'²,
        # ω = a ω' (+ the OLS shift), ℓ = ℓ' − (number of error contrasts) log a
        a = np.float64(rot.scale[j] if rot.scale is not None else 1.0)
        la = float(np.log(a))
        with np.errstate(over="ignore", under="ignore"):  # a²σ² beyond float64 is reported as inf / 0
            a2 = a * a
            sg, se, sg_se, se_se = (float(v * a2) for v in (sg, se, sg_se, se_se))
            cov_ge = float(cov[0, 1] * a2 * a2)
        shift = rot.shift[:, j] if rot.shift is not None else np.zeros(len(znames))
        with np.errstate(over="ignore"):
            fe = tuple(FixedEffect(name=zn, estimate=float(a * omega[i] + shift[i]), se=float(a * np.sqrt(C[i, i])))
                       for i, zn in enumerate(znames))
        fits.append(PhenotypeFit(
            name=name, n=n_obs, h2=h, h2_se=h_se, h2_se_method=se_method,
            h2_se_curvature=h_se_curv, pve=float(pve),
            mean_diag_K=mdiag, sigma2_g=sg, sigma2_g_se=sg_se, sigma2_e=se, sigma2_e_se=se_se,
            logl_reml=float(ll_reml[j]) - (rot.n - rot.c) * la, logl_reml_h2_0=float(ll0[j]) - (rot.n - rot.c) * la,
            logl_ml=float(ll_ml[j]) - n_obs * la,
            h2_ml=float(h_ml[j]), lrt_stat=lrt, lrt_pvalue=pval, boundary=boundary,
            fixed_effects=fe, n_missing=rot.n_missing, missing_method=rot.method,
            sigma2_g_sigma2_e_cov=cov_ge, pve_se=float(pve_se),
            ml_note=(f"K is singular: ML is maximised over h2 in [0, {grid[-2]:g}] because it can grow "
                     f"without bound as h2 -> 1" if ml_capped else "")))
    return fits


def liability_h2(h2: float, h2_se: float, prevalence: float, case_fraction: float) -> tuple[float, float]:
    """h² of a binary trait transformed from the observed 0/1 scale to the liability scale.

    ``h²_l = h²_o K² (1 − K)² / (z² P (1 − P))`` with K the population prevalence, P the
    proportion of cases in the sample and z the standard normal density at the liability
    threshold Φ⁻¹(1 − K); the SE is scaled by the same factor. This is GCTA's ``--prevalence``
    transform for ascertained case-control samples.

    References
    ----------
    Lee SH, Wray NR, Goddard ME, Visscher PM (2011). Estimating missing heritability for
    disease from genome-wide association studies. Am J Hum Genet 88:294-305, equation 23.
    """
    if not (0.0 < prevalence < 1.0 and 0.0 < case_fraction < 1.0):
        raise ValueError("prevalence and case_fraction must be in (0, 1)")
    t = -ndtri(prevalence)  # the liability threshold Φ⁻¹(1 − K)
    z = np.exp(-0.5 * t * t) / np.sqrt(2.0 * np.pi)
    c = prevalence ** 2 * (1.0 - prevalence) ** 2 / (z ** 2 * case_fraction * (1.0 - case_fraction))
    return h2 * c, h2_se * c


def _sandwich_excess(rot: _Rotated, sg: float, se: float) -> np.ndarray:
    """Δ = Var(score) − H for the reduced model, in (σ²_g, σ²_e).

    With P₁ block-diagonal in (U₁, tail), the score variance ½ tr(M_a V M_b V)
    under the true V = σ²_g K + σ²_e I exceeds the model's by the tail's second
    moment, ``σ⁴_g (tr K₂² − n_t λ̄²)``, and by the coupling ``ρ_i = ‖P₂ K u_i‖²``
    of inexact eigenvectors; M_a = V₁⁻¹ (∂V₁/∂θ_a) V₁⁻¹ (Z's projection, O(c/n), ignored).
    """
    lam = rot.lam
    vt = sg * lam + se
    v = sg * rot.s + se
    mt = np.array([lam, 1.0]) / vt ** 2
    mi = np.stack([rot.s / v ** 2, 1.0 / v ** 2])
    D = 0.5 * sg ** 2 * rot.tail_excess * np.outer(mt, mt)
    if rot.ritz_cross is not None:
        r = mi @ rot.ritz_cross  # Σ_i m_a,i ρ_i
        D += 0.5 * sg ** 2 * (np.outer(r, mt) + np.outer(mt, r))
    return D


#: Seconds per unit of work of each way to handle a missingness pattern, on one BLAS thread,
#: measured by scripts/bench/bench_missing.py (docs/benchmarks.md, "Missing phenotypes"):
#: indicator REML with q = c + n_miss columns does ≈ 400 evaluations of O(k q² + q³) work,
#: measured 3e-8 to 1.2e-7 s per (k q² + q³) at n = 500-2,000 (the fit dominates; the rotation
#: is O(n k n_miss)); the exact subset's eigendecomposition costs 3.5e-10 to 5.5e-10 s per n_obs³;
#: the reduced subset (QR of the n_obs x k rows of U, then k x k work) ≈ 1e-9 s per n_obs k².
MISSING_COST_INDICATOR = 5e-8
MISSING_COST_ROTATE = 1e-9
MISSING_COST_SUBSET_EXACT = 4.5e-10
MISSING_COST_SUBSET_REDUCED = 1e-9


def missing_costs(spec: Spectrum, n_obs: int, c: int, n_miss: int) -> tuple[float, float]:
    """Predicted seconds (one thread) of the indicator method and of the subset spectrum for one
    pattern of ``n_miss`` missing and ``n_obs`` observed samples with ``c`` fixed effects.

    Measured regime (n ≈ 1,900, exact spectrum, ≈ 9% missing): the indicator's REML took 24.4 s
    where the subsets' spectra took 21 s; an earlier model (400 k q² against 10 n_obs³ flops)
    picked the indicator there, and below ~13% missing on an exact spectrum in general.
    """
    q = c + n_miss
    indicator = MISSING_COST_INDICATOR * (spec.k * q ** 2 + q ** 3) + MISSING_COST_ROTATE * spec.n * spec.k * n_miss
    if spec.n_tail:
        subset = MISSING_COST_SUBSET_REDUCED * n_obs * spec.k ** 2
    else:
        subset = MISSING_COST_SUBSET_EXACT * float(n_obs) ** 3
    return indicator, subset


def _choose_missing_method(spec: Spectrum, n_obs: int, c: int, n_miss: int, requested: str) -> str:
    """Indicator columns or a spectrum of the observed subset, whichever is predicted to be faster
    (:func:`missing_costs`; both are exact)."""
    if requested == "indicator":
        return "indicator"
    if requested == "subset":
        return "subset_spectrum"
    indicator_cost, subset_cost = missing_costs(spec, n_obs, c, n_miss)
    return "indicator" if indicator_cost <= subset_cost else "subset_spectrum"


def _subtract_fit(Y: np.ndarray, Q: np.ndarray, QtY: np.ndarray, owned: bool, block: int = 256) -> np.ndarray:
    """``Y − Q QᵀY`` a block of columns at a time: in place when ``Y`` is ours, else into one new
    array (10,000 phenotypes at n = 100,000 are 8 GB; ``Y − Q @ QtY`` would hold three of them)."""
    out = Y if owned else np.empty_like(Y)
    for j0 in range(0, Y.shape[1], block):
        sl = slice(j0, j0 + block)
        np.subtract(Y[:, sl], Q @ QtY[:, sl], out=out[:, sl])
    return out


def rotate(spectrum: Spectrum, Y, Z=None, *, phenotype_names: Sequence[str] | None = None,
           covariate_names: Sequence[str] | None = None,
           missing: Literal["auto", "indicator", "subset"] = "auto") -> "RotatedDesign":
    """Validate Y and Z and rotate them onto the spectrum, one group per missing pattern.

    Cost O(n k (c + m)) (plus, for a group handled by ``subset_spectrum``, the
    subset's spectrum). See :func:`fit_reml` for the parameters.
    """
    Y_in = Y
    Y = np.asarray(Y, dtype=np.float64)
    # a fresh converted copy (a list, float32 ...) is ours to overwrite; a view of the caller's
    # memory (e.g. a pandas frame's block) has a base and is not
    y_owned = Y is not Y_in and Y.base is None
    if Y.ndim == 1:
        Y = Y[:, None]
    n = spectrum.n
    if Y.shape[0] != n:
        raise InputError(f"phenotypes have {Y.shape[0]} rows, the spectrum {n} samples")
    Z = np.ones((n, 1)) if Z is None else np.asarray(Z, dtype=np.float64)
    if Z.ndim == 1:
        Z = Z[:, None]
    if Z.shape[0] != n:
        raise InputError(f"covariates have {Z.shape[0]} rows, the spectrum {n} samples")
    if not np.all(np.isfinite(Z)):
        raise InputError("covariates contain missing or non-finite values; drop those samples first")
    m, c = Y.shape[1], Z.shape[1]
    names, znames = design_names(m, c, phenotype_names, covariate_names)
    if missing not in ("auto", "indicator", "subset"):
        raise InputError(f"missing must be auto, indicator or subset, not {missing!r}")
    obs_all = ~np.isnan(Y)
    n_obs = obs_all.sum(axis=0)
    if not m:
        span = np.zeros(0)
    elif n_obs.min() == n:
        span = Y.max(axis=0) - Y.min(axis=0)
    else:
        with np.errstate(invalid="ignore"):
            span = np.nanmax(Y, axis=0) - np.nanmin(Y, axis=0)
    for j in np.flatnonzero((n_obs < c + 2) | ~(span > 0)):
        if n_obs[j] < c + 2:
            raise InputError(f"phenotype {names[j]!r}: {n_obs[j]} observed samples, need at least "
                             f"{c + 2} for {c} fixed effects")
        raise InputError(f"phenotype {names[j]!r} is constant; there is nothing to fit")
    # one group per pattern of missing values (one group when nothing is missing)
    groups: dict[bytes, list[int]] = {}
    if n_obs.min(initial=n) == n:
        groups[b"all"] = list(range(m))
    else:
        packed = np.packbits(obs_all, axis=0)
        for j in range(m):
            groups.setdefault(packed[:, j].tobytes(), []).append(j)
    rotated = []
    shift = np.zeros((c, m))
    for cols in groups.values():
        obs = obs_all[:, cols[0]]
        if np.linalg.matrix_rank(Z[obs]) < c:
            raise InputError(f"phenotype {names[cols[0]]!r}: the fixed effects are collinear on its "
                             f"{int(obs.sum())} observed samples")
        Yg = Y if len(cols) == m else Y[:, cols]  # Y[:, all columns] would copy
        Yo = Yg if obs.all() else Yg[obs]
        # remove the OLS fit of Z first: REML and ML are invariant to y → y − Zγ, and the
        # sums of squares that follow (yᵀy and the tail totals) no longer cancel
        # (by Householder QR of Z: Z has full column rank here, and its n x c QR costs little)
        Qz, Rz = np.linalg.qr(Z[obs])
        QtY = Qz.T @ Yo
        shift[:, cols] = solve_triangular(Rz, QtY, lower=False)
        n_o = int(obs.sum())
        # sizes before the fit is removed (relative to each column's largest value: no overflow)
        big_y = np.max(np.abs(Yo), axis=0)
        tss = np.einsum("ij,ij->j", Yo / big_y, Yo / big_y)
        Yo = _subtract_fit(Yo, Qz, QtY, owned=y_owned or Yo is not Y)
        # the fit runs on a unit residual scale (REML is scale-equivariant; results are scaled
        # back in _fit_group): a phenotype the fixed effects explain completely has nothing left
        big_r = np.max(np.abs(Yo), axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            unit = Yo / np.where(big_r > 0, big_r, 1.0)
            rss = np.einsum("ij,ij->j", unit, unit)
            rel = rss * (big_r / big_y) ** 2 / tss
        for jj in np.flatnonzero(~(rel > 1e-20)):
            raise InputError(f"phenotype {names[cols[jj]]!r} is explained completely by the fixed effects "
                             f"(after fitting them on its {n_o} samples, {rel[jj]:.2g} of its sum of squares "
                             f"is left): nothing remains for REML; drop the phenotype, or the covariate "
                             f"that duplicates it")
        scale = big_r * np.sqrt(rss / (n_o - c))
        if Yo is Y or Yo is Yg:
            Yo = Yo / scale
        else:
            Yo /= scale
        n_miss = int((~obs).sum())
        meta = dict(names=[names[j] for j in cols], cols=cols)
        if n_miss == 0:
            rot = _rotate(spectrum, Yo, Z, obs, method="none", **meta)
        elif _choose_missing_method(spectrum, int(obs.sum()), c, n_miss, missing) == "subset_spectrum":
            sub = spectrum.subset(obs)
            rot = _rotate(sub, Yo, Z[obs], np.ones(int(obs.sum()), bool), method="subset_spectrum", **meta)
        else:
            Yf = np.zeros((n, len(cols)))  # missing entries: 0 (their indicator columns absorb them)
            Yf[obs] = Yo
            rot = _rotate(spectrum, Yf, Z, obs, method="indicator", **meta)
        rot.n_missing = n_miss
        rot.obs, rot.Yo, rot.scale = obs, Yo, scale
        rotated.append(rot)
    for rot in rotated:
        rot.shift = shift[:, rot.cols]
    return RotatedDesign(groups=rotated, phenotype_names=names, covariate_names=znames,
                         spectrum_method=spectrum.method, Z=Z)


def fit_reml(spectrum: Spectrum, Y, Z=None, *, phenotype_names: Sequence[str] | None = None,
             covariate_names: Sequence[str] | None = None,
             missing: Literal["auto", "indicator", "subset"] = "auto",
             grid_size: int = GRID_SIZE) -> RemlResult:
    """REML estimates of h², σ²_g, σ²_e and the fixed effects for each phenotype.

    Parameters
    ----------
    spectrum : Spectrum
        Eigenpairs of the GRM over the n samples of the model (exact, or top-k
        with its tail).
    Y : (n,) or (n, m) array
        Phenotypes; NaN marks a missing value. Phenotypes with different
        missing patterns each get the exact REML of their observed samples.
    Z : (n, c) array, optional
        Fixed effects including the intercept (default: intercept only).
    missing : {"auto", "indicator", "subset"}
        How missing values are handled (see module docstring); "auto" picks
        the cheaper exact method.
    grid_size : int
        Points of the h² grid before the score is bisected in the best step.

    Returns
    -------
    RemlResult
        One :class:`PhenotypeFit` per column of Y.

    Notes
    -----
    The same as ``fit_rotated(rotate(spectrum, Y, Z, ...))``: the rotation is
    the only step that touches n-sized arrays.

    Examples
    --------
    >>> import numpy as np, bigmm
    >>> rng = np.random.default_rng(0)
    >>> G = rng.binomial(2, 0.3, size=(150, 500)).astype(np.int8)
    >>> std = bigmm.standardization(bigmm.variant_stats(G))
    >>> spec = bigmm.exact_spectrum(bigmm.grm(G, std))
    >>> y = rng.normal(size=150)
    >>> y[:5] = np.nan                                   # missing values are left out exactly
    >>> fit = bigmm.fit_reml(spec, y, np.ones((150, 1)), phenotype_names=["height"])
    >>> f = fit["height"]
    >>> f.n, 0.0 <= f.h2 <= 1.0, f.missing_method in ("indicator", "subset_spectrum")
    (145, True, True)
    """
    design = rotate(spectrum, Y, Z, phenotype_names=phenotype_names,
                    covariate_names=covariate_names, missing=missing)
    return fit_rotated(design, grid_size=grid_size)


@dataclass
class RotatedDesign:
    """Phenotypes and fixed effects rotated onto a spectrum, grouped by missing pattern:
    everything REML needs, with sizes k x (c + m) instead of n, and what predictions need
    besides the spectrum (Z, and each group's observed samples and phenotypes)."""

    groups: list
    phenotype_names: list
    covariate_names: list
    spectrum_method: str
    Z: np.ndarray | None = None

    def to_arrays(self) -> tuple[dict, dict]:
        """(arrays, JSON-able metadata): the design as plain data, for storage."""
        arrays, metas = {}, []
        for i, g in enumerate(self.groups):
            a, m = g.to_dict()
            m["n_missing"] = g.n_missing
            metas.append(m)
            arrays.update({f"g{i}_{k}": v for k, v in a.items()})
        if self.Z is not None:
            arrays["Z"] = self.Z
        return arrays, {"groups": metas, "phenotype_names": self.phenotype_names,
                        "covariate_names": self.covariate_names, "spectrum_method": self.spectrum_method}

    @classmethod
    def from_arrays(cls, arrays: dict, meta: dict) -> "RotatedDesign":
        groups = []
        for i, m in enumerate(meta["groups"]):
            m = dict(m)
            n_missing = m.pop("n_missing")
            g = _Rotated.from_dict({k: arrays[f"g{i}_{k}"] for k in _Rotated.ARRAYS if f"g{i}_{k}" in arrays}, m)
            g.n_missing = n_missing
            groups.append(g)
        return cls(groups=groups, phenotype_names=meta["phenotype_names"],
                   covariate_names=meta["covariate_names"], spectrum_method=meta["spectrum_method"],
                   Z=arrays.get("Z"))


def fit_rotated(design: RotatedDesign, grid_size: int = GRID_SIZE) -> RemlResult:
    """REML for every phenotype of a :class:`RotatedDesign` (cost independent of n for k < n)."""
    fits: list[PhenotypeFit | None] = [None] * len(design.phenotype_names)
    profile: dict = {}
    for rot in design.groups:
        for j, f in zip(rot.cols, _fit_group(rot, design.covariate_names, grid_size, profile)):
            fits[j] = f
    methods = sorted({g.method for g in design.groups})
    # the REML profile over the h² grid of the first phenotypes, for the report's plots
    shown = set(design.phenotype_names[:PROFILES_KEPT])
    profiles = {}
    for rot in design.groups:
        grid = np.linspace(0.0, rot.hmax, grid_size)
        for j, nm in enumerate(rot.names):
            if nm in shown:
                # on the phenotype's own scale, as logl_reml (the fit ran on y / a: ℓ = ℓ' − (n − c) log a)
                shift = (rot.n - rot.c) * float(np.log(rot.scale[j])) if rot.scale is not None else 0.0
                profiles[nm] = {"h2": grid.tolist(),
                                "logl_reml": [float(v) - shift if np.isfinite(v) else None for v in profile[nm]]}
    return RemlResult(fits=tuple(fits), spectrum_method=design.spectrum_method,
                      notes={"missing_methods": methods, "grid_size": grid_size, "profiles": profiles},
                      design=design)
