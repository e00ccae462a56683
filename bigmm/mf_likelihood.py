"""The matrix-free REML likelihood of one missing-value pattern, its maximum and its curvature.

``ℓ_R(h) = −½ [ (n − c)(log(2π σ̂²) + 1) + log det H + log det(ZᵀH⁻¹Z) ]`` (σ² profiled out,
``σ̂² = yᵀPy / (n − c)``) and ``ℓ_ML`` from the Gauss rules of :mod:`bigmm.mf_quadrature`
(:class:`QuadratureModel`); the maximum over h² by a grid and safeguarded Newton
(:func:`maximise`); the REML information in (σ²_g, σ²_e) (:func:`information`) and the
delete-one-probe jackknife of ĥ² (:func:`jackknife_se`).
"""

from __future__ import annotations

import math

import numpy as np

from .mf_pattern import Pattern
from .mf_quadrature import BlockGaussRule, LogdetRule, ritz_control_variate, schur

LOG2PI = math.log(2.0 * math.pi)
#: h² upper bound: σ²_e ≥ 1e-6 σ² keeps H positive definite when K is singular (it always is
#: for a GRM of centred genotypes) and its quadrature well conditioned
H2_MAX = 1.0 - 1e-6
#: the largest h² at which the REML information (SEs) is evaluated: above it the Gauss rules of
#: its second derivatives, which grow like 1/(1 − h)² on K's null directions, lose it (measured,
#: n = 200, h² = 1: the expected information indefinite from h² = 0.9999, its SE 0.171 at 0.999
#: and 0.170 at 0.99); the exact expected-information SE changes by 0.1% from 0.999 to H2_MAX
#: (0.1634 → 0.1632), so an estimate at the bound gets its SE from here
INFO_H2_MAX = 0.999
MAX_NEWTON = 100


class QuadratureModel:
    """ℓ_R(h), ℓ_ML(h) and their h-derivatives from the Gauss rules of one pattern after some
    steps: the ``[Z, Y]`` block rule (``rule``) and the log det rule (``slq``)."""

    def __init__(self, g: Pattern, steps: int, hmax: float):
        self.names = g.names
        self.cols = np.asarray(g.cols)
        self.idx = g.idx
        self.n_obs, self.c, self.m = g.n_obs, g.c, g.m
        self.shift = g.shift
        self.hmax = hmax
        self.steps = steps
        self.rule = BlockGaussRule(g.block, g.c)
        self.singular = self.rule.singular
        self.exhausted = not g.active
        sd = np.zeros(0) if g.defl.s is None else np.asarray(g.defl.s, dtype=float)
        self.slq = LogdetRule(sd, g.n_perp, g.trK, *g.probes.gauss_rules())
        if g.defl.U is None and self.slq.N and self.rule.tb:
            self.slq.ritz_theta, self.slq.ritz_dev = ritz_control_variate(
                self.rule, g.block, g.probe_vectors(self.slq.N), self.slq.mu)
        self.k = g.k
        self.mean_diag_K = g.trK / g.n_obs if np.isfinite(g.trK) else float("nan")
        self.mean_K = g.sumK / g.n_obs ** 2
        self.he = g.he
        self.coupling = g.defl.coupling
        self.n_missing = int(g.obs.size - g.n_obs)

    @property
    def ritz_theta(self) -> np.ndarray:
        """The Ritz values of the log det's Ritz control variate."""
        return self.slq.ritz_theta

    @property
    def ritz_dev(self) -> np.ndarray:
        """The probes' deviations of the Ritz control variate (N x k_R)."""
        return self.slq.ritz_dev

    def use_ritz(self, ritz: tuple) -> None:
        """Take another step's Ritz control variate ``(θ, deviations)``."""
        self.slq.ritz_theta, self.slq.ritz_dev = ritz

    def logdet(self, h: np.ndarray, per_probe: bool = False):
        """``log det H`` and its h-derivatives (see :meth:`bigmm.mf_quadrature.LogdetRule.logdet`)."""
        return self.slq.logdet(h, per_probe)

    def pieces(self, h, shared: bool, cols=None):
        """Everything the likelihoods need at h (see :meth:`eval`): R, R', R'', log det A and its
        derivatives, log det H and its derivatives, u = A⁻¹b."""
        cols = np.arange(self.m) if cols is None else np.asarray(cols)
        h = np.asarray(h, dtype=np.float64)
        R, R1, R2, ld, ld1, ld2, u = schur(self.rule.forms(h, shared, cols))
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
        """(ZᵀH⁻¹Z, ZᵀH⁻¹y, yᵀH⁻¹y) of phenotype j at h (y = ỹ + Z shift, the original y)."""
        GZ, GY, GY2 = self.rule.GZ, self.rule.GY, self.rule.GY2
        f = self.rule.f(np.array([h]))[0][0]
        A = (GZ * f) @ GZ.T
        b = (GZ * f) @ GY[j]
        s = float(np.sum(f * GY2[j]))
        sh = self.shift[:, j]
        # y = ỹ + Z shift
        return A, b + A @ sh, s + 2.0 * float(b @ sh) + float(sh @ A @ sh)

    def blup_solve(self, h: np.ndarray) -> np.ndarray:
        """H⁻¹(y − Zω̂) at per-phenotype h (n_o x m), from the Krylov basis."""
        cols = np.arange(self.m)
        u = schur(self.rule.forms(np.asarray(h, dtype=np.float64), False, cols))[-1]
        return self.rule.solve(h, u)


def maximise(mdl: QuadratureModel, which: int, grid: np.ndarray, hmax: float):
    """Maximise ℓ over h ∈ [0, hmax] for every phenotype of a group.

    1. ℓ on the grid (all phenotypes at once): the global optimum of a possibly multimodal
       profile to within a grid step, or a boundary;
    2. the sign of the analytic quadrature derivative ℓ' at the best grid point picks the
       bracket [a, z] with ℓ'(a) > 0 ≥ ℓ'(z);
    3. safeguarded Newton on ℓ' with the analytic ℓ'' (:func:`_newton`), to |Δh²| < 1e-14.
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
        h[ci] = _newton(mdl, which, ci, lo[ci], hi[ci], best_h[ci], g0[ci], c0[ci])
    val = mdl.eval(h, shared=False, which=which)[0]
    # keep the grid point if round-off made the refined value worse
    better = np.isfinite(val) & (val >= best_ll - 1e-9 * np.maximum(1.0, np.abs(best_ll)))
    return np.where(better, h, best_h), np.where(better, val, best_ll)


def _newton(mdl: QuadratureModel, which: int, ci, a, z, x, g, c):
    """Safeguarded Newton on ℓ' in the brackets [a, z] of phenotypes ``ci`` from x (ℓ' = g,
    ℓ'' = c there): a step that leaves the bracket or meets ℓ'' ≥ 0 is replaced by bisection,
    the bracket shrinks at every step; ~5 evaluations where bisection needs ~50."""
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
    return x


def upper_boundary(mdl: QuadratureModel, h: np.ndarray, ll: np.ndarray, tol: float):
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


def information(mdl: QuadratureModel, h: float, j: int):
    """Observed and expected REML information in (σ²_g, σ²_e) at (h, σ̂²) for phenotype j,
    and the pieces of the likelihood there (σ̂², R, R')."""
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


def probe_derivatives(mdl: QuadratureModel, h: np.ndarray):
    """ℓ_R', ℓ_R'' at each phenotype's ĥ² (m,) and the per-probe log det terms y', y'' (m, N)
    that the jackknife removes one at a time."""
    R, R1, R2, ld, ld1, ld2, L, L1, L2, U = mdl.pieces(h, shared=False)
    *_, y1, y2 = mdl.logdet(h, per_probe=True)
    k = mdl.n_obs - mdl.c
    l1 = -0.5 * (k * R1 / R + L1 + ld1)
    l2 = -0.5 * (k * (R2 / R - (R1 / R) ** 2) + L2 + ld2)
    return l1, l2, y1, y2, U


def jackknife_se(h: float, l1: float, l2: float, y1: np.ndarray, y2: np.ndarray, hmax: float) -> float:
    """Monte Carlo SD of ĥ² by the delete-one-probe jackknife: each delete-one estimate by one
    Newton step from ĥ² on the delete-one likelihood (0 with fewer than two probes)."""
    N = y1.shape[-1]
    if N < 2:
        return 0.0
    g1 = l1 - 0.5 * (y1.mean() - y1) / (N - 1)
    g2 = l2 - 0.5 * (y2.mean() - y2) / (N - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(g2 < 0, -g1 / g2, 0.0)
    hj = np.clip(h + step, 0.0, hmax)
    return float(np.sqrt((N - 1) / N * np.sum((hj - hj.mean()) ** 2)))
